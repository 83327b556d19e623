"""Fault injection for the kill-safety tests: AUTORESEARCH_FAILPOINT=name[:n] SIGKILLs the harness the nth time
(default: the first) it passes the point `name`. Unset, as always outside the tests, a point does nothing."""

from __future__ import annotations

import os
import signal

_passed: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("AUTORESEARCH_FAILPOINT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
