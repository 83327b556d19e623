"""Agents propose the next experiment; `make_agent` builds one by name."""

from __future__ import annotations

from autoresearch import UsageError


def make_agent(name: str, seed: int = 0):
    if name == "perturb":
        from autoresearch.agents.perturb import PerturbAgent

        return PerturbAgent(seed=seed)
    raise UsageError(f"the '{name}' agent is not available yet; use --agent perturb (built in, offline)")
