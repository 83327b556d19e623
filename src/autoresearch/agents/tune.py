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
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
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


def round_sig(value: float, digits: int = SIGNIFICANT) -> float:
    return float(f"{value:.{digits}g}") + 0.0  # + 0.0: no -0.0


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------

class TuneAgent:
    """Optuna ask/tell over train.py's constants; a few constants changed per proposal (see the module docstring)."""

    name = "tune"

    def __init__(self, settings: AgentSettings | None = None, seed: int = 0, sampler: str | BaseSampler = "tpe",
                 target: str = "train.py", max_changes: int = 3, n_startup_trials: int = 5, max_asks: int = 25):
        self.settings = settings or AgentSettings()
        self.spent = Usage()  # offline: proposing costs nothing
        self.seed, self.target = seed, target
        self.max_changes, self.n_startup_trials, self.max_asks = max(1, max_changes), n_startup_trials, max_asks
        self.rng = random.Random(seed)
        self.sampler = self._make_sampler(sampler)
        self.study: optuna.Study | None = None
        self.space: dict[str, BaseDistribution] = {}  # name -> range, from the first file seen; file order
        self.pending: optuna.Trial | None = None  # the trial of the proposal awaiting its result
        self.seen: set[str] = set()  # digests of files proposed or seen as the parent

    def _make_sampler(self, sampler: str | BaseSampler) -> BaseSampler:
        if isinstance(sampler, BaseSampler):
            return sampler
        if sampler == "tpe":
            return TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=False)
        if sampler == "random":
            return RandomSampler(seed=self.seed)
        raise ValueError(f"unknown sampler {sampler!r} (tpe or random)")

    def _start(self, context: Context, constants: list[Constant]) -> None:
        """Build the space from this file, create the study, and tell it the parent's measured value."""
        for c in constants:
            dist = distribution_for(c.name, c.value, self.settings.tune.get(c.name))
            if dist is not None and not dist.single():
                self.space[c.name] = dist
        self.study = optuna.create_study(direction="maximize" if context.maximize else "minimize", sampler=self.sampler)
        params = {c.name: c.value for c in constants if c.name in self.space and in_space(self.space[c.name], c.value)}
        if context.best is not None and params and math.isfinite(context.best):
            self.study.add_trial(create_trial(params=params, distributions={n: self.space[n] for n in params},
                                              value=float(context.best), user_attrs={"status": "parent"}))

    def _abandon_pending(self, reason: str) -> None:
        if self.pending is not None:
            self.pending.set_user_attr("status", reason)
            self.study.tell(self.pending, state=TrialState.FAIL)
            self.pending = None

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
        if self.study is None:
            self._start(context, constants)
        self._abandon_pending("never observed")
        self.seen.add(hashlib.sha256(source.encode()).hexdigest())
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
            digest = hashlib.sha256(text.encode()).hexdigest()
            if not edits or digest in self.seen:
                trial.set_user_attr("status", "no change" if not edits else "already proposed")
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            self.seen.add(digest)
            self.pending = trial
            description = ", ".join(f"{c.name} {compact(c.value)}→{compact(new)}" for c, new in edits)
            return Proposal(description, {self.target: text})
        return None

    def observe(self, result: Result) -> None:
        if self.pending is None:
            return
        trial, self.pending = self.pending, None
        trial.set_user_attr("status", result.status)
        if result.status in ("keep", "discard") and result.metric is not None and math.isfinite(result.metric):
            self.study.tell(trial, float(result.metric))
        else:  # crash, timeout, invalid, duplicate: nothing measured
            self.study.tell(trial, state=TrialState.FAIL)
