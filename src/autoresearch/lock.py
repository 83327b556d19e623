"""One harness per workspace and tag: an flock on .autoresearch/locks/<tag>.lock that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from autoresearch import UsageError


class TagLock:
    """Held for the whole of a `run` or `baseline`. The kernel drops an flock when its holder dies, so a lock
    left by a SIGKILL is free at once; its file still names the dead holder, which the next taker reports.
    `status` never takes it."""

    def __init__(self, state_dir: Path, tag: str):
        self.path = Path(state_dir) / "locks" / f"{tag.replace('/', '_')}.lock"
        self.tag = tag
        self.fd: int | None = None
        self.took_over: dict | None = None  # the holder a crash left named in the file, when there was one

    def acquire(self) -> "TagLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
            raise UsageError(f"tag '{self.tag}' is in use by {who} (since {holder.get('since', '?')}); wait for it, stop it, "
                             "or pick another --tag") from None
        previous = _read(fd)
        if previous.get("pid"):  # a holder that ended without releasing: killed
            self.took_over = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder to report
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "TagLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
