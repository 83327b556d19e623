"""Keep or discard a measured candidate against the best so far."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Decision:
    keep: bool
    reason: str


class Decider(Protocol):
    def decide(self, candidate: float, best: float, maximize: bool) -> Decision: ...


class NoiseAware:
    """Keep only a gain beyond the noise: better than the best by more than k·σ, σ measured between seeds.

    Used twice per candidate: on its first run (a screen), then on the mean over fresh seeds (the decision).
    With σ = 0 (a deterministic task) it is Karpathy's rule: strictly better.
    """

    def __init__(self, k: float = 2.0, cost_per_added_line: float = 0.0, keep_simplifications: bool = True):
        self.k = k
        self.line_cost = cost_per_added_line
        self.simplify = keep_simplifications

    def decide(self, candidate: float, best: float, maximize: bool, sigma: float = 0.0, net_lines: int = 0) -> Decision:
        """Keep a gain beyond k·σ plus the price of the lines it adds, or a simplification that holds within k·σ."""
        gain = candidate - best if maximize else best - candidate
        noise = self.k * sigma
        margin = noise + self.line_cost * max(0, net_lines)
        why = f"{self.k:g}σ" + (f" + {max(0, net_lines)} added lines" if self.line_cost and net_lines > 0 else "")
        if gain > margin:
            return Decision(True, f"{candidate:.6f} beats the best {best:.6f} by {gain:.6f} > {why} = {margin:.6f}")
        if self.simplify and net_lines < 0 and gain >= -noise:
            return Decision(True, f"simplification: {net_lines} lines, {candidate:.6f} within {self.k:g}σ = {noise:.6f} of the best {best:.6f}")
        return Decision(False, f"{candidate:.6f} vs the best {best:.6f}: gain {gain:+.6f} is not above {why} = {margin:.6f}")


class StrictlyBetter:
    """Karpathy's rule: keep only a candidate strictly better than the best (no noise model yet)."""

    def decide(self, candidate: float, best: float, maximize: bool) -> Decision:
        better = candidate > best if maximize else candidate < best
        word = "above" if maximize else "below"
        if better:
            return Decision(True, f"{candidate:.6f} is {word} the best {best:.6f}")
        return Decision(False, f"{candidate:.6f} is not {word} the best {best:.6f}")
