"""A placeholder built-in agent: nudges one UPPER_CASE numeric constant of train.py at random. Not a search."""

from __future__ import annotations

import math
import random

from autoresearch.agents.base import Context, Proposal, Result, Usage
from autoresearch.agents.tune import compact, find_constants, rewrite


def nudge(value: int | float, rng: random.Random) -> int | float:
    if isinstance(value, int):
        if value > 1 and value & (value - 1) == 0:  # powers of two stay powers of two
            return value * 2 if rng.random() < 0.5 else value // 2
        return max(0, value + rng.choice((-1, 1)) * max(1, round(abs(value) * 0.25)))
    if value == 0:
        return 0.01
    return float(f"{value * math.exp(rng.uniform(-0.5, 0.5)):.3g}")


class PerturbAgent:
    """Picks one constant of the target file and multiplies it by e^U(-0.5, 0.5) (ints: ±25%, powers of two: ×2 or ÷2).

    Honest about what it is: a random walk for offline smoke runs, with no model of what works. The constants
    it may touch are those the tune agent finds (see agents/tune.py), rewritten the same way.
    """

    name = "perturb"

    def __init__(self, seed: int = 0, target: str = "train.py"):
        self.spent = Usage()  # offline: proposing costs nothing
        self.rng = random.Random(seed)
        self.target = target

    def propose(self, context: Context) -> Proposal | None:
        if context.fix is not None:
            return None  # it cannot reason about a crash: give the idea up
        source = context.files.get(self.target)
        constants = find_constants(source, context.device) if source is not None else []
        if not constants:
            return None
        constant = self.rng.choice(constants)
        new = nudge(constant.value, self.rng)
        if new == constant.value:
            return None
        return Proposal(f"{constant.name} {compact(constant.value)}→{compact(new)}", {self.target: rewrite(source, [(constant, new)])})

    def observe(self, result: Result) -> None:
        pass
