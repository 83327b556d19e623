"""Keep the harness's secrets out of runs and logs: an allow-listed environment for workspace commands, and redaction of log text."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Mapping
from functools import lru_cache

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)

ALLOWED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "PWD", "VIRTUAL_ENV",
    "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "SOURCE_DATE_EPOCH", "COLUMNS",
})
ALLOWED_PREFIXES = (
    "LC_", "AUTORESEARCH_", "CUDA_", "NVIDIA_", "NCCL_", "CUBLAS_", "CUDNN_", "TORCH_", "PYTORCH_", "TORCHINDUCTOR_",
    "TRITON_", "HIP_", "ROCR_", "HSA_", "MPS_", "KMP_", "XLA_",
)
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # keeps offsets, unlike str.lower


def shape(literal: str, rest: str) -> str:
    """`literal` not preceded by a word character, then `rest`; a leading literal lets re skip ahead fast."""
    return re.escape(literal) + f"(?<![A-Za-z0-9_]{'.' * len(literal)})" + rest


# Well-known token shapes, matched as they are; a group `v` marks the part to redact, else the whole match.
SHAPES = [re.compile(p) for p in [
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)",  # unterminated: to the end
    shape("sk-", r"[A-Za-z0-9_-]{16,}"),                          # OpenAI, Anthropic
    shape("gh", r"[pousr]_[A-Za-z0-9]{30,}"), shape("github_pat_", r"[A-Za-z0-9_]{20,}"),
    shape("hf_", r"[A-Za-z0-9]{30,}"),
    shape("AKIA", r"[A-Z0-9]{16}\b"), shape("ASIA", r"[A-Z0-9]{16}\b"),
    shape("xox", r"[abprs]-[A-Za-z0-9-]{10,}"),                   # Slack
    shape("AIza", r"[A-Za-z0-9_-]{35}"),                          # Google
    shape("eyJ", r"[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWT
]]
# Case-insensitive ones, matched against the ASCII-lowercased text: keep `bearer ` and `name: "`, redact the value.
VALUE = r"""["']?\s*[:=]\s*["']?(?![-+]?[\d.]+(?:[\s"',;]|$))(?P<v>[^\s"']{8,})"""  # not a plain number
ANY_CASE = [re.compile(p) for p in [
    r"bearer\s+(?P<v>[a-z0-9._~+/=-]{16,})",
    "api[_-]?key" + VALUE, "secret" + VALUE, "passw(?:or)?d" + VALUE, "token" + VALUE,
]]


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether `name` looks like it holds a secret (cached: the same names come back on every call)."""
    return SECRET_NAME.search(name) is not None


def is_allowed(name: str) -> bool:
    """Whether the built-in allow-list passes `name` (never a secret-looking one)."""
    return (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) and not is_secret_name(name)


def run_environment(source: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The environment for a training or evaluation process: allow-listed names of `source`, plus `passthrough`."""
    explicit = set(passthrough)
    return {name: value for name, value in source.items() if name in explicit or is_allowed(name)}


def secret_values(source: Mapping[str, str]) -> list[str]:
    """Values of secret-looking variables in `source`, at least 8 characters, longest first, deduplicated."""
    values = {value for name, value in source.items() if len(value) >= MIN_SECRET_LENGTH and is_secret_name(name)}
    return sorted(values, key=lambda value: (-len(value), value))


def spans(text: str) -> list[tuple[int, int]]:
    """Where the token shapes and secret assignments in `text` lie, sorted."""
    lowered = text.translate(ASCII_LOWER)
    found = [m for pattern in SHAPES for m in pattern.finditer(text)]
    found += [m for pattern in ANY_CASE for m in pattern.finditer(lowered)]
    return sorted(m.span("v" if "v" in m.re.groupindex else 0) for m in found)


def redact(text: str, source: Mapping[str, str] | None = None) -> str:
    """`text` with secret values from `source` (default os.environ) and well-known token shapes made [redacted]."""
    for value in secret_values(os.environ if source is None else source):
        text = text.replace(value, REDACTED)
    pieces, done = [], 0
    for start, end in spans(text):  # overlapping spans make one [redacted]
        if start >= done:
            pieces += [text[done:start], REDACTED]
        done = max(done, end)
    return "".join(pieces) + text[done:]
