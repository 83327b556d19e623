"""A trial: one candidate in its own worktree, committed there, kept under a ref, run from there, then cleaned up."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from autoresearch.ledger import STATE_DIR
from autoresearch.orphans import pid_alive
from autoresearch.workspace import Workspace


@dataclass
class Trial:
    """One candidate (or a baseline: then commit == parent). Its row id names its ref, worktree and run folder."""

    id: int
    tag: str
    parent: str
    commit: str
    tree: Workspace  # the worktree the candidate is written, committed, trained and evaluated in
    run_dir: Path  # logs, and the models each run saved (kept only for a keep)

    @property
    def ref(self) -> str:
        return trial_ref(self.tag, self.id)


def trial_ref(tag: str, row_id: int) -> str:
    return f"refs/autoresearch/{tag}/{row_id}"


class Trials:
    """Makes and ends the trials of one tag in a workspace. The user's checkout is never touched: each trial is a
    detached worktree under .autoresearch/trials/<tag>/<id> at its parent commit."""

    def __init__(self, ws: Workspace, tag: str):
        self.ws, self.tag = ws, tag
        self.state = ws.root / STATE_DIR

    def folder(self, row_id: int) -> Path:
        return self.state / "trials" / self.tag / str(row_id)

    def run_dir(self, row_id: int) -> Path:
        return self.state / "runs" / str(row_id)

    def open(self, row_id: int, parent: str, files: dict[str, str] | None, message: str) -> Trial:
        """A worktree at `parent`; with `files`, the candidate written and committed there. Either way its commit
        gets the trial's ref, so it resolves after the worktree is gone."""
        tree = self.ws.add_worktree(self.folder(row_id), parent)
        commit = parent
        if files is not None:
            tree.write_files(files)
            commit = tree.commit_editable(message)
        self.ws.move_ref(trial_ref(self.tag, row_id), commit, None)
        return Trial(row_id, self.tag, parent, commit, tree, self.run_dir(row_id))

    def reopen(self, row_id: int, parent: str, commit: str) -> Trial:
        """A worktree at an already committed candidate (a re-measurement, or a retry after a kill)."""
        tree = self.ws.add_worktree(self.folder(row_id), commit)
        self.ws.move_ref(trial_ref(self.tag, row_id), commit, None)
        return Trial(row_id, self.tag, parent, commit, tree, self.run_dir(row_id))

    def close(self, row_id: int, keep_models: bool) -> None:
        """The worktree goes; the run folder keeps its logs, and its models only for a keep (to be re-scored)."""
        self.ws.remove_worktree(self.folder(row_id))
        if not keep_models:
            for models in self.run_dir(row_id).glob("artifacts-seed*"):
                shutil.rmtree(models, ignore_errors=True)

    def leftovers(self) -> list[Path]:
        """Worktrees left by a kill: this tag's trials, and command-agent scratch trees whose process is gone."""
        top, scratch = self.state / "trials" / self.tag, self.state / "agent"
        found = sorted(p for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
        if scratch.is_dir():
            found += sorted(p for p in scratch.iterdir() if p.is_dir() and not (p.name.isdigit() and pid_alive(int(p.name))))
        return found

