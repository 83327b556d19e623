"""Process groups that a trial started and that outlived their harness: told apart from a reused pid, and stopped."""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.executors.local import group_alive, kill_group


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity(pid: int) -> str:
    """What tells this process from a later one that reuses its pid: its start time (Linux), else ''."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime in clock ticks since boot


def stop(pids: list[list], grace: float = 2.0) -> int:
    """Kill each [pid, identity] group that is still alive and still the same process; the number killed."""
    killed = 0
    for pid, ident in pids:
        if group_alive(pid) and (not ident or identity(pid) in (ident, "")):
            kill_group(pid, grace)
            killed += 1
    return killed
