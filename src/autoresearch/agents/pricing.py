"""Estimate what an LLM call cost from its token counts: a per-model price table, overridable per workspace.

The table below is an ESTIMATE copied from the providers' public price lists at the time of writing; prices change
and differ by tier, region, caching and batch discounts. Check them against your provider's current prices, and set
your own in autoresearch.toml when they differ:

    [agent.prices."gpt-5"]
    input = 1.25    # dollars per million input tokens
    output = 10.0   # dollars per million output tokens
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

# model-name prefix -> (dollars per million input tokens, dollars per million output tokens). The longest matching
# prefix wins, so "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini", not as "gpt-4o".
PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-pro": (15.00, 120.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o3-pro": (20.00, 80.00),
    "o4-mini": (1.10, 4.40),
    # Anthropic
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-haiku-4": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
}

_warned: set[str] = set()


class PricingWarning(UserWarning):
    """A model has no known price: its calls are counted as free."""


def price_of(model: str, overrides: Mapping[str, Any] | None = None) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens for `model`, or None if neither the overrides nor the table know it.

    Overrides (the [agent.prices] settings: Price objects, {"input", "output"} mappings or pairs) are searched first;
    both are matched by longest prefix, case-insensitively, on the name and on its part after a provider prefix
    ("openrouter/openai/gpt-4o" is also tried as "gpt-4o").
    """
    names = [model.lower()]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1].lower())
    for table in ({k.lower(): _pair(v) for k, v in (overrides or {}).items()}, PRICES):
        for name in names:
            key = _longest_prefix(name, table)
            if key is not None:
                return table[key]
    return None


def cost(model: str, input_tokens: int, output_tokens: int, overrides: Mapping[str, Any] | None = None) -> float:
    """Estimated dollars for one call; an unknown model costs 0 (with a warning, once per model name)."""
    price = price_of(model, overrides)
    if price is None:
        if model not in _warned:
            _warned.add(model)
            warnings.warn(f"no price known for model '{model}': its cost is counted as $0; set [agent.prices.\"{model}\"] "
                          "input/output (dollars per million tokens) in autoresearch.toml", PricingWarning, stacklevel=2)
        return 0.0
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def _longest_prefix(name: str, table: Mapping[str, tuple[float, float]]) -> str | None:
    matches = [key for key in table if name.startswith(key)]
    return max(matches, key=len) if matches else None


def _pair(value: Any) -> tuple[float, float]:
    """A price given as a Price object, a mapping with input/output, or an (input, output) pair."""
    if isinstance(value, Mapping):
        return float(value["input"]), float(value["output"])
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1])
    return float(value.input), float(value.output)
