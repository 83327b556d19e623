"""What the harness keeps under .autoresearch/, by kind, and pruning the models no later step needs."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoresearch.ledger import STATE_DIR

KINDS = {  # folder or file under .autoresearch/ -> what it is
    "journal.sqlite": "journal", "journal.sqlite-wal": "journal", "runs": "run logs and kept models",
    "trials": "trial worktrees (only while a trial runs)", "sandbox-tmp": "the sandbox's TMPDIR (compile caches)",
    "prompts": "command agent prompts and logs", "tune": "tune agent studies", "tags": "per-tag results.tsv",
    "mlflow": "the local MLflow store (--mlflow)",
}


def size_of(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else 0


def usage(root: Path) -> list[tuple[str, int]]:
    """(what, bytes) for each kind of thing under .autoresearch/, largest first; models counted apart from logs."""
    state = Path(root) / STATE_DIR
    sizes: dict[str, int] = {}
    for item in state.iterdir() if state.is_dir() else []:
        kind = KINDS.get(item.name, "other")
        sizes[kind] = sizes.get(kind, 0) + size_of(item)
    models = sum(size_of(p) for p in (state / "runs").glob("*/artifacts-seed*"))
    if models:
        sizes["run logs and kept models"] -= models
        sizes["kept models (for re-scoring)"] = models
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def prunable(root: Path, rows, keep_ids: set[int]) -> list[Path]:
    """The model folders of kept rows that are not in `keep_ids` (each tag's best) and are not waiting for their
    hidden test score. Discarded and failed rows keep no models already."""
    runs = Path(root) / STATE_DIR / "runs"
    done = {r.id for r in rows if r.status == "keep" and r.id not in keep_ids and r.test_state != "pending"}
    return sorted(p for i in done for p in (runs / str(i)).glob("artifacts-seed*"))


def prune(paths: list[Path]) -> int:
    freed = 0
    for path in paths:
        freed += size_of(path)
        shutil.rmtree(path, ignore_errors=True)
    return freed


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
