"""Create research workspaces from templates and run git in them."""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path, PurePosixPath

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


def _matches(path: str, patterns: list[str]) -> bool:
    return any(PurePosixPath(path).match(p) or fnmatch.fnmatch(path, p) for p in patterns)


class Workspace:
    """A workspace's git repository: branch, commit, reset, and the editable/locked file checks."""

    def __init__(self, root: Path, editable: list[str], locked: list[str]):
        self.root = Path(root).resolve()
        self.editable = editable
        self.locked = locked

    def git(self, *args: str, check: bool = True) -> str:
        return git(self.root, *args, check=check).stdout

    def stray_code(self) -> set[str]:
        """Untracked files (ignored ones too) that Python could import: modules, .pth files, extensions."""
        names = self.git("ls-files", "--others", "-z").split("\0")
        return {n for n in names if n.endswith((".py", ".pth", ".so")) and not n.startswith(".autoresearch/")}

    def git_bytes(self, *args: str) -> bytes:
        """Binary output of a git command (e.g. `git archive`); a failure is a UsageError."""
        result = subprocess.run(["git", *args], cwd=self.root, capture_output=True)
        if result.returncode != 0:
            raise UsageError(f"git {args[0]} failed in {self.root}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        return self.git("rev-parse", "--abbrev-ref", "HEAD").strip()

    def dirty_paths(self) -> list[str]:
        """Tracked changes and untracked files that are not ignored."""
        return [line[3:] for line in self.git("status", "--porcelain").splitlines()]

    def ensure_clean(self) -> None:
        dirty = self.dirty_paths()
        if dirty:
            shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
            raise UsageError(f"the working tree has uncommitted changes ({shown}); commit or stash them first, autoresearch will not touch them")

    def checkout_branch(self, tag: str) -> bool:
        """Check out autoresearch/<tag>, creating it at HEAD if new. Returns True if it already existed."""
        name = f"autoresearch/{tag}"
        if self.git("check-ref-format", "--branch", name, check=False) == "":
            raise UsageError(f"'{tag}' cannot be part of a git branch name")
        exists = git(self.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0
        if exists:
            self.git("checkout", "-q", name)
        else:
            self.git("checkout", "-q", "-b", name)
        return exists

    def read_editable(self) -> dict[str, str]:
        """The editable files' current text, by path relative to the root."""
        files = {}
        for pattern in self.editable:
            for path in sorted(self.root.glob(pattern)):
                if path.is_file():
                    files[path.relative_to(self.root).as_posix()] = path.read_text(encoding="utf-8")
        return files

    def read_locked(self) -> dict[str, str]:
        return {name: (self.root / name).read_text(encoding="utf-8", errors="replace") for name in self.locked if (self.root / name).is_file()}

    def is_editable(self, relpath: str) -> bool:
        return _matches(relpath, self.editable) and not _matches(relpath, self.locked)

    def write_files(self, files: dict[str, str]) -> None:
        """Write a proposal's files; any path that is not editable (or leaves the root) is a ValueError."""
        for relpath in files:
            target = (self.root / relpath).resolve()
            if not target.is_relative_to(self.root) or not self.is_editable(target.relative_to(self.root).as_posix()):
                raise ValueError(f"{relpath} is not an editable file (editable: {', '.join(self.editable)})")
        for relpath, text in files.items():
            (self.root / relpath).write_text(text, encoding="utf-8")

    def changed_paths(self) -> list[str]:
        """Paths changed in the working tree against HEAD, untracked files included."""
        return [line[3:] for line in self.git("status", "--porcelain", "--untracked-files=all").splitlines()]

    def content_hash(self, patterns: list[str]) -> str:
        digest = hashlib.sha256()
        for pattern in patterns:
            for path in sorted(self.root.glob(pattern)):
                if path.is_file():
                    digest.update(path.relative_to(self.root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def editable_hash(self) -> str:
        return self.content_hash(self.editable)

    def locked_hash(self) -> str:
        return self.content_hash(self.locked)

    def modified_locked(self) -> list[str]:
        """Locked files whose content differs from HEAD (or that were deleted)."""
        return [p for p in self.git("diff", "--name-only", "HEAD", "--", *self.locked).splitlines() if p]

    def commit_editable(self, message: str) -> str:
        """Commit the editable files only: files a run leaves behind never ride along in a candidate."""
        self.git("add", "-A", "--", *self.editable)
        self.git(*_identity_args(self.root), "commit", "-q", "--no-verify", "-m", message)
        return self.head()

    def reset_hard(self, commit: str) -> None:
        """Move the branch to `commit` and make the tracked files match it (untracked ignored files stay)."""
        self.git("reset", "-q", "--hard", commit)
        self.git("clean", "-q", "-f", "--", *self.editable)  # new untracked files matching editable globs

    def diff(self, old: str, new: str) -> str:
        return self.git("diff", old, new)
