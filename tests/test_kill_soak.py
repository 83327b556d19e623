"""Kill soak: SIGKILL the harness 20 times over every phase of one tag; each resume leaves journal, git and processes sound."""

import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from autoresearch.orphans import identity
from tasks import journal_rows, make_task

TAG = "soak"
BRANCH = f"autoresearch/{TAG}"
INTERRUPTED = "interrupted"

# Each process a run starts lingers when its harness was killed under it, as a long run would: it is still alive when
# the next harness starts, which must stop it. Its process group's leader (`sh -c`) is the harness's child until the
# harness dies; then it is re-parented.
ORPHAN_LINGER = textwrap.dedent('''\
    def linger_if_orphaned(seconds=30.0):
        import os
        import time

        import psutil

        parent = psutil.Process(os.getpgid(0)).parent()
        try:
            harness = parent is not None and parent.cmdline()[1:3] == ["-m", "autoresearch"]
        except psutil.Error:
            harness = False
        if not harness:
            time.sleep(seconds)
''')

SOAK_TRAIN = textwrap.dedent('''\
    """Saves its "weights" (the hyper-parameters it trained with) for the locked evaluator to score."""
    import os
    import time

    import numpy as np

    LR = 0.1  # best at 0.3
    DECAY = 0.9  # best at 0.5
    WIDTH = 16  # wider is always a little better: keeps never run out

    time.sleep(0.1)
    w = np.array([LR, DECAY, float(WIDTH)])
    np.save(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "w.npy"), w)
    print("training done")
''') + ORPHAN_LINGER + "\n\nlinger_if_orphaned()\n"

SOAK_EVALUATOR = textwrap.dedent('''\
    """The locked evaluator: `python evaluate.py [--split test]` scores the saved weights, writing metrics.json."""
    import json
    import math
    import os
    import sys
    import time

    import numpy as np

    test = sys.argv[1:] == ["--split", "test"]
    time.sleep(0.2 if test else 0.1)  # a kill lands right after the start anyway (the failpoint)
    lr, decay, width = np.load(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "w.npy"))
    score = -(lr - 0.3) ** 2 - (decay - 0.5) ** 2 + 0.001 * math.log2(width)
    if test:
        score -= 0.0001
    with open("metrics.json", "w") as f:
        json.dump({"score": score}, f)
    print("---")
    print(f"score: {score:.6f}")
''') + ORPHAN_LINGER + "\n\nlinger_if_orphaned()\n"

# (point, n): where each of the 20 kills lands; n counts the passes inside one invocation of the harness (which
# starts with a recovery, then a baseline if none, a re-measurement of a cut-off candidate and pending test
# splits, then new candidates). `train:1` on the fresh workspace hits the baseline's first run.
KILLS = [
    ("train", 1), ("commit", 1), ("evaluate", 1), ("recorded", 1), ("test", 1),
    ("branch", 1), ("results.tsv", 1), ("train", 2), ("results.tsv", 4), ("evaluate", 3),
    ("commit", 2), ("recorded", 2), ("test", 2), ("branch", 2), ("train", 3),
    ("results.tsv", 5), ("commit", 3), ("evaluate", 2), ("recorded", 3), ("test", 1),
]
KILL_RUN_EXPERIMENTS = 3  # --max-experiments of a run that carries a failpoint
RESTART_EXPERIMENTS = 1  # --max-experiments of the clean run after each kill
CALL_TIMEOUT = 180  # seconds for any single harness invocation


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def make_soak_task(root):
    # No sandbox: inside one, bubblewrap ends a run with its harness, so nothing would be left to stop on resume.
    root = make_task(root, train=SOAK_TRAIN, extra_config="\n[decide]\nseeds = 1\nbaseline_seeds = 2\n[sandbox]\nmode = \"none\"\n")
    (root / "evaluate.py").write_text(SOAK_EVALUATOR)
    toml = (root / "autoresearch.toml").read_text()
    toml = toml.replace('run = "python train.py"',
                        'run = "python train.py"\nevaluate = "python evaluate.py"\ntest = "python evaluate.py --split test"')
    toml = toml.replace('locked = ["prepare.py",', 'locked = ["evaluate.py", "prepare.py",')
    (root / "autoresearch.toml").write_text(toml)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "evaluator and test split")
    return root


def harness(root, max_experiments, failpoint=None):
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_FAILPOINT"}
    if failpoint:
        env["AUTORESEARCH_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", TAG, "--agent", "perturb", "--budget", "1",
                           "--max-experiments", str(max_experiments)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT)


def rows(root):
    try:
        return journal_rows(root)
    except sqlite3.OperationalError:  # killed before the journal was made
        return []


def current_segment(root):
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    try:
        return db.execute("SELECT COALESCE(MAX(segment), 1) FROM protocols WHERE branch = ?", (BRANCH,)).fetchone()[0]
    finally:
        db.close()


def recorded_processes(records):
    """Every [pid, identity] a row ever recorded: its pids_json, and its `pid` column (identity from pids_json)."""
    out = []
    for r in records:
        pids = [(int(p), ident) for p, ident in json.loads(r["pids_json"])]
        out += pids
        if r["pid"]:
            out.append((int(r["pid"]), dict(pids).get(int(r["pid"]), "")))
    return out


def still_running(pid, ident):
    """The recorded process is alive, not a zombie, and not a later process that reuses its pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return not ident or identity(pid) in (ident, "")


def processes_naming(path):
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append((proc.info["pid"], proc.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def best_kept(records, segment, maximize=True):
    """The best kept measurement of the segment, a commit counting by its latest kept row; ties go to the earlier row."""
    latest = {}
    for r in records:
        if r["segment"] == segment and r["status"] == "keep" and r["metric"] is not None:
            latest[r["commit_sha"]] = r
    sign = -1.0 if maximize else 1.0
    return min(latest.values(), key=lambda r: (sign * r["metric"], r["id"])) if latest else None


def brief(r):
    keys = ("id", "agent", "description", "state", "status", "reason", "commit_sha", "retry_of", "metric", "test_state",
            "test_metric", "pid", "pids_json", "segment")
    return {k: r[k] for k in keys}


def check_recovered_invariants(root, records, interrupted_before, open_at_kill, label):
    """What a clean run must leave after resuming from a kill: no open row, exactly the rows open at the kill closed as
    interrupted (each cut-off candidate re-measured once), no commit measured twice, the branch at the best keep, no
    process of an earlier run alive, only the user's checkout (clean), results.tsv equal to the journal, every trial
    ref in place, and every keep's test split scored."""
    where = f"[{label}]"
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"{where} duplicate row ids: {ids}"
    assert not [r for r in records if r["state"] != "done"], f"{where} rows left open: " \
        f"{[brief(r) for r in records if r['state'] != 'done']}"

    # The rows the kill left open, and only those, were closed as interrupted, each once.
    interrupted = [r for r in records if r["reason"].startswith(INTERRUPTED)]
    assert all(r["status"] == "crash" for r in interrupted), f"{where} {[brief(r) for r in interrupted]}"
    new_interrupted = {r["id"] for r in interrupted} - interrupted_before
    assert new_interrupted == open_at_kill, \
        f"{where} open at the kill {sorted(open_at_kill)}, closed as interrupted since {sorted(new_interrupted)}: " \
        f"{[brief(r) for r in records if r['id'] in new_interrupted | open_at_kill]}"

    # A cut-off candidate with a commit is measured again exactly once; a baseline or a retry is not retried.
    for cut in interrupted:
        retries = [r for r in records if r["retry_of"] == cut["id"]]
        due = bool(cut["commit_sha"]) and cut["agent"] != "baseline" and cut["retry_of"] is None
        assert len(retries) == (1 if due else 0), f"{where} cut row {brief(cut)} has retries {[brief(r) for r in retries]}"
        for r in retries:
            assert r["commit_sha"] == cut["commit_sha"], f"{where} retry {brief(r)} of {brief(cut)}"

    # No candidate commit (nor the same code) was measured twice.
    measured = [r for r in records if not r["reason"].startswith(INTERRUPTED) and r["agent"] != "baseline"]
    commits = [r["commit_sha"] for r in measured if r["commit_sha"]]
    twice = {c for c in commits if commits.count(c) > 1}
    assert not twice, f"{where} measured twice: {[brief(r) for r in measured if r['commit_sha'] in twice]}"
    hashes = [r["editable_hash"] for r in measured if r["editable_hash"] and r["status"] != "invalid"]
    same = {h for h in hashes if hashes.count(h) > 1}
    assert not same, f"{where} the same code measured twice: {[brief(r) for r in measured if r['editable_hash'] in same]}"

    # The branch is at the best kept commit of the current segment.
    best = best_kept(records, current_segment(root))
    assert best is not None, f"{where} no kept row"
    tip = git(root, "rev-parse", f"refs/heads/{BRANCH}")
    assert tip == best["commit_sha"], f"{where} {BRANCH} is at {tip}, the best is {brief(best)}"

    # No process of an earlier run is alive.
    alive = [(pid, ident) for pid, ident in recorded_processes(records) if still_running(pid, ident)]
    owners = [brief(r) for r in records if {pid for pid, _ in recorded_processes([r])} & {pid for pid, _ in alive}]
    assert not alive, f"{where} recorded processes still alive: " \
        f"{[(pid, psutil.Process(pid).cmdline()[-1][-60:]) for pid, _ in alive if psutil.pid_exists(pid)]}, of rows {owners}"
    naming = processes_naming(root)
    assert not naming, f"{where} processes naming the workspace: {naming}"

    # Git and the files: only the user's checkout, clean; no temporary file beside results.tsv.
    worktrees = [line.split(" ", 1)[1] for line in git(root, "worktree", "list", "--porcelain").splitlines()
                 if line.startswith("worktree ")]
    assert [os.path.realpath(w) for w in worktrees] == [os.path.realpath(root)], f"{where} worktrees: {worktrees}"
    assert not list(root.glob("*.tmp")) + list(root.glob(".*.tmp")), f"{where} {list(root.glob('*.tmp'))}"
    assert git(root, "status", "--porcelain") == "", f"{where} {git(root, 'status', '--porcelain')}"

    # results.tsv: one line per done row, in order, with the journal's commits and the anchor's three statuses
    # (a row without a metric is a crash there); a failed baseline is left out.
    lines = (root / "results.tsv").read_text().splitlines()
    done = [dict(r, status=r["status"] if r["status"] in ("keep", "discard") and r["metric"] is not None else "crash")
            for r in records if r["state"] == "done" and not (r["agent"] == "baseline" and r["status"] != "keep")]
    assert lines[0].split("\t")[:2] == ["commit", "score"] and len(lines) == len(done) + 1, \
        f"{where} results.tsv has {len(lines) - 1} rows, the journal {len(done)} done"
    table = [line.split("\t") for line in lines[1:]]
    assert [(t[0], t[3]) for t in table] == [((r["commit_sha"] or "-")[:7], r["status"]) for r in done], \
        f"{where} results.tsv {table} vs journal {[brief(r) for r in done]}"

    # Every measured commit keeps its trial ref.
    refs = dict(line.split(" ", 1)[::-1] for line in
                git(root, "for-each-ref", "--format=%(objectname) %(refname)", f"refs/autoresearch/{TAG}/").splitlines())
    for r in records:
        if r["commit_sha"]:
            assert refs.get(f"refs/autoresearch/{TAG}/{r['id']}") == r["commit_sha"], f"{where} ref of {brief(r)}"

    # A keep's hidden test split is scored, never left pending.
    for r in records:
        if r["status"] == "keep" and r["test_state"] is not None:
            assert r["test_state"] == "done" and r["test_metric"] is not None and math.isfinite(r["test_metric"]), \
                f"{where} test split of {brief(r)}"


@pytest.mark.timeout(900)
def test_twenty_kills_across_every_phase_leave_a_consistent_tag(tmp_path):
    root = make_soak_task(tmp_path / "ws")
    landed, missed, orphans, in_baseline = {}, [], 0, 0
    started = time.monotonic()
    for i, (point, n) in enumerate(KILLS, 1):
        spec = f"{point}:{n}"
        label = f"kill {i} {spec}"
        before = rows(root)
        interrupted_before = {r["id"] for r in before if r["reason"].startswith(INTERRUPTED)}

        victim = harness(root, KILL_RUN_EXPERIMENTS, spec)
        if victim.returncode == -9:
            landed[point] = landed.get(point, 0) + 1
        else:  # it finished before passing the point that often
            assert victim.returncode == 0, f"[{label}] exit {victim.returncode}:\n{victim.stdout}\n{victim.stderr}"
            missed.append(spec)
        at_kill = rows(root)
        open_at_kill = {r["id"] for r in at_kill if r["state"] == "running"}
        if victim.returncode != -9:
            assert not open_at_kill, \
                f"[{label}] a clean exit left rows open: {[brief(r) for r in at_kill if r['state'] == 'running']}"
        orphans += len({pid for pid, ident in recorded_processes(at_kill) if still_running(pid, ident)})
        in_baseline += any(r["agent"] == "baseline" for r in at_kill if r["id"] in open_at_kill)

        restart = harness(root, RESTART_EXPERIMENTS)
        assert restart.returncode == 0, f"[{label}] the resume failed ({restart.returncode}):\n{restart.stdout}\n{restart.stderr}"
        records = rows(root)
        check_recovered_invariants(root, records, interrupted_before, open_at_kill, label)
        # The next run starts: it adds a row, unless the agent had nothing left to try.
        assert len(records) > len(at_kill) or "could not run" in restart.stdout, f"[{label}] nothing ran:\n{restart.stdout}"

    kills = sum(landed.values())
    records = rows(root)
    print(f"\nkill soak: {kills}/{len(KILLS)} kills landed {landed}; not reached: {missed}; "
          f"{in_baseline} inside a baseline; {orphans} process group(s) outlived their harness and were stopped by the next; "
          f"{len(list((root / '.autoresearch').glob('.*.tmp')))} stale temporary file(s) in .autoresearch/; {len(records)} rows "
          f"({sum(r['status'] == 'keep' for r in records)} keep, "
          f"{sum(r['reason'].startswith(INTERRUPTED) for r in records)} interrupted, "
          f"{sum(r['retry_of'] is not None for r in records)} retries); {time.monotonic() - started:.0f}s")
    assert kills >= 16, f"only {kills} of {len(KILLS)} kills landed: {landed}, not reached: {missed}"
    assert set(landed) == {p for p, _ in KILLS}, f"some phases were never killed: {landed}"
