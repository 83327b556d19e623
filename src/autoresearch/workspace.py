"""Create research workspaces from templates and run git in them."""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path, PurePosixPath

from autoresearch import UsageError
from autoresearch.gitguard import note_ref

TEMPLATE_RENAMES = {"gitignore": ".gitignore"}  # dotfiles are shipped without the dot
DATASETS = ("kjv", "climbmix", "tinystories")


def available_templates() -> list[str]:
    root = resources.files("autoresearch") / "templates"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


# The harness's own git commands run no code the repository supplies: no hooks, no fsmonitor, no replace objects,
# no signing program, no attributes file of the user's; diffs use no external or textconv driver; and no automatic
# gc, which could pack the refs (git data the guard watches) while another worker's run is under way.
SAFE_GIT = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false",
            "-c", "core.attributesFile=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "--no-replace-objects"]


def git(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run git in the workspace; a failure is a UsageError carrying git's own message."""
    result = subprocess.run(["git", *SAFE_GIT, *args], cwd=workspace, capture_output=True, text=True)
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UsageError(f"git {args[0]} failed in {workspace}: {message[-1] if message else result.returncode}")
    return result


AUTORESEARCH_IDENTITY = ("autoresearch", "autoresearch@localhost")


def identity_of(workspace: Path) -> tuple[str, str]:
    """Who commits: the user, if git knows both their name and email, else autoresearch (a fresh machine may
    have no identity)."""
    name = git(workspace, "config", "user.name", check=False).stdout.strip()
    email = git(workspace, "config", "user.email", check=False).stdout.strip()
    return (name, email) if name and email else AUTORESEARCH_IDENTITY


def _identity_args(workspace: Path, identity: tuple[str, str] | None = None) -> list[str]:
    """`-c` options that make a commit's author and committer `identity` (default: the workspace's now)."""
    name, email = identity or identity_of(workspace)
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


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


def hash_files(files: dict[str, bytes], patterns: list[str]) -> str:
    """sha256 over the files matching each pattern in turn (sorted paths): a candidate's identity."""
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(p for p in files if _matches(p, [pattern])):
            digest.update(path.encode() + b"\0" + files[path] + b"\0")
    return digest.hexdigest()


class Workspace:
    """A workspace's git repository: commits, trees, refs and worktrees, and the editable/locked file checks.

    The loop never changes the user's checkout: candidates are written and run in worktrees (see trial.py),
    and the branch moves by compare-and-swap (`move_ref`)."""

    def __init__(self, root: Path, editable: list[str], locked: list[str]):
        self.root = Path(root).resolve()
        self.editable = editable
        self.locked = locked
        self._identity: tuple[str, str] | None = None

    @property
    def identity(self) -> tuple[str, str]:
        """Who the harness's commits are by: read once, when first asked (the session asks before any agent
        runs), so an identity a coding CLI writes into the repository's config later is never used."""
        if self._identity is None:
            self._identity = identity_of(self.root)
        return self._identity

    def at(self, folder: Path) -> "Workspace":
        """The same checks in another checkout of this repository (a trial's worktree), committing as this one."""
        tree = Workspace(folder, self.editable, self.locked)
        tree._identity = self._identity  # as read so far: no git runs here (a run's worktree is never asked)
        return tree

    def git(self, *args: str, check: bool = True) -> str:
        return git(self.root, *args, check=check).stdout

    def git_bytes(self, *args: str) -> bytes:
        """Binary output of a git command (e.g. `git archive`); a failure is a UsageError."""
        result = subprocess.run(["git", *SAFE_GIT, *args], cwd=self.root, capture_output=True)
        if result.returncode != 0:
            raise UsageError(f"git {args[0]} failed in {self.root}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    # -- commits, refs and the user's checkout ------------------------------------------------------------------

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        return self.git("rev-parse", "--abbrev-ref", "HEAD").strip()

    def resolve(self, ref: str) -> str | None:
        """The commit a ref names, or None if it does not exist."""
        out = git(self.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return out.stdout.strip() or None

    def move_ref(self, ref: str, new: str, old: str | None) -> bool:
        """Compare-and-swap: point `ref` at `new` only if it still points at `old` (None: only if it does not exist)."""
        expected = old or "0" * 40
        moved = git(self.root, "update-ref", "-m", "autoresearch", ref, new, expected, check=False).returncode == 0
        if moved:
            note_ref(self.root, ref, new)  # the harness's own move: not a run's doing, for a run under way meanwhile
        return moved

    def dirty_paths(self) -> list[str]:
        """Tracked changes and untracked files that are not ignored, in the user's checkout; the harness's own
        (.autoresearch/, and an untracked results.tsv) are not the user's changes."""
        lines = self.git("status", "--porcelain").splitlines()
        return [line[3:] for line in lines
                if not (line[3:].startswith(".autoresearch/") or line[3:] == ".autoresearch" or line == "?? results.tsv")]

    def checked_out_branch(self) -> str | None:
        """The branch the user's checkout is on (refs/heads/...), or None when detached."""
        out = git(self.root, "symbolic-ref", "-q", "HEAD", check=False).stdout.strip()
        return out or None

    def fast_forward_checkout(self, old: str, new: str) -> None:
        """The user's clean checkout of a branch that just moved from `old` to `new`: bring its files along.
        `read-tree -m -u` refuses to overwrite anything (an untracked file in the way stays, and this fails)."""
        self.git("read-tree", "-m", "-u", old, new)

    # -- trees of commits --------------------------------------------------------------------------------------

    def names_at(self, commit: str) -> list[str]:
        """The paths of every file committed at `commit`, in git's order."""
        return [n for n in self.git("ls-tree", "-r", "-z", "--name-only", commit).split("\0") if n]

    def tree_files(self, commit: str, patterns: list[str]) -> dict[str, bytes]:
        """The committed content of the files matching `patterns` at `commit`."""
        names = [n for n in self.names_at(commit) if _matches(n, patterns)]
        return {name: self.git_bytes("cat-file", "blob", f"{commit}:{name}") for name in names}

    def read_editable_at(self, commit: str) -> dict[str, str]:
        return {p: b.decode("utf-8", "replace") for p, b in self.tree_files(commit, self.editable).items()}

    def read_locked_at(self, commit: str) -> dict[str, str]:
        return {p: b.decode("utf-8", "replace") for p, b in self.tree_files(commit, self.locked).items()}

    def editable_hash_at(self, commit: str, overlay: dict[str, str] | None = None) -> str:
        """The editable files' hash at `commit`, with `overlay` (a proposal's files) laid over them."""
        files = self.tree_files(commit, self.editable)
        files.update({p: t.encode("utf-8") for p, t in (overlay or {}).items()})
        return hash_files(files, self.editable)

    def locked_hash_at(self, commit: str) -> str:
        return hash_files(self.tree_files(commit, self.locked), self.locked)

    def check_editable(self, paths) -> None:
        """A ValueError naming the first path that is not editable (or leaves the root)."""
        for relpath in paths:
            pure = PurePosixPath(relpath)
            if pure.is_absolute() or ".." in pure.parts or not self.is_editable(pure.as_posix()):
                raise ValueError(f"{relpath} is not an editable file (editable: {', '.join(self.editable)})")

    def net_added_lines(self, old: str, new: str) -> int:
        """Lines added minus lines removed between two commits, by `git diff --numstat` (binary files count 0)."""
        total = 0
        for line in self.git("diff", "--no-ext-diff", "--no-textconv", "--numstat", old, new).splitlines():
            added, removed, _ = line.split("\t", 2)
            if added != "-":
                total += int(added) - int(removed)
        return total

    # -- worktrees -----------------------------------------------------------------------------------------------

    def add_worktree(self, folder: Path, commit: str) -> "Workspace":
        """A detached worktree of `commit` at `folder` (a stale one left by a kill is replaced)."""
        self.remove_worktree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "add", "-q", "--detach", str(folder), commit)
        return self.at(folder)

    def remove_worktree(self, folder: Path) -> None:
        """Remove a worktree of the harness's and git's record of it; nothing else is touched."""
        if folder.exists():
            git(self.root, "worktree", "remove", "--force", "--force", str(folder), check=False)
            shutil.rmtree(folder, ignore_errors=True)
        self.git("worktree", "prune")

    # -- the files of a checkout (a trial's worktree) --------------------------------------------------------------

    def is_editable(self, relpath: str) -> bool:
        return _matches(relpath, self.editable) and not _matches(relpath, self.locked)

    def write_files(self, files: dict[str, str]) -> None:
        """Write a proposal's files; any path that is not editable (or leaves the root) is a ValueError."""
        self.check_editable(files)
        for relpath, text in files.items():
            target = self.root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def content_hash(self, patterns: list[str]) -> str:
        files = {}
        for pattern in patterns:
            for path in self.root.glob(pattern):
                if path.is_file():
                    files[path.relative_to(self.root).as_posix()] = path.read_bytes()
        return hash_files(files, patterns)

    def locked_hash(self) -> str:
        return self.content_hash(self.locked)

    def commit_editable(self, message: str) -> str:
        """Commit the editable files only: files a run leaves behind never ride along in a candidate."""
        self.git("add", "-A", "--", *self.editable)
        self.git(*_identity_args(self.root, self.identity), "commit", "-q", "--no-verify", "--allow-empty", "-m", message)
        return self.head()

    def diff(self, old: str, new: str) -> str:
        return self.git("diff", "--no-ext-diff", "--no-textconv", old, new)
