"""Confine the training run with bubblewrap: held-out data hidden, everything outside the workspace read-only."""

from __future__ import annotations

import functools
import glob
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import UsageError
from autoresearch.process import command_env

INSTALL_HINT = "it is Linux-only: apt-get install bubblewrap, or dnf install bubblewrap"


@dataclass
class ProtectedPaths:
    """What the task declares off-limits: `hidden` (held-out data: unreadable to training) and `protected`
    (read by the evaluator: training may read it, never change it)."""

    hidden: list[Path] = field(default_factory=list)
    protected: list[Path] = field(default_factory=list)

    def all(self) -> list[Path]:
        return self.hidden + self.protected


def expand_glob(pattern: str) -> list[Path]:
    """Existing paths matching a glob, after ~ and $VARIABLES are expanded."""
    pattern = os.path.expanduser(os.path.expandvars(pattern))
    return [Path(p).resolve() for p in sorted(glob.glob(pattern))]


def resolve_protected(root: Path, hide: list[str], protect: list[str], paths_command: str) -> ProtectedPaths:
    """Globs from the config, plus `hide PATH` / `protect PATH` lines printed by the task's locked paths command."""
    paths = ProtectedPaths([p for g in hide for p in expand_glob(g)], [p for g in protect for p in expand_glob(g)])
    if paths_command:
        done = subprocess.run(paths_command, shell=True, cwd=root, env=command_env(), capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise UsageError(f"the sandbox paths command `{paths_command}` failed: {last[-1] if last else done.returncode}")
        for line in done.stdout.splitlines():
            kind, _, path = line.strip().partition(" ")
            if kind in ("hide", "protect") and path.strip():
                (paths.hidden if kind == "hide" else paths.protected).extend(expand_glob(path.strip()))
    paths.hidden = list(dict.fromkeys(paths.hidden))
    paths.protected = [p for p in dict.fromkeys(paths.protected) if p not in paths.hidden]
    return paths


def fingerprint(paths: list[Path]) -> dict[str, tuple]:
    """(size, mtime, inode) of every file under the paths: cheap, and any rewrite or swap changes it."""
    prints: dict[str, tuple] = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for f in files:
            st = f.stat()
            prints[str(f)] = (st.st_size, st.st_mtime_ns, st.st_ino)
        if not top.exists():
            prints[str(top)] = ("missing",)
    return prints


def changed_paths(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


@functools.lru_cache(maxsize=1)
def bubblewrap_works() -> bool:
    """True when bwrap is installed and can make a sandbox here (it needs user namespaces, or root)."""
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "true"], capture_output=True)
    return probe.returncode == 0


class Bubblewrap:
    """Wraps a shell command so that it sees the machine read-only, except the folders it may write, with
    hidden paths replaced by empty read-only ones (files by /dev/null), and (by default) no network."""

    def __init__(self, state_dir: Path, network: bool = False, writable: list[Path] = ()):
        self.state_dir = Path(state_dir)
        self.network = network
        self.writable = list(writable)
        self.empty = self.state_dir / "sandbox-empty"
        self.tmp = self.state_dir / "sandbox-tmp"  # the sandbox's TMPDIR: kept between runs (compile caches)

    def wrap(self, command: str, binds: list[tuple[str, Path]], hidden: list[Path] = (), tmp: Path | None = None) -> str:
        """`binds`: ("rw" | "ro", path) pairs mounted in order over the read-only machine, so a later one wins
        (e.g. the workspace writable, its journal read-only, the run's artifacts folder writable again).
        `tmp`: the TMPDIR (default: the training runs' own, kept between them for compile caches)."""
        tmp = Path(tmp or self.tmp)
        self.empty.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        args = ["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev"]
        for kind, path in [*binds, *(("rw", p) for p in self.writable), ("rw", tmp)]:
            if kind == "rw":
                Path(path).mkdir(parents=True, exist_ok=True)
            if Path(path).exists():
                args += ["--bind" if kind == "rw" else "--ro-bind", str(path), str(path)]
        # temporary files and compiler caches (tempfile, torch inductor, triton) go here
        args += ["--setenv", "TMPDIR", str(tmp), "--setenv", "TRITON_HOME", str(tmp), "--setenv", "TRITON_CACHE_DIR", f"{tmp}/triton"]
        for path in hidden:
            if Path(path).is_dir():
                args += ["--ro-bind", str(self.empty), str(path)]
            elif Path(path).exists():
                args += ["--ro-bind", "/dev/null", str(path)]
        if not self.network:
            args.append("--unshare-net")
        return shlex.join(args) + " -- sh -c " + shlex.quote(command)


def make_sandbox(mode: str, state_dir: Path, network: bool = False, writable: list[str] = (), echo=print) -> Bubblewrap | None:
    """The sandbox for `mode`: 'bwrap' (required), 'none', or 'auto' (bwrap when it works here, else none).
    `writable`: globs of folders outside the workspace that the run may write."""
    if mode == "none":
        return None
    if bubblewrap_works():
        return Bubblewrap(state_dir, network, [p for pattern in writable for p in expand_glob(pattern)])
    if mode == "bwrap":
        raise UsageError(f"sandbox.mode is 'bwrap' but bubblewrap cannot run here; {INSTALL_HINT}, or set mode = \"auto\"")
    echo(f"Sandbox: none (bubblewrap not available; {INSTALL_HINT}). Training can read held-out data; "
         "changes to it are still caught.")
    return None
