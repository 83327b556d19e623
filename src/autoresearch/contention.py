"""Measure how much CPU contention dilated a run (its busiest thread's runqueue wait) to widen its start-up allowance."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

PERIOD = 0.2  # seconds between samples
MIN_CPU_NS = 50_000_000  # below 0.05 s of CPU on the busiest thread the ratio is noise: report 1.0
MIN_DILATION, MAX_DILATION = 1.0, 10.0
PROC = "/proc"


@dataclass
class Contention:
    """What the sampler saw: totals over every sampled thread, and the busiest thread's (cpu + wait) / cpu."""

    cpu_seconds: float | None  # None when nothing could be sampled
    wait_seconds: float | None
    dilation: float = 1.0


def clamp_dilation(dilation: float) -> float:
    return min(MAX_DILATION, max(MIN_DILATION, dilation))


def allowed_seconds(budget: float, allowance: float, dilation: float) -> float:
    """The longest honest wall time: the budget plus the start-up allowance stretched by the clamped dilation."""
    return budget + allowance * clamp_dilation(dilation)


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def group_pids(pgid: int) -> list[int]:
    """The pids whose process group is `pgid` (an empty list where /proc is missing)."""
    try:
        names = os.listdir(PROC)
    except OSError:
        return []
    pids = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            stat = _read(f"{PROC}/{name}/stat")
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                pids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def thread_schedstats(pid: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, tid) -> (ns on CPU, ns waiting on a runqueue) for every thread of `pid` that could be read."""
    out = {}
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = _read(f"{PROC}/{pid}/task/{tid}/schedstat").split()
            out[(pid, int(tid))] = (int(fields[0]), int(fields[1]))
        except (OSError, ValueError, IndexError):
            continue
    return out


class GroupSampler:
    """Samples the schedstat of every thread in a process group from a daemon thread, keeping the latest per thread."""

    def __init__(self, pgid: int, period: float = PERIOD):
        self.pgid = pgid
        self.period = period
        self.latest: dict[tuple[int, int], tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GroupSampler:
        self._thread = threading.Thread(target=self._loop, name=f"schedstat-{self.pgid}", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        """One pass over the group; never raises (processes vanish between listing and reading)."""
        try:
            seen = {}
            for pid in group_pids(self.pgid):
                seen.update(thread_schedstats(pid))
            with self._lock:
                for key, value in seen.items():  # counters only grow: an overlapping older pass must not win
                    if sum(value) >= sum(self.latest.get(key, (0, 0))):
                        self.latest[key] = value
        except Exception:  # noqa: BLE001 - a sampler must never take the run down
            pass

    def _loop(self) -> None:
        self.sample()
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> Contention:
        """A last sample (while anything of the group is still alive), then the summary of all samples."""
        self._stop.set()
        if self._group_alive():
            self.sample()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        return self.result()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True

    def result(self) -> Contention:
        with self._lock:
            stats = list(self.latest.values())
        if not stats:
            return Contention(None, None, 1.0)
        cpu = sum(c for c, _ in stats)
        wait = sum(w for _, w in stats)
        busiest_cpu, busiest_wait = max(stats)
        dilation = 1.0
        if busiest_cpu >= MIN_CPU_NS:
            dilation = clamp_dilation((busiest_cpu + busiest_wait) / busiest_cpu)
        return Contention(cpu / 1e9, wait / 1e9, dilation)
