"""What the loop announces as it goes, for whoever watches it (a live view, an experiment tracker)."""

from __future__ import annotations

import threading
from pathlib import Path


class Observer:
    """The events of a session; every method is optional (these defaults do nothing). Called on the loop's
    thread, except `process_started`, which comes from the worker thread whose run started it."""

    def experiment_started(self, row_id: int, description: str, budget_seconds: float, worker: int, label: str) -> None:
        """A trial was made and handed to a worker (or, for a baseline, is measured now)."""

    def process_started(self, row_id: int, kind: str, log: Path | None) -> None:
        """A run of `row_id` started a process (`kind`: train, evaluate, ...), writing its output to `log`."""

    def experiment_recorded(self, row) -> None:
        """A row was finished in the journal (its test split scored, where a keep has one): a ledger.Row."""

    def proposing(self, active: bool, cost_usd: float) -> None:
        """The agent was asked for a proposal (active) or answered; `cost_usd` is the session's estimated spend."""

    def close(self) -> None:
        """The session is over (or interrupted): release what the observer holds."""


class Observers(Observer):
    """Fans each event out to several observers. An observer that raises is told about once, through `warn`,
    and then left out: watching the loop never stops it."""

    def __init__(self, observers=(), warn=print):
        self.observers = list(observers)
        self.warn = warn
        self.lock = threading.Lock()

    def _each(self, method: str, *args) -> None:
        for observer in list(self.observers):
            call = getattr(observer, method, None)  # an observer need not have every method
            if call is None:
                continue
            try:
                call(*args)
            except Exception as exc:  # noqa: BLE001 - a broken watcher is reported, never fatal
                with self.lock:
                    if observer in self.observers:
                        self.observers.remove(observer)
                        name = getattr(observer, "name", type(observer).__name__)
                        self.warn(f"warning: {name} failed ({type(exc).__name__}: {exc}); it is switched off for the rest of this session")

    def experiment_started(self, *args) -> None:
        self._each("experiment_started", *args)

    def process_started(self, *args) -> None:
        self._each("process_started", *args)

    def experiment_recorded(self, *args) -> None:
        self._each("experiment_recorded", *args)

    def proposing(self, *args) -> None:
        self._each("proposing", *args)

    def close(self) -> None:
        self._each("close")
