"""Run an experiment as a local subprocess in its own process group, killed as a group at the time limit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from autoresearch.contention import GroupSampler
from autoresearch.executors.base import RunOutcome
from autoresearch.process import command_env
from autoresearch.summary import parse_summary

TAIL_LINES = 50


def kill_group(pgid: int, grace: float = 5.0, leader: subprocess.Popen | None = None) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds.

    `leader`, our own child, is reaped while we wait, so its zombie does not count as alive.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if leader is not None:
                leader.poll()
            if not group_alive(pgid):
                return
            time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def _wait(proc: subprocess.Popen, start: float, limit_seconds: float, on_tick=None, stretch=None, every: float = 1.0) -> None:
    """Wait for `proc` until the limit (TimeoutExpired past it), calling on_tick(seconds so far) about every second.
    `stretch()` (≥ 1) widens the limit by the CPU contention the run has met so far: a hang that sleeps is not
    stretched, and an honest run on a busy machine is not killed for being slowed down."""
    while True:
        elapsed = time.monotonic() - start
        left = limit_seconds * (stretch() if stretch else 1.0) - elapsed
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, limit_seconds)
        try:
            proc.wait(timeout=min(left, every))
            return
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                on_tick(time.monotonic() - start)


class LocalExecutor:
    """Runs the command with `sh -c` in a new session; stdout and stderr go to the run log."""

    def __init__(self, kill_grace: float = 5.0):
        self.kill_grace = kill_grace

    def run(self, workspace: Path, command: str, env: dict[str, str], limit_seconds: float, log_path: Path,
            on_start=None, on_tick=None) -> RunOutcome:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        timed_out = interrupted = False
        with open(log_path, "wb") as log:
            start = time.monotonic()
            proc = subprocess.Popen(command, shell=True, cwd=workspace, env=command_env(env), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            sampler = GroupSampler(proc.pid).start()  # its own session, so its pid is its process group
            try:
                if on_start:
                    on_start(proc.pid)
                try:
                    _wait(proc, start, limit_seconds, on_tick, lambda: sampler.result().dilation)
                except subprocess.TimeoutExpired:
                    timed_out = True
                except KeyboardInterrupt:
                    interrupted = True
                wall = time.monotonic() - start
            finally:
                contention = sampler.stop()  # before the kill: the last sample sees whatever is still running
            if proc.poll() is None or group_alive(proc.pid):
                kill_group(proc.pid, self.kill_grace, proc)  # also reaps children the script left behind
            proc.wait()
        text = log_path.read_text(encoding="utf-8", errors="replace")
        returncode = None if (timed_out or interrupted) else proc.returncode
        return RunOutcome(returncode, wall, timed_out, log_path, read_tail(log_path), parse_summary(text), interrupted,
                          contention.cpu_seconds, contention.dilation)
