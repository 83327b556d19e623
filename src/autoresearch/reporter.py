"""What the loop tells a person: one line per event, and a line at least every 30 s while anything runs."""

from __future__ import annotations

import time

PROGRESS_SECONDS = 30.0


class Reporter:
    """The loop's only voice. `write` takes one line (print by default; tests collect or drop them)."""

    def __init__(self, write=print, progress_seconds: float | None = None):
        self.write = write
        self.progress_seconds = progress_seconds or PROGRESS_SECONDS
        self.said: set[str] = set()

    def say(self, text: str) -> None:
        self.write(text)

    def once(self, key: str, text: str) -> None:
        """Say `text` the first time `key` comes up in this session only."""
        if key not in self.said:
            self.said.add(key)
            self.write(text)

    def ticker(self, label: str, on_beat=None):
        """A callback for a running process, called with the seconds it has run: a progress line every
        `progress_seconds`, and `on_beat()` (the journal's heartbeat) with it."""
        last = [time.monotonic()]

        def tick(elapsed: float) -> None:
            if time.monotonic() - last[0] >= self.progress_seconds:
                last[0] = time.monotonic()
                self.write(f"            … {label}: {elapsed:.0f}s")
                if on_beat is not None:
                    on_beat()

        return tick
