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


class StrictlyBetter:
    """Karpathy's rule: keep only a candidate strictly better than the best (no noise model yet)."""

    def decide(self, candidate: float, best: float, maximize: bool) -> Decision:
        better = candidate > best if maximize else candidate < best
        word = "above" if maximize else "below"
        if better:
            return Decision(True, f"{candidate:.6f} is {word} the best {best:.6f}")
        return Decision(False, f"{candidate:.6f} is not {word} the best {best:.6f}")
