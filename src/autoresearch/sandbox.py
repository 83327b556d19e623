"""Confine runs with bubblewrap: training sees an allow-list (system, Python, its worktree, its data); the evaluator, all read-only."""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import UsageError
from autoresearch.process import command_env

INSTALL_HINT = "it is Linux-only: apt-get install bubblewrap, or dnf install bubblewrap"


SUPERVISOR_MARK, SUPERVISOR_TAIL = "[autoresearch sandbox]", "process(es) left by the run, stopped"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/nix")  # read-only to training


@dataclass
class ProtectedPaths:
    """What the task declares: `hidden` (held-out data: unreadable to training), `protected` (read by the
    evaluator: training may read it, never change it, and it is fingerprinted) and `readable` (training's own
    data, such as its split: readable, never changed)."""

    hidden: list[Path] = field(default_factory=list)
    protected: list[Path] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)

    def all(self) -> list[Path]:
        return self.hidden + self.protected


def expand_glob(pattern: str) -> list[Path]:
    """Existing paths matching a glob, after ~ and $VARIABLES are expanded."""
    pattern = os.path.expanduser(os.path.expandvars(pattern))
    return [Path(p).resolve() for p in sorted(glob.glob(pattern))]


def resolve_protected(root: Path, hide: list[str], protect: list[str], paths_command: str,
                      readable: list[str] = ()) -> ProtectedPaths:
    """Globs from the config, plus `hide PATH` / `protect PATH` / `read PATH` lines printed by the task's locked
    paths command."""
    paths = ProtectedPaths([p for g in hide for p in expand_glob(g)], [p for g in protect for p in expand_glob(g)],
                           [p for g in readable for p in expand_glob(g)])
    kinds = {"hide": paths.hidden, "protect": paths.protected, "read": paths.readable}
    if paths_command:
        done = subprocess.run(paths_command, shell=True, cwd=root, env=command_env(), capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise UsageError(f"the sandbox paths command `{paths_command}` failed: {last[-1] if last else done.returncode}")
        for line in done.stdout.splitlines():
            kind, _, path = line.strip().partition(" ")
            if kind in kinds and path.strip():
                kinds[kind].extend(expand_glob(path.strip()))
    paths.hidden = list(dict.fromkeys(paths.hidden))
    paths.protected = [p for p in dict.fromkeys(paths.protected) if p not in paths.hidden]
    paths.readable = [p for p in dict.fromkeys(paths.readable) if p not in paths.hidden]
    return paths


def fingerprint(paths: list[Path]) -> dict[str, tuple]:
    """The content digest (BLAKE2b) of every file under the paths: a rewrite in place, with its size, mtime and
    inode restored, still changes it. A symlink counts by where it points."""
    prints: dict[str, tuple] = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for f in files:
            link = os.readlink(f) if f.is_symlink() else None
            with open(f, "rb") as handle:
                prints[str(f)] = (link, hashlib.file_digest(handle, "blake2b").hexdigest())
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
    probe = subprocess.run(["bwrap", "--unshare-pid", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
                            "--tmpfs", "/tmp", "true"], capture_output=True)
    return probe.returncode == 0


def python_paths(exclude: Path | None = None) -> list[Path]:
    """The folders the running Python needs (prefixes, site-packages, sys.path): read-only inside the sandbox.
    Never `exclude` (the user's checkout) nor a folder above it, which would bring its .autoresearch along."""
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(), *sys.path]
    paths = []
    for entry in found:
        if not entry or not os.path.isdir(entry):
            continue
        path = Path(entry).resolve()
        if exclude is not None and (path == exclude or exclude.is_relative_to(path) or
                                    path.is_relative_to(exclude / ".autoresearch")):
            continue
        if path not in paths and not any(path.is_relative_to(p) for p in paths):
            paths = [p for p in paths if not p.is_relative_to(path)] + [path]
    return paths


class Bubblewrap:
    """Wraps a shell command in bubblewrap: its own PID namespace (nothing it starts outlives it, and it cannot
    see or signal the harness), no network by default, and a file system that is, for a `confined` run
    (training), only an allow-list: the system folders and the Python environment read-only, the `readable`
    data read-only, the `binds` as given; the home, the caches, /tmp and everything else are not there. An
    unconfined run (the locked evaluator) sees the machine read-only. Hidden paths inside anything bound are
    replaced by empty read-only ones (files by /dev/null)."""

    def __init__(self, state_dir: Path, network: bool = False, writable: list[Path] = (), checkout: Path | None = None):
        self.state_dir = Path(state_dir)
        self.network = network
        self.writable = list(writable)
        self.checkout = Path(checkout).resolve() if checkout else self.state_dir.resolve().parent
        self.empty = self.state_dir / "sandbox-empty"
        self.tmp = self.state_dir / "sandbox-tmp"  # the sandbox's TMPDIR: kept between runs (compile caches)

    def wrap(self, command: str, binds: list[tuple[str, Path]], hidden: list[Path] = (), tmp: Path | None = None,
             confined: bool = False, readable: list[Path] = ()) -> str:
        """`binds`: ("rw" | "ro", path) pairs mounted in order, so a later one wins (e.g. the worktree writable, its
        .git file read-only). `tmp`: the TMPDIR (default: the training runs' own, kept between them)."""
        tmp = Path(tmp or self.tmp)
        self.empty.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        args = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc"]
        mounted: list[Path] = []
        if confined:
            for top in SYSTEM_DIRS:
                if os.path.islink(top):
                    args += ["--symlink", os.readlink(top), top]
                elif os.path.isdir(top):
                    args += ["--ro-bind", top, top]
                    mounted.append(Path(top))
            args += ["--ro-bind-try", "/sys", "/sys", "--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc",
                     "--tmpfs", "/tmp"]
            mounted += [Path("/sys"), Path("/dev"), Path("/proc")]  # /tmp is an empty tmpfs
            for path in [*python_paths(self.checkout), *readable]:
                if Path(path).exists():
                    args += ["--ro-bind", str(path), str(path)]
                    mounted.append(Path(path))
        else:
            args += ["--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc"]
            mounted.append(Path("/"))
        for kind, path in [*binds, *(("rw", p) for p in self.writable), ("rw", tmp)]:
            if kind == "rw":
                Path(path).mkdir(parents=True, exist_ok=True)
            if Path(path).exists():
                args += ["--bind" if kind == "rw" else "--ro-bind", str(path), str(path)]
                mounted.append(Path(path))
        # temporary files and compiler caches (tempfile, torch inductor, triton) go here; the home stays as it is
        # named, but in a confined run it holds only what was bound (the rest of it is a scratch tmpfs)
        args += ["--setenv", "TMPDIR", str(tmp), "--setenv", "TRITON_HOME", str(tmp), "--setenv", "TRITON_CACHE_DIR", f"{tmp}/triton"]
        for path in hidden:
            if not any(Path(path).is_relative_to(m) for m in mounted):
                continue  # not in the sandbox at all
            if Path(path).is_dir():
                args += ["--ro-bind", str(self.empty), str(path)]
            elif Path(path).exists():
                args += ["--ro-bind", "/dev/null", str(path)]
        if not self.network:
            args.append("--unshare-net")
        self.mounted = mounted
        if confined:  # a supervisor in the namespace: when the command ends, it stops, counts and kills what is left
            command = (f"sh -c {shlex.quote(command)}; rc=$?; kill -STOP -1 2>/dev/null; n=0; "
                       # a zombie (Z) or dead (X) process has ended: it is not left running, just not reaped yet
                       f"for p in /proc/[0-9]*; do read -r s < $p/stat 2>/dev/null || continue; "
                       f'case "${{s##*) }}" in Z*|X*) ;; *) n=$((n+1));; esac; done; kill -KILL -1 2>/dev/null; '
                       f'echo "{SUPERVISOR_MARK} $((n-2)) {SUPERVISOR_TAIL}" >&2; exit $rc')
        return shlex.join(args) + " -- sh -c " + shlex.quote(command)

    def visible(self, path: Path) -> bool:
        """Whether the last wrapped run could see `path` at all."""
        return any(Path(path).is_relative_to(m) for m in getattr(self, "mounted", [Path("/")]))


def leftover_processes(log_tail: str) -> int | None:
    """What the sandbox's supervisor counted and killed after a confined run's command ended; None when its line
    is missing (the run stopped the supervisor, or the run was killed)."""
    found = re.findall(rf"^{re.escape(SUPERVISOR_MARK)} (\d+) {re.escape(SUPERVISOR_TAIL)}$", log_tail, re.MULTILINE)
    return int(found[-1]) if found else None


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
