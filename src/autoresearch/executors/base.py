"""The executor protocol: run a command in a workspace under a time limit and return a RunOutcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class RunOutcome:
    """What one run did, as the harness measured it (never as the script claims)."""

    returncode: int | None  # None when the harness killed it
    wall_seconds: float  # measured by the harness around the process
    timed_out: bool
    log_path: Path
    log_tail: str  # the last lines of the combined stdout/stderr
    summary: dict = field(default_factory=dict)  # the `key: value` block after `---`
    interrupted: bool = False  # the user pressed Ctrl-C during the run
    cpu_seconds: float | None = None  # CPU time of the run's threads as sampled (None: could not be measured)
    dilation: float = 1.0  # (cpu + runqueue wait) / cpu of its busiest thread, in [1, 10]; 1.0 when unknown
    offence: str = ""  # what the run did to the harness (signalled it), as the harness saw it
    escaped: int = 0  # processes of the run that left its process group and were killed after it
    stopped: str = ""  # why the harness stopped the run early (its on_tick asked), its process group killed


class Executor(Protocol):
    """on_tick(elapsed) is called about every second while the command runs; a reason it returns stops the run."""

    def run(self, workspace: Path, command: str, env: dict[str, str], limit_seconds: float, log_path: Path,
            on_start=None, on_tick=None) -> RunOutcome: ...
