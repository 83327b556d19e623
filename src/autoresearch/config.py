"""Load and validate a workspace's autoresearch.toml into typed settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class Metric(_Strict):
    name: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"]


class Budget(_Strict):
    seconds: Literal["auto"] | float = "auto"
    timeout_factor: float = Field(2.0, ge=1.0)
    grace_seconds: float = Field(120.0, ge=0.0)

    def resolve_seconds(self, cuda: bool) -> float:
        """Training seconds per experiment: the configured number, or 300 on CUDA and 60 elsewhere."""
        if self.seconds == "auto":
            return 300.0 if cuda else 60.0
        return float(self.seconds)


class AgentSettings(_Strict):
    name: Literal["perturb", "tune", "openai", "anthropic", "command"] = "perturb"
    model: str | None = None


class Config(_Strict):
    program: str = "program.md"
    editable: list[str] = Field(min_length=1)
    locked: list[str] = Field(default_factory=list)
    commands: Commands
    metric: Metric
    budget: Budget = Budget()
    agent: AgentSettings = AgentSettings()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    if err["type"] == "missing":
        return f"missing key '{where}'"
    return f"'{where}': {err['msg']}"


def load_config(workspace: Path) -> Config:
    """Parse and validate <workspace>/autoresearch.toml; any problem is a one-line UsageError naming the key."""
    path = Path(workspace) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"no {CONFIG_FILE} in {Path(workspace).resolve()}; run this inside a workspace (see `autoresearch init`)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{path}: {_first_error(exc)}") from None
    for key, names in (("program", [config.program]), ("locked", config.locked)):
        for name in names:
            if not (Path(workspace) / name).is_file():
                raise UsageError(f"{path}: '{key}' names {name}, which does not exist")
    for pattern in config.editable:
        if not any(Path(workspace).glob(pattern)):
            raise UsageError(f"{path}: 'editable' pattern {pattern!r} matches no file")
    return config
