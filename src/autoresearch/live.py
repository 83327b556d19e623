"""The live view of `autoresearch run` on a terminal: one line per worker, the best so far, the agent thinking."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from autoresearch.earlystop import LogFollower, parse_progress
from autoresearch.events import Observer

TOKENS_PER_SECOND = re.compile(r"([\d,]+(?:\.\d+)?)\s*tok(?:ens)?/s", re.IGNORECASE)
RECENT = 4  # results shown under the workers
REFRESH_PER_SECOND = 4
DESCRIPTION_CHARS = 44


def tokens_per_second(line: str) -> float | None:
    """The throughput a progress line prints (`12,345 tok/s`), else None."""
    found = TOKENS_PER_SECOND.search(line)
    try:
        return float(found.group(1).replace(",", "")) if found else None
    except ValueError:
        return None


def shorten(text: str, chars: int = DESCRIPTION_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


@dataclass
class Current:
    """An experiment under way, as the view knows it: what it is, where it runs, and what its log said last."""

    row_id: int
    description: str
    budget: float
    worker: int
    phase: str = "starting"  # starting | train | evaluate
    runs: int = 0  # training runs started (seeds)
    since: float = field(default_factory=time.monotonic)  # when its current process started
    follower: LogFollower | None = None
    step: int | None = None
    loss: float | None = None
    tps: float | None = None

    def read_log(self) -> None:
        if self.follower is None:
            return
        for line in self.follower.new_lines():
            progress = parse_progress(line)
            if progress is not None:
                self.step, self.loss = progress
            tps = tokens_per_second(line)
            if tps is not None:
                self.tps = tps


class LiveView(Observer):
    """A rich Live area, redrawn a few times a second, with the loop's event lines printed above it (`write`).
    Events come from the loop's thread and the workers' (a lock guards the state); a render only reads the
    logs' new lines, so a run is never waited on."""

    name = "the live view"

    def __init__(self, console: Console | None = None, maximize: bool = False, metric: str = "metric",
                 refresh_per_second: float = REFRESH_PER_SECOND, start: bool = True):
        self.console = console or Console()
        self.maximize, self.metric = maximize, metric
        self.lock = threading.Lock()
        self.current: dict[int, Current] = {}
        self.recent: deque = deque(maxlen=RECENT)
        self.best = None
        self.sigma: float | None = None
        self.thinking: dict[int, float] = {}  # thread id -> since when it waits on the agent
        self.cost = 0.0
        self.live = Live(self, console=self.console, refresh_per_second=refresh_per_second, transient=True,
                         redirect_stdout=False, redirect_stderr=False)
        if start:
            self.live.start()

    def write(self, line: str) -> None:
        """One line of the loop's, printed above the live area (the session's echo)."""
        self.console.print(Text(str(line)), soft_wrap=True)

    def experiment_started(self, row_id, description, budget_seconds, worker, label) -> None:
        with self.lock:
            self.current[row_id] = Current(row_id, description, budget_seconds, worker)

    def process_started(self, row_id, kind, log) -> None:
        with self.lock:
            cur = self.current.get(row_id)
            if cur is None:
                return
            cur.phase, cur.since = kind, time.monotonic()
            if kind == "train":
                cur.runs += 1
                cur.step = cur.loss = cur.tps = None
                cur.follower = LogFollower(Path(log)) if log else None

    def experiment_recorded(self, row) -> None:
        with self.lock:
            self.current.pop(row.id, None)
            self.recent.appendleft(row)

    def proposing(self, active, cost_usd) -> None:
        with self.lock:
            me = threading.get_ident()
            if active:
                self.thinking[me] = time.monotonic()
            else:
                self.thinking.pop(me, None)
            self.cost = cost_usd

    def standing(self, best, sigma) -> None:
        with self.lock:
            self.best, self.sigma = best, sigma

    def close(self) -> None:
        self.live.stop()

    def __rich__(self):
        with self.lock:
            return self.render()

    def render(self):
        """The live area as it stands (the caller holds the lock)."""
        parts = []
        now = time.monotonic()
        grid = Table.grid(padding=(0, 1))
        for column in ("id", "worker", "description", "bar", "time", "progress"):
            grid.add_column(no_wrap=True, overflow="ellipsis")
        for cur in sorted(self.current.values(), key=lambda c: (c.worker, c.row_id)):
            cur.read_log()
            elapsed = now - cur.since
            if cur.phase == "train":
                bar = ProgressBar(total=max(cur.budget, 1e-9), completed=min(elapsed, cur.budget), width=24)
                clock = f"{elapsed:4.0f}/{cur.budget:g}s" + (f" run {cur.runs}" if cur.runs > 1 else "")
            else:
                bar, clock = Text("evaluating" if cur.phase == "evaluate" else "starting", style="dim"), f"{elapsed:4.0f}s"
            progress = []
            if cur.step is not None:
                progress.append(f"step {cur.step}")
            if cur.loss is not None:
                progress.append(f"loss {cur.loss:.4g}")
            if cur.tps is not None:
                progress.append(f"{cur.tps:,.0f} tok/s")
            grid.add_row(Text(f"#{cur.row_id}", style="bold"), Text(f"w{cur.worker}", style="dim"),
                         Text(shorten(cur.description)), bar, Text(clock), Text("  ".join(progress), style="cyan"))
        if self.current:
            parts.append(grid)
        if self.thinking:
            waited = now - min(self.thinking.values())
            many = f" ({len(self.thinking)} proposals)" if len(self.thinking) > 1 else ""
            parts.append(Spinner("dots", text=Text(f"the agent is thinking{many}: {waited:.0f}s, ${self.cost:.4f} spent so far")))
        standing = f"best {self.metric} "
        standing += f"{self.best.metric:.6f} (#{self.best.id})" if self.best is not None and self.best.metric is not None else "-"
        standing += f"  σ {self.sigma:.6f}" if self.sigma is not None else "  σ unknown yet"
        parts.append(Text(standing, style="green"))
        for row in self.recent:
            shown = f"{row.metric:.6f}" if row.metric is not None else "-"
            style = {"keep": "green", "discard": "dim"}.get(row.status, "red")
            parts.append(Text(f"  {row.status or '':<8} {shown:>10}  #{row.id} {shorten(row.description)}", style=style))
        return Group(*parts)
