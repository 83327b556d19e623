"""Measuring a trial: a screen on one seed, then fresh seeds for what passes; the seed check; the mean."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.runner import Run, Runner
from autoresearch.trial import Trial


@dataclass
class Measured:
    """What the runs of one trial came to: a status and reason, and the numbers behind them."""

    status: str  # keep | discard | crash | timeout | invalid
    reason: str
    values: list[float]
    seeds: list[int]
    runs: list[Run] = field(default_factory=list)

    @property
    def metric(self) -> float | None:
        return sum(self.values) / len(self.values) if self.status in ("keep", "discard") and self.values else None

    @property
    def wall_seconds(self) -> float:
        return sum(r.out.wall_seconds for r in self.runs)

    @property
    def artifacts(self) -> list[Path]:
        return [r.artifacts for r in self.runs]

    def summary(self) -> dict:
        """The first run's summary block, plus the totals over every run."""
        training = 0.0
        for r in self.runs:
            seconds = r.out.summary.get("training_seconds")
            training += seconds if isinstance(seconds, float) and math.isfinite(seconds) else 0.0
        return {**(self.runs[0].out.summary if self.runs else {}), "all_runs_training_seconds": training,
                "all_runs_evaluation_seconds": sum(r.evaluation_seconds for r in self.runs)}

    @property
    def log_tail(self) -> str:
        return self.runs[-1].out.log_tail if self.runs else ""


class Measurement:
    """Runs a trial once per seed, stopping early when the first run cannot beat the best (the screen), and
    decides on the mean of the rest. A baseline (best None) runs every seed and is kept."""

    def __init__(self, runner: Runner, decider, maximize: bool):
        self.runner, self.decider, self.maximize = runner, decider, maximize

    def __call__(self, trial: Trial, seeds: list[int], best, sigma: float, net_lines: int = 0,
                 on_process=None, on_tick=None, env: dict[str, str] | None = None) -> Measured:
        """`best` is the metric to beat: a number, None for a baseline, or a function read at each decision (the
        tree's runs are judged against the best as it stands when they finish). `env` is the worker slot's."""
        runs, values = [], []
        for i, seed in enumerate(seeds):
            log = trial.run_dir / ("run.log" if i == 0 else f"run-seed{seed}.log")
            run = self.runner.train(trial, seed, log, on_process=on_process, on_tick=on_tick, env=env)
            runs.append(run)
            if run.failure:
                reason = run.reason if i == 0 else f"run with seed {seed}: {run.reason}"
                return Measured(run.failure, reason, values, seeds[:len(values)], runs)
            values.append(run.metric)
            target = best() if callable(best) else best
            if i == 0 and target is not None:
                screen = self.decider.decide(values, target, self.maximize, sigma, net_lines)
                if not screen.keep:
                    return Measured("discard", screen.reason, values, seeds[:1], runs)
        done = seeds[:len(values)]
        ignored = self.runner.seed_ignored([r.artifacts for r in runs]) if len(values) > 1 else ""
        if ignored:
            return Measured("invalid", ignored, values, done, runs)
        note = ""
        if len(values) > 1 and len(set(values)) == 1 and sigma > 0:  # converged, or the seed is ignored: no fingerprint tells
            note = f" (identical across {len(values)} seeds; no fingerprint.json to tell convergence from an ignored seed)"
        target = best() if callable(best) else best
        if target is None:
            return Measured("keep", "baseline" + (f" over {len(values)} seeds" if len(values) > 1 else "") + note,
                            values, done, runs)
        decision = self.decider.decide(values, target, self.maximize, sigma, net_lines)
        return Measured("keep" if decision.keep else "discard", f"mean of {len(values)} seeds: {decision.reason}{note}",
                        values, done, runs)
