"""The agent protocol: propose(context) -> Proposal, observe(result); and what the context holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Proposal:
    description: str  # one line: goes into results.tsv and the commit message
    files: dict[str, str]  # path relative to the workspace -> the file's full new text


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


@dataclass
class Result:
    description: str
    status: str  # keep | discard | crash | timeout | invalid | duplicate
    metric: float | None
    reason: str = ""
    extra: dict = field(default_factory=dict)


class Agent(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal | None: ...

    def observe(self, result: Result) -> None: ...
