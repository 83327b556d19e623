"""Device slots for K workers: one GPU each on CUDA (CUDA_VISIBLE_DEVICES), a share of the cores each elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from autoresearch import UsageError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "AUTORESEARCH_THREADS")


@dataclass(frozen=True)
class Slot:
    """Where one worker's runs go: its index (the journal's `worker`), a label, and the environment it adds."""

    index: int = 0
    label: str = "this machine"
    env: dict[str, str] = field(default_factory=dict)


def visible_gpus() -> list[str]:
    """The GPUs a run could see: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.M)]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_slots(workers: int, device: str, gpus: str | None = None) -> list[Slot]:
    """K slots. On CUDA each gets one of `gpus` ("0,1,...", default every visible GPU); with fewer GPUs than
    workers it is a one-line error. Elsewhere the cores are split evenly: each run is told its thread count in
    OMP_NUM_THREADS and AUTORESEARCH_THREADS (the gpt template obeys it). One worker's environment is left as it is."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    if device == "cuda" or gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else visible_gpus()
        if not ids:
            raise UsageError("--gpus names no GPU" if gpus else "no GPU is visible (nvidia-smi -L lists none)")
        if len(ids) < workers:
            raise UsageError(f"--workers {workers} needs {workers} GPUs, one per worker; {len(ids)} given "
                             f"({','.join(ids)}): pass --workers {len(ids)}, or --gpus with more")
        if workers == 1 and not gpus:
            return [Slot(0, f"GPU {ids[0]}" if len(ids) == 1 else "every GPU")]
        return [Slot(i, f"GPU {ids[i]}", {"CUDA_VISIBLE_DEVICES": ids[i]}) for i in range(workers)]
    if workers == 1:
        return [Slot(0)]
    threads = max(1, usable_cores() // workers)
    return [Slot(i, f"{threads} core(s)", {name: str(threads) for name in THREAD_VARIABLES}) for i in range(workers)]
