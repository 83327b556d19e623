"""Which accelerator the training scripts will find, detected without importing torch."""

from __future__ import annotations

import platform
import shutil
import subprocess


def detect_device() -> str:
    """'cuda' if an NVIDIA driver answers, 'mps' on Apple silicon, else 'cpu'."""
    if shutil.which("nvidia-smi"):
        try:
            if subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0:
                return "cuda"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"
