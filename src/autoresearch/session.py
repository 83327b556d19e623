"""Wire a workspace, its config, an agent and an executor into a Loop, and resume safely after a kill."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from autoresearch import UsageError
from autoresearch.agents import make_agent
from autoresearch.config import Config, load_config
from autoresearch.decide import NoiseAware
from autoresearch.device import detect_device
from autoresearch.executors.local import LocalExecutor
from autoresearch.ledger import STATE_DIR, Ledger
from autoresearch.loop import Loop, Settings
from autoresearch.process import run_streaming
from autoresearch.runner import Runner, RunSpec
from autoresearch.sandbox import make_sandbox, resolve_protected
from autoresearch.workspace import Workspace


def prepare_workspace(root: Path, echo=print) -> None:
    """Run the workspace's locked set-up step (`commands.setup`), streaming its output."""
    config = load_config(root)
    if not config.commands.setup:
        echo("This workspace has no setup command; nothing to prepare.")
        return
    echo(f"$ {config.commands.setup}")
    code, _ = run_streaming(config.commands.setup, Path(root), echo=echo)
    if code != 0:
        raise UsageError(f"the setup step `{config.commands.setup}` failed with exit code {code}")


def open_workspace(root: Path, config: Config) -> Workspace:
    """The workspace's git checks, with autoresearch.toml always locked: the protocol itself."""
    return Workspace(root, config.editable, list(dict.fromkeys(config.locked + ["autoresearch.toml"])))


def build_runner(root: Path, config: Config, ws: Workspace, seconds: float, device: str, echo=print,
                 executor=None, runner_class=Runner) -> Runner:
    """The Runner for this workspace: its commands and limits, the sandbox, and the paths it hides and watches."""
    spec = RunSpec(
        run_command=config.commands.run, metric=config.metric.name, maximize=config.metric.direction == "maximize",
        budget_seconds=seconds, limit_seconds=config.budget.kill_after(seconds),
        startup_allowance=config.budget.resolve_allowance(device == "cuda"), evaluate_command=config.commands.evaluate,
        test_command=config.commands.test, test_metric=config.metric.test_name,
        same_model_distance=config.decide.same_model_distance)
    box = config.sandbox
    sandbox = make_sandbox(box.mode, root / STATE_DIR, box.network, box.writable, echo)
    protected = resolve_protected(root, box.hide, box.protect, box.paths_command)
    echo(f"Sandbox: {'bubblewrap' if sandbox else 'none'}; {len(protected.hidden)} held-out path(s) hidden from training, "
         f"{len(protected.all())} watched for changes")
    return runner_class(ws, executor or LocalExecutor(), spec, sandbox, protected)


def default_tag() -> str:
    return time.strftime("%b%d").lower()


def prepare_branch(ws: Workspace, tag: str) -> str:
    """Check out autoresearch/<tag>, refusing a dirty tree; on that branch, stray edits to editable files are the
    harness's own half-made candidate (from a kill) and are discarded, anything else is the user's and is kept."""
    branch = f"autoresearch/{tag}"
    dirty = ws.dirty_paths()
    if dirty and ws.branch() == branch and all(ws.is_editable(p) for p in dirty):
        ws.reset_hard("HEAD")
    ws.ensure_clean()
    ws.checkout_branch(tag)
    return branch


def run_session(root: Path, tag: str | None = None, agent_name: str | None = None, budget: float | None = None,
                seed: int = 42, max_experiments: int | None = None, max_hours: float | None = None,
                echo=print, agent=None, max_cost: float | None = None, agent_overrides: dict | None = None,
                remeasure: bool = False) -> tuple[Ledger, bool]:
    """Run the loop on autoresearch/<tag>; returns the ledger and whether the metric is maximized.

    `agent`, if given, is any object with the Agent protocol; else one is made from `agent_name` or the config,
    with `agent_overrides` (model, base_url, command, ...) laid over the config's [agent] table.
    """
    root = Path(root).resolve()
    config = load_config(root)
    ws = open_workspace(root, config)
    agent_settings = config.agent.model_copy(update={k: v for k, v in (agent_overrides or {}).items() if v is not None})
    if agent is None and not remeasure:  # re-measuring proposes nothing, so it needs no agent (nor its key)
        agent = make_agent(agent_name or config.agent.name, agent_settings, seed=seed, workspace=root)
    branch = prepare_branch(ws, tag or default_tag())
    device = detect_device()
    seconds = budget if budget is not None else config.budget.resolve_seconds(device == "cuda")
    settings = Settings(
        program=(root / config.program).read_text(encoding="utf-8"), metric=config.metric.name,
        maximize=config.metric.direction == "maximize", seed=seed, device=device, max_experiments=max_experiments,
        max_hours=max_hours, max_cost=max_cost, history_limit=agent_settings.history_limit,
        seeds=config.decide.resolve_seeds(device == "cuda"))
    ledger = Ledger(root, branch, config.metric.name)
    echo(f"Branch {branch} | agent {agent.name if agent else 'none'} | {device} | budget {seconds:g}s, "
         f"killed at {config.budget.kill_after(seconds):g}s | "
         f"{settings.metric} ({config.metric.direction}) | {settings.seeds} seed(s), keep beyond {config.decide.threshold_sigmas:g}σ")
    runner = build_runner(root, config, ws, seconds, device, echo)
    decider = NoiseAware(config.decide.threshold_sigmas, config.decide.cost_per_added_line, config.decide.keep_simplifications)
    loop = Loop(ws, ledger, agent, runner, decider, settings, echo)
    if remeasure:
        loop.remeasure()
    else:
        loop.run()
    return ledger, settings.maximize


def open_ledger(root: Path, tag: str | None) -> tuple[Ledger, bool]:
    """The ledger of autoresearch/<tag>, else of the checked-out autoresearch branch, else of the latest one."""
    root = Path(root).resolve()
    config = load_config(root)
    if not (root / STATE_DIR / "journal.sqlite").exists():
        raise UsageError(f"no experiments recorded in {root} yet; start with `autoresearch run`")
    if tag:
        branch = f"autoresearch/{tag}"
    else:
        current = open_workspace(root, config).branch()
        branch = current
        if not current.startswith("autoresearch/"):
            db = sqlite3.connect(root / STATE_DIR / "journal.sqlite")
            last = db.execute("SELECT branch FROM experiments ORDER BY id DESC LIMIT 1").fetchone()
            db.close()
            branch = last[0] if last else current
    return Ledger(root, branch, config.metric.name), config.metric.direction == "maximize"
