"""Agents propose the next experiment; `make_agent` builds one by name from the [agent] settings."""

from __future__ import annotations

from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import AGENT_NAMES, AgentSettings
from autoresearch.ledger import STATE_DIR


def make_agent(name: str, settings: AgentSettings | None = None, seed: int = 0, workspace: Path | None = None,
               tag: str | None = None):
    """The agent `name`. With a workspace and a tag, the tune agent keeps its Optuna study in
    .autoresearch/tune/<tag>.journal, so a resumed run continues the same search."""
    settings = settings or AgentSettings()
    if name == "perturb":
        from autoresearch.agents.perturb import PerturbAgent

        return PerturbAgent(seed=seed)
    if name == "tune":
        from autoresearch.agents.tune import TuneAgent

        storage = None
        if workspace is not None and tag is not None:
            folder = Path(workspace) / STATE_DIR / "tune"
            folder.mkdir(parents=True, exist_ok=True)
            storage = str(folder / f"{tag.replace('/', '_')}.journal")
        return TuneAgent(settings, seed=seed, storage=storage)
    if name == "openai":
        from autoresearch.agents.llm import OpenAIAgent

        return OpenAIAgent(settings)
    if name == "anthropic":
        from autoresearch.agents.llm import AnthropicAgent

        return AnthropicAgent(settings)
    if name in ("command", "aider", "claude-code", "codex"):
        from autoresearch.agents.command import CommandAgent
        from autoresearch.agents.presets import PRESETS

        return CommandAgent(settings, workspace=workspace, tag=tag, preset=PRESETS.get(name))
    raise UsageError(f"unknown agent '{name}' (available: {', '.join(AGENT_NAMES)})")
