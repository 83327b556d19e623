"""Load and validate a workspace's autoresearch.toml into typed settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError, field_validator

from autoresearch import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "autoresearch.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Commands(_Strict):
    setup: str = ""
    run: str = Field(min_length=1)
    # A locked evaluator run in its own process after each training run, on the run's artifacts
    # ($AUTORESEARCH_ARTIFACTS); when set, the metric is read from its output, never from the training run's.
    evaluate: str = ""
    # A locked scorer of kept candidates on the hidden test split, run like `evaluate`; it prints metric.test_name.
    test: str = ""


class Metric(_Strict):
    name: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"]
    test_name: str = ""  # what commands.test prints (default: the metric's own name)


class Budget(_Strict):
    seconds: Literal["auto"] | float = "auto"
    timeout_factor: float = Field(2.0, ge=1.0)
    grace_seconds: float = Field(120.0, ge=0.0)
    # A run longer than seconds + this is invalid. It covers imports, compilation and export, and is also the
    # most a run could train past its budget unseen; "auto": 90 on CUDA (torch.compile), 45 elsewhere.
    startup_allowance_seconds: Literal["auto"] | NonNegativeFloat = "auto"

    def resolve_seconds(self, cuda: bool) -> float:
        """Training seconds per experiment: the configured number, or 300 on CUDA and 60 elsewhere."""
        if self.seconds == "auto":
            return 300.0 if cuda else 60.0
        return float(self.seconds)

    def kill_after(self, seconds: float) -> float:
        """When the harness kills a run with this training budget: seconds × timeout_factor + grace_seconds."""
        return seconds * self.timeout_factor + self.grace_seconds

    def resolve_allowance(self, cuda: bool) -> float:
        """Start-up seconds a run may take on top of its budget: the configured number, or 90 on CUDA, 45 elsewhere."""
        if self.startup_allowance_seconds == "auto":
            return 90.0 if cuda else 45.0
        return float(self.startup_allowance_seconds)


class Price(_Strict):
    input: float = Field(ge=0.0)  # dollars per million input tokens
    output: float = Field(ge=0.0)  # dollars per million output tokens


class TuneSpace(_Strict):
    """A per-constant override of the tune agent's search space."""

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[float] | None = None
    fixed: bool = False  # never change this constant


class DecideSettings(_Strict):
    seeds: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"  # runs of a candidate that passes its screen
    baseline_seeds: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"  # runs of a baseline; "auto": seeds + 1
    threshold_sigmas: float = Field(2.0, ge=0.0)  # keep only a gain larger than this many σ of the noise
    cost_per_added_line: float = Field(0.0, ge=0.0)  # metric units a kept change must gain per net line it adds
    keep_simplifications: bool = True  # keep a change that removes lines and holds the metric within noise
    # Runs with different seeds whose models (the evaluator's fingerprint.json) are closer than this relative
    # distance ignored AUTORESEARCH_SEED (gpt weights: about 0.005-0.05 for one seed run twice, 1.4 for two seeds).
    same_model_distance: float = Field(0.5, ge=0.0)
    # Early stopping (docs/early_stop.md): a candidate's screen run whose printed training loss stays behind the
    # best's at the same elapsed time (by the harness's clock) is stopped and discarded, never evaluated.
    early_stop: bool = False
    early_stop_warmup: float = Field(0.3, ge=0.0, le=1.0)  # share of the budget before any stop
    early_stop_margin: float = Field(0.05, ge=0.0)  # relative: how much worse than the best's loss at that time
    early_stop_patience: int = Field(3, ge=1)  # progress lines in a row that must all be behind
    early_stop_min_trials: int = Field(3, ge=1)  # finished runs' curves (the best's included) the median needs

    def resolve_seeds(self, cuda: bool) -> int:
        """Runs of a candidate that passes its screen: the configured number, or 3 on CUDA and 2 elsewhere."""
        if self.seeds == "auto":
            return 3 if cuda else 2
        return self.seeds

    def resolve_baseline_seeds(self, cuda: bool) -> int:
        """Runs of a baseline: more than a candidate gets, since the first σ rests on them (auto: seeds + 1)."""
        if self.baseline_seeds == "auto":
            return self.resolve_seeds(cuda) + 1
        return self.baseline_seeds


class SandboxSettings(_Strict):
    """How the training run is confined (bubblewrap): held-out data hidden, the machine read-only but the workspace."""

    mode: Literal["auto", "bwrap", "none"] = "auto"  # auto: bubblewrap where it works, else none (with a warning)
    hide: list[str] = Field(default_factory=list)  # globs the training run must not read (held-out data)
    protect: list[str] = Field(default_factory=list)  # globs the evaluator reads: the run must not change them
    paths_command: str = ""  # locked command printing more `hide PATH` / `protect PATH` lines
    writable: list[str] = Field(default_factory=list)  # folders outside the workspace the run may write
    readable: list[str] = Field(default_factory=list)  # more folders the training run may read (its data)
    env: list[str] = Field(default_factory=list)  # more environment variables runs get (the rest is allow-listed)
    network: bool = False  # the training run gets no network unless this is true


class TrackingSettings(_Strict):
    """Experiment tracking (the extra `mlflow`): `mlflow = true` logs to a local store under .autoresearch/,
    `mlflow = "URI"` to any tracking URI; `autoresearch run --mlflow [URI]` wins over this."""

    mlflow: bool | str = False
    experiment: Annotated[str, Field(min_length=1, max_length=500)] | None = None  # default: the branch's name

    @field_validator("mlflow", mode="plain")
    @classmethod
    def _uri(cls, value):
        if isinstance(value, bool) or (isinstance(value, str) and value.strip() and value == value.strip()):
            return value
        raise ValueError('must be true, false or a tracking URI, e.g. "http://127.0.0.1:5000"')


AGENT_NAMES = ("tune", "openai", "anthropic", "aider", "claude-code", "codex", "command", "perturb")


class AgentSettings(_Strict):
    name: Literal["tune", "openai", "anthropic", "aider", "claude-code", "codex", "command", "perturb"] = "tune"
    model: str | None = None  # openai / anthropic / the CLI presets: the model name
    base_url: str | None = None  # an endpoint: OpenAI-compatible (openai, aider, codex) or Anthropic (claude-code)
    api_key_env: str | None = None  # the variable holding the key (default OPENAI_API_KEY / ANTHROPIC_API_KEY)
    max_tokens: int = Field(8192, ge=1)  # reply length cap for LLM agents
    timeout_seconds: float = Field(600.0, gt=0)  # one LLM call, or one proposal of a CLI (killed at the limit)
    max_retries: int = Field(5, ge=0)  # LLM calls: retries on 429, 5xx and timeouts, with backoff
    command: str | None = None  # command agent: e.g. "claude -p {prompt_file}"
    args: str = ""  # aider / claude-code / codex: more options, appended to the preset's command line
    history_limit: int = Field(50, ge=1)  # how many recent discarded or crashed ideas the prompt shows
    prices: dict[str, Price] = Field(default_factory=dict)  # per-model price overrides, dollars per million tokens
    tune: dict[str, TuneSpace] = Field(default_factory=dict)  # tune: per-constant search-space overrides


class Config(_Strict):
    program: str = "program.md"
    editable: list[str] = Field(min_length=1)
    locked: list[str] = Field(default_factory=list)
    commands: Commands
    metric: Metric
    budget: Budget = Budget()
    agent: AgentSettings = AgentSettings()
    decide: DecideSettings = DecideSettings()
    sandbox: SandboxSettings = SandboxSettings()
    tracking: TrackingSettings = TrackingSettings()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    if err["type"] == "missing":
        return f"missing key '{where}'"
    return f"'{where}': {err['msg']}"


def parse_config(text: str, where: str, is_file, matches_any) -> Config:
    """Validate the text of an autoresearch.toml; `is_file(name)` and `matches_any(glob)` answer for the folder or
    commit it belongs to. Any problem is a one-line UsageError naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{where}: {_first_error(exc)}") from None
    for key, names in (("program", [config.program]), ("locked", config.locked)):
        for name in names:
            if not is_file(name):
                raise UsageError(f"{where}: '{key}' names {name}, which does not exist")
    for pattern in config.editable:
        if not matches_any(pattern):
            raise UsageError(f"{where}: 'editable' pattern {pattern!r} matches no file")
    return config


def load_config(workspace: Path) -> Config:
    """Parse and validate <workspace>/autoresearch.toml as it is on disk."""
    path = Path(workspace) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"no {CONFIG_FILE} in {Path(workspace).resolve()}; run this inside a workspace (see `autoresearch init`)")
    return parse_config(path.read_text(encoding="utf-8"), str(path), lambda name: (Path(workspace) / name).is_file(),
                        lambda pattern: any(Path(workspace).glob(pattern)))


def load_config_at(workspace: Path, commit: str, names: list[str], text: str) -> Config:
    """Parse and validate the autoresearch.toml committed at `commit` (its `text`), against that commit's files."""
    from fnmatch import fnmatch
    from pathlib import PurePosixPath

    listed = set(names)
    return parse_config(text, f"{CONFIG_FILE} at {commit[:7]}", lambda name: PurePosixPath(name).as_posix() in listed,
                        lambda pattern: any(PurePosixPath(n).match(pattern) or fnmatch(n, pattern) for n in listed))
