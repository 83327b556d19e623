"""K workers: jobs run on device slots (inline for one worker, in threads for several) and come back as they finish."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from autoresearch.slots import Slot


class Cancelled(KeyboardInterrupt):
    """Raised inside a worker's run (from its tick) when the harness stops: the executor then ends the run."""


@dataclass
class Finished:
    job: Any
    slot: Slot
    value: Any = None
    error: BaseException | None = None


class Pool:
    """Runs `work(job, slot)` on a free slot. With one slot it runs at once in the calling thread (exactly the
    sequential loop); with several, each job gets a thread of its own while the caller goes on (proposing for
    the other slots). Results are handed back one at a time, in the order the jobs finished."""

    def __init__(self, slots: list[Slot]):
        self.slots = list(slots)
        self.free = list(slots)
        self.threads: dict[int, threading.Thread] = {}
        self.finished: deque[Finished] = deque()
        self.posted: deque = deque()  # results of work done off the pool (a proposal asked in a thread of its own)
        self.changed = threading.Condition()
        self.cancelled = threading.Event()

    @property
    def inline(self) -> bool:
        return len(self.slots) == 1

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self.free)

    @property
    def idle(self) -> bool:
        return bool(self.free)

    def reserve(self) -> Slot:
        """Take a free slot for a job that is still being proposed; `submit` it or `release` it later."""
        return self.free.pop(0)

    def release(self, slot: Slot) -> None:
        self.free.append(slot)
        self.free.sort(key=lambda s: s.index)

    def post(self, item) -> None:
        """Hand the harness's thread something done elsewhere (it wakes `wait`)."""
        with self.changed:
            self.posted.append(item)
            self.changed.notify_all()

    def take_posted(self) -> list:
        with self.changed:
            out = list(self.posted)
            self.posted.clear()
        return out

    def submit(self, work: Callable[[Any, Slot], Any], job, slot: Slot | None = None) -> Slot:
        slot = slot if slot is not None else self.free.pop(0)
        if self.inline:
            self._run(work, job, slot)
        else:
            thread = threading.Thread(target=self._run, args=(work, job, slot), name=f"autoresearch-worker-{slot.index}",
                                      daemon=True)
            self.threads[slot.index] = thread
            thread.start()
        return slot

    def _run(self, work, job, slot: Slot) -> None:
        if self.inline:  # an interrupt propagates as in the sequential loop; only the result is queued
            value = work(job, slot)
            self._finish(Finished(job, slot, value))
            return
        try:
            self._finish(Finished(job, slot, work(job, slot)))
        except BaseException as exc:  # handed to the harness's thread, which decides what it means
            self._finish(Finished(job, slot, error=exc))

    def _finish(self, done: Finished) -> None:
        with self.changed:
            self.finished.append(done)
            self.changed.notify_all()

    def take(self) -> list[Finished]:
        """What finished since the last call, in the order it finished; their slots are free again. An error a
        job raised (other than a cancellation) is raised here."""
        out = []
        with self.changed:
            while self.finished:
                done = self.finished.popleft()
                self.release(done.slot)
                self.threads.pop(done.slot.index, None)
                if done.error is not None and not isinstance(done.error, KeyboardInterrupt):
                    raise done.error
                if done.error is None:
                    out.append(done)
        return out

    def wait(self, timeout: float) -> None:
        """Until a job finishes or something is posted, or `timeout` seconds."""
        with self.changed:
            if not self.finished and not self.posted and self.busy:
                self.changed.wait(timeout)

    def tick_guard(self, tick):
        """A run's on_tick that ends the run (Cancelled) once the harness is stopping."""
        def guarded(elapsed: float):
            if self.cancelled.is_set():
                raise Cancelled()
            return tick(elapsed) if tick is not None else None
        return guarded

    def cancel(self, join_seconds: float = 60.0) -> None:
        """Stop every run under way and wait for the workers' threads to end."""
        self.cancelled.set()
        for thread in list(self.threads.values()):
            thread.join(join_seconds)
