"""`autoresearch demo`: a workspace on the embedded corpus, prepared and trained once on the CPU, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import CONFIG_FILE, load_config
from autoresearch.process import run_streaming
from autoresearch.summary import parse_summary
from autoresearch.workspace import init_workspace


def make_demo_workspace(directory: Path, force: bool) -> Path:
    """A fresh gpt workspace in `directory`; an existing non-empty one is replaced only with --force."""
    if directory.exists() and any(directory.iterdir()):
        if not force:
            raise UsageError(f"{directory} is not empty; remove it, pick another folder, or pass --force to replace it")
        if not (directory / CONFIG_FILE).is_file():
            raise UsageError(f"{directory} is not an autoresearch workspace, so --force will not delete it")
        shutil.rmtree(directory)
    return init_workspace(directory, "gpt", dataset="kjv")


def run_demo(directory: Path, force: bool, budget: float, echo=print) -> dict:
    """Init, prepare, and train the baseline once for `budget` seconds; returns its summary."""
    workspace = make_demo_workspace(Path(directory), force)
    config = load_config(workspace)
    echo(f"Workspace: {workspace.resolve()}")
    echo(f"$ {config.commands.setup}")
    code, _ = run_streaming(config.commands.setup, workspace, echo=echo)
    if code != 0:
        raise UsageError(f"the setup step `{config.commands.setup}` failed with exit code {code}")
    echo(f"$ {config.commands.run}   (budget {budget:g}s)")
    log_path = workspace / ".autoresearch" / "runs" / "baseline" / "run.log"
    code, output = run_streaming(config.commands.run, workspace, {"AUTORESEARCH_TIME_BUDGET": str(budget), "AUTORESEARCH_SEED": "42"},
                                 log_path=log_path, echo=echo)
    summary = parse_summary(output)
    if code != 0 or config.metric.name not in summary:
        raise UsageError(f"the baseline run failed (exit code {code}); its log is {log_path}")
    echo("")
    echo(f"Baseline {config.metric.name}: {summary[config.metric.name]:.6f} after {budget:g}s of training on the CPU.")
    echo(f"Log: {log_path}")
    echo(f"Next: cd {directory} and edit train.py, or continue with an agent once `autoresearch run` lands.")
    return summary
