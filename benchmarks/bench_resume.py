"""The time to resume a tag whose journal holds 1,000 rows: from `run_session` to the agent's first proposal.

Builds a throw-away workspace (the no-op task of bench_harness_overhead.py: a train.py that prints a score and
exits), runs one real baseline through `run_session(root, tag="resume", max_experiments=0)`, then adds 999 rows to
the journal through the real `Ledger` API (`start`, `set_commit`, `add_process`, `finish`), as a night of the loop
leaves them:

- every row names a real candidate commit (made with one `git fast-import`: train.py with one constant changed,
  parented on the best commit of the moment) and has its trial ref refs/autoresearch/resume/<id> and its run
  folder .autoresearch/runs/<id>/ with a run.log, as Trials leaves them;
- statuses like a night's: mostly discard, some keep, crash, invalid and timeout; the keeps improve the score
  one after another, so the last keep is the best, and refs/heads/autoresearch/resume is moved to its commit
  (a branch whose tip the journal does not know is refused);
- rows carry what the loop writes: a diff, a summary block, 2 values and seeds for the runs that passed the screen,
  and for every non-keep a log tail of 50 lines (about 4.5 kB, as the executor keeps).

That journal (1,000 finished rows) is the `clean` case: a run that ended normally and is started again. The
`killed` case is the same journal as a kill leaves it: 3 more rows left `running` (2 with their commit, whose
training pid is dead; one of them with its worktree left under .autoresearch/trials/; one cut off before its
commit), the best keep's hidden test left `pending`, and the tag's lock file naming the dead holder. Resuming it
closes the 3 rows, removes the worktree, re-measures the 2 committed candidates once (two real no-op runs) and
tries the pending test (its models are gone, so it is marked failed) before the first proposal.

Each repetition copies the prepared workspace to a fresh folder and runs, in a fresh Python process,
`run_session(root, tag="resume", agent=FirstProposal(), max_experiments=1, max_cost=1.0)`. The agent's
`propose()` records `time.monotonic()` on its first call and returns None; it also reports a spend equal to
the cost cap (`spent.cost_usd = 1.0`, nothing real), so the loop's own `max_cost` check stops it right after
that one step and the session ends through its normal path (the final recovery, the lock released). Returning
None alone would not stop it (MAX_IDLE_PROPOSALS=50 idle steps, each reading the journal again),
`max_hours=0` stops before the first proposal, and `os._exit` or KeyboardInterrupt in propose would skip or
change the shutdown that the process wall time should include. Measured per repetition:

- (a) resume to the first proposal: `run_session` called → the first `propose()` (lock, journal open, branch
  check, the committed config, runner and sandbox, recovery with its results.tsv rewrite, the kill's leftovers,
  the context with 1,000 history rows);
- (b) the whole process: spawn → exit, timed by the parent (interpreter start and imports included);
- what the session did after the proposal (the final recovery), the import time, and inclusive times of its
  phases (the functions named in PHASES, wrapped in the child; a wrapper costs microseconds), the number of
  `Ledger.rows()` calls and their time, the number of git subprocesses and their time.

One more child per case runs under cProfile (not counted in the repetitions); its top functions are printed
and stored. In the parent, `Ledger.rows()` and `Ledger.write_results_tsv()` are timed on the finished journal,
and while it is built, `rows()` every 100 rows and the cost of each `finish()`: how they grow with the journal.
Last, --experiments-after real experiments (10; perturb agent, in-process) run on a copy of the clean journal and
on a fresh one (a baseline only), measured as bench_harness_overhead.py does (journal overhead, full cycle), with
the number of `Ledger.rows()` calls per experiment: what a long journal costs every later experiment.

    python benchmarks/bench_resume.py                    # 5 repetitions per case, JSON in benchmarks/results/
    python benchmarks/bench_resume.py --repeats 1 --rows 200 --out /tmp/r.json   # a quick check
"""

from __future__ import annotations

import argparse
import cProfile
import difflib
import hashlib
import io
import json
import os
import platform
import pstats
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_harness_overhead import TRAIN_PY, make_workspace, source_state, stats  # noqa: E402  (the same no-op task)

TAG = "resume"
BRANCH = f"autoresearch/{TAG}"
COST_CAP = 1.0  # the agent reports this much spend at its first proposal: the loop's max_cost check stops it
RUNNING_ROWS = 3
TAIL_LINES = 50

# Functions timed (inclusive) in the child: (module, attribute path).
PHASES = [
    ("autoresearch.lock", "TagLock.acquire"),
    ("autoresearch.ledger", "Ledger.__init__"),
    ("autoresearch.session", "ensure_branch"),
    ("autoresearch.session", "committed_config"),
    ("autoresearch.session", "detect_device"),
    ("autoresearch.session", "claim_results_table"),
    ("autoresearch.session", "build_runner"),
    ("autoresearch.session", "check_protocol"),
    ("autoresearch.loop", "Loop.recover"),
    ("autoresearch.loop", "Loop.finish_cut_off"),
    ("autoresearch.loop", "Loop.context"),
    ("autoresearch.ledger", "Ledger.rows"),
    ("autoresearch.ledger", "Ledger.write_results_tsv"),
    ("autoresearch.ledger", "Ledger.best"),
]


# -- the child: one resume, in its own process ---------------------------------------------------------------------

class FirstProposal:
    """Records when it is first asked, returns no proposal, and reports a spend equal to the cost cap."""

    name = "bench-resume"

    def __init__(self):
        from autoresearch.agents.base import Usage

        self.spent = Usage()
        self.first_propose: float | None = None
        self.calls = 0
        self.history_rows = 0
        self.observed: list[str] = []
        self.last_error = None

    def propose(self, context):
        from autoresearch.agents.base import Usage

        self.calls += 1
        if self.first_propose is None:
            self.first_propose = time.monotonic()
            self.history_rows = len(context.history)
        self.spent = Usage(cost_usd=COST_CAP, calls=self.calls)
        return None

    def observe(self, result) -> None:
        self.observed.append(result.status)


def instrument() -> tuple[dict, dict]:
    """Wrap PHASES and subprocess.run (for git) with timers; returns the dicts they fill."""
    import importlib

    phases: dict[str, list[float]] = {}
    git = {"calls": 0, "seconds": 0.0}

    def timer(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = phases.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - t0
        return wrapper

    for module_name, path in PHASES:
        owner = importlib.import_module(module_name)
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part)
        setattr(owner, parts[-1], timer(path, getattr(owner, parts[-1])))

    real_run = subprocess.run

    def run(args, *a, **kw):
        is_git = isinstance(args, (list, tuple)) and args and args[0] == "git"
        t0 = time.perf_counter()
        try:
            return real_run(args, *a, **kw)
        finally:
            if is_git:
                git["calls"] += 1
                git["seconds"] += time.perf_counter() - t0
    subprocess.run = run
    return phases, git


def child(root: Path, out: Path, profile_path: Path | None) -> int:
    t_process = time.monotonic()
    from autoresearch.session import run_session

    imported = time.monotonic()
    phases, git = ({}, {}) if profile_path else instrument()
    agent = FirstProposal()
    lines: list[str] = []
    profile = cProfile.Profile() if profile_path else None
    t0 = time.monotonic()
    if profile:
        profile.enable()
    ledger, _ = run_session(root, tag=TAG, agent=agent, max_experiments=1, max_cost=COST_CAP,
                            echo=lambda *a: lines.append(" ".join(map(str, a))))
    if profile:
        profile.disable()
        profile.dump_stats(str(profile_path))
    t1 = time.monotonic()
    counted = {k: {"calls": v[0], "seconds": v[1]} for k, v in phases.items()}  # before the rows() below
    rows = ledger.rows()
    ledger.close()
    result = {
        "import_seconds": imported - t_process,
        "to_first_propose_seconds": agent.first_propose - t0 if agent.first_propose else None,
        "run_session_seconds": t1 - t0,
        "after_first_propose_seconds": t1 - agent.first_propose if agent.first_propose else None,
        "propose_calls": agent.calls,
        "history_rows_in_context": agent.history_rows,
        "observed": agent.observed,
        "rows_after": len(rows),
        "statuses_after": _count(r.status or r.state for r in rows),
        "phases": counted,
        "git_subprocesses": git,
        "echo": lines,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# -- the parent: the journal, then the repetitions -------------------------------------------------------------------

def _count(values) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def git(root: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, input=stdin).stdout


def plan(n: int, rng: random.Random) -> list[str]:
    """Statuses of n rows, as a night leaves them: about 82% discard, 3% keep, 9% crash, 4% invalid, 2% timeout."""
    weights = {"discard": 82, "keep": 3, "crash": 9, "invalid": 4, "timeout": 2}
    statuses = rng.choices(list(weights), weights=list(weights.values()), k=n)
    statuses[-1] = "keep"  # the journal ends on a keep: the best is the newest keep
    return statuses


def candidate_text(k: int, rng: random.Random) -> str:
    """train.py with its three constants perturbed: one text per row, so every row has its own commit and hash."""
    lr, width, decay = 0.1 * (1 + k / 100_000), 64 + rng.randint(-32, 32), round(rng.uniform(0.3, 0.9), 4)
    return TRAIN_PY.replace("LR = 0.1", f"LR = {lr!r}").replace("WIDTH = 64", f"WIDTH = {width}").replace(
        "DECAY = 0.5", f"DECAY = {decay}")


def fast_import(root: Path, base: str, texts: list[str], parents: list[int | None]) -> list[str]:
    """One commit per text (train.py replaced), parented on the base commit or an earlier mark; their SHAs."""
    stream = io.StringIO()
    for i, (text, parent) in enumerate(zip(texts, parents), start=1):
        data = text.encode()
        message = f"candidate {i}".encode()
        stream.write(f"commit refs/heads/_bench_import\nmark :{i}\n"
                     f"committer bench <bench@localhost> {1_700_000_000 + i} +0000\n"
                     f"data {len(message)}\n{message.decode()}\n"
                     f"from {base if parent is None else f':{parent}'}\n"
                     f"M 100644 inline train.py\ndata {len(data)}\n{text}\n")
    marks = root / ".git" / "bench-marks"
    git(root, "fast-import", "--quiet", "--force", f"--export-marks={marks}", stdin=stream.getvalue())
    shas = dict(line.split() for line in marks.read_text().splitlines())
    marks.unlink()
    git(root, "update-ref", "-d", "refs/heads/_bench_import")
    return [shas[f":{i}"] for i in range(1, len(texts) + 1)]


def log_tail(k: int, status: str) -> str:
    lines = [f"step {s:05d} | loss {3.2 - s / 10_000:.4f} | lr {0.04:.5f} | dt 45.2ms | tok/s 24,{k % 1000:03d} | "
             f"mfu 0.00% | elapsed {s * 0.045:.1f}s" for s in range(TAIL_LINES - 3)]
    ending = {"crash": ["Traceback (most recent call last):", '  File "train.py", line 212, in <module>',
                        "RuntimeError: shape mismatch: value tensor of shape [64] cannot be broadcast to [96]"],
              "timeout": ["", "", "killed by the harness"]}.get(status, ["---", f"score: -{1.7 + k / 1e5:.6f}", "total_seconds: 64.7"])
    return "\n".join(lines + ending) + "\n"


def summary(metric: float) -> dict:
    keys = ["training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps",
            "num_params_M", "depth", "tokens_per_second", "startup_seconds", "export_seconds"]
    values = {k: round(random.Random(k).uniform(1, 1000), 3) for k in keys}
    return {"score": metric, **values, "all_runs_training_seconds": 120.2, "all_runs_evaluation_seconds": 9.6}


def dead_process() -> tuple[int, str]:
    """A training process's pid and identity, as the journal records them, for a process that is gone."""
    from autoresearch.orphans import identity

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ident = identity(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.pid, ident


def build(root: Path, rows: int, seed: int) -> dict:
    """The workspace, its real baseline, then rows-1 more rows through the Ledger API: the `clean` journal."""
    from autoresearch.ledger import Ledger
    from autoresearch.session import run_session
    from autoresearch.trial import trial_ref

    make_workspace(root)
    lines: list[str] = []
    t0 = time.monotonic()
    ledger, _ = run_session(root, tag=TAG, agent=FirstProposal(), max_experiments=0, echo=lambda *a: lines.append(" ".join(map(str, a))))
    baseline_seconds = time.monotonic() - t0
    ledger.close()
    base_row = Ledger(root, BRANCH, "score", maximize=True)
    baseline = base_row.best()
    assert baseline is not None and baseline.status == "keep", lines
    base_row.close()

    rng = random.Random(seed)
    statuses = plan(rows - 1, rng)
    texts = [candidate_text(k, rng) for k in range(len(statuses))]
    parents: list[int | None] = []  # the best of the moment: None (the baseline) or the mark of the last keep
    best_mark = None
    for k, status in enumerate(statuses, start=1):
        parents.append(best_mark)
        if status == "keep":
            best_mark = k
    t_commits = time.monotonic()
    shas = fast_import(root, baseline.commit_sha, texts, parents)
    commits_seconds = time.monotonic() - t_commits

    ledger = Ledger(root, BRANCH, "score", maximize=True)
    pid, ident = dead_process()
    best_metric, finish_seconds, rows_growth, refs = baseline.metric, [], [], []
    parent_text = TRAIN_PY
    t_rows = time.monotonic()
    for k, (status, text, sha) in enumerate(zip(statuses, texts, shas), start=1):
        parent_sha = baseline.commit_sha if parents[k - 1] is None else shas[parents[k - 1] - 1]
        diff = "diff --git a/train.py b/train.py\n" + "".join(difflib.unified_diff(
            parent_text.splitlines(True), text.splitlines(True), "a/train.py", "b/train.py"))
        description = f"LR, WIDTH, DECAY perturbed (candidate {k}): " + text.split("LR = ", 1)[1].split("\n", 1)[0]
        row = ledger.start(parent_sha, None, description, "perturb", "", hashlib.sha256(text.encode()).hexdigest(),
                           42, propose_seconds=0.0003)
        ledger.set_commit(row, sha, trial_ref(TAG, row), diff)
        refs.append(f"create {trial_ref(TAG, row)} {sha}\n")
        run_dir = root / ".autoresearch" / "runs" / str(row)
        run_dir.mkdir(parents=True, exist_ok=True)
        tail = log_tail(k, status)
        (run_dir / "run.log").write_text(tail)
        ledger.add_process(row, pid, ident, str(run_dir / "run.log"))
        t = time.perf_counter()
        if status == "keep":
            best_metric += 0.01 + rng.random() * 0.01
            ledger.finish(row, "keep", "mean of 2 seeds: +0.012 over the best, beyond 2σ", best_metric, summary(best_metric),
                          2.1, "", [best_metric - 0.001, best_metric + 0.001], [42, 43])
            parent_text = text
        elif status == "discard":
            metric = best_metric - rng.uniform(0.001, 0.3)
            ledger.finish(row, "discard", f"{metric - best_metric:+.6f} vs the best, within 2σ of the noise", metric,
                          summary(metric), 1.0, tail, [metric], [42])
        elif status == "crash":
            ledger.finish(row, "crash", "exit code 1", None, {}, 0.4, tail)
        elif status == "timeout":
            ledger.finish(row, "timeout", "killed after 130s (limit 130s)", None, {}, 130.0, tail)
        else:
            ledger.finish(row, "invalid", "ran 95s, over the budget of 60s plus 45s of start-up allowance", None, {}, 95.0, tail)
        finish_seconds.append(time.perf_counter() - t)
        if k % 100 == 0 or k == len(statuses):
            rows_growth.append({"rows": k + 1, "rows_call_seconds": _median_time(ledger.rows, 5)})
    rows_seconds = time.monotonic() - t_rows
    git(root, "update-ref", "--stdin", stdin="".join(refs))
    git(root, "update-ref", f"refs/heads/{BRANCH}", shas[-1], baseline.commit_sha)  # the branch at the best keep
    best = ledger.best()
    assert best.commit_sha == shas[-1], (best.id, best.commit_sha, shas[-1])
    journal = ledger.rows()
    ledger.close()
    n = len(finish_seconds)  # the first, middle and last 100 finish() calls (row ids are k + 1)
    windows = {f"rows {i + 2}-{min(i + 100, n) + 1}": statistics.median(finish_seconds[i:i + 100])
               for i in sorted({0, max(0, (n - 100) // 2), max(0, n - 100)})}
    return {
        "baseline_session_seconds": baseline_seconds,
        "commits_seconds": commits_seconds,
        "rows_seconds": rows_seconds,
        "rows": len(journal),
        "statuses": _count(r.status for r in journal),
        "kept_commits": sum(1 for r in journal if r.status == "keep"),
        "best": {"id": best.id, "commit": best.commit_sha, "metric": best.metric},
        "finish_seconds_median_by_window": windows,
        "rows_call_seconds_by_size": rows_growth,
        "mean_row_bytes": _row_bytes(root),
        "dead_pid": [pid, ident],
    }


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _row_bytes(root: Path) -> dict:
    import sqlite3

    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    cols = ["diff", "log_tail", "summary_json", "description", "reason"]
    means = db.execute("SELECT " + ", ".join(f"AVG(LENGTH({c}))" for c in cols) + " FROM experiments").fetchone()
    size = (root / ".autoresearch" / "journal.sqlite").stat().st_size
    db.close()
    return {**{c: round(m or 0, 1) for c, m in zip(cols, means)}, "journal_file_bytes": size}


def kill(root: Path, dead: list) -> dict:
    """The clean journal as a kill leaves it: running rows, the best keep's test pending, the lock naming the holder."""
    from autoresearch.ledger import Ledger
    from autoresearch.trial import trial_ref

    ledger = Ledger(root, BRANCH, "score", maximize=True)
    best = ledger.best()
    cut = []
    for k in range(RUNNING_ROWS):
        committed = k < RUNNING_ROWS - 1  # the last one was cut off before its commit
        text = candidate_text(10_000_000 + k, random.Random(k))
        row = ledger.start(best.commit_sha, None, f"cut off by a kill ({k + 1})", "perturb", "",
                           hashlib.sha256(text.encode()).hexdigest(), 42, propose_seconds=0.0003, worker=k)
        if committed:
            sha = fast_import(root, best.commit_sha, [text], [None])[0]
            ledger.set_commit(row, sha, trial_ref(TAG, row), "diff --git a/train.py b/train.py\n")
            git(root, "update-ref", trial_ref(TAG, row), sha)
            run_dir = root / ".autoresearch" / "runs" / str(row)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "run.log").write_text(log_tail(k, "running")[:2000])
            ledger.add_process(row, dead[0], dead[1], str(run_dir / "run.log"))
            cut.append({"row": row, "commit": sha, "worktree": k == 0})
        else:
            cut.append({"row": row, "commit": None, "worktree": False})
    ledger.set_test(best.id, None, [], "pending")
    ledger.close()
    lock = root / ".autoresearch" / "locks" / f"{TAG}.lock"
    lock.write_text(json.dumps({"pid": dead[0], "host": platform.node(), "since": "2026-11-22 03:14:15"}))
    return {"running_rows": cut, "pending_test_row": best.id}


def copy_for_run(snapshot: Path, dest: Path, killed: dict | None) -> None:
    """A fresh copy of the prepared workspace; for the killed case, the cut-off trial's worktree made in it
    (a worktree's paths are absolute, so it cannot be copied)."""
    shutil.copytree(snapshot, dest, symlinks=True)
    if killed:
        from autoresearch.workspace import Workspace

        ws = Workspace(dest, ["train.py"], ["program.md", "autoresearch.toml"])
        for cut in killed["running_rows"]:
            if cut["worktree"]:
                ws.add_worktree(dest / ".autoresearch" / "trials" / TAG / str(cut["row"]), cut["commit"])


def run_child(root: Path, out: Path, profile: Path | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(out)]
    if profile:
        command += ["--child-profile", str(profile)]
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"the resume child failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["process_wall_seconds"] = wall
    return result


def experiments_after(root: Path, n: int) -> dict:
    """n real experiments (perturb agent) on the journal at `root`, in-process: the harness's cost per experiment
    (as bench_harness_overhead.py measures it) and the number of Ledger.rows() calls per experiment."""
    import sqlite3

    from autoresearch.ledger import Ledger
    from autoresearch.loop import Loop
    from autoresearch.session import run_session

    real_rows, real_step = Ledger.rows, Loop.step
    counter = {"calls": 0, "seconds": 0.0, "steps": 0, "in_step": False}  # rows() inside Loop.step only

    def rows(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return real_rows(self, *a, **kw)
        finally:
            if counter["in_step"]:
                counter["calls"] += 1
                counter["seconds"] += time.perf_counter() - t0

    def step(self):
        counter["in_step"], counter["steps"] = True, counter["steps"] + 1
        try:
            return real_step(self)
        finally:
            counter["in_step"] = False

    before = 0  # a fresh workspace has no journal yet
    if (root / ".autoresearch" / "journal.sqlite").exists():
        db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
        before = db.execute("SELECT COALESCE(MAX(id), 0) FROM experiments").fetchone()[0]
        db.close()
    lines: list[str] = []
    Ledger.rows, Loop.step = rows, step
    try:
        ledger, _ = run_session(root, tag=TAG, agent_name="perturb", max_experiments=n,
                                echo=lambda *a: lines.append(" ".join(map(str, a))))
        ledger.close()
    finally:
        Ledger.rows, Loop.step = real_rows, real_step
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    new = db.execute("SELECT started_at, ended_at, wall_seconds, experiment_seconds FROM experiments"
                     " WHERE id > ? AND state = 'done' AND agent != 'baseline' ORDER BY id", (before,)).fetchall()
    db.close()
    cycle = [e - pe - w for (_, pe, _, _), (_, e, w, _) in zip(new, new[1:])]
    skipped = sum(1 for line in lines if line.lstrip().startswith("skipped"))
    return {"journal_rows_before": before, "experiments": len(new), "duplicates_skipped": skipped,
            "journal_overhead": stats([x - w for _, _, w, x in new]), "full_cycle_overhead": stats(cycle),
            "steps": counter["steps"], "rows_calls_in_steps": counter["calls"],
            "rows_calls_per_experiment": counter["calls"] / max(1, len(new)),
            "rows_seconds_per_experiment": counter["seconds"] / max(1, len(new))}


def profile_report(path: Path, top: int) -> str:
    out = io.StringIO()
    st = pstats.Stats(str(path), stream=out).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def case_figures(runs: list[dict]) -> dict:
    phase_names = sorted({name for r in runs for name in r["phases"]})
    return {
        "to_first_propose": stats([r["to_first_propose_seconds"] for r in runs]),
        "process_wall": stats([r["process_wall_seconds"] for r in runs]),
        "import": stats([r["import_seconds"] for r in runs]),
        "run_session": stats([r["run_session_seconds"] for r in runs]),
        "after_first_propose": stats([r["after_first_propose_seconds"] for r in runs]),
        "phases_median": {name: {"calls": statistics.median(r["phases"].get(name, {"calls": 0})["calls"] for r in runs),
                                 "seconds": statistics.median(r["phases"].get(name, {"seconds": 0.0})["seconds"] for r in runs)}
                          for name in phase_names},
        "git_subprocesses_median": {"calls": statistics.median(r["git_subprocesses"]["calls"] for r in runs),
                                    "seconds": statistics.median(r["git_subprocesses"]["seconds"] for r in runs)},
    }


def print_case(name: str, figures: dict, runs: list[dict]) -> None:
    print(f"\n== {name}: {len(runs)} fresh processes; history rows in the context: {runs[0]['history_rows_in_context']}; "
          f"rows after: {runs[0]['rows_after']} {runs[0]['statuses_after']}")
    print(f"{'seconds':<46} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    for key, label in (("to_first_propose", "(a) run_session() to the first propose()"),
                       ("process_wall", "(b) whole process, spawn to exit"),
                       ("import", "    import autoresearch.session"),
                       ("after_first_propose", "    first propose() to run_session() return"),
                       ("run_session", "    run_session() in all")):
        s = figures[key]
        print(f"{label:<46} {s['median']:>8.3f} {s['p90']:>8.3f} {s['min']:>8.3f} {s['max']:>8.3f}")
    print(f"{'phase (inclusive, median over the runs)':<46} {'calls':>8} {'seconds':>8}")
    for phase, v in sorted(figures["phases_median"].items(), key=lambda kv: -kv[1]["seconds"]):
        print(f"    {phase:<42} {v['calls']:>8g} {v['seconds']:>8.3f}")
    g = figures["git_subprocesses_median"]
    print(f"    {'git subprocesses (subprocess.run)':<42} {g['calls']:>8g} {g['seconds']:>8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows in the journal, the baseline included (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case (default 5)")
    parser.add_argument("--profile", type=int, metavar="TOP", default=30, help="functions of the cProfile to print (0: no profile)")
    parser.add_argument("--experiments-after", type=int, default=10,
                        help="real experiments run on the resumed journal and on a fresh one, for the cost per experiment (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "resume.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]), args.child_profile)

    started = time.time()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-resume-"))
    clean = tmp / "clean"
    clean.mkdir()
    print(f"building a journal of {args.rows} rows in {clean} ...", flush=True)
    built = build(clean, args.rows, args.seed)
    print(f"  baseline session {built['baseline_session_seconds']:.2f}s, {built['kept_commits']} keeps; "
          f"{args.rows - 1} candidate commits in {built['commits_seconds']:.2f}s (git fast-import); "
          f"{args.rows - 1} rows through the Ledger in {built['rows_seconds']:.1f}s; statuses {built['statuses']}")
    print("  Ledger.finish() median by journal size: " + ", ".join(f"{k} {v * 1000:.1f} ms"
                                                                for k, v in built["finish_seconds_median_by_window"].items()))
    print("  Ledger.rows() by journal size: " + ", ".join(f"{g['rows']} rows {g['rows_call_seconds'] * 1000:.1f} ms"
                                                       for g in built["rows_call_seconds_by_size"]))

    from autoresearch.ledger import Ledger

    ledger = Ledger(clean, BRANCH, "score", maximize=True)
    micro = {"rows_call_seconds": _median_time(ledger.rows, 20),
             "best_call_seconds": _median_time(ledger.best, 20),
             "write_results_tsv_seconds": _median_time(ledger.write_results_tsv, 10)}
    ledger.close()
    print(f"  on {args.rows} rows: Ledger.rows() {micro['rows_call_seconds'] * 1000:.1f} ms, best() "
          f"{micro['best_call_seconds'] * 1000:.1f} ms, write_results_tsv() {micro['write_results_tsv_seconds'] * 1000:.1f} ms")

    killed_snapshot = tmp / "killed"
    shutil.copytree(clean, killed_snapshot, symlinks=True)
    killed = kill(killed_snapshot, built["dead_pid"])

    cases = {}
    for name, snapshot, leftovers in (("clean", clean, None), ("killed", killed_snapshot, killed)):
        runs = []
        for i in range(args.repeats):
            dest = tmp / f"{name}-run{i}"
            copy_for_run(snapshot, dest, leftovers)
            runs.append(run_child(dest, tmp / f"{name}-run{i}.json"))
            shutil.rmtree(dest, ignore_errors=True)
        figures = case_figures(runs)
        print_case(name, figures, runs)
        report = None
        if args.profile:
            dest = tmp / f"{name}-profile"
            copy_for_run(snapshot, dest, leftovers)
            run_child(dest, tmp / f"{name}-profile.json", tmp / f"{name}.prof")
            report = profile_report(tmp / f"{name}.prof", args.profile)
            print(f"\n-- cProfile of one {name} resume (run_session only) --")
            print(report)
        cases[name] = {"figures": figures, "runs": [{k: v for k, v in r.items() if k != "echo"} for r in runs],
                       "echo_first_run": runs[0]["echo"], "profile_top": report}

    steady = {}
    if args.experiments_after:
        fresh = tmp / "fresh"
        fresh.mkdir()
        make_workspace(fresh)
        for name, root in (("fresh journal", fresh), (f"{args.rows}-row journal", tmp / "steady")):
            if root.name == "steady":
                copy_for_run(clean, root, None)
            steady[name] = experiments_after(root, args.experiments_after)
        print(f"\n== {args.experiments_after} experiments after the resume (perturb agent, in-process), against the same "
              "on a fresh journal; seconds per experiment")
        print("(medians; rows() calls and seconds: in the loop's steps, skipped duplicates included, per experiment run)")
        print(f"{'':<22} {'rows before':>11} {'n':>3} {'skipped':>7} {'journal overhead':>17} {'full cycle':>11} "
              f"{'rows() calls':>13} {'rows() s':>9}")
        for name, v in steady.items():
            print(f"{name:<22} {v['journal_rows_before']:>11} {v['experiments']:>3} {v['duplicates_skipped']:>7} "
                  f"{v['journal_overhead']['median']:>17.3f} "
                  f"{v['full_cycle_overhead']['median']:>11.3f} {v['rows_calls_per_experiment']:>13.1f} "
                  f"{v['rows_seconds_per_experiment']:>9.3f}")

    load_after = os.getloadavg()
    result = {
        "benchmark": f"resume of a tag with a journal of {args.rows} rows, to the agent's first proposal",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "source": source_state(),
        "rows": args.rows,
        "repeats": args.repeats,
        "journal": built,
        "killed": killed,
        "micro_on_full_journal": micro,
        "cases": cases,
        "experiments_after_resume": steady,
        "total_wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs); "
          f"{result['total_wall_seconds']:.0f}s in all; wrote {args.out}")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
