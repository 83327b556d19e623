"""A placeholder built-in agent: nudges one UPPER_CASE numeric constant of train.py at random. Not a search."""

from __future__ import annotations

import ast
import math
import random

from autoresearch.agents.base import Context, Proposal, Result, Usage


def numeric_constants(source: str, cuda: bool) -> list[tuple[str, ast.Constant]]:
    """Module-level `NAME = number` (or `NAME = a if CUDA else b`: the branch for this device) assignments."""
    found = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        if not name.isupper():
            continue
        if isinstance(value, ast.IfExp):
            value = value.body if cuda else value.orelse
        if isinstance(value, ast.Constant) and type(value.value) in (int, float):
            found.append((name, value))
    return found


def replace_literal(source: str, node: ast.Constant, text: str) -> str:
    lines = source.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[:node.col_offset] + text + line[node.end_col_offset:]
    return "".join(lines)


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

    Honest about what it is: a random walk for offline smoke runs and the demo, with no model of what works.
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
        if source is None:
            return None
        constants = [(n, c) for n, c in numeric_constants(source, context.device == "cuda") if not isinstance(c.value, bool)]
        if not constants:
            return None
        name, node = self.rng.choice(constants)
        new = nudge(node.value, self.rng)
        if new == node.value:
            return None
        return Proposal(f"{name} {node.value}→{new}", {self.target: replace_literal(source, node, repr(new))})

    def observe(self, result: Result) -> None:
        pass
