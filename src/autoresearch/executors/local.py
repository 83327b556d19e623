"""Run an experiment as a local subprocess in its own session, with an allow-listed environment; at its end,
its process group and every process that carries its marker are killed."""

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
from autoresearch.secrets import run_environment
from autoresearch.signals import WATCH
from autoresearch.summary import parse_summary

MARKER = "AUTORESEARCH_RUN_MARK"  # in every run's environment: what its escaped processes are found by

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
    """Whether the group has a live member (zombies waiting for a lazy reaper do not count, where /proc says so)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return group_members(pgid) > 0 if os.path.isdir("/proc") else True


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def _wait(proc: subprocess.Popen, start: float, limit_seconds: float, on_tick=None, stretch=None, every: float = 1.0) -> str:
    """Wait for `proc` until the limit (TimeoutExpired past it), calling on_tick(seconds so far) about every second.
    `stretch()` (≥ 1) widens the limit by the CPU contention the run has met so far: a hang that sleeps is not
    stretched, and an honest run on a busy machine is not killed for being slowed down. A tick that returns a
    reason (early stopping) ends the wait with it, the run still running; "" when the run ended by itself."""
    while True:
        elapsed = time.monotonic() - start
        left = limit_seconds * (stretch() if stretch else 1.0) - elapsed
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, limit_seconds)
        try:
            proc.wait(timeout=min(left, every))
            return ""
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                stop = on_tick(time.monotonic() - start)
                if stop:
                    return str(stop)


def group_members(pgid: int) -> int:
    """Live (not zombie) processes in a process group, by /proc."""
    count = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += fields[0] != "Z" and int(fields[2]) == pgid
    return count


def kill_marked(marker: str, rounds: int = 5) -> int:
    """SIGKILL every process (of ours) whose environment carries `marker`: a run's children that left its process
    group (setsid, a double fork) and that exec'd without clearing the environment. The number killed."""
    needle, killed = marker.encode(), set()
    for _ in range(rounds):
        found = []
        for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    with open(f"/proc/{entry.name}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            found.append(int(entry.name))
                except OSError:
                    continue
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        if not found:
            break
        time.sleep(0.02)
    return len(killed)


class LocalExecutor:
    """Runs the command with `sh -c` in a new session; stdout and stderr go to the run log. The environment is
    the harness's allow-listed (no keys or tokens; `passthrough` names more), plus the run's own variables."""

    def __init__(self, kill_grace: float = 5.0, passthrough: list[str] = ()):
        self.kill_grace = kill_grace
        self.passthrough = list(passthrough)

    def run(self, workspace: Path, command: str, env: dict[str, str], limit_seconds: float, log_path: Path,
            on_start=None, on_tick=None) -> RunOutcome:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        timed_out = interrupted = False
        stopped = ""
        token = os.urandom(8).hex()
        marker = f"{MARKER}={token}"  # as it stands in /proc/<pid>/environ
        run_env = command_env({**env, MARKER: token}, base=run_environment(os.environ, self.passthrough))
        with open(log_path, "wb") as log, WATCH.guarding(marker) as guarded:  # a signal it sends is its offence
            start = time.monotonic()
            proc = subprocess.Popen(command, shell=True, cwd=workspace, env=run_env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            guarded.session = proc.pid
            sampler = GroupSampler(proc.pid).start()  # its own session, so its pid is its process group
            try:
                if on_start:
                    on_start(proc.pid)
                try:
                    stopped = _wait(proc, start, limit_seconds, on_tick, lambda: sampler.result().dilation)
                except subprocess.TimeoutExpired:
                    timed_out = True
                except KeyboardInterrupt:
                    interrupted = True
                wall = time.monotonic() - start
            finally:  # whatever happened (even an interrupt while it started), the run and all it started end here
                contention = sampler.stop()  # before the kill: the last sample sees whatever is still running
                left = group_members(proc.pid) if proc.poll() is not None else 0  # children still running after it
                if proc.poll() is None or group_alive(proc.pid):
                    kill_group(proc.pid, self.kill_grace, proc)  # also reaps children the script left behind
                proc.wait()
                escaped = left + kill_marked(marker)  # and those that left the group
        offence = guarded.offence
        text = log_path.read_text(encoding="utf-8", errors="replace")
        returncode = None if (timed_out or interrupted or stopped) else proc.returncode
        return RunOutcome(returncode, wall, timed_out, log_path, read_tail(log_path), parse_summary(text),
                          interrupted, contention.cpu_seconds, contention.dilation, offence, escaped, stopped)
