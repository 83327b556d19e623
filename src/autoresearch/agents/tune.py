"""The tune agent: hyperparameter search over train.py's numeric constants with Optuna (TPE by default).

What it searches. The module-level `NAME = <number>` assignments of the target file whose name is upper
case: plain literals (`0.04`, `1_000`), negative literals (`-3`), and the device branch of
`NAME = a if CUDA else b` (the first branch on CUDA, the second elsewhere; `if MPS` likewise, and nested
`a if CUDA else b if MPS else c`). Skipped: bools, strings, anything computed (`2**12`, `int(os.environ...)`,
`A * 2`), a conditional on anything but `CUDA`/`MPS`, and names assigned more than once at module level
(which assignment counts would be ambiguous).

The space of each constant, from its value v in the first file the agent sees (overridable, below):
- ratio: the name ends in _RATIO, _FRAC, _FRACTION or _PROB, or has a BETA, BETA1, BETA2, MOMENTUM or
  DROPOUT part, and 0 ≤ v ≤ 1 → a float, linear, in [v − 0.25, v + 0.25] clipped to [0, 1]. The value
  alone does not make a ratio: learning rates lie in (0, 1) too and want a log scale. (MLP_RATIO = 4 is
  not in [0, 1], so it is an ordinary int.)
- int 0 or 1 → a flag: {0, 1}.
- int power of two ≥ 16 (widths, batch sizes) → powers of two from v/4 to 4v: {v/4, v/2, v, 2v, 4v}.
- other int → [max(1, v // 2), 2v] (negative: [2v, −max(1, |v| // 2)]).
- float > 0 → log scale in [v/4, 4v].
- float 0 → linear in [0, 0.1] (a zero is usually a switched-off penalty or decay).
- float < 0 → linear in [4v, v/4].
`[agent.tune.NAME]` in autoresearch.toml overrides it: `fixed = true` (never changed), `choices = [...]`
(a categorical), or any of `low`, `high`, `log` (replacing the rule's bounds and scale; an int constant
stays an int). Floats are written rounded to 3 significant digits (Optuna records the value it sampled,
at most 0.05% away).

How a proposal is made. Optuna's study holds absolute values for every searched constant: its ranges are
fixed from the first file the agent sees (the original train.py, or the best commit when a session resumes),
so the space does not drift as the parent moves; the current file's values are just where the search stands.
On the first proposal the parent's values go into the study as a finished trial with the measured best
(`study.add_trial`), so the sampler knows the baseline. Each proposal then picks 1 to `max_changes` of the
constants at random (seeded), holds all others at the parent's current values (`study.enqueue_trial` fixes
them), and asks the sampler (`study.ask`) for the picked ones: a trial over the whole space that differs from
the parent in a few constants, so one experiment tests a few changes, not a reshuffle of everything. TPE runs
independent (per-constant) models, which is what a trial with fixed dimensions needs; `n_startup_trials`
(default 5, the baseline counted) are sampled at random first. Only the literals whose value changes are
rewritten, by their source span: every other byte of the file stays as it was. A constant whose current value
lies outside its range (an override narrower than the file, or an edit made elsewhere) is changed in every
proposal until a kept one brings it in.

`observe` tells the study the metric of a `keep` or `discard` and marks a `crash`, `timeout`, `invalid` or
`duplicate` as FAIL. A draw that changes nothing (after rounding) or re-creates a file already proposed is told
as FAIL too and drawn again, at most `max_asks` times, then the agent gives up the step (returns None). In fix
mode it returns None: it cannot repair code. `sampler="random"` swaps TPE for Optuna's RandomSampler with
everything else equal (the benchmark's control arm). Offline and free.

Storage and resume. By default the study lives in memory and dies with the process. With `storage` (a path to a
file, opened as Optuna's journal storage, which several processes may share, or any Optuna storage) the study
`study_name` is created or loaded (`load_if_exists`), so a harness killed and restarted picks up the same search.
A new study stores its space in the study's user attrs (`space`: each range as Optuna's distribution JSON, with
`target`, the file name); every trial carries the sha256 of its file text as the user attr `digest` (the parent
trial the parent's). A study that already holds trials is resumed: the space is the stored one (not rebuilt from
the resumed parent, whose values may have moved), no second parent trial is added, the digests of all stored trials
become the already-proposed set (so nothing measured is proposed again), and TPE sees the whole stored history.
Several proposals may await their results at once (K workers); a result is matched to its trial by the digest
of the file it measured. Trials left RUNNING by a kill are awaited again: the harness's re-measurement tells them
(a RUNNING trial without a digest is failed as "interrupted"), and beyond 64 awaited the oldest is failed as
"never observed". The seeded draws (which constants to change, and a named sampler's seed) are reseeded from the
seed and the number of stored trials, so a resume does not replay the first run's draws only to reject them.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import re
from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json, json_to_distribution)
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from autoresearch import UsageError
from autoresearch.agents.base import Context, Proposal, Result, Usage
from autoresearch.config import AgentSettings, TuneSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEVICE_FLAGS = {"CUDA": "cuda", "MPS": "mps"}  # `a if CUDA else b`: the first branch on this device
RATIO_NAME = re.compile(r"(_RATIO|_FRAC|_FRACTION|_PROB)$|(^|_)(BETA\d*|MOMENTUM|DROPOUT)(_|$)")
RATIO_HALF_WIDTH = 0.25
ZERO_FLOAT_HIGH = 0.1
SIGNIFICANT = 3


@dataclass(frozen=True)
class Constant:
    """A numeric constant of the file and the span of its literal (1-based lines, UTF-8 byte columns, as ast gives)."""

    name: str
    value: int | float
    lineno: int
    col: int
    end_lineno: int
    end_col: int


# ---------------------------------------------------------------------------
# Finding the constants and rewriting their literals
# ---------------------------------------------------------------------------

def _literal(node: ast.expr, device: str) -> tuple[ast.expr, int | float] | None:
    """The node holding the number this expression evaluates to on `device`, and the number; None if computed."""
    if isinstance(node, ast.IfExp):
        if isinstance(node.test, ast.Name) and node.test.id in DEVICE_FLAGS:
            return _literal(node.body if device == DEVICE_FLAGS[node.test.id] else node.orelse, device)
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        return (node, -value) if type(value) in (int, float) else None
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # type(): bools are not numbers here
        return node, node.value
    return None


def _module_stores(tree: ast.Module) -> Counter:
    """How many times each name is assigned at module scope (function and class bodies left out)."""
    counts: Counter = Counter()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            counts[node.id] += 1
        stack.extend(ast.iter_child_nodes(node))
    return counts


def find_constants(source: str, device: str = "cpu") -> list[Constant]:
    """The searchable constants of `source` in file order (see the module docstring for what counts)."""
    tree = ast.parse(source)
    stores = _module_stores(tree)
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id.isupper() and stores[target.id] == 1):
            continue
        hit = _literal(value, device)
        if hit is not None:
            lit, number = hit
            found.append(Constant(target.id, number, lit.lineno, lit.col_offset, lit.end_lineno, lit.end_col_offset))
    return found


def _line_starts(source: str) -> list[int]:
    """Character offset of each line's start, with the line breaks Python's parser counts (\\r\\n, \\r, \\n)."""
    return [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", source)]


def _offset(source: str, starts: list[int], lineno: int, byte_col: int) -> int:
    line_start = starts[lineno - 1]
    line_end = starts[lineno] if lineno < len(starts) else len(source)
    return line_start + len(source[line_start:line_end].encode("utf-8")[:byte_col].decode("utf-8"))


def format_literal(value: int | float) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def rewrite(source: str, edits: list[tuple[Constant, int | float]]) -> str:
    """`source` with each constant's literal replaced by its new value; every other character is left as it was."""
    starts = _line_starts(source)
    spans = sorted(((_offset(source, starts, c.lineno, c.col), _offset(source, starts, c.end_lineno, c.end_col),
                     format_literal(new)) for c, new in edits), reverse=True)
    for begin, end, text in spans:  # from the end backwards, so earlier offsets stay valid
        source = source[:begin] + text + source[end:]
    return source


def compact(value: int | float) -> str:
    """A number for a description: ints as they are, floats to 3 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.{SIGNIFICANT}g}"


# ---------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------

def is_ratio(name: str, value: int | float) -> bool:
    return 0 <= value <= 1 and RATIO_NAME.search(name) is not None


def default_distribution(name: str, value: int | float) -> BaseDistribution:
    """The search range of a constant by the rules of the module docstring."""
    if is_ratio(name, value):
        return FloatDistribution(max(0.0, value - RATIO_HALF_WIDTH), min(1.0, value + RATIO_HALF_WIDTH))
    if isinstance(value, int):
        if value in (0, 1):
            return CategoricalDistribution([0, 1])
        if value >= 16 and value & (value - 1) == 0:
            return CategoricalDistribution([value >> 2, value >> 1, value, value << 1, value << 2])
        if value > 0:
            return IntDistribution(max(1, value // 2), value * 2)
        return IntDistribution(value * 2, -max(1, -value // 2))
    if value > 0:
        return FloatDistribution(value / 4, value * 4, log=True)
    if value == 0:
        return FloatDistribution(0.0, ZERO_FLOAT_HIGH)
    return FloatDistribution(value * 4, value / 4)


def distribution_for(name: str, value: int | float, override: TuneSpace | None = None) -> BaseDistribution | None:
    """The constant's range: the default rule with `override` applied; None when it is fixed."""
    default = default_distribution(name, value)
    if override is None:
        return default
    if override.fixed:
        return None
    integer = isinstance(value, int) and not is_ratio(name, value)
    where = f"[agent.tune.{name}]"
    if override.choices is not None:
        if not override.choices:
            raise UsageError(f"{where}: 'choices' is empty")
        choices = [float(c) for c in override.choices]
        if integer and all(c.is_integer() for c in choices):
            choices = [int(c) for c in choices]
        return CategoricalDistribution(list(dict.fromkeys(choices)))
    if isinstance(default, CategoricalDistribution):
        low, high = min(default.choices), max(default.choices)
        log = len(default.choices) > 2  # powers of two: a log scale when given bounds
    else:
        low, high, log = default.low, default.high, default.log
    low = override.low if override.low is not None else low
    high = override.high if override.high is not None else high
    log = override.log if override.log is not None else log
    if integer:
        low, high = math.ceil(low), math.floor(high)
    if low > high:
        raise UsageError(f"{where}: low {low:g} is above high {high:g}")
    if log and low <= 0:
        raise UsageError(f"{where}: a log scale needs low > 0 (got {low:g})")
    return IntDistribution(int(low), int(high), log=log) if integer else FloatDistribution(float(low), float(high), log=log)


def in_space(dist: BaseDistribution, value: int | float) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, IntDistribution):
        return isinstance(value, int) and dist.low <= value <= dist.high
    return dist.low <= value <= dist.high


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def round_sig(value: float, digits: int = SIGNIFICANT) -> float:
    return float(f"{value:.{digits}g}") + 0.0  # + 0.0: no -0.0


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------

MAX_PENDING = 64  # proposals awaiting a result at once: more than any number of workers


class TuneAgent:
    """Optuna ask/tell over train.py's constants; a few constants changed per proposal (see the module docstring)."""

    name = "tune"

    def __init__(self, settings: AgentSettings | None = None, seed: int = 0, sampler: str | BaseSampler = "tpe",
                 target: str = "train.py", max_changes: int = 3, n_startup_trials: int = 5, max_asks: int = 25,
                 storage: str | BaseStorage | None = None, study_name: str = "tune"):
        self.settings = settings or AgentSettings()
        self.spent = Usage()  # offline: proposing costs nothing
        self.seed, self.target = seed, target
        self.max_changes, self.n_startup_trials, self.max_asks = max(1, max_changes), n_startup_trials, max_asks
        self.rng = random.Random(seed)
        self.sampler_choice = sampler
        self.sampler = self._make_sampler(sampler)
        self.storage: BaseStorage | None = (JournalStorage(JournalFileBackend(storage)) if isinstance(storage, str)
                                            else storage)
        self.study_name = study_name
        self.study: optuna.Study | None = None
        self.started = False  # the first proposal has set the study up (space, parent trial)
        self.space: dict[str, BaseDistribution] = {}  # name -> range, from the first file seen; file order
        # the trials of proposals awaiting their results (several with --workers), by the digest of the proposed
        # file; after a resume, the numbers of stored RUNNING trials
        self.pending: dict[str, optuna.Trial | int] = {}
        self.seen: set[str] = set()  # digests of files proposed or seen as the parent

    def _make_sampler(self, sampler: str | BaseSampler, seed: int | None = None) -> BaseSampler:
        seed = self.seed if seed is None else seed
        if isinstance(sampler, BaseSampler):
            return sampler
        if sampler == "tpe":
            return TPESampler(seed=seed, n_startup_trials=self.n_startup_trials, multivariate=False)
        if sampler == "random":
            return RandomSampler(seed=seed)
        raise ValueError(f"unknown sampler {sampler!r} (tpe or random)")

    def _open(self, context: Context | None) -> bool:
        """Create the study, or load a stored one (without a context: only load, if the storage holds it); resume it."""
        if self.study is not None:
            return True
        if context is None and (self.storage is None
                                or self.study_name not in optuna.study.get_all_study_names(self.storage)):
            return False
        if context is None:
            self.study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
        else:
            kept = self.storage is not None  # in memory: a fresh, unnamed study, as always
            self.study = optuna.create_study(storage=self.storage, study_name=self.study_name if kept else None,
                                             direction="maximize" if context.maximize else "minimize",
                                             sampler=self.sampler, load_if_exists=kept)
        space = self.study.user_attrs.get("space")
        if space is not None:
            self.space = {name: json_to_distribution(d) for name, d in space.items()}
        trials = self.study.get_trials(deepcopy=False)
        if trials:
            self._resume(trials)
        return True

    def _start(self, context: Context, constants: list[Constant], source: str) -> None:
        """Open the study; a new one gets its space from this file (stored in it) and the parent as a finished trial."""
        self._open(context)
        self._check_stored(context)
        self.started = True
        if "space" not in self.study.user_attrs:
            for c in constants:
                dist = distribution_for(c.name, c.value, self.settings.tune.get(c.name))
                if dist is not None and not dist.single():
                    self.space[c.name] = dist
            self.study.set_user_attr("space", {n: distribution_to_json(d) for n, d in self.space.items()})
            self.study.set_user_attr("target", self.target)
        if self.study.get_trials(deepcopy=False):
            return  # a resumed study: its parent trial is in it
        params = {c.name: c.value for c in constants if c.name in self.space and in_space(self.space[c.name], c.value)}
        if context.best is not None and params and math.isfinite(context.best):
            self.study.add_trial(create_trial(params=params, distributions={n: self.space[n] for n in params},
                                              value=float(context.best),
                                              user_attrs={"status": "parent", "digest": _digest(source)}))

    def _check_stored(self, context: Context) -> None:
        where = f"tune study {self.study_name!r}"
        if self.study.user_attrs.get("target", self.target) != self.target:
            raise UsageError(f"{where} searches {self.study.user_attrs['target']}, not {self.target}")
        want = optuna.study.StudyDirection.MAXIMIZE if context.maximize else optuna.study.StudyDirection.MINIMIZE
        if self.study.direction != want:
            raise UsageError(f"{where} was created to {self.study.direction.name.lower()}, "
                             f"the metric now wants {want.name.lower()}")

    def _resume(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Carry on a stored study: what was proposed, the trial a kill left awaiting its result, fresh draws."""
        self.seen |= {t.user_attrs["digest"] for t in trials if "digest" in t.user_attrs}
        for t in trials:
            if t.state == TrialState.WAITING:  # enqueued, never asked (a kill in between): take it out of the queue
                self._fail(self.study.ask(), "interrupted")
        for t in trials:
            if t.state == TrialState.RUNNING and "digest" in t.user_attrs:
                self.pending[t.user_attrs["digest"]] = t.number
            elif t.state == TrialState.RUNNING:
                self._fail(t.number, "interrupted")
        reseed = int(hashlib.sha256(f"{self.seed}:{len(trials)}".encode()).hexdigest()[:16], 16)
        self.rng = random.Random(reseed)
        if isinstance(self.sampler_choice, str):
            self.sampler = self.study.sampler = self._make_sampler(self.sampler_choice, reseed % 2**32)

    def _set_status(self, trial: optuna.Trial | int, status: str) -> None:
        if isinstance(trial, int):  # a stored trial, by number (after a resume): its attrs through the storage
            study_id = self.storage.get_study_id_from_name(self.study_name)
            self.storage.set_trial_user_attr(self.storage.get_trial_id_from_study_id_trial_number(study_id, trial),
                                             "status", status)
        else:
            trial.set_user_attr("status", status)

    def _fail(self, trial: optuna.Trial | int, status: str) -> None:
        self._set_status(trial, status)
        self.study.tell(trial, state=TrialState.FAIL)

    def _abandon_oldest(self, reason: str) -> None:
        """Fail the oldest awaited trials beyond MAX_PENDING: results that never came (proposals the loop dropped)."""
        while len(self.pending) > MAX_PENDING:
            digest = next(iter(self.pending))
            self._fail(self.pending.pop(digest), reason)

    def _value(self, sampled, dist: BaseDistribution) -> int | float:
        if isinstance(dist, FloatDistribution):
            return min(max(round_sig(sampled), dist.low), dist.high)
        return sampled

    def propose(self, context: Context) -> Proposal | None:
        if context.fix is not None:
            return None  # it tunes numbers; it cannot repair code
        source = context.files.get(self.target)
        if source is None:
            return None
        try:
            constants = find_constants(source, context.device)
        except SyntaxError:
            return None
        if not self.started:
            self._start(context, constants, source)
        self._abandon_oldest("never observed")
        self.seen.add(_digest(source))
        current = {c.name: c for c in constants if c.name in self.space}
        settled = [n for n in current if in_space(self.space[n], current[n].value)]
        outside = [n for n in current if n not in settled]  # changed in every proposal until one is kept
        if not current:
            return None
        for _ in range(self.max_asks):
            k = self.rng.randint(1, min(self.max_changes, len(settled))) if settled else 0
            chosen = set(self.rng.sample(settled, k)) | set(outside)
            fixed = {n: current[n].value for n in settled if n not in chosen}
            if fixed:
                self.study.enqueue_trial(fixed)
            trial = self.study.ask({n: self.space[n] for n in current})
            edits = []
            for n in current:  # file order
                new = self._value(trial.params[n], self.space[n])
                if n in chosen and new != current[n].value:
                    edits.append((current[n], new))
            text = rewrite(source, edits) if edits else source
            digest = _digest(text)
            trial.set_user_attr("digest", digest)
            if not edits or digest in self.seen:
                self._fail(trial, "no change" if not edits else "already proposed")
                continue
            self.seen.add(digest)
            self.pending[digest] = trial
            description = ", ".join(f"{c.name} {compact(c.value)}→{compact(new)}" for c, new in edits)
            return Proposal(description, {self.target: text})
        return None

    def observe(self, result: Result) -> None:
        self._open(None)  # after a restart the result may come first: of the proposal a kill left RUNNING
        files = result.extra.get("files")
        if isinstance(files, dict) and self.target in files:
            trial = self.pending.pop(_digest(files[self.target]), None)  # None: not one of its proposals (a re-base)
        else:  # a result that does not say what it measured: the oldest proposal awaiting one
            trial = self.pending.pop(next(iter(self.pending))) if self.pending else None
        if trial is None:
            return
        if result.status in ("keep", "discard") and result.metric is not None and math.isfinite(result.metric):
            self._set_status(trial, result.status)
            self.study.tell(trial, float(result.metric))
        else:  # crash, timeout, invalid, duplicate: nothing measured
            self._fail(trial, result.status)
