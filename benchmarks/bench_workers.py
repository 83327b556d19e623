"""Experiments per hour with K = 1, 2 and 4 workers, on a training script that sleeps: the harness's own scaling.

Builds a throw-away workspace (a git repo with one commit) whose train.py sleeps for its budget
(AUTORESEARCH_TIME_BUDGET seconds, no CPU) and prints a score from two constants, then runs the real loop in a
subprocess (`autoresearch run --workers K --agent tune`, the sandbox as configured: bubblewrap where it works)
for a fixed window per K (`--max-hours`), each on a fresh copy of the workspace. Throughput is read from the
journal: the experiments (the baseline excluded; re-based candidates included, they are real trials) that
finished within the window, which starts when the first experiment starts, over its length. A count-limited run
would be skewed by its tail, where fewer than K workers are busy; a window loses at most one cycle per worker at
its end, for every K alike. It also reports
the harness's own cost per experiment on the loop's thread (K = 1: experiment_seconds - wall_seconds, which holds
proposing, the worktree, the commit and the record), which is what bounds how many workers one head node feeds.

Targets: K = 2 at least 1.9x the throughput of K = 1, K = 4 at least 3.7x.

    python benchmarks/bench_workers.py                     # 5 s budget, a 60 s window per K; JSON in benchmarks/results/
    python benchmarks/bench_workers.py --budget 2 --window 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

TRAIN_PY = '''"""Sleeps for the budget (no CPU), then prints a score from two constants the tune agent can change."""
import os
import time

X = 1.0
Y = 0.5
time.sleep(float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "5")))
print("---")
print(f"score: {-(X - 2.0) ** 2 - (Y - 0.25) ** 2:.6f}")
'''

CONFIG = '''program = "program.md"
editable = ["train.py"]
locked = ["prepare.py", "program.md", "autoresearch.toml"]

[commands]
run = "python train.py"

[metric]
name = "score"
direction = "maximize"

[budget]
seconds = {budget}

[decide]
seeds = 1
baseline_seeds = 1
'''


def make_workspace(root: Path, budget: float) -> None:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN_PY)
    (root / "prepare.py").write_text("# locked\n")
    (root / "program.md").write_text("Maximize the score.\n")
    (root / "autoresearch.toml").write_text(CONFIG.format(budget=budget))
    (root / ".gitignore").write_text("results.tsv\n.autoresearch/\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "task"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def run_once(workers: int, budget: float, window: float, scratch: Path) -> dict:
    root = scratch / f"k{workers}"
    make_workspace(root, budget)
    command = [sys.executable, "-m", "autoresearch", "run", "--tag", "bench", "--agent", "tune", "--workers", str(workers),
               "--max-hours", f"{window / 3600:.8f}", "--budget", f"{budget:g}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    total = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"K={workers} failed ({done.returncode}): {done.stderr[-2000:]}")
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    rows = db.execute("SELECT started_at, ended_at, wall_seconds, experiment_seconds, status, worker FROM experiments"
                      " WHERE agent != 'baseline' ORDER BY id").fetchall()
    db.close()
    start = min(r[0] for r in rows)
    finished = [r for r in rows if r[1] <= start + window]
    overhead = [r[3] - r[2] for r in rows if r[2] is not None]
    return {"workers": workers, "experiments": len(rows), "finished_in_window": len(finished), "window_seconds": window,
            "per_hour": len(finished) / window * 3600,
            "process_seconds": total, "workers_used": len({r[5] for r in rows}),
            "statuses": {s: sum(r[4] == s for r in rows) for s in {r[4] for r in rows}},
            "median_run_wall_seconds": statistics.median(r[2] for r in rows if r[2] is not None),
            "median_harness_seconds_per_experiment": statistics.median(overhead) if overhead else None}


def loop_thread_cost(budget: float, window: float, scratch: Path, workers: int = 4) -> dict:
    """The loop thread's own seconds per experiment (proposing, the checks, the worktree and commit, recording,
    moving the branch), timed around Loop.launch and Loop.settle in an in-process run with `workers` workers:
    what one head node spends per experiment, whatever the number of workers."""
    from autoresearch.loop import Loop
    from autoresearch.session import run_session

    root = scratch / "cost"
    make_workspace(root, budget)
    spent = {"launch": 0.0, "settle": 0.0, "launches": 0, "settles": 0}
    launch, settle = Loop.launch, Loop.settle

    def timed_launch(self):
        t = time.perf_counter()
        try:
            return launch(self)
        finally:
            spent["launch"] += time.perf_counter() - t
            spent["launches"] += 1

    def timed_settle(self, job, m):
        t = time.perf_counter()
        try:
            return settle(self, job, m)
        finally:
            spent["settle"] += time.perf_counter() - t
            spent["settles"] += 1

    Loop.launch, Loop.settle = timed_launch, timed_settle
    try:
        run_session(root, tag="cost", agent_name="tune", budget=budget, max_hours=window / 3600, workers=workers,
                    echo=lambda *_: None)
    finally:
        Loop.launch, Loop.settle = launch, settle
    n = max(1, spent["settles"])
    return {"workers": workers, "experiments": spent["settles"], "launch_seconds_per_experiment": spent["launch"] / n,
            "settle_seconds_per_experiment": spent["settle"] / n,
            "loop_thread_seconds_per_experiment": (spent["launch"] + spent["settle"]) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=5.0, help="seconds each run sleeps (default 5)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of experiments per K (default 60)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--out", default=str(HERE / "results" / "workers.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        for k in (int(k) for k in args.workers.split(",")):
            print(f"K = {k}: experiments of {args.budget:g} s for {args.window:g} s ...", flush=True)
            result = run_once(k, args.budget, args.window, Path(scratch))
            results.append(result)
            print(f"  {result['per_hour']:.0f} experiments/hour ({result['finished_in_window']} finished in {args.window:g} s) "
                  f"(median run {result['median_run_wall_seconds']:.2f} s, {result['workers_used']} worker(s) used)", flush=True)
        cost = loop_thread_cost(args.budget, args.window / 2, Path(scratch))
    print(f"The loop thread's own cost: {cost['loop_thread_seconds_per_experiment'] * 1000:.0f} ms per experiment "
          f"(launch {cost['launch_seconds_per_experiment'] * 1000:.0f} ms, settle {cost['settle_seconds_per_experiment'] * 1000:.0f} ms)")
    base = results[0]["per_hour"]
    for r in results:
        r["speedup"] = r["per_hour"] / base
        print(f"K = {r['workers']}: {r['speedup']:.2f}x the throughput of K = {results[0]['workers']}")
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "budget_seconds": args.budget, "results": results, "loop_thread": cost,
              "load_average": os.getloadavg()}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
