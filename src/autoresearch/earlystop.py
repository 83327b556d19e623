"""Early stopping of hopeless runs: the training-loss curve each run prints, timed by the harness, against the best's."""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path

STEP = re.compile(r"(?<![\w.])step\b[\s:=#]*(\d{1,12})(?!\w)", re.IGNORECASE)
LOSS = re.compile(r"(?<![\w.])(?:train(?:ing)?[ _])?loss\b[\s:=]*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])",
                  re.IGNORECASE)
THROUGHPUT = re.compile(r"(?<![\w.,])(\d[\d,]*(?:\.\d+)?)\s*(k|M)?\s*tok(?:ens)?/s\b", re.IGNORECASE)
MAX_LINE = 4096  # a longer line is not a progress line: it is skipped, whatever it holds
MAX_READ = 1 << 20  # bytes read per tick at most: a run that floods its log loses lines, never the harness's time
MAX_POINTS = 5000  # a longer curve is thinned (every other point) before it grows further
CURVE_VERSION = 1


def parse_progress(line: str) -> tuple[int, float] | None:
    """(step, loss) from a progress line that names both (`step 125 | loss 3.2104 | ...`), else None.

    Generic: any `step <int>` and `loss <number>` on one line, in either order; a non-finite loss, a line
    over MAX_LINE characters, or anything else is not a progress line."""
    if len(line) > MAX_LINE:
        return None
    step, loss = STEP.search(line), LOSS.search(line)
    if not step or not loss:
        return None
    try:
        value = float(loss.group(1))
    except ValueError:
        return None
    return (int(step.group(1)), value) if math.isfinite(value) else None


def parse_throughput(line: str) -> float | None:
    """Tokens per second from a line that prints them (`... | 12,345 tok/s | ...`, `1.2M tokens/s`), else None.
    Only the live view reads it; parse_progress and the curves do not."""
    found = THROUGHPUT.search(line) if len(line) <= MAX_LINE else None
    if not found:
        return None
    try:
        value = float(found.group(1).replace(",", ""))
    except ValueError:
        return None
    value *= {"k": 1e3, "m": 1e6}.get((found.group(2) or "").lower(), 1.0)
    return value if math.isfinite(value) else None


@dataclass
class Curve:
    """One run's progress lines as the harness read them: (elapsed seconds on its clock, step, loss) points."""

    points: list[tuple[float, int, float]] = field(default_factory=list)
    wall_seconds: float | None = None  # the run's whole wall time, as the executor measured it
    stopped: str = ""  # the reason the run was stopped early, if it was
    saved_seconds: float = 0.0

    def add(self, elapsed: float, step: int, loss: float) -> None:
        self.points.append((round(elapsed, 3), step, loss))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]

    def loss_at(self, t: float) -> float | None:
        """The loss at elapsed `t`, linear between the two points around it; None outside the curve."""
        pts = self.points
        if not pts or t < pts[0][0] or t > pts[-1][0]:
            return None
        i = bisect.bisect_left(pts, t, key=lambda p: p[0])  # the first point at t or after it
        (t0, _, y0), (t1, _, y1) = pts[max(i - 1, 0)], pts[i]
        return y1 if t1 == t or t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)

    def to_json(self, budget_seconds: float) -> str:
        return json.dumps({"version": CURVE_VERSION, "clock": "harness: seconds since the run started",
                           "budget_seconds": budget_seconds, "wall_seconds": self.wall_seconds, "stopped": self.stopped,
                           "saved_seconds": round(self.saved_seconds, 3), "points": self.points})

    @classmethod
    def load(cls, path: Path) -> Curve | None:
        """A curve.json as the harness wrote it; None if it is missing or not one (a bad file is never fatal)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            points = [(float(t), int(s), float(y)) for t, s, y in data["points"]]
            wall = data.get("wall_seconds")
            curve = cls(points, float(wall) if isinstance(wall, (int, float)) else None, str(data.get("stopped") or ""))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        if not all(math.isfinite(t) and math.isfinite(y) for t, _, y in points) or \
                any(b[0] < a[0] for a, b in zip(points, points[1:])):
            return None
        return curve


def curve_path(log: Path) -> Path:
    """Where a run's curve goes, beside its log: run.log → curve.json, run-seed43.log → curve-seed43.json."""
    return log.with_name(log.stem.replace("run", "curve", 1) + ".json")


class LogFollower:
    """Reads the lines a run appends to its log, from where it last stopped; a partial last line waits for its end."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial, self.skipping = Path(path), 0, b"", False

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size - self.offset > MAX_READ:  # flooded: jump ahead, and drop the line cut in two
                    self.offset, self.partial, self.skipping = size - MAX_READ, b"", True
                f.seek(self.offset)
                data = f.read(max(0, size - self.offset))
        except OSError:
            return []
        self.offset += len(data)
        *complete, rest = (self.partial + data).split(b"\n")
        if self.skipping and complete:
            complete, self.skipping = complete[1:], False
        self.partial = rest if len(rest) <= MAX_LINE else b""
        self.skipping = self.skipping or len(rest) > MAX_LINE  # the rest of an overlong line is not a line
        return [line.decode("utf-8", "replace") for line in complete]


@dataclass
class Rule:
    """The stopping rule (docs/early_stop.md): after `warmup` of the budget, with the best's curve at those times,
    the run's last `patience` progress lines are each worse than the best's loss at the same elapsed time by more
    than `margin` (relative) and worse than the median of the finished trials' curves at that time (at least
    `min_trials` of them, the best included). A loss is lower-is-better."""

    budget_seconds: float
    warmup: float = 0.3
    margin: float = 0.05
    patience: int = 3
    min_trials: int = 3

    def check(self, points, best: list[Curve], finished: list[list[Curve]]) -> str:
        """A reason to stop a run whose curve so far is `points`, or "". `best` holds the best row's curves (one per
        seed; the worst of them counts at each time), `finished` each finished row's curves (the best's included)."""
        recent = points[-self.patience:]
        if not best or len(recent) < self.patience or recent[0][0] < self.warmup * self.budget_seconds:
            return ""
        for t, _, loss in recent:
            ref = row_loss_at(best, t)
            if ref is None or loss - ref <= self.margin * abs(ref):
                return ""
            others = [v for v in (row_loss_at(curves, t) for curves in finished) if v is not None]
            if len(others) < max(1, self.min_trials) or loss <= statistics.median(others):
                return ""
        t, step, loss = recent[-1]
        ref, median = row_loss_at(best, t), statistics.median(v for v in (row_loss_at(c, t) for c in finished) if v is not None)
        return (f"stopped early at {t:.0f}s of the {self.budget_seconds:g}s budget: training loss {loss:.4g} at step {step} "
                f"was behind the best's {ref:.4g} (by more than {100 * self.margin:g}%) and the median {median:.4g} of the "
                f"finished runs at the same time, {self.patience} progress lines in a row; not evaluated")


def row_loss_at(curves: list[Curve], t: float) -> float | None:
    """A row's loss at elapsed t: the worst (highest) of its seeds' curves that reach t, so a reference is never
    better than the row's own worst run."""
    values = [v for v in (c.loss_at(t) for c in curves) if v is not None]
    return max(values) if values else None


class Watch:
    """Follows one training run's log while it runs: records its curve and, with a rule, asks for a stop."""

    def __init__(self, log: Path, budget_seconds: float, rule: Rule | None = None, best: list[Curve] = (),
                 finished: list[list[Curve]] = ()):
        self.follower, self.curve, self.budget_seconds = LogFollower(log), Curve(), budget_seconds
        self.rule, self.best, self.finished = rule, list(best), list(finished)
        self.log = Path(log)

    def read(self, elapsed: float) -> None:
        for line in self.follower.new_lines():
            found = parse_progress(line)
            if found:
                self.curve.add(elapsed, *found)

    def ticker(self, on_tick=None):
        """The executor's on_tick: the caller's own tick, then the new lines; returns a stop reason or ""."""
        def tick(elapsed: float) -> str:
            if on_tick is not None:
                on_tick(elapsed)
            self.read(elapsed)
            if self.rule is None or self.curve.stopped:
                return ""
            self.curve.stopped = self.rule.check(self.curve.points, self.best, self.finished)
            return self.curve.stopped
        return tick

    def expected_seconds(self) -> float:
        """What the run would have taken: the best's mean wall time, else the budget."""
        walls = [c.wall_seconds for c in self.best if c.wall_seconds]
        return sum(walls) / len(walls) if walls else self.budget_seconds

    def finish(self, out) -> None:
        """After the run: its last lines, its wall time, and curve.json beside its log (the harness's file, written
        whole, over anything there). A stopped run's summary is only the seconds stopping saved."""
        self.read(out.wall_seconds)
        self.curve.wall_seconds = round(out.wall_seconds, 3)
        if getattr(out, "stopped", ""):
            self.curve.stopped = out.stopped
            self.curve.saved_seconds = max(0.0, self.expected_seconds() - out.wall_seconds)
            out.summary = {"early_stop_saved_seconds": round(self.curve.saved_seconds, 3),
                           "training_seconds": round(out.wall_seconds, 3)}  # it trained until it was stopped
        path = curve_path(self.log)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            scratch.write_text(self.curve.to_json(self.budget_seconds), encoding="utf-8")
            os.replace(scratch, path)
        except OSError:
            scratch.unlink(missing_ok=True)


def row_curves(run_dir: Path, cache: dict | None = None) -> list[Curve]:
    """Every seed's curve of one row's run folder (curve.json first), stopped ones left out. `cache` keeps curves
    already read, by path, size and time of change, so a long session does not parse every file for every run."""
    curves = []
    for path in sorted(Path(run_dir).glob("curve*.json"), key=lambda p: (p.name != "curve.json", p.name)):
        try:
            stat = path.stat()
        except OSError:
            continue
        key = (stat.st_size, stat.st_mtime_ns)
        if cache is None or cache.get(path, (None,))[0] != key:
            loaded = Curve.load(path)
            if cache is None:
                curves.append(loaded)
                continue
            cache[path] = (key, loaded)
        curves.append(cache[path][1])
    return [c for c in curves if c is not None and not c.stopped and c.points]


class EarlyStop:
    """The session's hook for Runner.train: a Watch for every training run (its curve is always recorded), with
    the rule only when `[decide] early_stop` is on, for a candidate's first run (its screen), once a best exists.
    The references are read from the journal when the run starts: the best row of the segment and every other
    finished row (keep or discard) of it, by their run folders' curve*.json."""

    def __init__(self, settings, budget_seconds: float, ledger=None):
        self.budget_seconds, self.ledger = budget_seconds, ledger
        self.enabled = bool(getattr(settings, "early_stop", False))
        self.rule = Rule(budget_seconds, settings.early_stop_warmup, settings.early_stop_margin,
                         settings.early_stop_patience, settings.early_stop_min_trials) if self.enabled else None
        self.seen: set[int] = set()
        self.cache: dict = {}
        self.lock = threading.Lock()

    def watch(self, trial, log: Path) -> Watch:
        with self.lock:
            first = trial.id not in self.seen
            self.seen.add(trial.id)
        if not (self.enabled and first and self.ledger is not None):
            return Watch(log, self.budget_seconds)
        best, finished = self.references(trial)
        return Watch(log, self.budget_seconds, self.rule if best else None, best, finished)

    def references(self, trial) -> tuple[list[Curve], list[list[Curve]]]:
        """The best's curves and each finished row's, from a journal connection of this thread's own."""
        from autoresearch.ledger import STATE_DIR, Ledger

        own = self.ledger
        ledger = Ledger(own.root, own.branch, own.metric_name, own.maximize)
        try:
            best = ledger.best()
            if best is None or best.commit_sha == trial.commit:
                return [], []
            rows = ledger.where("segment = ? AND state = 'done' AND status IN ('keep', 'discard') AND id != ?",
                                (ledger.segment, trial.id))
        finally:
            ledger.close()
        runs = Path(own.root) / STATE_DIR / "runs"
        with self.lock:
            curves = {r.id: row_curves(runs / str(r.id), self.cache) for r in rows}
        return curves.get(best.id, []), [c for c in curves.values() if c]
