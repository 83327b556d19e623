"""Tell a SIGINT or SIGTERM that a run sent the harness apart from the user's, by the sender's pid."""

from __future__ import annotations

import _thread
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

WATCHED = {signal.SIGINT, signal.SIGTERM}


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # the field after state, ppid, pgrp: the session id


def _carries(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class _Run:
    """A run the watch guards: its environment marker, its session once started, and what it did."""

    def __init__(self, marker: bytes):
        self.marker, self.session, self.offence = marker, None, ""


class SignalWatch:
    """While entered (from the main thread, on Linux), SIGINT and SIGTERM are blocked and taken by a watcher
    thread. One sent by a process of the run under way (its session, or a process carrying its marker) is
    recorded against that run, which is killed; any other reaches the main thread's handler as before.

    The mask is per thread: threads started before the watch (the harness starts none, and never imports torch,
    whose native thread pool would be some) do not block the signals, and one the kernel hands to them reaches
    the main thread's handler without its sender. A sender that exits before the watcher reads its /proc entry
    is taken as the user's."""

    def __init__(self):
        self.runs: list[_Run] = []  # the runs under way
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SignalWatch":
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "sigtimedwait"):
            signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="autoresearch-signals", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)  # one still pending is delivered now, as usual

    def _watch(self) -> None:
        while not self._stop.is_set():
            info = signal.sigtimedwait(WATCHED, 0.1)
            if info is None:
                continue
            if info.si_signo not in WATCHED:
                continue
            try:
                self._route(info.si_signo, info.si_pid)
            except Exception:  # the watcher must outlive anything odd: the signal then goes to the main thread
                _thread.interrupt_main(info.si_signo)

    def _route(self, signo: int, sender: int) -> None:
        session = _session_of(sender) if sender > 0 else None
        for run in list(self.runs):
            if (run.session is not None and session == run.session) or (sender > 0 and _carries(sender, run.marker)):
                run.offence = f"the run sent {signal.Signals(signo).name} to the harness (from pid {sender})"
                if run.session is not None:
                    try:
                        os.killpg(run.session, signal.SIGKILL)
                    except OSError:
                        pass
                return
        _thread.interrupt_main(signo)

    @contextmanager
    def guarding(self, marker: str):
        """While a run marked `marker` (NAME=value in its environment) is under way; entered before it starts, and
        told its session (`.session = pid`) once it has one. Yields the run's record."""
        run = _Run(marker.encode())
        self.runs.append(run)
        try:
            yield run
        finally:
            self.runs.remove(run)


WATCH = SignalWatch()  # the process's one watch: the session enters it, the executor registers its runs
