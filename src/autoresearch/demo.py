"""`autoresearch demo`: a workspace on the embedded corpus, prepared, then a few loop experiments on the CPU, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import CONFIG_FILE
from autoresearch.report import write_report
from autoresearch.session import prepare_workspace, run_session
from autoresearch.status import render_status
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


def run_demo(directory: Path, force: bool, budget: float, experiments: int, echo=print, observers=()) -> Path:
    """Init, prepare, then the loop with the built-in agent for `experiments` experiments of `budget` seconds."""
    workspace = make_demo_workspace(Path(directory), force)
    echo(f"Workspace: {workspace.resolve()}")
    prepare_workspace(workspace, echo)
    echo(f"$ autoresearch run --tag demo --agent tune --budget {budget:g} --max-experiments {experiments}")
    echo("The built-in 'tune' agent searches train.py's constants with Optuna (TPE); no key, no network.")
    ledger, maximize = run_session(workspace, tag="demo", agent_name="tune", budget=budget, max_experiments=experiments,
                                   echo=echo, observers=observers)
    render_status(ledger, maximize)
    report = write_report(ledger, maximize)
    echo("")
    echo(f"Report: {report.html} (one file, open it in a browser), with {report.md.name} and {report.png.name} beside it;")
    echo(f"made again at any moment, during a run too, by: cd {directory} && autoresearch report")
    echo(f"Results: {workspace / 'results.tsv'} (Karpathy's five columns), the journal {workspace / '.autoresearch' / 'journal.sqlite'},")
    echo(f"and one log per run under {workspace / '.autoresearch' / 'runs'}. The branch autoresearch/demo holds every kept change;")
    echo("every experiment's commit, kept or not, is under refs/autoresearch/demo/<id> (git show refs/autoresearch/demo/3).")
    echo(f"Continue: cd {directory} && autoresearch run --tag demo --budget {budget:g} --max-experiments 20   (resumes this branch,")
    echo(f"under the same {budget:g} s budget; another budget is a new tag, or `autoresearch baseline --tag demo --budget S`)")
    echo("With an LLM: pip install -e '.[llm]', then autoresearch run --agent openai --model gpt-5 (key in $OPENAI_API_KEY),")
    echo("--agent anthropic --model claude-sonnet-4-5 (key in $ANTHROPIC_API_KEY), or --agent command --command '<coding-agent CLI>'.")
    return workspace
