"""The tune agent (Optuna TPE) against random search over the same space, on the gpt template, through the real loop.

Both arms are `TuneAgent` objects that differ only in the sampler (TPE or Optuna's RandomSampler): same space,
same seed, same choice of which constants each proposal changes while the sampler has no model. Each arm runs
in its own fresh workspace (`init_workspace(dir, "gpt")`, `python prepare.py` with a shared AUTORESEARCH_CACHE),
via `run_session` with the given budget and number of experiments. The baseline's noise is measured first:
the unchanged train.py run `--noise-runs` times with different AUTORESEARCH_SEED values.

    python benchmarks/bench_tune_vs_random.py                          # 20 s budget, 12 experiments per arm
    python benchmarks/bench_tune_vs_random.py --budget 2 --experiments 2 --noise-runs 2 --out /tmp/t.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.agents.tune import TuneAgent
from autoresearch.config import AgentSettings, TuneSpace
from autoresearch.session import run_session
from autoresearch.workspace import init_workspace

HERE = Path(__file__).resolve().parent
# Knobs of speed or of the measurement, not of the model: searching them wastes experiments, and
# WARMUP_STEPS_EXCLUDED would buy training time the budget does not count. Fixed in both arms.
NOT_SEARCHED = ["COMPILE", "CPU_BF16", "EVAL_BATCH_SIZE", "WARMUP_STEPS_EXCLUDED", "DEVICE_BATCH_SIZE"]
ARMS = {"tune": "tpe", "random": "random"}


def prepare(ws: Path, env: dict) -> None:
    t0 = time.time()
    out = subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"prepare.py failed in {ws}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    print(f"[prepare] {ws.name}: {time.time() - t0:.1f}s", flush=True)


def val_bpb(text: str) -> float | None:
    """val_bpb from the summary block (the lines after the last `---`)."""
    summary = text.rsplit("\n---\n", 1)[-1] if "\n---\n" in text else ""
    match = re.search(r"^val_bpb:\s*(\S+)", summary, re.MULTILINE)
    return float(match.group(1)) if match else None


def baseline_noise(ws: Path, env: dict, budget: float, seeds: list[int]) -> list[dict]:
    runs = []
    for seed in seeds:
        t0 = time.time()
        out = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True,
                             env={**env, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}", "AUTORESEARCH_SEED": str(seed)})
        runs.append({"seed": seed, "val_bpb": val_bpb(out.stdout), "exit_code": out.returncode,
                     "wall_seconds": round(time.time() - t0, 1)})
        print(f"[noise] seed {seed}: val_bpb {runs[-1]['val_bpb']} in {runs[-1]['wall_seconds']}s", flush=True)
        if runs[-1]["val_bpb"] is None:
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
    return runs


def journal(ws: Path) -> list[dict]:
    db = sqlite3.connect(ws / ".autoresearch" / "journal.sqlite")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute(
        "SELECT id, description, status, reason, metric, wall_seconds FROM experiments ORDER BY id")]
    db.close()
    return rows


def run_arm(name: str, sampler: str, root: Path, env: dict, args) -> dict:
    ws = init_workspace(root / name, "gpt")
    prepare(ws, {**os.environ, **env})
    settings = AgentSettings(name="tune", tune={n: TuneSpace(fixed=True) for n in NOT_SEARCHED})
    agent = TuneAgent(settings, seed=args.seed, sampler=sampler)
    t0 = time.time()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the loop's runs inherit the shared cache
    try:
        run_session(ws, tag="bench", agent=agent, budget=args.budget, seed=42, max_experiments=args.experiments,
                    echo=lambda *a: print(f"[{name}]", *a, flush=True))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    rows = journal(ws)
    baseline, experiments = rows[0], rows[1:]
    measured = [r["metric"] for r in experiments if r["metric"] is not None]
    return {
        "sampler": sampler,
        "wall_seconds": round(time.time() - t0, 1),
        "baseline_val_bpb": baseline["metric"],
        "best_val_bpb": min(measured) if measured else None,  # the best experiment (the baseline left out)
        "kept": sum(r["status"] == "keep" for r in experiments),
        "crashed": sum(r["status"] in ("crash", "timeout") for r in experiments),
        "experiments": [{"n": i + 1, "description": r["description"], "status": r["status"], "val_bpb": r["metric"],
                         "wall_seconds": r["wall_seconds"], "reason": r["reason"]} for i, r in enumerate(experiments)],
        "optuna_trials": len(agent.study.trials) if agent.study else 0,
    }


def fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds per experiment")
    parser.add_argument("--experiments", type=int, default=12, help="experiments per arm (the baseline not counted)")
    parser.add_argument("--noise-runs", type=int, default=3, help="runs of the unchanged baseline, seeds 1..N")
    parser.add_argument("--seed", type=int, default=0, help="the agents' seed (both arms)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tune_vs_random.json")
    args = parser.parse_args(argv)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "AUTORESEARCH_CACHE": str(root / "cache")}
        noise_ws = init_workspace(root / "noise", "gpt")
        prepare(noise_ws, env)
        noise = baseline_noise(noise_ws, env, args.budget, list(range(1, args.noise_runs + 1)))
        arms = {name: run_arm(name, sampler, root, {"AUTORESEARCH_CACHE": env["AUTORESEARCH_CACHE"]}, args)
                for name, sampler in ARMS.items()}

    samples = [r["val_bpb"] for r in noise if r["val_bpb"] is not None]
    mean = statistics.mean(samples) if samples else None
    sigma = statistics.stdev(samples) if len(samples) > 1 else None
    threshold = mean - 2 * sigma if sigma is not None else None
    tune, rnd = arms["tune"]["best_val_bpb"], arms["random"]["best_val_bpb"]
    beats = {name: (a["best_val_bpb"] is not None and threshold is not None and a["best_val_bpb"] < threshold)
             for name, a in arms.items()}
    result = {
        "command": "python benchmarks/bench_tune_vs_random.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "budget_seconds": args.budget,
        "experiments_per_arm": args.experiments,
        "agent_seed": args.seed,
        "run_seed": 42,
        "not_searched": NOT_SEARCHED,
        "baseline_noise": {"runs": noise, "mean": mean, "sigma": sigma, "two_sigma_threshold": threshold},
        "arms": arms,
        "ratio_tune_best_over_random_best": tune / rnd if tune is not None and rnd else None,
        "tune_at_least_as_good_as_random": tune is not None and rnd is not None and tune <= rnd,
        "beats_baseline_by_2_sigma": beats,
        "target_met": bool(tune is not None and rnd is not None and tune <= rnd and all(beats.values())),
        "total_wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nbaseline over {len(samples)} seeds: {fmt(mean)} ± {fmt(sigma)} (2σ threshold {fmt(threshold)})")
    print(f"{'n':>3}  {'tune':<52} {'val_bpb':>8}  {'random':<52} {'val_bpb':>8}")
    for a, b in zip(arms["tune"]["experiments"], arms["random"]["experiments"]):
        print(f"{a['n']:>3}  {a['description'][:44]:<44} {a['status']:<7} {fmt(a['val_bpb']):>8}  "
              f"{b['description'][:44]:<44} {b['status']:<7} {fmt(b['val_bpb']):>8}")
    for name, a in arms.items():
        print(f"{name}: best {fmt(a['best_val_bpb'])} (baseline in its session {fmt(a['baseline_val_bpb'])}), "
              f"{a['kept']} kept, {a['crashed']} crashed; beats baseline by >2σ: {beats[name]}")
    print(f"ratio tune/random: {fmt(result['ratio_tune_best_over_random_best'])}; target met: {result['target_met']}")
    print(f"results: {args.out}  ({result['total_wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
