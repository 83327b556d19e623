"""Parse the summary block a run prints: a `---` line followed by `key: value` lines."""

from __future__ import annotations


def parse_summary(text: str) -> dict[str, float | str]:
    """The `key: value` pairs after the last `---` line; numbers become floats, NaN included.

    Lines that are not `key: value` end the block, so a traceback printed after it is not read as data.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    values: dict[str, float | str] = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or " " in key:
            break
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = value
    return values
