"""Create research workspaces from templates and run git in them."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from autoresearch import UsageError

TEMPLATE_RENAMES = {"gitignore": ".gitignore"}  # dotfiles are shipped without the dot
DATASETS = ("kjv", "climbmix", "tinystories")


def available_templates() -> list[str]:
    root = resources.files("autoresearch") / "templates"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def git(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run git in the workspace; a failure is a UsageError carrying git's own message."""
    result = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UsageError(f"git {args[0]} failed in {workspace}: {message[-1] if message else result.returncode}")
    return result


def _identity_args(workspace: Path) -> list[str]:
    """Commit as the user if git knows them, else as autoresearch (a fresh machine may have no identity)."""
    if git(workspace, "config", "user.email", check=False).stdout.strip():
        return []
    return ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]


def init_workspace(directory: Path, template: str = "gpt", dataset: str | None = None) -> Path:
    """Copy a template into a new or empty folder, make it a git repo, and commit it once."""
    directory = Path(directory)
    templates = available_templates()
    if template not in templates:
        raise UsageError(f"unknown template '{template}' (available: {', '.join(templates)})")
    if dataset is not None and dataset not in DATASETS:
        raise UsageError(f"unknown dataset '{dataset}' (available: {', '.join(DATASETS)})")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory} is not empty; give a new or empty folder")
    if shutil.which("git") is None:
        raise UsageError("git is not installed or not on PATH; install git and try again")

    directory.mkdir(parents=True, exist_ok=True)
    source = resources.files("autoresearch") / "templates" / template
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith((".pyc", ".pyo")):
            (directory / TEMPLATE_RENAMES.get(item.name, item.name)).write_bytes(item.read_bytes())
    if dataset is not None:
        prepare = directory / "prepare.py"
        text = prepare.read_text(encoding="utf-8")
        prepare.write_text(text.replace('DATASET = "kjv"', f'DATASET = "{dataset}"', 1), encoding="utf-8")

    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", "-A")
    git(directory, *_identity_args(directory), "commit", "-q", "-m", f"autoresearch: new workspace from template '{template}'")
    return directory
