"""What the live view costs a session: the same loop with a LiveView drawing on a pseudo-terminal, and quiet.

Builds a throw-away workspace whose train.py prints a progress line (`step N | loss X | N tok/s`) every 0.05 s
for its whole budget, sleeping in between (a trainer's log, with no training to compete for the CPU), then runs the
real loop in-process (`run_session`, perturb agent, N experiments, one seed per candidate, two for the baseline)
alternately:

- quiet: `echo` is print() to /dev/null and no observer: what `autoresearch run --quiet` (or a pipe) does;
- live:  a LiveView on a rich Console writing to the slave of a real pseudo-terminal (force_terminal, 120
  columns), whose master a thread drains as a terminal would; `echo` is the view's `write`, and the view is the
  session's observer, so it follows every training log at its 4 Hz refresh and reads the journal after each row.

Per experiment (the session's wall time and CPU time divided by its experiments, the baseline's runs included in
the session), for each variant: wall seconds, the harness's cycle outside training (the journal's ended_at minus the
previous row's ended_at minus wall_seconds, median, as bench_harness_overhead measures it), the process's CPU
seconds (time.process_time: every thread of the harness, no child), and for live the CPU seconds of rich's refresh
thread alone (psutil, by its native thread id, read just before the view is closed) and the bytes it wrote to the
terminal; and, timed inside the view's methods, the seconds the loop's own thread spent in the view (its events,
`write` and the re-render each printed line brings) and the CPU of one refresh. Reported: live / quiet ratios, live
minus quiet per experiment (over all sessions, and the median over the pairs).

    python benchmarks/bench_live_view.py                       # 8 experiments x 6 pairs, JSON in benchmarks/results/
    python benchmarks/bench_live_view.py --experiments 4 --pairs 1 --budget 0.5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # this tree's package, before an installed one

from autoresearch import UsageError  # noqa: E402
from autoresearch.events import Observer  # noqa: E402
from rich.live import _RefreshThread as RefreshThread  # noqa: E402

TRAIN_PY = '''"""A trainer's log without the training: a progress line every 0.05 s for the budget, then the score."""
import os
import time

LR = 0.1
WIDTH = 64

budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "1"))
t0, step = time.time(), 0
while time.time() - t0 < budget:
    step += 1
    print(f"step {step:5d} | loss {3.0 / step ** 0.5 + abs(LR - 0.03):.4f} | lr x1.00 | {24000 + step:,} tok/s", flush=True)
    time.sleep(0.05)
print("---")
print(f"score: {-abs(LR - 0.03) - abs(WIDTH - 96) / 640:.6f}")
'''

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

[decide]
seeds = 1
baseline_seeds = 2

[agent]
name = "perturb"
'''


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)


def make_workspace(root: Path) -> None:
    root.mkdir(parents=True)
    for name, text in (("train.py", TRAIN_PY), ("program.md", "Maximize the score.\n"),
                       ("autoresearch.toml", CONFIG_TOML), (".gitignore", "results.tsv\n.autoresearch/\n")):
        (root / name).write_text(text, encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "bench")
    git(root, "config", "user.email", "bench@localhost")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "live-view benchmark workspace")


class RefreshProbe(Observer):
    """An observer listed before the view: at the session's close it reads the refresh thread's CPU time while
    the thread is still there (the view is closed after it)."""

    def __init__(self, view):
        self.view, self.cpu = view, None

    def close(self):
        thread = self.view.live._refresh_thread  # rich's _RefreshThread (private: a benchmark's look inside)
        if thread is None:
            return
        for t in psutil.Process().threads():
            if t.id == thread.native_id:
                self.cpu = t.user_time + t.system_time


class Timed:
    """Wall and CPU seconds spent inside the LiveView's methods, by the thread that called them: on the loop's
    thread (its events, `write`, the re-render a printed line brings) apart from rich's refresh thread (`render`)."""

    METHODS = ("write", "experiment_started", "process_started", "experiment_recorded", "proposing", "render")

    def __init__(self):
        self.calls: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def install(self):
        from autoresearch.live import LiveView

        for name in self.METHODS:
            setattr(LiveView, name, self._wrap(name, getattr(LiveView, name)))

    def _wrap(self, name, method):
        def timed(view, *args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return method(view, *args, **kwargs)
            finally:
                where = "refresh" if isinstance(threading.current_thread(), RefreshThread) else "loop"
                with self.lock:
                    entry = self.calls.setdefault(f"{where}:{name}", [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] += time.perf_counter() - t0
                    entry[2] += time.thread_time() - c0
        return timed

    def take(self) -> dict:
        with self.lock:
            out, self.calls = self.calls, {}
        return out


class Drain(threading.Thread):
    """Reads a pseudo-terminal's master side, as a terminal would, and counts the bytes."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd, self.bytes = fd, 0

    def run(self):
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)


TIMED = Timed()


def session(root: Path, tag: str, live: bool, experiments: int, budget: float) -> dict:
    from rich.console import Console

    from autoresearch.live import LiveView
    from autoresearch.session import run_session

    probe = drain = view = None
    if live:
        master, slave = pty.openpty()
        drain = Drain(master)
        drain.start()
        terminal = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
        view = LiveView(Console(file=terminal, force_terminal=True, width=120, height=40), root=root)
        probe = RefreshProbe(view)
        echo, observers = view.write, [probe, view]
    else:
        devnull = open(os.devnull, "w")
        echo, observers = (lambda *a: print(*a, file=devnull)), []
    cpu0, t0 = time.process_time(), time.monotonic()
    ledger, _ = run_session(root, tag=tag, agent_name="perturb", budget=budget, max_experiments=experiments,
                            echo=echo, observers=observers)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    ledger.close()
    out = {"variant": "live" if live else "quiet", "tag": tag, "wall_seconds": wall, "cpu_seconds": cpu}
    if live:
        terminal.close()
        drain.join(5)
        os.close(master)
        calls = TIMED.take()
        # the refresh thread's own renders are not on the loop's path; the renders a write brings are in `write`
        inside = {k: v for k, v in calls.items() if k.startswith("loop:") and k != "loop:render"}
        out.update(refresh_thread_cpu_seconds=probe.cpu, terminal_bytes=drain.bytes,
                   view_calls=calls, loop_thread_in_view_seconds=sum(v[1] for v in inside.values()))
    else:
        devnull.close()
    rows = read_rows(root, tag)
    out["experiments"] = sum(r["agent"] != "baseline" for r in rows)
    out["runs"] = sum(len(json.loads(r["values_json"] or "[]")) or (1 if r["wall_seconds"] else 0) for r in rows)
    cycles = [r["ended_at"] - p["ended_at"] - r["wall_seconds"] for p, r in zip(rows, rows[1:])
              if r["agent"] != "baseline" and r["wall_seconds"] is not None and p["ended_at"] is not None]
    out["cycle_outside_training_median"] = statistics.median(cycles) if cycles else None
    return out


def read_rows(root: Path, tag: str) -> list[dict]:
    db = sqlite3.connect(f"file:{root / '.autoresearch' / 'journal.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM experiments WHERE branch = ? ORDER BY id", (f"autoresearch/{tag}",))]
    db.close()
    return rows


def summary(runs: list[dict], variant: str) -> dict:
    mine = [r for r in runs if r["variant"] == variant]
    n = sum(r["experiments"] for r in mine)
    out = {"sessions": len(mine), "experiments": n,
           "wall_per_experiment": sum(r["wall_seconds"] for r in mine) / n,
           "cpu_per_experiment": sum(r["cpu_seconds"] for r in mine) / n,
           "cycle_outside_training_median": statistics.median(r["cycle_outside_training_median"] for r in mine)}
    if variant == "live":
        out["refresh_thread_cpu_per_experiment"] = sum(r["refresh_thread_cpu_seconds"] or 0.0 for r in mine) / n
        out["loop_thread_in_view_per_experiment"] = sum(r["loop_thread_in_view_seconds"] for r in mine) / n
        renders = [r["view_calls"].get("refresh:render", [0, 0.0, 0.0]) for r in mine]
        out["refresh_render_cpu_each"] = sum(c[2] for c in renders) / max(1, sum(c[0] for c in renders))
        out["terminal_bytes_per_experiment"] = sum(r["terminal_bytes"] for r in mine) / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=6, help="quiet/live pairs, alternated (default 6)")
    parser.add_argument("--budget", type=float, default=1.0, help="training seconds per run (default 1)")
    parser.add_argument("--out", default=str(HERE / "results" / "live_view.json"))
    args = parser.parse_args()
    TIMED.install()
    scratch = Path(tempfile.mkdtemp(prefix="bench-live-"))
    try:
        root = scratch / "ws"
        make_workspace(root)
        session(root, "warmup", True, 1, args.budget)  # imports, caches and the first baseline's costs, not counted
        runs, refused = [], []
        for i in range(args.pairs):
            for live in ((False, True) if i % 2 == 0 else (True, False)):  # ABBA: drift falls on both alike
                for attempt in range(3):  # a baseline the harness refuses (e.g. `invalid`: a process left behind
                    tag = f"{'live' if live else 'quiet'}{i}" + (f"-retry{attempt}" if attempt else "")
                    try:  # by a sandboxed run on a busy machine) is that session's loss, not the benchmark's
                        result = session(root, tag, live, args.experiments, args.budget)
                        break
                    except UsageError as exc:
                        refused.append({"tag": tag, "error": str(exc)})
                        print(f"{tag}: {exc}; again", file=sys.stderr)
                else:
                    raise SystemExit("three sessions in a row were refused; see above")
                runs.append(result)
                print(json.dumps(result), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    quiet, live = summary(runs, "quiet"), summary(runs, "live")
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    per_pair = [((b if b["variant"] == "live" else a)["wall_seconds"] - (a if a["variant"] == "quiet" else b)["wall_seconds"])
                / args.experiments for a, b in pairs]
    report = {
        "benchmark": "live_view", "when": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "budget_seconds": args.budget,
        "experiments_per_session": args.experiments, "pairs": args.pairs, "quiet": quiet, "live": live,
        "wall_ratio_live_over_quiet": live["wall_per_experiment"] / quiet["wall_per_experiment"],
        "wall_difference_per_experiment": live["wall_per_experiment"] - quiet["wall_per_experiment"],
        "cpu_difference_per_experiment": live["cpu_per_experiment"] - quiet["cpu_per_experiment"],
        "cycle_difference_median": live["cycle_outside_training_median"] - quiet["cycle_outside_training_median"],
        "wall_difference_per_experiment_by_pair": per_pair,
        "wall_difference_per_experiment_median_of_pairs": statistics.median(per_pair),
        "sessions": runs, "sessions_refused_and_run_again": refused,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "sessions"}, indent=2))


if __name__ == "__main__":
    main()
