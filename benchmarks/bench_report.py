"""The time `autoresearch report` takes on a journal of 1,000 experiments.

Builds a throw-away workspace (the numpy task of tests/tasks.py: a git repo with autoresearch.toml, metric `score`, maximized) and writes
1,000 rows into its journal through the real Ledger API (`start`, `set_commit`, `bill`, `finish`, `set_test`),
with tests/report_journal.py's `night()`: a baseline, 100 keeps improving one after another, discards around the
best (some far off), about 5% crashes, 2% timeouts, 1% invalid runs, one row still running, 4 workers and the
tree strategy (so the search tree is drawn as well), a diff, tokens and dollars on every row.

Then it times, `--repeats` times each:
- (a) the command end to end: `python -m autoresearch report --tag bench` in a fresh process (interpreter start,
  imports of matplotlib and pygments, the journal read, the three files written), wall time as the parent sees it;
- (b) `write_report()` in this process once its imports are warm, split into reading the journal and building the
  numbers, progress.png, report.md and report.html.

Target: (a) under 5 s.

    python benchmarks/bench_report.py                       # 1,000 experiments, JSON in benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the journal builder and the task the report tests use

from report_journal import night, write  # noqa: E402
from tasks import make_task  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--kept", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "report.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_task(Path(tmp) / "ws")
        t = time.perf_counter()
        specs = night(args.experiments, args.kept, maximize=True, workers=4, strategy="tree", running=1)
        ledger = write(root, specs, maximize=True, metric="score", tag="bench")  # the task's metric: score, maximized
        built = time.perf_counter() - t
        ledger.close()
        print(f"journal: {args.experiments} rows written in {built:.1f}s")

        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        cli = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "autoresearch", "report", "--workspace", str(root), "--tag", "bench"],
                                    env=env, capture_output=True, text=True)
            cli.append(time.perf_counter() - t)
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
        print(f"(a) autoresearch report, fresh process: median {statistics.median(cli):.2f}s "
              f"(runs: {', '.join(f'{s:.2f}' for s in cli)})")

        from autoresearch.ledger import Ledger
        from autoresearch.report import build_report, threshold_of
        from autoresearch.report.html import render_html
        from autoresearch.report.markdown import render_markdown
        from autoresearch.report.plot import plot_progress

        parts = {"journal and numbers": [], "progress.png": [], "report.md": [], "report.html": []}
        out = Path(tmp) / "out"
        out.mkdir()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ledger = Ledger(root, "autoresearch/bench", "score", True)
            rows = ledger.rows()
            report = build_report(rows, True, "score", ledger.branch, ledger.best(), ledger.noise_sigma(),
                                  threshold_of(root), ledger.segment)
            t1 = time.perf_counter()
            plot_progress(rows, True, "score", out / "progress.png", ledger.noise_sigma())
            t2 = time.perf_counter()
            (out / "report.md").write_text(render_markdown(report))
            t3 = time.perf_counter()
            (out / "report.html").write_text(render_html(report, (out / "progress.png").read_bytes()))
            t4 = time.perf_counter()
            ledger.close()
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(seconds)
        warm = {name: statistics.median(v) for name, v in parts.items()}
        print("(b) write_report, warm: " + ", ".join(f"{name} {s:.2f}s" for name, s in warm.items())
              + f"; total {sum(warm.values()):.2f}s")
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}
        print("files: " + ", ".join(f"{name} {size / 1024:.0f} kB" for name, size in sorted(sizes.items())))

    record = {"experiments": args.experiments, "kept": args.kept, "workers": 4, "strategy": "tree",
              "cli_seconds": cli, "cli_median_seconds": statistics.median(cli), "warm_median_seconds": warm,
              "file_bytes": sizes, "target_seconds": 5.0, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "load_average_before_after": [load_before, os.getloadavg()[0]]}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if statistics.median(cli) < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
