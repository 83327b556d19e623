"""Snapshot a repository's git control data (config, hooks, info, refs, HEAD, worktree links) and undo what untrusted code changed."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# What decides what the harness's git reads, runs or records; objects are content-addressed and are left alone.
WATCHED_FILES = ("config", "config.worktree", "HEAD", "packed-refs", "commondir", "shallow", "objects/info/alternates",
                 "objects/info/http-alternates")
WATCHED_DIRS = ("hooks", "info", "refs")
TRANSIENT = (".lock",)  # git's own lock files come and go
# What the harness itself last wrote to a loose ref (its absolute path -> the ref file's bytes): with several
# workers, the harness moves refs while other runs are under way, and those moves are not the runs' doing.
HARNESS_REFS: dict[str, bytes] = {}


def note_ref(checkout: Path, ref: str, commit: str) -> None:
    """The harness pointed `ref` at `commit` in the repository of `checkout`."""
    HARNESS_REFS[str(common_dir(checkout) / ref)] = f"{commit}\n".encode()


def common_dir(checkout: Path) -> Path:
    """The repository's shared git folder for a checkout (its .git folder, or what a .git file points at)."""
    dot_git = Path(checkout) / ".git"
    if dot_git.is_dir():
        return dot_git.resolve()
    gitdir = Path(dot_git.read_text().split("gitdir:", 1)[1].strip())
    gitdir = gitdir if gitdir.is_absolute() else (Path(checkout) / gitdir).resolve()
    common = gitdir / "commondir"
    return (gitdir / common.read_text().strip()).resolve() if common.exists() else gitdir


@dataclass
class GitSnapshot:
    files: dict[str, tuple]  # path relative to the common git folder (or an absolute link file) -> (content, mode)
    present: bool  # the git folder existed


class GitGuard:
    """Watches one repository's git data, plus the link files of given worktrees (their `.git` file and their
    entry under worktrees/). Other worktrees' entries, and the refs of other tags (`tag`: this session's), are
    left to their own sessions, which may move them meanwhile."""

    def __init__(self, checkout: Path, tag: str | None = None):
        self.checkout = Path(checkout).resolve()
        self.git_dir = common_dir(self.checkout)
        self.tag = tag
        self._entries: dict[str, str] = {}  # a worktree's .git link -> its folder under worktrees/, as first read

    def _others(self, key: str) -> bool:
        """A ref another tag's session owns."""
        for prefix in ("refs/autoresearch/", "refs/heads/autoresearch/"):
            if self.tag is not None and key.startswith(prefix):
                rest = key[len(prefix):]
                return rest != self.tag and not rest.startswith(self.tag + "/")
        return False

    def snapshot(self, worktrees: list[Path] = ()) -> GitSnapshot:
        files: dict[str, bytes] = {}
        if not self.git_dir.is_dir():
            return GitSnapshot(files, False)
        for name in WATCHED_FILES:
            _read(self.git_dir / name, name, files)
        for top in WATCHED_DIRS:
            _read(self.git_dir / top, top, files)  # a watched folder swapped for a symlink is seen
            for folder, dirs, names in os.walk(self.git_dir / top):
                for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
                    key = (Path(folder) / name).relative_to(self.git_dir).as_posix()
                    if not name.endswith(TRANSIENT) and not self._others(key):
                        _read(Path(folder) / name, key, files)
        for tree in worktrees:
            link = Path(tree) / ".git"
            _read(link, str(link), files)
            entry = self._entry(link)
            for name in ("gitdir", "commondir", "config.worktree"):  # its HEAD is its own: the harness reads commits
                _read(self.git_dir / entry / name, f"{entry}/{name}", files)
        return GitSnapshot(files, True)

    def _entry(self, link: Path) -> str:
        """The worktree's folder under worktrees/, from its .git link as the harness made it (a link that points
        elsewhere falls back to the worktree's name, and is itself reported as changed)."""
        key = self._entries.get(str(link))
        if key is None:
            key = f"worktrees/{link.parent.name}"
            try:
                target = Path(link.read_text().split("gitdir:", 1)[1].strip())
                if target.parent == self.git_dir / "worktrees":
                    key = f"worktrees/{target.name}"
            except (OSError, IndexError):
                pass
            self._entries[str(link)] = key
        return key

    def changes(self, before: GitSnapshot, after: GitSnapshot) -> list[str]:
        """What differs, as `added X`, `changed X` or `removed X` (paths as git names them), sorted."""
        if before.present and not after.present:
            return [f"deleted the repository's git folder {self.git_dir}"]
        out = []
        for path in sorted(set(before.files) | set(after.files)):
            old, new = self._expected(path, before, after), after.files.get(path)
            if old != new:
                out.append(f"{'added' if old is None else 'removed' if new is None else 'changed'} {path}")
        return out

    def _expected(self, path: str, before: GitSnapshot, after: GitSnapshot) -> tuple | None:
        """What a watched file should hold after a run: what the harness last wrote to it (a ref it moved while
        the run was under way), else what it held before the run."""
        old = before.files.get(path)
        written = HARNESS_REFS.get(str(self.git_dir / path)) if path.startswith("refs/") else None
        if written is not None:
            now = after.files.get(path)
            return now if now is not None and now[0] == written else (written, old[1] if old else 0o644)
        return old

    def restore(self, before: GitSnapshot, after: GitSnapshot) -> None:
        """Put back every watched file as it was in `before`, and remove those added since."""
        for path in set(before.files) | set(after.files):
            old, new = self._expected(path, before, after), after.files.get(path)
            if old == new:
                continue
            target = Path(path) if os.path.isabs(path) else self.git_dir / path
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.is_symlink() or target.exists():
                target.unlink()
            if old is None:
                continue
            data, mode = old
            target.parent.mkdir(parents=True, exist_ok=True)
            if data.startswith(b"symlink:") and mode is None:
                os.symlink(data[len(b"symlink:"):].decode(), target)
            else:
                target.write_bytes(data)
                os.chmod(target, mode)


def _read(path: Path, key: str, files: dict[str, tuple]) -> None:
    """Record a file's bytes and mode (a symlink by where it points, so that re-pointing one is seen)."""
    try:
        if path.is_symlink():
            files[key] = (b"symlink:" + os.readlink(path).encode(), None)
        elif path.is_file():
            files[key] = (path.read_bytes(), os.stat(path).st_mode & 0o7777)
    except OSError:
        pass
