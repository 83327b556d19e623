"""The harness's own overhead per experiment: wall time spent outside the training process, with a no-op train.py.

Builds a throw-away workspace (a git repo with one commit) whose train.py does nothing but print a summary block,
runs the real research loop in-process (`run_session`, perturb agent) for N experiments, then reads the journal
(<ws>/.autoresearch/journal.sqlite) and reports, per experiment (the baseline row excluded):

- journal overhead  = experiment_seconds - wall_seconds: what the journal attributes to the harness (a row spans
  the experiment from the moment the agent is asked to the moment it is recorded; propose_seconds is part of it);
- unattributed gap  = started_at - the previous row's ended_at: time between two journal rows (moving the branch
  after a keep, building the next context, proposals skipped as duplicates); the trial's worktree is removed
  before its row ends, and the next one is added after the next row starts, so both are in the journal overhead;
- full cycle        = ended_at - the previous row's ended_at - wall_seconds: everything the harness spent on this
  experiment besides the training process, duplicates skipped on the way included (gap + experiment - wall);
- no-op run wall    = wall_seconds: the training process itself (sh + Python start-up) as the harness timed it,
  and the same command timed directly (subprocess.run, no harness) for context.

Then, on the same workspace (its branch, trial refs and objects as the loop left them), it times what every
trial pays for its worktree, as the harness does it: `Workspace.add_worktree(folder, commit)` (a `git worktree
prune`, then `git worktree add --detach`) and `Workspace.remove_worktree(folder)` (`git worktree remove --force
--force`, an rmtree of anything left, `git worktree prune`), at the branch's tip, in a folder under
.autoresearch/trials/ like a trial's, --worktrees times (30 by default); median and p90 of each.

Target: a median under 0.5 s per experiment.

    python benchmarks/bench_harness_overhead.py                  # 50 experiments, JSON in benchmarks/results/
    python benchmarks/bench_harness_overhead.py --profile 25     # cProfile of the loop: top costs printed
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sqlite3
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_MEDIAN_SECONDS = 0.5

TRAIN_PY = '''"""A no-op training script for the harness-overhead benchmark: prints a summary block and exits."""

import math

LR = 0.1
WIDTH = 64
DECAY = 0.5

# Deterministic, finite for every value the perturb agent can produce (WIDTH may reach 0, LR stays > 0).
score = -math.log(LR / 0.03) ** 2 - ((WIDTH - 96) / 64) ** 2 - (DECAY - 0.8) ** 2

print("---")
print(f"score: {score:.6f}")
'''

PROGRAM_MD = "# Harness-overhead benchmark\n\nMaximize `score`. train.py trains nothing; it only prints its score.\n"

CONFIG_TOML = '''program = "program.md"
editable = ["train.py"]
locked = ["program.md"]

[commands]
run = "python train.py"

[metric]
name = "score"
direction = "maximize"

[budget]
seconds = 1

[agent]
name = "perturb"
'''

GITIGNORE = "results.tsv\n.autoresearch/\n"


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)


def make_workspace(root: Path) -> None:
    """A git repo with train.py, program.md, autoresearch.toml and .gitignore, committed once."""
    for name, text in (("train.py", TRAIN_PY), ("program.md", PROGRAM_MD), ("autoresearch.toml", CONFIG_TOML),
                       (".gitignore", GITIGNORE)):
        (root / name).write_text(text, encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "bench")  # a local identity: the harness commits as this user
    git(root, "config", "user.email", "bench@localhost")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "harness-overhead benchmark workspace")


def run_loop(root: Path, experiments: int, profile: cProfile.Profile | None) -> tuple[float, float, list[str]]:
    """The real loop, in-process; returns its start (epoch seconds), its wall time and what it echoed."""
    from autoresearch.session import run_session

    lines: list[str] = []
    t0 = time.time()
    if profile is not None:
        profile.enable()
    try:
        ledger, _ = run_session(root, tag="bench", agent_name="perturb", budget=1, max_experiments=experiments,
                                echo=lambda *a: lines.append(" ".join(map(str, a))))
    finally:
        if profile is not None:
            profile.disable()
    ledger.close()
    return t0, time.time() - t0, lines


def direct_noop_wall(root: Path, repeats: int) -> list[float]:
    """`python train.py` run with `sh -c` outside the harness, timed tightly: the floor under wall_seconds."""
    from autoresearch.process import command_env

    env = command_env({"AUTORESEARCH_TIME_BUDGET": "1", "AUTORESEARCH_SEED": "42"})
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        subprocess.run("python train.py", shell=True, cwd=root, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.monotonic() - t0)
    return times


def worktree_costs(root: Path, repeats: int) -> dict:
    """`Workspace.add_worktree` then `Workspace.remove_worktree`, as a trial does them, timed apart, `repeats` times."""
    from autoresearch.config import load_config
    from autoresearch.session import open_workspace

    ws = open_workspace(root, load_config(root))
    commit = ws.resolve("refs/heads/autoresearch/bench")
    add, remove = [], []
    for i in range(repeats):
        folder = ws.root / ".autoresearch" / "trials" / "worktree-bench" / str(i + 1)
        t0 = time.monotonic()
        tree = ws.add_worktree(folder, commit)
        t1 = time.monotonic()
        assert (tree.root / "train.py").is_file(), folder
        t2 = time.monotonic()
        ws.remove_worktree(folder)
        t3 = time.monotonic()
        assert not folder.exists(), folder
        add.append(t1 - t0)
        remove.append(t3 - t2)
    left = [line for line in ws.git("worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]
    assert len(left) == 1, left  # only the main checkout: every trial worktree is gone
    return {"repetitions": repeats, "commit": commit, "add_worktree": stats(add), "remove_worktree": stats(remove),
            "add_plus_remove": stats([a + r for a, r in zip(add, remove)])}


def read_rows(root: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{root / '.autoresearch' / 'journal.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM experiments WHERE branch = 'autoresearch/bench' ORDER BY id")]
    db.close()
    return rows


def source_state() -> dict:
    """The commit of the code measured, and whether src/ had uncommitted changes (another engineer's, in progress)."""
    repo = HERE.parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True).stdout
    return {"commit": commit, "src_uncommitted": [line[3:] for line in dirty.splitlines()]}


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]  # nearest-rank
    return {"n": len(values), "median": statistics.median(values), "p90": p90, "mean": statistics.fmean(values),
            "min": ordered[0], "max": ordered[-1]}


def analyse(rows: list[dict]) -> dict:
    overhead, gap, cycle, wall, propose = [], [], [], [], []
    for prev, row in zip(rows, rows[1:]):
        if row["agent"] == "baseline" or row["state"] != "done" or row["wall_seconds"] is None:
            continue
        exp, run, prop = row["experiment_seconds"], row["wall_seconds"], row["propose_seconds"] or 0.0
        overhead.append(exp - run)
        propose.append(prop)
        wall.append(run)
        if prev["ended_at"] is not None:
            gap.append(row["started_at"] - prev["ended_at"])
            cycle.append(row["ended_at"] - prev["ended_at"] - run)
    return {
        "journal_overhead": stats(overhead),
        "propose": stats(propose),
        "unattributed_gap": stats(gap),
        "full_cycle_overhead": stats(cycle),
        "noop_run_wall": stats(wall),
    }


def print_table(figures: dict) -> None:
    labels = {
        "journal_overhead": "journal overhead (exp - wall)",
        "propose": "  of which propose_seconds",
        "unattributed_gap": "unattributed gap (start - prev end)",
        "full_cycle_overhead": "full cycle (end - prev end - wall)",
        "noop_run_wall": "no-op run wall_seconds (journal)",
        "direct_noop_wall": "same command timed directly, no harness",
    }
    print(f"\n{'per experiment, seconds':<42} {'n':>3} {'median':>8} {'p90':>8} {'mean':>8} {'max':>8}")
    for key, label in labels.items():
        s = figures[key]
        if not s["n"]:
            print(f"{label:<42} {0:>3} {'-':>8}")
            continue
        print(f"{label:<42} {s['n']:>3} {s['median']:>8.4f} {s['p90']:>8.4f} {s['mean']:>8.4f} {s['max']:>8.4f}")


def profile_report(profile: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    st = pstats.Stats(profile, stream=out).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=50, help="experiments after the baseline (default 50)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "harness_overhead.json")
    parser.add_argument("--direct", type=int, default=20, help="times to run the no-op command directly, for context (default 20)")
    parser.add_argument("--worktrees", type=int, default=30,
                        help="times to add and remove a worktree as a trial does, timed apart (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")
    parser.add_argument("--profile", type=int, metavar="TOP", default=0, help="run the loop under cProfile; print the TOP functions")
    args = parser.parse_args()

    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="autoresearch-overhead-")
    root = Path(tmp) / "ws"
    root.mkdir()
    make_workspace(root)
    profile = cProfile.Profile() if args.profile else None
    session_start, session_seconds, lines = run_loop(root, args.experiments, profile)
    rows = read_rows(root)
    figures = analyse(rows)
    figures["direct_noop_wall"] = stats(direct_noop_wall(root, args.direct))
    worktrees = worktree_costs(root, args.worktrees) if args.worktrees else None
    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    skipped = sum(1 for line in lines if line.lstrip().startswith("skipped"))
    experiments = [r for r in rows if r["agent"] != "baseline"]

    result = {
        "benchmark": "harness overhead per experiment, no-op train.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "source": source_state(),
        "experiments_requested": args.experiments,
        "experiments_run": len(experiments),
        "rows": len(rows),
        "statuses": statuses,
        "duplicates_skipped": skipped,
        "profiled": bool(args.profile),
        "session_seconds": session_seconds,
        "setup_seconds_to_baseline_row": rows[0]["started_at"] - session_start if rows else None,
        "baseline_wall_seconds": rows[0]["wall_seconds"] if rows else None,
        "session_seconds_per_experiment": session_seconds / max(1, len(experiments)),
        "seconds_per_experiment_end_to_end": ((rows[-1]["ended_at"] - rows[0]["ended_at"]) / max(1, len(experiments))
                                              if len(rows) > 1 else None),
        "figures": figures,
        "worktree": worktrees,
        "target_median_seconds": TARGET_MEDIAN_SECONDS,
        "target_met_journal_overhead": figures["journal_overhead"].get("median", float("inf")) < TARGET_MEDIAN_SECONDS,
        "target_met_full_cycle": figures["full_cycle_overhead"].get("median", float("inf")) < TARGET_MEDIAN_SECONDS,
    }

    print(f"{len(experiments)} experiments (+ baseline) in {session_seconds:.1f}s in-process"
          f"{' under cProfile' if args.profile else ''}; statuses {statuses}; {skipped} duplicate proposals skipped")
    print(f"load average before {load_before[0]:.2f}, after {result['load_average']['after'][0]:.2f} ({os.cpu_count()} CPUs)")
    print_table(figures)
    if worktrees:
        print(f"\n{'worktree, as a trial does it, seconds':<42} {'n':>3} {'median':>8} {'p90':>8} {'mean':>8} {'max':>8}")
        for key in ("add_worktree", "remove_worktree", "add_plus_remove"):
            w = worktrees[key]
            print(f"{'Workspace.' + key if key != 'add_plus_remove' else 'add + remove':<42} {w['n']:>3} {w['median']:>8.4f} "
                  f"{w['p90']:>8.4f} {w['mean']:>8.4f} {w['max']:>8.4f}")
    for key in ("journal_overhead", "full_cycle_overhead"):
        median = figures[key].get("median")
        verdict = "met" if median is not None and median < TARGET_MEDIAN_SECONDS else "NOT met"
        print(f"target median < {TARGET_MEDIAN_SECONDS} s, {key}: {verdict}")
    if profile is not None:
        report = profile_report(profile, args.profile)
        print(report)
        result["profile_top"] = report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    if args.keep:
        print(f"workspace kept: {root}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
