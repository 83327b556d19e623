"""Run the gpt template's train.py and a byte-level nanoGPT baseline (with a learning-rate sweep) at the same budget, side by side."""

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "src" / "autoresearch" / "templates" / "gpt"
BASELINE = HERE / "nanogpt_baseline.py"
DATASET = "kjv"


def run_logged(name: str, cmd: list[str], cwd: Path, env: dict, log: Path, limit: float) -> dict:
    """Run cmd with its output in log, killed after limit seconds; the status, wall time and output."""
    print(f"[{name}] {' '.join(cmd)}  (log: {log}, limit {limit:.0f}s)", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"killed after {limit:.0f}s"
    wall = time.time() - t0
    print(f"[{name}] {status} in {wall:.1f}s", flush=True)
    return {"name": name, "status": status, "wall_seconds": round(wall, 1), "log": str(log), "output": log.read_text()}


def search(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1).replace(",", "")) if match else None


def parse_reference(text: str) -> dict:
    return {
        "val_bpb": search(r"^val_bpb:\s*(\S+)", text),
        "tokens_per_second": search(r"^throughput ([\d,]+) tokens/s", text),
        "startup_seconds": search(r"^first step after ([\d.]+)s from start", text),
        "num_steps": search(r"^num_steps:\s*(\S+)", text),
    }


def parse_baseline(text: str) -> dict:
    return {key: search(rf"^{key}:\s*(\S+)", text) for key in ("val_bpb", "tokens_per_second", "startup_seconds", "num_steps", "bf16_autocast")}


def finish(run: dict, metrics: dict) -> dict:
    """The run's record: its metrics, and for a failed run the tail of its output."""
    output = run.pop("output")
    if run["status"] != "ok" or metrics["val_bpb"] is None:
        run["output_tail"] = output[-2000:]
        print(f"[{run['name']}] no result; last lines of output:\n{output[-2000:]}", file=sys.stderr)
    return {**run, **metrics}


def bytes_per_token(cache: Path) -> float:
    """UTF-8 bytes per BPE token of the reference tokenizer, measured on the val split (to compare text throughput)."""
    tokenizer = next((cache / DATASET).glob("tokenizer-*/tokenizer.pkl"))
    with open(tokenizer, "rb") as f:
        enc = pickle.load(f)
    texts = [t for p in sorted((cache / DATASET / "val").glob("*.parquet")) for t in pq.read_table(p).column("text").to_pylist()]
    return sum(len(t.encode("utf-8")) for t in texts) / sum(len(ids) for ids in enc.encode_ordinary_batch(texts))


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(reference: dict, best: dict | None, sweep: list[dict], bpt: float) -> None:
    print(f"\n{'run':<28} {'val_bpb':>9} {'tokens/s':>10} {'bytes/s':>10} {'startup_s':>10} {'wall_s':>8}  status")
    rows = [("reference (train.py)", reference, bpt)]
    if best is not None:
        rows.append((f"baseline best (lr {best['lr']:g})", best, 1.0))
    rows += [(f"  baseline lr {run['lr']:g}", run, 1.0) for run in sweep]
    for label, run, scale in rows:
        tps = run["tokens_per_second"]
        print(f"{label:<28} {fmt(run['val_bpb'], '.4f'):>9} {fmt(tps, ',.0f'):>10} {fmt(tps and tps * scale, ',.0f'):>10} "
              f"{fmt(run['startup_seconds'], '.1f'):>10} {run['wall_seconds']:>8.1f}  {run['status']}")
    print(f"(reference tokens are BPE tokens of {bpt:.2f} bytes on average on val; baseline tokens are bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds for every run")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="comma-separated peak learning rates for the baseline")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache", type=Path, help="AUTORESEARCH_CACHE to prepare into and read (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpt_vs_baseline.json", help="JSON results; run logs go beside it")
    args = parser.parse_args()
    lrs = [float(lr) for lr in args.lrs.split(",")]
    limit = args.budget * 3 + 120
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_stem = args.out.with_suffix("")

    with tempfile.TemporaryDirectory(prefix="bench_gpt_") as tmp:
        workspace = Path(tmp)
        for name in ("prepare.py", "train.py"):
            shutil.copy(TEMPLATE / name, workspace / name)
        cache = (args.cache or workspace / "cache").resolve()
        env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_TIME_BUDGET": str(args.budget), "AUTORESEARCH_SEED": str(args.seed)}

        prep = run_logged("prepare", [sys.executable, "prepare.py"], workspace, env, Path(f"{log_stem}.prepare.log"), limit)
        if prep["status"] != "ok":
            print(prep["output"][-2000:], file=sys.stderr)
            return 1
        bpt = bytes_per_token(cache)

        run = run_logged("reference", [sys.executable, "train.py"], workspace, env, Path(f"{log_stem}.reference.log"), limit)
        reference = finish(run, parse_reference(run["output"]))
        sweep = []
        for lr in lrs:
            cmd = [sys.executable, str(BASELINE), "--lr", str(lr), "--budget", str(args.budget), "--cache", str(cache), "--seed", str(args.seed)]
            run = run_logged(f"baseline lr {lr:g}", cmd, workspace, env, Path(f"{log_stem}.baseline_lr{lr:g}.log"), limit)
            sweep.append({"lr": lr, **finish(run, parse_baseline(run["output"]))})

    scored = [run for run in sweep if run["val_bpb"] is not None]
    best = min(scored, key=lambda run: run["val_bpb"]) if scored else None
    print_table(reference, best, sweep, bpt)
    ratio = lower = None
    if best is not None and reference["val_bpb"] is not None:
        ratio = reference["val_bpb"] / best["val_bpb"]
        lower = 100 * (1 - ratio)
        print(f"val_bpb reference / best baseline: {ratio:.3f}  (reference is {lower:.1f}% lower)")
    if best is not None:
        print(f"precision: bf16 autocast {'on' if best['bf16_autocast'] else 'off'} in both (train.py's rule: CPU with avx512_bf16 or amx_bf16)")

    results = {
        "budget_seconds": args.budget,
        "seed": args.seed,
        "timeout_seconds": limit,
        "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "reference_bytes_per_token": bpt,
        "reference": reference,
        "baseline_best": best,
        "baseline_sweep": sweep,
        "val_bpb_ratio_reference_over_baseline": ratio,
        "reference_lower_percent": lower,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0 if ratio is not None else 1


if __name__ == "__main__":
    sys.exit(main())
