"""What the locked evaluation costs per experiment, as a share of the experiment's wall time, through the real Runner.

Builds a throw-away `gpt` workspace (`init_workspace(dir, "gpt")`, then `python prepare.py` on the embedded corpus,
with the data cache the environment gives: AUTORESEARCH_CACHE or ~/.cache/autoresearch), wires a `Runner` with
`run_session`'s own `build_runner` (RunSpec from the config, the sandbox, the protected paths), opens one trial as the
loop does for a baseline (`Trials(ws, "bench").reopen(1, head, head)`: a detached worktree of the commit under
.autoresearch/trials/bench/1, its ref, its run folder .autoresearch/runs/1), and for each repetition (seeds 1, 2, ...):

- `runner.train(trial, seed, log)`: the sandboxed training process in the trial's worktree (timed by the harness:
  `run.out.wall_seconds`; its printed `exported model.pt2 in X.Xs` is the export), then the harness's checks, a
  fresh `git archive` copy of the trial's commit and the locked evaluator in it under bubblewrap (load, causality
  probe, fingerprint, val_bpb; its own breakdown is read from `<log stem>-evaluate.log`);
- `runner.score_test(trial, [seed], [run.artifacts])`: the hidden test split, as the loop does for a kept candidate.

The evaluation's cost of one run = export + evaluator wall (the `train()` call minus the training process: checks,
archive, sandbox, process start-up with the torch import, load, probe, val scoring) + test-split scoring (only
for kept candidates). Its share is taken of one run's wall = training process + evaluator wall (+ test wall), both
with the test split scored (worst case: every candidate kept) and without it (a discarded candidate). Target:
under 15%.

The integrity checks (round two) are also timed one by one on the same trial, each the median of 9 repetitions:
the git-data snapshot before and after the run and their comparison, reading the commit's files from the
repository, the walk for planted code, the content digest of the held-out and evaluator data, taking the
artifacts as plain files, the evaluator copy's locked-hash check, the sweeps for processes that outlived the run,
and the redaction of the log tail; plus the evaluator's causality probe (its `probe_seconds`). Their sum is taken
as a share of a discarded run: target at most 5%.

    python benchmarks/bench_evaluation_cost.py                          # 60 s budget, 2 repetitions (about 3 min)
    python benchmarks/bench_evaluation_cost.py --budget 5 --repeats 1 --out /tmp/e.json --log /tmp/e.log   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.artifacts import take_artifacts
from autoresearch.config import load_config
from autoresearch.executors.local import LocalExecutor, group_members, kill_marked
from autoresearch.ledger import STATE_DIR
from autoresearch.process import command_env
from autoresearch.runner import Runner, _code_files
from autoresearch.sandbox import fingerprint
from autoresearch.secrets import redact
from autoresearch.session import build_runner as build_runner_for_session
from autoresearch.session import open_workspace
from autoresearch.summary import parse_summary
from autoresearch.trial import Trial, Trials
from autoresearch.workspace import init_workspace

HERE = Path(__file__).resolve().parent
TARGET_SHARE = 0.15
CHECKS_TARGET_SHARE = 0.05  # the integrity checks, of a discarded 60 s experiment
EXPORT_LINE = re.compile(r"^exported model\.pt2 in ([0-9.]+)s", re.MULTILINE)
THROUGHPUT_LINE = re.compile(r"^throughput ([0-9,]+) tokens/s", re.MULTILINE)  # a contention check: ~24.8k quiet


class TimedExecutor(LocalExecutor):
    """The real LocalExecutor, recording each process's wall time as the harness measured it."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def run(self, workspace, command, env, limit_seconds, log_path, on_start=None, on_tick=None):
        out = super().run(workspace, command, env, limit_seconds, log_path, on_start=on_start, on_tick=on_tick)
        self.calls.append({"log": log_path.name, "wall_seconds": out.wall_seconds, "returncode": out.returncode})
        return out


class TimedRunner(Runner):
    """The real Runner; only times `fresh_evaluator_dir` (git archive of the trial's commit, extracted into a new folder)."""

    archive_seconds: list[float]

    def fresh_evaluator_dir(self, trial: Trial, target: Path) -> Path:
        t0 = time.perf_counter()
        try:
            return super().fresh_evaluator_dir(trial, target)
        finally:
            self.archive_seconds.append(time.perf_counter() - t0)


class Tee:
    """Print to stdout and keep the lines for the log file."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        self.lines.append(line)
        print(line, flush=True)


def build_runner(root: Path, budget: float, echo) -> tuple[TimedRunner, TimedExecutor]:
    """As `run_session` wires it (src/autoresearch/session.py), with the budget given and timing subclasses."""
    config = load_config(root)
    executor = TimedExecutor()
    runner = build_runner_for_session(root, config, budget, "cpu", echo, executor, TimedRunner)
    echo(f"budget {budget:g}s, killed at {runner.spec.limit_seconds:g}s")
    runner.archive_seconds = []
    return runner, executor


def open_trial(root: Path) -> tuple[Trials, Trial]:
    """The workspace's commit as a trial, as the loop opens a baseline's: a worktree, a ref, a run folder."""
    ws = open_workspace(root, load_config(root))
    head = ws.head()
    trials = Trials(ws, "bench")
    return trials, trials.reopen(1, head, head)


def timed(command, cwd: Path, env: dict, n: int) -> float:
    """Median wall seconds of a command run n times."""
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, shell=isinstance(command, str), capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def micro(runner: TimedRunner, trial: Trial, root: Path) -> dict:
    """Context for the start-up figure: bubblewrap around a no-op, Python, Python importing torch."""
    env = command_env()
    out = {"python_seconds": timed([sys.executable, "-c", "pass"], root, env, 5),
           "python_import_torch_seconds": timed([sys.executable, "-c", "import torch"], root, env, 3),
           "sh_true_seconds": timed("true", root, env, 5)}
    if runner.sandbox:
        where = root / STATE_DIR / "micro"
        where.mkdir(parents=True, exist_ok=True)
        out["bwrap_true_seconds"] = timed(runner.sandbox.wrap("true", [("rw", where)]), root, env, 5)
        out["bwrap_overhead_seconds"] = out["bwrap_true_seconds"] - out["sh_true_seconds"]
    t0 = time.perf_counter()
    n = 5
    for _ in range(n):
        runner.fresh_evaluator_dir(trial, root / STATE_DIR / "micro-evaluator")
    runner.archive_seconds.clear()
    out["git_archive_extract_seconds"] = (time.perf_counter() - t0) / n
    return {k: round(v, 4) for k, v in out.items()}


def evaluator_breakdown(log: Path, process_wall: float) -> dict:
    """The evaluator's printed load/probe/score seconds, and the rest of its process (start-up, torch import, exit)."""
    summary = parse_summary(log.read_text(encoding="utf-8", errors="replace"))
    load, probe, score = (float(summary.get(k, 0.0)) for k in ("load_seconds", "probe_seconds", "score_seconds"))
    return {"process_wall_seconds": round(process_wall, 3), "startup_and_exit_seconds": round(process_wall - load - probe - score, 3),
            "load_seconds": load, "probe_seconds": probe, "score_seconds": score,
            "metric": summary.get("val_bpb", summary.get("test_bpb"))}


def one_run(runner: TimedRunner, executor: TimedExecutor, trial: Trial, seed: int, echo) -> tuple[dict, list[Path]]:
    log = trial.run_dir / f"run-seed{seed}.log"
    runner.archive_seconds.clear()
    n_calls = len(executor.calls)
    t0 = time.perf_counter()
    run = runner.train(trial, seed, log)
    train_call = time.perf_counter() - t0
    if run.failure:
        raise SystemExit(f"seed {seed}: the run ended {run.failure} ({run.reason}); see {log}")
    training_wall = run.out.wall_seconds
    calls = executor.calls[n_calls:]
    assert len(calls) == 2, calls  # training, then one evaluator attempt (a retry would be a crash here)
    val_log = log.with_name(log.stem + "-evaluate.log")
    val = evaluator_breakdown(val_log, calls[1]["wall_seconds"])
    val_archive = sum(runner.archive_seconds)
    evaluator_wall = train_call - training_wall
    text = log.read_text(encoding="utf-8", errors="replace")
    found = EXPORT_LINE.search(text)
    if not found:
        raise SystemExit(f"seed {seed}: no 'exported model.pt2 in' line in {log}")
    export = float(found.group(1))
    speed = THROUGHPUT_LINE.search(text)

    runner.archive_seconds.clear()
    n_calls = len(executor.calls)
    t0 = time.perf_counter()
    mean, values, why = runner.score_test(trial, [seed], [run.artifacts])
    test_wall = time.perf_counter() - t0
    if mean is None:
        raise SystemExit(f"seed {seed}: the test split was not scored: {why}")
    test_log = run.artifacts.parent / f"test-seed{seed}.log"
    test = evaluator_breakdown(test_log, executor.calls[n_calls]["wall_seconds"])
    test_archive = sum(runner.archive_seconds)

    cost_discard = export + evaluator_wall
    cost_keep = cost_discard + test_wall
    wall_discard = training_wall + evaluator_wall
    wall_keep = wall_discard + test_wall
    result = {
        "seed": seed,
        "val_bpb": run.metric,
        "test_bpb": mean,
        "training_process_wall_seconds": round(training_wall, 3),
        "training_seconds_printed": run.out.summary.get("training_seconds"),
        "training_tokens_per_second": int(speed.group(1).replace(",", "")) if speed else None,
        "total_seconds_printed": run.out.summary.get("total_seconds"),
        "export_seconds": export,
        "evaluator_wall_seconds": round(evaluator_wall, 3),  # train() call minus the training process
        "evaluator": {
            "harness_checks_seconds": round(evaluator_wall - val_archive - val["process_wall_seconds"], 3),
            "git_archive_extract_seconds": round(val_archive, 3),
            **val,
        },
        "test_wall_seconds": round(test_wall, 3),  # the score_test() call
        "test": {"git_archive_extract_seconds": round(test_archive, 3), **test},
        "evaluation_cost_seconds": {"discarded": round(cost_discard, 3), "kept": round(cost_keep, 3)},
        "run_wall_seconds": {"discarded": round(wall_discard, 3), "kept": round(wall_keep, 3)},
        "share": {"discarded": round(cost_discard / wall_discard, 4), "kept": round(cost_keep / wall_keep, 4)},
    }
    echo(f"seed {seed}: val_bpb {run.metric:.6f} test_bpb {mean:.6f} | training process {training_wall:.1f}s "
         f"(export {export:.1f}s, {speed.group(1) if speed else '?'} tok/s) | evaluator {evaluator_wall:.2f}s (process {val['process_wall_seconds']:.2f}s: start-up "
         f"{val['startup_and_exit_seconds']:.2f} load {val['load_seconds']:.2f} probe {val['probe_seconds']:.2f} "
         f"score {val['score_seconds']:.2f}; archive {val_archive:.3f}s) | test {test_wall:.2f}s | share "
         f"{100 * cost_discard / wall_discard:.1f}% discarded, {100 * cost_keep / wall_keep:.1f}% kept")
    return result, [log, val_log, test_log]


def median_seconds(action, n: int = 9) -> float:
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        action()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def integrity_checks(runner: TimedRunner, trial: Trial, run_artifacts: Path, log: Path, root: Path) -> dict:
    """Each round-two check, timed on the benchmark's own trial, run folder and data (seconds, median of 9)."""
    tree, guard = trial.tree, runner.guard
    before = guard.snapshot([tree.root])
    scratch = root / STATE_DIR / "micro-artifacts"
    evaluator_copy = runner.fresh_evaluator_dir(trial, root / STATE_DIR / "micro-locked")
    runner.archive_seconds.clear()

    def take():
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(run_artifacts, scratch)
        t0 = time.perf_counter()
        take_artifacts(scratch)
        return time.perf_counter() - t0

    takes = sorted(take() for _ in range(9))
    tail = log.read_text(encoding="utf-8", errors="replace")[-8000:]
    checks = {
        "git data snapshot x2 + compare": median_seconds(lambda: guard.changes(before, guard.snapshot([tree.root]))) +
        median_seconds(lambda: guard.snapshot([tree.root])),
        "commit's files from the repository": median_seconds(lambda: runner.committed_files(trial)),
        "walk for planted code": median_seconds(lambda: _code_files(tree.root)),
        "content digest of held-out and evaluator data": median_seconds(lambda: fingerprint(runner.protected.all())),
        "take the artifacts as plain files": takes[len(takes) // 2],
        "evaluator copy's locked-hash check": median_seconds(lambda: tree.at(evaluator_copy).locked_hash()),
        "sweeps for processes that outlived the run": median_seconds(lambda: (group_members(1), kill_marked("AUTORESEARCH_RUN_MARK=none"))),
        "redact the log tail": median_seconds(lambda: redact(tail)),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(evaluator_copy, ignore_errors=True)
    return {name: round(v, 5) for name, v in checks.items()}


def rows(runs: list[dict]) -> dict:
    """Means over the repetitions of the breakdown, in seconds and as a share of the kept-run wall."""
    def mean(get):
        return statistics.mean(get(r) for r in runs)

    parts = {
        "export (in train.py)": mean(lambda r: r["export_seconds"]),
        "harness: checks + git archive": mean(lambda r: r["evaluator"]["harness_checks_seconds"] + r["evaluator"]["git_archive_extract_seconds"]),
        "evaluator start-up (bwrap, python, torch import, exit)": mean(lambda r: r["evaluator"]["startup_and_exit_seconds"]),
        "evaluator load (model.pt2, tokenizer)": mean(lambda r: r["evaluator"]["load_seconds"]),
        "evaluator causality probe": mean(lambda r: r["evaluator"]["probe_seconds"]),
        "evaluator val score (fingerprint + val_bpb)": mean(lambda r: r["evaluator"]["score_seconds"]),
        "test split (whole call)": mean(lambda r: r["test_wall_seconds"]),
    }
    wall_keep = mean(lambda r: r["run_wall_seconds"]["kept"])
    wall_discard = mean(lambda r: r["run_wall_seconds"]["discarded"])
    return {name: {"seconds": round(v, 3), "share_of_kept_run": round(v / wall_keep, 4),
                   "share_of_discarded_run": None if name.startswith("test") else round(v / wall_discard, 4)}
            for name, v in parts.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run (CPU default 60)")
    parser.add_argument("--repeats", type=int, default=2, help="runs, with seeds 1..N")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evaluation_cost.json")
    parser.add_argument("--log", type=Path, default=HERE / "results" / "evaluation_cost.log")
    args = parser.parse_args(argv)
    echo = Tee()
    command = "python benchmarks/bench_evaluation_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    echo(f"$ {command.strip()}")
    started = time.time()
    load_before = os.getloadavg()
    echo(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} ({os.cpu_count()} CPUs)")
    run_logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="bench-evalcost-") as tmp:
        root = init_workspace(Path(tmp) / "ws", "gpt").resolve()
        t0 = time.time()
        done = subprocess.run([sys.executable, "prepare.py"], cwd=root, env=command_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"prepare.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        echo(f"prepare: {time.time() - t0:.1f}s ({done.stdout.strip().splitlines()[0] if done.stdout.strip() else ''})")
        runner, executor = build_runner(root, args.budget, echo)
        trials, trial = open_trial(root)
        echo(f"trial: worktree {trial.tree.root.relative_to(root)} at {trial.commit[:7]}, ref {trial.ref}")
        context = micro(runner, trial, root)
        echo("context: " + ", ".join(f"{k} {v}" for k, v in context.items()))
        runs = []
        for seed in range(1, args.repeats + 1):
            result, logs = one_run(runner, executor, trial, seed, echo)
            runs.append(result)
            run_logs += logs
        checks = integrity_checks(runner, trial, trial.run_dir / f"artifacts-seed{args.repeats}", run_logs[-3], root)
        trials.close(trial.id, keep_models=False)
        logs_text = []
        for path in run_logs:
            logs_text.append(f"\n===== {path.relative_to(root)} =====\n{path.read_text(encoding='utf-8', errors='replace').rstrip()}")

    load_after = os.getloadavg()
    echo(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    share_discard = statistics.mean(r["share"]["discarded"] for r in runs)
    share_keep = statistics.mean(r["share"]["kept"] for r in runs)
    breakdown = rows(runs)
    result = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "python": platform.python_version(),
                    "torch": _torch_version(), "cpus": os.cpu_count(), "git": _git_version()},
        "budget_seconds": args.budget,
        "repeats": args.repeats,
        "sandbox": "bubblewrap" if runner.sandbox else "none",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "context": context,
        "runs": runs,
        "mean": {
            "training_process_wall_seconds": round(statistics.mean(r["training_process_wall_seconds"] for r in runs), 3),
            "evaluator_wall_seconds": round(statistics.mean(r["evaluator_wall_seconds"] for r in runs), 3),
            "test_wall_seconds": round(statistics.mean(r["test_wall_seconds"] for r in runs), 3),
            "evaluation_cost_seconds": {k: round(statistics.mean(r["evaluation_cost_seconds"][k] for r in runs), 3)
                                        for k in ("discarded", "kept")},
            "run_wall_seconds": {k: round(statistics.mean(r["run_wall_seconds"][k] for r in runs), 3)
                                 for k in ("discarded", "kept")},
            "share": {"discarded": round(share_discard, 4), "kept": round(share_keep, 4)},
        },
        "breakdown": breakdown,
        "integrity_checks_seconds": checks,
        "integrity_checks": _checks_summary(checks, runs),
        "target_share": TARGET_SHARE,
        "target_met": {"discarded": share_discard < TARGET_SHARE, "kept": share_keep < TARGET_SHARE},
        "total_wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    m = result["mean"]
    echo("")
    echo(f"mean over {len(runs)} run(s), budget {args.budget:g}s:")
    echo(f"  {'part':<58} {'seconds':>8} {'% kept':>7} {'% disc.':>8}")
    for name, row in breakdown.items():
        disc = "-" if row["share_of_discarded_run"] is None else f"{100 * row['share_of_discarded_run']:.1f}"
        echo(f"  {name:<58} {row['seconds']:>8.2f} {100 * row['share_of_kept_run']:>7.1f} {disc:>8}")
    echo(f"  run wall: {m['run_wall_seconds']['discarded']:.1f}s discarded (training process {m['training_process_wall_seconds']:.1f}s "
         f"+ evaluator {m['evaluator_wall_seconds']:.1f}s), {m['run_wall_seconds']['kept']:.1f}s kept (+ test {m['test_wall_seconds']:.1f}s)")
    echo(f"  evaluation share: {100 * share_discard:.1f}% discarded, {100 * share_keep:.1f}% kept; "
         f"target < {100 * TARGET_SHARE:.0f}%: {result['target_met']}")
    c = result["integrity_checks"]
    echo("  integrity checks (round two), per run:")
    for name, seconds in checks.items():
        echo(f"    {name:<56} {1000 * seconds:>8.2f} ms")
    echo(f"    {'causality probe (evaluator probe_seconds)':<56} {1000 * c['probe_seconds']:>8.2f} ms")
    echo(f"  integrity checks: {c['seconds']:.3f}s, {100 * c['share_of_discarded_run']:.2f}% of a discarded run; "
         f"target <= {100 * CHECKS_TARGET_SHARE:.0f}%: {c['target_met']}")
    echo(f"results: {args.out} ({result['total_wall_seconds']:.0f}s)")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("\n".join(echo.lines) + "\n" + "\n".join(logs_text) + "\n")
    return 0


def _checks_summary(checks: dict, runs: list[dict]) -> dict:
    """The integrity checks' total per run (the harness's checks plus the evaluator's probe), as a share of a
    discarded run."""
    probe = statistics.mean(r["evaluator"]["probe_seconds"] for r in runs)
    total = sum(checks.values()) + probe
    share = total / statistics.mean(r["run_wall_seconds"]["discarded"] for r in runs)
    return {"probe_seconds": round(probe, 4), "seconds": round(total, 4), "share_of_discarded_run": round(share, 5),
            "target_share": CHECKS_TARGET_SHARE, "target_met": share <= CHECKS_TARGET_SHARE}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _torch_version() -> str:
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return done.stdout.strip()


def _git_version() -> str:
    return subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
