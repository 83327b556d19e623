"""Agents propose the next experiment; `make_agent` builds one by name from the [agent] settings."""

from __future__ import annotations

from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import AgentSettings


def make_agent(name: str, settings: AgentSettings | None = None, seed: int = 0, workspace: Path | None = None):
    settings = settings or AgentSettings()
    if name == "perturb":
        from autoresearch.agents.perturb import PerturbAgent

        return PerturbAgent(seed=seed)
    if name == "tune":
        from autoresearch.agents.tune import TuneAgent

        return TuneAgent(settings, seed=seed)
    if name == "openai":
        from autoresearch.agents.llm import OpenAIAgent

        return OpenAIAgent(settings)
    if name == "anthropic":
        from autoresearch.agents.llm import AnthropicAgent

        return AnthropicAgent(settings)
    if name == "command":
        from autoresearch.agents.command import CommandAgent

        return CommandAgent(settings, workspace=workspace)
    raise UsageError(f"unknown agent '{name}' (available: tune, openai, anthropic, command, perturb)")
