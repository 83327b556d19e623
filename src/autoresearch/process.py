"""Run a workspace command in a shell, with the harness's environment, streaming and logging its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def command_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for workspace commands (`base`, by default the harness's own): `python` resolves to the
    interpreter running autoresearch."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_streaming(command: str, cwd: Path, extra_env: dict[str, str] | None = None,
                  log_path: Path | None = None, echo=None) -> tuple[int, str]:
    """Run `command` in `cwd`; each output line goes to `echo` (if given) and `log_path`. Returns (code, output)."""
    lines: list[str] = []
    log, proc = None, None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")
    try:
        proc = subprocess.Popen(command, shell=True, cwd=cwd, env=command_env(extra_env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            lines.append(line)
            if log:
                log.write(line)
                log.flush()
            if echo:
                echo(line.rstrip("\n"))
        code = proc.wait()
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: take the child down with us
            proc.kill()
            proc.wait()
        if log:
            log.close()
    return code, "".join(lines)
