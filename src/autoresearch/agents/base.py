"""The agent protocol: propose(context) -> Proposal, observe(result); and what the context holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Usage:
    """What proposing cost: tokens and the estimated dollars (0 for offline agents)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def add(self, other: "Usage") -> "Usage":
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cost_usd + other.cost_usd, self.calls + other.calls)


@dataclass
class Proposal:
    description: str  # one line: goes into results.tsv and the commit message
    files: dict[str, str]  # path relative to the workspace -> the file's full new text
    refused: str = ""  # why the harness refuses it unrun (e.g. an edit to a locked file): recorded as `invalid`


@dataclass
class CrashToFix:
    description: str
    files: dict[str, str]  # the crashed candidate's editable files
    log_tail: str
    attempt: int  # 1 or 2


@dataclass
class Context:
    program: str  # program.md's text
    files: dict[str, str]  # the editable files of the parent (the best commit)
    locked: dict[str, str]  # the locked files, for reference
    history: list[dict]  # results.tsv rows, oldest first
    metric: str
    maximize: bool
    best: float | None
    device: str = "cpu"
    fix: CrashToFix | None = None  # set when the agent may fix its crashed idea
    kept_diffs: list[dict] = field(default_factory=list)  # {"description", "diff", "metric"} of kept changes, oldest first
    recent_failures: list[dict] = field(default_factory=list)  # last N discarded/crashed ideas: description, status, reason, metric
    noise_floor: float | None = None  # σ of the metric between seeds, when known
    editable: list[str] = field(default_factory=list)  # the editable globs
    workspace: str = ""  # the workspace's root, for agents that work in it (command)
    parent_commit: str = ""  # the commit the files come from: the best so far, or (tree search) another node
    lineage: list[dict] = field(default_factory=list)  # the parent node's ancestors, root first, then the parent itself:
    # {"id", "commit", "metric", "status", "description"}
    parent_is_best: bool = True  # False when the strategy chose a node other than the best to edit


@dataclass
class Result:
    description: str
    status: str  # keep | discard | crash | timeout | invalid | duplicate
    metric: float | None
    reason: str = ""
    extra: dict = field(default_factory=dict)


class Agent(Protocol):
    """`spent` is the running total of what proposing has cost; the loop bills each change of it to an experiment."""

    name: str
    spent: Usage

    def propose(self, context: Context) -> Proposal | None: ...

    def observe(self, result: Result) -> None: ...


def check_agent(agent) -> None:
    """Before the baseline: an agent's own `check()` (a cheap call, or a look at its settings), if it has one,
    so that a dead endpoint or a missing key is a one-line error in seconds, not after minutes of baseline."""
    check = getattr(agent, "check", None)
    if callable(check):
        check()
