"""A live view of `autoresearch run` on a terminal: the runs under way, the best so far, the agent thinking."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.text import Text

from autoresearch.earlystop import LogFollower, parse_progress, parse_throughput
from autoresearch.events import Observer

REFRESH_PER_SECOND = 4.0
RECENT = 5  # results shown under the best
DESCRIPTION_CHARS = 44
BAR_WIDTH = 24
TAIL_LINES = 256  # of the lines a log gained since the last refresh, the last ones read: a flood costs no more
STYLES = {"keep": "green", "discard": "yellow", "crash": "red", "timeout": "red", "invalid": "magenta"}


def shorten(text: str, width: int = DESCRIPTION_CHARS) -> str:
    """One line of at most `width` characters, an ellipsis where it was cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Running:
    """One experiment under way on a worker, and what its training log said last."""

    row_id: int
    description: str
    budget: float
    worker: int
    run_started: float | None = None  # the current training process's start
    run_ended: float | None = None  # when its evaluation started: the bar stops there
    runs: int = 0  # training processes started so far (one per seed)
    phase: str = "starting"
    follower: LogFollower | None = None
    step: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None

    def read_log(self) -> None:
        """The last progress line (step, loss) and throughput among the lines the log gained since the last read."""
        if self.follower is None:
            return
        found_progress = found_rate = False
        for line in reversed(self.follower.new_lines()[-TAIL_LINES:]):
            if not found_progress and (progress := parse_progress(line)):
                self.step, self.loss = progress
                found_progress = True
            if not found_rate and (rate := parse_throughput(line)) is not None:
                self.tokens_per_second, found_rate = rate, True
            if found_progress and found_rate:
                break


class LiveView(Observer):
    """An events.Observer that draws the session on a terminal with rich's Live, at most REFRESH_PER_SECOND times a
    second, and the session's `echo` (`write`): the loop's lines are printed above the live area, none is lost.

    The best and σ: with `root` (the workspace), they are read from the journal after each recorded row, through a
    connection of their own, opened, only read and closed on the loop's thread (Ledger.best and Ledger.noise_sigma, exactly what
    `status` shows; the metric's name and direction come from autoresearch.toml). Without it, or if that read fails,
    they come from the rows this view saw: the best keep by `maximize` (the latest keep if it is None) and σ pooled
    over the rows measured with several seeds.

    Events come from the loop's thread and, for process_started, from worker threads; the refresh thread reads the
    state and the runs' logs. `lock` guards that state; rich's own lock is never taken while it is held."""

    name = "live view"

    def __init__(self, console: Console | None = None, root: Path | None = None, maximize: bool | None = None,
                 metric: str = "metric", refresh_per_second: float = REFRESH_PER_SECOND, recent: int = RECENT):
        self.console = console or Console()
        self.root = Path(root) if root is not None else None
        self.maximize, self.metric = maximize, metric
        self.lock = threading.Lock()
        self.running: dict[int, Running] = {}
        self.recent: deque = deque(maxlen=recent)
        self.recorded = self.kept = 0
        self.best: tuple[float, int] | None = None  # (metric, row id)
        self.sigma: float | None = None
        self.pooled = [0.0, 0]  # squared deviations and degrees of freedom of the rows seen with several values
        self.thinking = 0  # proposals under way (several at once with a concurrent agent)
        self.cost = 0.0
        self.spinner = Spinner("dots", text="")
        self.config_read = False
        self.live = Live(console=self.console, get_renderable=self.render, refresh_per_second=refresh_per_second,
                         transient=True, redirect_stdout=True, redirect_stderr=True)
        self.gate = threading.Lock()  # starting and stopping the Live; taken before rich's lock, never inside `lock`
        self.started = self.closed = False

    # -- the session's echo ---------------------------------------------------------------------------------------
    def write(self, line: str = "") -> None:
        """A line of the loop's, printed as it is (no markup, no highlighting, no wrapping) above the live area."""
        self.console.print(str(line), markup=False, highlight=False, emoji=False, soft_wrap=True)

    # -- events.Observer ------------------------------------------------------------------------------------------
    def experiment_started(self, row_id: int, description: str, budget_seconds: float, worker: int, label: str) -> None:
        with self.lock:
            self.running[row_id] = Running(row_id, description, float(budget_seconds), worker)
        self._start()

    def process_started(self, row_id: int, kind: str, log: Path | None) -> None:
        with self.lock:
            run = self.running.get(row_id)
            if run is None:
                return
            if kind == "train":
                run.runs += 1
                run.run_started, run.run_ended, run.phase = time.monotonic(), None, "training"
                run.step = run.loss = run.tokens_per_second = None
                run.follower = LogFollower(log) if log is not None else None
            else:
                run.read_log()  # the training's last lines, before it is let go
                run.follower, run.phase = None, "evaluating" if kind == "evaluate" else kind
                run.run_ended = run.run_ended or time.monotonic()

    def experiment_recorded(self, row) -> None:
        stats = self._journal_stats(row)  # outside the lock: a read of the journal
        with self.lock:
            self.running.pop(row.id, None)
            self.recorded += 1
            self.kept += row.status == "keep"
            self.recent.append((row.id, row.status or "?", row.metric, row.description))
            self._count(row)
            if stats is not None:
                self.best, self.sigma = stats
        self._start()

    def proposing(self, active: bool, cost_usd: float) -> None:
        with self.lock:
            self.thinking = self.thinking + 1 if active else max(0, self.thinking - 1)
            self.cost = float(cost_usd or 0.0)
        self._start()

    def close(self) -> None:
        """Stop the live area (the cursor shown again, stdout and stderr given back); safe to call twice."""
        with self.gate:
            if self.closed:
                return
            self.closed = True
            self.live.stop()

    # -- drawing --------------------------------------------------------------------------------------------------
    def render(self):
        """The live area as it stands: called by rich's refresh thread, and when a line is printed above it."""
        with self.lock:
            now = time.monotonic()
            parts = []
            if self.thinking:
                what = "the agent is thinking" if self.thinking == 1 else f"{self.thinking} proposals under way"
                self.spinner.update(text=Text(f"{what} · ${self.cost:.4f} spent", style="cyan"))
                parts.append(self.spinner)
            runs = sorted(self.running.values(), key=lambda r: (r.worker, r.row_id))
            chars = max(12, min(DESCRIPTION_CHARS, self.console.width - BAR_WIDTH - 70))
            for run in runs:
                run.read_log()
                parts.append(self._line(run, now, chars))
            best = (f"best {self.metric} {self.best[0]:.6f} (#{self.best[1]})" if self.best else "best: none yet")
            sigma = f"σ {self.sigma:.6f}" if self.sigma is not None else "σ –"
            parts.append(Text(f"{best}  ·  {sigma}  ·  {self.recorded} recorded, {self.kept} kept", style="bold"))
            for row_id, status, metric, description in self.recent:
                shown = f"{metric:.6f}" if metric is not None else "-"
                line = Text("  ")
                line.append(f"{status:<8}", style=STYLES.get(status, ""))
                line.append(f" {shown:>10}  #{row_id} {shorten(description, 80)}")
                parts.append(line)
            return Group(*parts)

    def _line(self, run: Running, now: float, chars: int) -> Text:
        """One worker's line: `#id`, the description, a bar of the training time against the budget, what the log said."""
        elapsed = (run.run_ended or now) - run.run_started if run.run_started is not None else 0.0
        bar = ProgressBar(total=max(run.budget, 1e-9), completed=min(elapsed, run.budget), width=BAR_WIDTH)
        seen = [f"run {run.runs}" if run.phase == "training" else run.phase]
        if run.step is not None:
            seen.append(f"step {run.step}")
        if run.loss is not None:
            seen.append(f"loss {run.loss:.4f}")
        if run.tokens_per_second is not None:
            seen.append(f"{run.tokens_per_second:,.0f} tok/s")
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"#{run.row_id:<4}", style="bold")
        line.append(f" {shorten(run.description, chars):<{chars}} ")
        for segment in self.console.render(bar):
            line.append(segment.text, segment.style)
        line.append(f" {elapsed:4.0f}s/{run.budget:g}s  ")
        line.append("  ".join(seen), style="dim")
        return line

    # -- helpers --------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        """The live area appears at the first event (not before: a session refused at its start leaves no trace)."""
        if self.started or self.closed:
            return
        with self.gate:
            if not (self.started or self.closed):
                self.started = True
                self.live.start()

    def _count(self, row) -> None:
        """The best and σ from the rows seen (under the lock): used when the journal is not read."""
        values = [v for v in row.values if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(values) > 1:
            mean = sum(values) / len(values)
            self.pooled[0] += sum((v - mean) ** 2 for v in values)
            self.pooled[1] += len(values) - 1
            self.sigma = math.sqrt(self.pooled[0] / self.pooled[1])
        if row.status == "keep" and row.metric is not None and math.isfinite(row.metric):
            better = self.best is None or self.maximize is None or \
                (row.metric > self.best[0] if self.maximize else row.metric < self.best[0])
            if better:
                self.best = (row.metric, row.id)

    def _journal_stats(self, row) -> tuple[tuple[float, int] | None, float | None] | None:
        """(best, σ) as the journal has them now, or None (no workspace given, or it could not be read)."""
        if self.root is None:
            return None
        try:
            from autoresearch.ledger import Ledger

            if not self.config_read:
                from autoresearch.config import load_config

                config = load_config(self.root)
                with self.lock:
                    self.metric, self.maximize = config.metric.name, config.metric.direction == "maximize"
                self.config_read = True
            ledger = Ledger(self.root, row.branch, self.metric, bool(self.maximize))
            try:
                best, sigma = ledger.best(), ledger.noise_sigma()
            finally:
                ledger.close()
        except Exception:  # noqa: BLE001 - the view falls back to the rows it saw; it never stops the session
            return None
        return ((best.metric, best.id) if best is not None and best.metric is not None else None), sigma
