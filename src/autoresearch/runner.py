"""One run of a committed candidate under the protocol: train (sandboxed), score with the locked evaluator, check."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.artifacts import Refused, take_artifacts
from autoresearch.contention import allowed_seconds
from autoresearch.executors.base import RunOutcome
from autoresearch.executors.local import TAIL_LINES, read_tail
from autoresearch.gitguard import GitGuard
from autoresearch.ledger import STATE_DIR
from autoresearch.sandbox import SUPERVISOR_MARK, Bubblewrap, ProtectedPaths, changed_paths, fingerprint, leftover_processes
from autoresearch.trial import Trial

CODE_SUFFIXES = (".py", ".pth", ".so")  # files Python could import: a run may not plant them in its worktree
FAILED_ON_PATH = re.compile(r"(No such file or directory|Read-only file system|Permission denied|Not a directory|"
                            r"FileNotFoundError|NotADirectoryError|PermissionError|OSError|not a git repository)")
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/[^\s'\":,()\[\]]+)")
FORGED_TOLERANCE = 0.01  # a printed metric better than the evaluator's by more than this share is forged
EVALUATION_ATTEMPTS = 2  # a crashed evaluation is retried once on the saved artifacts, without training again


@dataclass
class RunSpec:
    """The commands and limits of one workspace's runs."""

    run_command: str
    metric: str
    maximize: bool
    budget_seconds: float
    limit_seconds: float  # the harness kills a run here
    startup_allowance: float = 90.0  # a run longer than budget + this is invalid
    evaluate_command: str = ""
    test_command: str = ""
    test_metric: str = ""
    same_model_distance: float = 0.5


@dataclass
class Run:
    failure: str | None  # crash | timeout | invalid, discard (stopped early), or None
    reason: str
    metric: float | None
    out: RunOutcome
    artifacts: Path
    evaluation_seconds: float = 0.0  # the locked evaluator's processes, retries included


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


class Runner:
    """Runs a trial's training and evaluation, and turns what it sees into a status and a reason. Every process it
    starts is reported to `on_process(pid, kind, log)` (kind: train, evaluate or test), so that a later harness can
    stop it if this one is killed."""

    def __init__(self, executor, spec: RunSpec, sandbox: Bubblewrap | None = None, protected: ProtectedPaths | None = None,
                 checkout: Path | None = None, locked_hash: str | None = None):
        self.executor, self.spec, self.sandbox = executor, spec, sandbox
        self.protected = protected or ProtectedPaths()
        self.data_prints = fingerprint(self.protected.all())  # as the session found them
        self.tampered: list[str] = []  # held-out or evaluator data a run changed: the session must stop
        self.checkout = Path(checkout).resolve() if checkout else None  # the user's checkout: its git data is watched
        self.guard = GitGuard(self.checkout) if self.checkout else None
        self.locked_hash = locked_hash  # the locked files' hash at the session's start: each evaluator copy must match
        self.early_stop = None  # an earlystop.EarlyStop: records each training run's curve, may stop a hopeless one

    def protection(self) -> dict:
        """What protected this session's runs, as they had it: recorded with each row, so `status` never claims
        more than a run had."""
        return {"sandbox": "bubblewrap" if self.sandbox else "none", "hidden": len(self.protected.hidden),
                "watched": len(self.protected.all()), "evaluator": self.spec.evaluate_command}

    def _env(self, seed: int, artifacts: Path, trial: Trial, slot: dict[str, str] | None = None) -> dict[str, str]:
        return {**(slot or {}), "AUTORESEARCH_TIME_BUDGET": f"{self.spec.budget_seconds:g}", "AUTORESEARCH_SEED": str(seed),
                "AUTORESEARCH_ARTIFACTS": str(artifacts), "AUTORESEARCH_WORKSPACE": str(trial.tree.root)}

    def train(self, trial: Trial, seed: int, log: Path, on_process=None, on_tick=None, env: dict[str, str] | None = None) -> Run:
        """One training run of the trial with one seed, in its worktree, then the locked evaluator on what it saved.
        `env` is the worker slot's (its GPU, or its share of the cores), given to both processes."""
        artifacts = log.parent / f"artifacts-seed{seed}"
        shutil.rmtree(artifacts, ignore_errors=True)
        artifacts.mkdir(parents=True)
        command, tree = self.spec.run_command, trial.tree
        scratch = log.parent / f"tmp-seed{seed}"  # its own TMPDIR: nothing an earlier run left there reaches it
        shutil.rmtree(scratch, ignore_errors=True)
        if self.sandbox:  # only its worktree and artifacts writable (not its .git link); nothing of the checkout
            binds = [("rw", tree.root), ("ro", tree.root / ".git"), ("rw", artifacts)]
            command = self.sandbox.wrap(command, binds, hidden=self.protected.hidden, tmp=scratch, confined=True,
                                        readable=self.protected.protected + self.protected.readable)
        committed = self.committed_files(trial)
        if self.guard:
            self.guard.tag = trial.tag
        git_before = self.guard.snapshot([tree.root]) if self.guard else None
        code_before = _code_files(tree.root) - committed[0]
        watch = self.early_stop.watch(trial, log) if self.early_stop else None
        out = self.executor.run(tree.root, command, self._env(seed, artifacts, trial, env), self.spec.limit_seconds, log,
                                on_start=_tell(on_process, "train", log), on_tick=watch.ticker(on_tick) if watch else on_tick)
        if watch:
            watch.finish(out)  # curve.json beside the log
        shutil.rmtree(scratch, ignore_errors=True)
        if out.interrupted:
            raise KeyboardInterrupt
        failure, reason = self.check_training(trial, out, committed, code_before, git_before)
        if failure:
            return Run(failure, reason, None, out, artifacts)
        try:
            take_artifacts(artifacts)  # what the run left at its exit, as regular files in a folder of the harness's
        except Refused as exc:
            return Run("invalid", f"an artifact was refused: {exc}; a run must leave plain files in $AUTORESEARCH_ARTIFACTS",
                       None, out, artifacts)
        metric, evaluation_seconds = out.summary.get(self.spec.metric), 0.0
        if self.spec.evaluate_command:
            started = time.monotonic()
            failure, reason, summary = self.evaluate(trial, self.spec.evaluate_command, seed, artifacts,
                                                     log.with_name(log.stem + "-evaluate.log"), _tell(on_process, "evaluate"),
                                                     on_tick, env)
            evaluation_seconds = time.monotonic() - started
            if failure:
                return Run(failure, reason, None, out, artifacts, evaluation_seconds)
            metric, printed = summary.get(self.spec.metric), metric
            forged = self.forged(printed, metric)
            if forged:
                return Run("invalid", forged, None, out, artifacts, evaluation_seconds)
        if not isinstance(metric, float):
            return Run("crash", f"no '{self.spec.metric}' in the summary block", None, out, artifacts, evaluation_seconds)
        if not math.isfinite(metric):
            return Run("crash", f"{self.spec.metric} is {metric}", None, out, artifacts, evaluation_seconds)
        return Run(None, "", metric, out, artifacts, evaluation_seconds)

    def committed_files(self, trial: Trial) -> tuple[set[str], dict[str, bytes]]:
        """The names of the trial's committed files and its locked files' content, read from the repository
        (never through the worktree's .git link, which a run could re-point)."""
        repo = trial.tree.at(self.checkout) if self.checkout else trial.tree
        names = set(repo.names_at(trial.commit))
        return names, repo.tree_files(trial.commit, trial.tree.locked)

    def check_training(self, trial: Trial, out: RunOutcome, committed: tuple[set[str], dict[str, bytes]], code_before: set[str],
                       git_before=None) -> tuple[str | None, str]:
        """What the harness itself saw of a training run: the git data, signals, locked files, new code, protected
        data, time, exit code. Plain reads of files only: no git runs in the worktree after the run."""
        tree = trial.tree
        if git_before is not None:
            git_after = self.guard.snapshot([tree.root])
            changes = self.guard.changes(git_before, git_after)
            if changes and not git_after.present:
                self.tampered = [str(self.guard.git_dir)]
                return "invalid", (f"the run {changes[0]}: it cannot be undone (only the sandbox prevents this); "
                                   "the session stops")
            if changes:
                self.guard.restore(git_before, git_after)
                return "invalid", (f"the run changed the repository's git data ({', '.join(changes[:4])}"
                                   f"{' ...' if len(changes) > 4 else ''}); undone")
        if out.offence:
            return "invalid", f"{out.offence}; a run may not touch the harness"
        left = out.escaped
        if self.sandbox and not (out.timed_out or out.stopped):  # a run the harness killed leaves no supervisor line
            counted = leftover_processes(out.log_tail)
            if counted is None:
                return "invalid", "the run stopped the sandbox's supervisor, which ends every process the run started"
            left += counted
            lines = [line for line in read_tail(out.log_path, TAIL_LINES + 1).splitlines(True)
                     if not line.startswith(SUPERVISOR_MARK)]
            out.log_tail = "".join(lines[-TAIL_LINES:])  # the run's own last lines
        if left:
            return "invalid", (f"the run left {left} process(es) running after its command ended (stopped now); a run "
                               "must end everything it starts, so that the evaluator scores what it left at its exit")
        names, locked = committed
        changed_locked = sorted(name for name, data in locked.items() if _read(tree.root / name) != data)
        if changed_locked:
            return "invalid", f"locked file changed during the run: {', '.join(changed_locked)}"
        planted = sorted(_code_files(tree.root) - names - code_before)
        for name in planted:
            (tree.root / name).unlink(missing_ok=True)
        if planted:
            return "invalid", (f"the run wrote Python code into the workspace ({', '.join(planted[:3])}), which could shadow "
                               "the evaluator's imports; a run may write only to $AUTORESEARCH_ARTIFACTS")
        changed = changed_paths(self.data_prints, fingerprint(self.protected.all()))
        if changed:
            self.tampered = changed
            return "invalid", (f"held-out or evaluation data changed during the run: {', '.join(changed[:3])}; "
                               "delete it and run `autoresearch prepare` to restore it")
        if out.stopped:  # early stopping: the harness killed it; it is never evaluated, so never kept
            return "discard", out.stopped
        if out.timed_out:
            stretched = f", stretched {out.dilation:.2g}x for CPU contention" if out.dilation > 1 else ""
            return "timeout", f"killed after {out.wall_seconds:.0f}s (limit {self.spec.limit_seconds:.0f}s{stretched})"
        budget, allowance = self.spec.budget_seconds, self.spec.startup_allowance
        allowed = allowed_seconds(budget, allowance, out.dilation)
        if out.wall_seconds > allowed:
            slowed = f", {out.dilation:.2g}x for CPU contention" if out.dilation > 1 else ""
            return "invalid", (f"ran {out.wall_seconds:.0f}s, over the budget of {budget:g}s plus "
                               f"{allowance:g}s of start-up allowance{slowed}")
        if out.returncode != 0:
            touched = self.touched_protected(out.log_path, trial)
            if touched:
                return "invalid", touched
            return "crash", f"exit code {out.returncode}"
        return None, ""

    def touched_protected(self, log: Path, trial: Trial | None = None) -> str:
        """The reason a failed sandboxed run failed, when its log names a path it may not read or change: held-out
        data, the evaluator's data, the git data, an earlier run's folder, or the user's checkout."""
        if not self.sandbox:
            return ""
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
        for path in self.protected.hidden:
            if str(path) in text:
                return f"the run reached for held-out data, which training may not read or change: {path}"
        for path in self.protected.protected:
            if str(path) in text and "Read-only file system" in text:
                return f"the run tried to change data the evaluator reads: {path}"
        if self.checkout is None or trial is None:
            return ""
        runs, own = self.checkout / STATE_DIR / "runs", self.checkout / STATE_DIR / "runs" / str(trial.id)
        for line in text.splitlines():
            if not FAILED_ON_PATH.search(line):
                continue
            for found in ABSOLUTE_PATH.findall(line):
                path = Path(os.path.normpath(found))
                if self.guard and path.is_relative_to(self.guard.git_dir):
                    return f"the run tried to change the repository's git data, which training may not touch: {path}"
                if path.is_relative_to(runs) and not path.is_relative_to(own):
                    return f"the run reached for an earlier run's folder, which training may not read: {path}"
                if path == trial.tree.root / ".git":
                    return f"the run tried to re-point its worktree's git link, which training may not touch: {path}"
                if path.is_relative_to(self.checkout) and not path.is_relative_to(trial.tree.root) and not path.is_relative_to(own):
                    return f"the run reached for the user's checkout, which training may not read: {path}"
                if not self.sandbox.visible(path):
                    return (f"the run reached for {path}, which the sandbox does not show training: it sees only its "
                            "worktree, its data, the tokenizer and the Python environment")
        return ""

    def forged(self, printed, evaluated) -> str:
        """A reason when the training run printed the metric better than the evaluator measured it."""
        if not isinstance(printed, float) or not isinstance(evaluated, float) or not math.isfinite(evaluated):
            return ""
        gain = (printed - evaluated) if self.spec.maximize else (evaluated - printed)
        if gain > FORGED_TOLERANCE * max(abs(evaluated), 1e-12):
            return (f"forged metric: the run printed {self.spec.metric} {printed:.6g}, but the locked evaluator measured "
                    f"{evaluated:.6g} on the model it saved; only the evaluator's number counts")
        return ""

    def fresh_evaluator_dir(self, trial: Trial, target: Path) -> Path:
        """The committed files only, in a new folder: nothing the run left in the worktree (a shadowing module,
        stale bytecode, a rewritten file) reaches the evaluator."""
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        repo = trial.tree.at(self.checkout) if self.checkout else trial.tree  # never through the worktree's .git link
        archive = repo.git_bytes("archive", "--format=tar", trial.commit)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return target

    def evaluate(self, trial: Trial, command: str, seed: int, artifacts: Path, log: Path,
                 on_start=None, on_tick=None, env: dict[str, str] | None = None) -> tuple[str | None, str, dict]:
        """Run a locked evaluator on a run's artifacts, retried once if it crashes: (failure, reason, summary).
        Its results are the `metrics.json` it writes in its working folder, else its printed summary block."""
        for attempt in range(1, EVALUATION_ATTEMPTS + 1):
            where = self.fresh_evaluator_dir(trial, artifacts.parent / f"evaluator-{artifacts.name}")
            if self.locked_hash is not None and trial.tree.at(where).locked_hash() != self.locked_hash:
                shutil.rmtree(where, ignore_errors=True)
                return "invalid", ("the evaluator's copy of the commit does not match the locked files' hashes recorded "
                                   "when the session started; it was not run"), {}
            wrapped = command
            if self.sandbox:  # its own TMPDIR, inside the fresh folder: nothing a training run left there reaches it
                wrapped = self.sandbox.wrap(command, [("rw", where), ("rw", artifacts)], tmp=where / ".tmp")
            out = self.executor.run(where, wrapped, self._env(seed, artifacts, trial, env), self.spec.limit_seconds, log,
                                    on_start=on_start, on_tick=on_tick)
            if out.interrupted:
                raise KeyboardInterrupt
            summary = {**out.summary, **_read_metrics(where / "metrics.json")}
            shutil.rmtree(where, ignore_errors=True)  # a copy of the commit: nothing in it is needed again
            if out.returncode == 0 and not out.timed_out:
                if isinstance(summary.get("invalid"), str):
                    return "invalid", summary["invalid"], summary
                return None, "", summary
            failed = "timed out" if out.timed_out else f"exit code {out.returncode}"
            log = log.with_name(log.stem + f"-retry{attempt}.log")
        return "crash", f"the evaluator failed {EVALUATION_ATTEMPTS} times ({failed}): {_last_line(out.log_tail)}", {}

    def score_test(self, trial: Trial, seeds: list[int], artifact_dirs: list[Path],
                   on_process=None) -> tuple[float | None, list[float], str]:
        """The hidden test split's metric of a kept candidate: the mean over its runs' artifacts."""
        name = self.spec.test_metric or self.spec.metric
        values = []
        for seed, artifacts in zip(seeds, artifact_dirs):
            if not artifacts.is_dir():
                return None, values, f"the models of seed {seed} are gone ({artifacts})"
            failure, reason, summary = self.evaluate(trial, self.spec.test_command, seed, artifacts,
                                                     artifacts.parent / f"test-seed{seed}.log", _tell(on_process, "test"))
            value = summary.get(name)
            if failure or not isinstance(value, float) or not math.isfinite(value):
                return None, values, reason or f"no finite '{name}' from `{self.spec.test_command}`"
            values.append(value)
        return (sum(values) / len(values) if values else None), values, ""

    def seed_ignored(self, artifact_dirs: list[Path]) -> str:
        """A reason when runs with different seeds saved nearly the same model, by the evaluator's fingerprint.json
        (for gpt, a fixed sample of the weights): honest seeds start from different random weights, so their models
        differ by far more than the few steps of timing jitter between two runs of one seed."""
        spread = _closest_pair(artifact_dirs)
        if spread is not None and spread < self.spec.same_model_distance:
            return (f"runs with different AUTORESEARCH_SEED saved nearly the same model (fingerprint distance {spread:.2g} < "
                    f"{self.spec.same_model_distance:g}): train.py ignores the seed, so a lucky seed cannot be ruled out")
        return ""


def _code_files(root: Path) -> set[str]:
    """Files under a worktree that Python could import (modules, .pth files, extensions), found by walking it."""
    found = set()
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", STATE_DIR)]
        found.update(Path(top, n).relative_to(root).as_posix() for n in names if n.endswith(CODE_SUFFIXES))
    return found


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _tell(on_process, kind: str, log: Path | None = None):
    """An executor's on_start(pid) that reports the process as on_process(pid, kind, log)."""
    return (lambda pid: on_process(pid, kind, log)) if on_process else None


def _read_metrics(path: Path) -> dict:
    """An evaluator's metrics.json (numbers, or an `invalid` reason), written in its own fresh folder; {} if none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _closest_pair(artifact_dirs: list[Path]) -> float | None:
    """The smallest relative distance between the fingerprint.json of any two runs, or None without two of them."""
    prints = []
    for d in artifact_dirs:
        try:
            prints.append([float(v) for v in json.loads((Path(d) / "fingerprint.json").read_text())])
        except (OSError, ValueError, TypeError):
            return None
    closest = None
    for a, b in itertools.combinations(prints, 2):
        if len(a) != len(b) or not a:
            return None
        scale = (math.sqrt(sum(x * x for x in a)) + math.sqrt(sum(y * y for y in b))) / 2 or 1.0
        distance = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) / scale
        closest = distance if closest is None else min(closest, distance)
    return closest
