"""Search strategies: which node the next proposal edits, and when a worker may start one."""

from __future__ import annotations

import random
from typing import Protocol

from autoresearch import UsageError
from autoresearch.ledger import Ledger, Row

STRATEGIES = ("greedy", "parallel", "tree")


class Strategy(Protocol):
    """`parent` picks the node (a measured row) the next proposal edits; `ready` says whether an idle worker may
    start one now, with `busy` workers running. `rebase` is whether a candidate kept against a parent that is no
    longer the best is re-based onto the best (greedy, parallel) or decided against the best as it is (tree)."""

    name: str
    rebase: bool

    def parent(self, ledger: Ledger) -> Row: ...

    def ready(self, busy: int, workers: int) -> bool: ...


class Greedy:
    """Karpathy's: every proposal edits the best so far; each idle worker starts one at once."""

    name, rebase = "greedy", True

    def parent(self, ledger: Ledger) -> Row:
        return ledger.best()

    def ready(self, busy: int, workers: int) -> bool:
        return True


class Parallel(Greedy):
    """Rounds of K: K proposals from the current best, and the next round only when the whole round has finished."""

    name = "parallel"

    def __init__(self):
        self.left = 0  # proposals the current round may still start

    def ready(self, busy: int, workers: int) -> bool:
        if self.left == 0 and busy == 0:
            self.left = workers
        if self.left == 0:
            return False
        self.left -= 1
        return True


class Tree:
    """AIDE-style: every measured trial is a node; the parent is the best node, or, with probability `explore`,
    another of the `top_k` best (a discarded node included, through its ref). Crashed nodes get debug children
    from the loop; a keep must beat the best when it finishes, and the branch follows the best node."""

    name, rebase = "tree", False

    def __init__(self, seed: int = 0, top_k: int = 3, explore: float = 0.5):
        self.rng = random.Random(seed)
        self.top_k, self.explore = max(1, top_k), explore

    def nodes(self, ledger: Ledger) -> list[Row]:
        """The measured nodes of the segment, best first (one per commit: its latest measurement)."""
        latest: dict[str, Row] = {}
        for r in ledger.where("segment = ? AND status IN ('keep', 'discard') AND metric IS NOT NULL AND commit_sha IS NOT NULL",
                              (ledger.segment,)):
            latest[r.commit_sha] = r
        sign = -1.0 if ledger.maximize else 1.0
        return sorted(latest.values(), key=lambda r: (sign * r.metric, r.id))

    def parent(self, ledger: Ledger) -> Row:
        best = ledger.best()
        others = [r for r in self.nodes(ledger) if r.commit_sha != best.commit_sha][:self.top_k - 1]
        if others and self.rng.random() < self.explore:
            return self.rng.choice(others)
        return best

    def ready(self, busy: int, workers: int) -> bool:
        return True


def make_strategy(name: str, seed: int = 0) -> Strategy:
    if name == "greedy":
        return Greedy()
    if name == "parallel":
        return Parallel()
    if name == "tree":
        return Tree(seed)
    raise UsageError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
