"""Wire a workspace, its config, an agent and an executor into a Loop under the tag's lock, and resume safely."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

from autoresearch import UsageError
from autoresearch.agents import make_agent
from autoresearch.agents.base import check_agent
from autoresearch.config import CONFIG_FILE, Config, load_config, load_config_at
from autoresearch.decide import NoiseAware
from autoresearch.device import detect_device
from autoresearch.earlystop import EarlyStop
from autoresearch.events import Observers
from autoresearch.executors.local import LocalExecutor
from autoresearch.ledger import STATE_DIR, Ledger
from autoresearch.lock import TagLock
from autoresearch.loop import Loop, Settings
from autoresearch.measure import Measurement
from autoresearch.process import run_streaming
from autoresearch.reporter import Reporter
from autoresearch.runner import Runner, RunSpec
from autoresearch.sandbox import make_sandbox, resolve_protected
from autoresearch.signals import WATCH
from autoresearch.slots import Slot, make_slots
from autoresearch.strategies import make_strategy
from autoresearch.workspace import Workspace


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (record, clean up), then exit code 143."""


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
    return Workspace(root, config.editable, list(dict.fromkeys(config.locked + [CONFIG_FILE])))


def build_runner(root: Path, config: Config, seconds: float, device: str, echo=print, executor=None,
                 runner_class=Runner, locked_hash: str | None = None, ledger: Ledger | None = None) -> Runner:
    """The Runner for this workspace: its commands and limits, the sandbox, and the paths it hides and watches;
    with the `ledger`, the early-stopping hook (curves always recorded; the rule if `[decide] early_stop`)."""
    spec = RunSpec(
        run_command=config.commands.run, metric=config.metric.name, maximize=config.metric.direction == "maximize",
        budget_seconds=seconds, limit_seconds=config.budget.kill_after(seconds),
        startup_allowance=config.budget.resolve_allowance(device == "cuda"), evaluate_command=config.commands.evaluate,
        test_command=config.commands.test, test_metric=config.metric.test_name,
        same_model_distance=config.decide.same_model_distance)
    box = config.sandbox
    sandbox = make_sandbox(box.mode, root / STATE_DIR, box.network, box.writable, echo)
    protected = resolve_protected(root, box.hide, box.protect, box.paths_command, box.readable)
    if sandbox:
        echo(f"Sandbox: bubblewrap; {len(protected.hidden)} held-out path(s) hidden from training, which sees only its "
             f"worktree, Python and {len(protected.protected + protected.readable)} data path(s); "
             f"{len(protected.all())} watched for changes by content")
    else:
        echo(f"Sandbox: none; nothing is hidden from training; {len(protected.all())} held-out path(s) watched for "
             "changes by content")
    runner = runner_class(executor or LocalExecutor(passthrough=box.env), spec, sandbox, protected, root, locked_hash)
    runner.early_stop = EarlyStop(config.decide, seconds, ledger)
    return runner



# -- the Ray executor (issue #13): `--executor ray [--address HOST:PORT]` calls this in place of build_runner ---------
def build_ray_runner(root: Path, config: Config, seconds: float, device: str, echo=print, address: str | None = None,
                     locked_hash: str | None = None, cpus: float = 1):
    """A Runner whose training runs are Ray tasks on a cluster's nodes (a local one on 127.0.0.1 without `address`);
    the head's Runner, as build_runner makes it, keeps the protocol and scores kept candidates here."""
    from autoresearch.executors.ray_runner import make_ray_runner

    local = build_runner(root, config, seconds, device, echo, locked_hash=locked_hash)
    return make_ray_runner(local, config, device, address=address, cpus=cpus, echo=echo)
# -- end of the Ray executor's wiring ---------------------------------------------------------------------------------

def default_tag() -> str:
    return time.strftime("%b%d").lower()


def committed_config(ws: Workspace, commit: str) -> Config:
    """autoresearch.toml as committed at `commit`: what is measured is what is committed."""
    names = ws.names_at(commit)
    if CONFIG_FILE not in names:
        raise UsageError(f"no {CONFIG_FILE} is committed at {commit[:7]}; commit it first")
    return load_config_at(ws.root, commit, names, ws.git_bytes("cat-file", "blob", f"{commit}:{CONFIG_FILE}").decode())


def check_commands(config: Config, ws: Workspace, commit: str) -> None:
    """At the start of a run, before any training: each command's program is installed, and a script it names
    (`python evaluate.py`) is committed at `commit`, where the runs take their files from."""
    names = set(ws.names_at(commit))
    for key in ("run", "evaluate", "test"):
        command = getattr(config.commands, key)
        if not command:
            continue
        try:
            words = [w for w in shlex.split(command) if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
        except ValueError as exc:
            raise UsageError(f"commands.{key} `{command}` cannot be parsed: {exc}") from None
        if not words:
            continue
        if "/" not in words[0] and shutil.which(words[0]) is None:
            raise UsageError(f"commands.{key} runs `{words[0]}`, which is not installed or not on PATH")
        for word in words[1:]:
            if word.startswith("-") or not word.endswith((".py", ".sh")):
                continue
            if not Path(word).is_absolute() and Path(word).as_posix() not in names:
                raise UsageError(f"commands.{key} runs {word}, which is not committed at {commit[:7]}: add and commit "
                                 f"it, or change commands.{key} in {CONFIG_FILE}")
            break


def ensure_branch(ws: Workspace, known: set[str], tag: str, echo) -> str:
    """The commit autoresearch/<tag> starts from: made at HEAD for a new tag. The user's checkout is left as it
    is; its uncommitted changes are named once and are never part of a candidate. A branch with commits the
    harness did not make is refused, so that none of them is ever dropped from it."""
    branch = f"autoresearch/{tag}"
    if ws.git("check-ref-format", "--branch", branch, check=False) == "":
        raise UsageError(f"'{tag}' cannot be part of a git branch name")
    dirty = ws.dirty_paths()
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        echo(f"Uncommitted changes in your checkout are left alone and are not part of any candidate: {shown}")
    tip = ws.resolve(f"refs/heads/{branch}")
    if tip is None:
        head = ws.resolve("HEAD")
        if head is None:
            raise UsageError(f"{ws.root} has no commit yet; commit the task's files first")
        committed_config(ws, head)  # refused before the branch exists, so a later run starts from the fixed commit
        ws.move_ref(f"refs/heads/{branch}", head, None)
        return head
    if known and tip not in known:
        raise UsageError(f"{branch} has commits autoresearch did not make (its tip is {tip[:7]}); the branch is the "
                         f"harness's: keep them on a branch of your own (git branch mine {tip[:7]}), point {branch} back "
                         f"at its best (git branch -f {branch} <best>), or start a new --tag from them")
    return tip


def protocol_of(config: Config, settings: Settings, seconds: float, ws: Workspace, commit: str) -> dict:
    """What a tag's measurements must share: a change of any of these is a new tag or a new segment."""
    return {"budget_seconds": float(seconds), "seeds": settings.seeds, "baseline_seeds": settings.baseline_seeds,
            "threshold_sigmas": config.decide.threshold_sigmas, "device": settings.device,
            "run": config.commands.run, "evaluate": config.commands.evaluate, "test": config.commands.test,
            "locked_hash": ws.locked_hash_at(commit)}


def check_protocol(ledger: Ledger, protocol: dict, remeasure: bool, echo) -> None:
    """A tag is measured under one protocol: a run under another is refused; `baseline` starts a new segment."""
    recorded = ledger.protocol()
    if recorded is None or recorded == protocol:
        if recorded is None:
            ledger.start_segment(protocol)
        return
    shown = lambda v: f"{v:g}" if isinstance(v, float) else repr(v)
    differs = ", ".join(f"{k} {shown(recorded.get(k))} → {shown(protocol[k])}" if k != "locked_hash" else "the locked files"
                        for k in protocol if recorded.get(k) != protocol[k])
    if not remeasure:
        raise UsageError(f"tag '{ledger.tag}' was measured under another protocol ({differs}); use a new --tag, or run "
                         "`autoresearch baseline` with these settings (e.g. --budget) to start a new measured segment")
    segment = ledger.start_segment(protocol)
    echo(f"Segment {segment} of {ledger.branch}: {differs}. Earlier measurements are kept but not compared with new ones.")


def run_session(root: Path, tag: str | None = None, agent_name: str | None = None, budget: float | None = None,
                seed: int = 42, max_experiments: int | None = None, max_hours: float | None = None,
                echo=print, agent=None, max_cost: float | None = None, agent_overrides: dict | None = None,
                remeasure: bool = False, workers: int = 1, gpus: str | None = None, strategy: str = "greedy",
                executor: str = "local", address: str | None = None, observers=()) -> tuple[Ledger, bool]:
    """Run the loop on autoresearch/<tag> under its lock; returns the ledger and whether the metric is maximized.

    `agent`, if given, is any object with the Agent protocol; else one is made from `agent_name` or the config,
    with `agent_overrides` (model, base_url, command, ...) laid over the config's [agent] table.
    Ctrl-C raises KeyboardInterrupt and SIGTERM `Terminated` after the loop has recorded and cleaned up.
    `workers` trials run at once, each on a slot of its own (`gpus`, or a share of the cores); `strategy` picks
    their parents (greedy, parallel, tree); `executor` "ray" runs them as Ray tasks (at `address`, else a local Ray).
    `observers` (events.Observer) are told what happens: a live view, an experiment tracker; one that fails is
    switched off with a warning, and each is closed when the session ends.
    """
    events = Observers(observers, warn=echo)
    search = make_strategy(strategy, seed)  # a bad name is an error before anything starts
    root = Path(root).resolve()
    head_config = load_config(root)  # a readable config in the checkout, or a one-line error
    tag = tag or default_tag()
    lock = TagLock(root / STATE_DIR, tag).acquire()
    previous_handler, results_lock = signal.getsignal(signal.SIGTERM), None
    try:
        if lock.took_over:
            echo(f"Taking over tag '{tag}' from pid {lock.took_over.get('pid')} on {lock.took_over.get('host')}, "
                 "which is gone; what it left running is recorded and stopped.")
        branch = f"autoresearch/{tag}"
        ledger = Ledger(root, branch, head_config.metric.name, head_config.metric.direction == "maximize")
        ws = open_workspace(root, head_config)
        start = ensure_branch(ws, ledger.commits(), tag, echo)
        best = ledger.best()
        parent = best.commit_sha if best else start  # what the next candidate, or the baseline, starts from
        config = committed_config(ws, parent)
        ws = open_workspace(root, config)
        ws.identity  # who commits, read before any agent runs: never an identity a CLI writes into .git/config
        check_commands(config, ws, parent)
        agent_settings = config.agent.model_copy(update={k: v for k, v in (agent_overrides or {}).items() if v is not None})
        if agent is None and not remeasure:  # re-measuring proposes nothing, so it needs no agent (nor its key)
            agent = make_agent(agent_name or config.agent.name, agent_settings, seed=seed, workspace=root, tag=tag)
        if executor not in ("local", "ray"):
            raise UsageError(f"unknown executor {executor!r} (local or ray)")
        ray = executor == "ray"
        if ray:
            from autoresearch.executors.ray_runner import cluster_device
        device = cluster_device(address, echo) if ray else detect_device()  # where the runs go decides their device
        cuda = device == "cuda"
        # Ray places each run on a node with a free GPU (or CPU): the slots only count the runs under way
        if ray and workers < 1:
            raise UsageError(f"--workers must be at least 1, not {workers}")
        slots = [Slot(i, "a Ray task") for i in range(workers)] if ray else make_slots(workers, device, gpus)
        seconds = budget if budget is not None else config.budget.resolve_seconds(cuda)
        program = ws.git_bytes("cat-file", "blob", f"{parent}:{config.program}").decode("utf-8", "replace")
        settings = Settings(
            program=program, metric=config.metric.name, maximize=config.metric.direction == "maximize", seed=seed,
            device=device, max_experiments=max_experiments, max_hours=max_hours, max_cost=max_cost,
            history_limit=agent_settings.history_limit, seeds=config.decide.resolve_seeds(cuda),
            baseline_seeds=config.decide.resolve_baseline_seeds(cuda))
        ledger.maximize = settings.maximize
        results_lock = claim_results_table(ws, ledger, echo)
        echo(f"Branch {branch} | agent {agent.name if agent else 'none'} | {device} | budget {seconds:g}s, "
             f"killed at {config.budget.kill_after(seconds):g}s | {settings.metric} ({config.metric.direction}) | "
             f"{settings.seeds} seed(s) per candidate, {settings.baseline_seeds} per baseline, keep beyond {config.decide.threshold_sigmas:g}σ")
        if ray:  # the runs' logs are on the nodes: no loss curves, so no early stopping
            if config.decide.early_stop:
                echo("Early stopping is not applied with --executor ray: the runs' progress lines stay on their nodes.")
            runner = build_ray_runner(root, config, seconds, device, echo, address=address, locked_hash=ws.locked_hash_at(parent))
        else:
            runner = build_runner(root, config, seconds, device, echo, locked_hash=ws.locked_hash_at(parent), ledger=ledger)
        decider = NoiseAware(config.decide.threshold_sigmas, config.decide.cost_per_added_line, config.decide.keep_simplifications)
        if agent is not None:
            check_agent(agent)
        if len(slots) > 1 or search.name != "greedy":
            echo(f"Workers: {len(slots)} ({', '.join(slot.label for slot in slots)}) | strategy {search.name}")
        loop = Loop(ws, ledger, agent, Measurement(runner, decider, settings.maximize), settings, Reporter(echo),
                    strategy=search, slots=slots, events=events)
        try:
            check_protocol(ledger, protocol_of(config, settings, seconds, ws, parent), remeasure, echo)
        except UsageError:
            loop.recover()  # what a kill left is cleaned up either way
            raise
        global _terminated
        _terminated = False
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            with WATCH:  # a signal from a run is that run's offence; any other interrupts as before
                loop.remeasure() if remeasure else loop.run()
        except KeyboardInterrupt:
            if _terminated:  # the interrupt a process under way turned SIGTERM into is still SIGTERM
                raise Terminated() from None
            raise
        return ledger, settings.maximize
    finally:
        events.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_handler)
        if results_lock is not None:
            results_lock.release()
        lock.release()


_terminated = False


def _raise_terminated(signum, frame):
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    raise Terminated()


def claim_results_table(ws: Workspace, ledger: Ledger, echo) -> TagLock | None:
    """The root results.tsv is written by one run at a time (the first tag to start), and never when it is a file
    of the user's (tracked by git); every tag always has its own copy under .autoresearch/tags/<tag>/."""
    own = f".autoresearch/tags/{ledger.tag}/results.tsv"
    if ws.git("ls-files", "--", "results.tsv").strip():
        ledger.results_path = None
        echo(f"results.tsv is tracked by git in your checkout, so it is left alone; this tag's table is {own}")
        return None
    try:
        return TagLock(ws.root / STATE_DIR, "_results.tsv").acquire()  # held until the run ends
    except UsageError:
        ledger.results_path = None
        echo(f"Another tag's run writes results.tsv; this tag's table is {own}")
        return None


def open_ledger(root: Path, tag: str | None) -> tuple[Ledger, bool]:
    """The ledger of autoresearch/<tag>, else of the checked-out autoresearch branch, else of the latest one."""
    root = Path(root).resolve()
    config = load_config(root)
    if not (root / STATE_DIR / "journal.sqlite").exists():
        raise UsageError(f"no experiments recorded in {root} yet; start with `autoresearch run`")
    maximize = config.metric.direction == "maximize"
    if tag:
        branch = f"autoresearch/{tag}"
    else:
        current = open_workspace(root, config).branch()
        branch = current
        if not current.startswith("autoresearch/"):
            try:
                db = sqlite3.connect(root / STATE_DIR / "journal.sqlite")
                last = db.execute("SELECT branch FROM experiments ORDER BY id DESC LIMIT 1").fetchone()
                db.close()
            except sqlite3.DatabaseError:
                last = None  # the Ledger below says what is wrong with it
            branch = last[0] if last else current
    return Ledger(root, branch, config.metric.name, maximize), maximize
