"""Keep or discard a measured candidate against the best so far."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Decision:
    keep: bool
    reason: str


class Decider(Protocol):
    """Keep or discard: `values` are the candidate's metric over its runs so far (one, on the screen), `best` the
    best mean, `sigma` the noise between seeds pooled over the segment, `net_lines` what the change adds."""

    def decide(self, values: list[float], best: float, maximize: bool, sigma: float = 0.0, net_lines: int = 0) -> Decision: ...


def spread(values: list[float]) -> float:
    """The sample standard deviation (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class NoiseAware:
    """Keep only a gain beyond the noise: better than the best by more than k·σ.

    σ is the larger of the noise pooled over the segment and the candidate's own spread between its seeds, so a
    candidate whose seeds disagree (one lucky run, a busy machine) needs a gain beyond its own noise: with seeds
    1.970 and 2.711 against a pooled σ of 0.015, σ is 0.52. Used twice per candidate: on its first run (a screen),
    then on the mean over fresh seeds (the decision). With σ = 0 (a deterministic task) it is Karpathy's rule:
    strictly better.
    """

    def __init__(self, k: float = 2.0, cost_per_added_line: float = 0.0, keep_simplifications: bool = True):
        self.k = k
        self.line_cost = cost_per_added_line
        self.simplify = keep_simplifications

    def decide(self, values: list[float], best: float, maximize: bool, sigma: float = 0.0, net_lines: int = 0) -> Decision:
        """Keep a gain beyond k·σ plus the price of the lines it adds, or a simplification that holds within k·σ."""
        candidate = sum(values) / len(values)
        own = spread(values)
        sigma_used = max(sigma, own)
        gain = candidate - best if maximize else best - candidate
        noise = self.k * sigma_used
        margin = noise + self.line_cost * max(0, net_lines)
        why = f"{self.k:g}σ" + (" (its own seeds' spread)" if own > sigma else "") + (
            f" + {max(0, net_lines)} added lines" if self.line_cost and net_lines > 0 else "")
        if gain > margin:
            return Decision(True, f"{candidate:.6f} beats the best {best:.6f} by {gain:.6f} > {why} = {margin:.6f}")
        if self.simplify and net_lines < 0 and gain >= -noise:
            return Decision(True, f"simplification: {net_lines} lines, {candidate:.6f} within {self.k:g}σ = {noise:.6f} of the best {best:.6f}")
        return Decision(False, f"{candidate:.6f} vs the best {best:.6f}: gain {gain:+.6f} is not above {why} = {margin:.6f}")


class StrictlyBetter:
    """Karpathy's rule: keep only a candidate strictly better than the best, noise or not."""

    def decide(self, values: list[float], best: float, maximize: bool, sigma: float = 0.0, net_lines: int = 0) -> Decision:
        candidate = sum(values) / len(values)
        better = candidate > best if maximize else candidate < best
        word = "above" if maximize else "below"
        if better:
            return Decision(True, f"{candidate:.6f} is {word} the best {best:.6f}")
        return Decision(False, f"{candidate:.6f} is not {word} the best {best:.6f}")
