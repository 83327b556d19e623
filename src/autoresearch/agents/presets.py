"""Presets for the coding-agent CLIs people use (aider, Claude Code, Codex): how each runs non-interactively."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autoresearch import UsageError
from autoresearch.config import AgentSettings


@dataclass
class Invocation:
    """What one proposal's run of a CLI is given: the prompt's file, a folder of its own outside the task (for
    its history and config), and the task's editable and locked files."""

    prompt_file: Path
    state_dir: Path
    editable: list[str]
    locked: list[str]


@dataclass
class Launch:
    """How to start the CLI: its argv (no shell), the environment it adds, and whether the prompt goes on stdin."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: bool = False


@dataclass(frozen=True)
class Preset:
    """One CLI: where it is, what it needs, and how to launch it for a proposal."""

    name: str
    program: str  # the binary, looked up on PATH
    install: str  # how to install it, for the error when it is missing
    key_env: str  # where the key is by default ([agent] api_key_env overrides it)
    needs_model: bool  # the CLI has no usable default model for an arbitrary endpoint
    own_files: tuple[str, ...]  # globs: what the CLI keeps in the folder it works in (never part of a proposal)
    launch: Callable[[AgentSettings, Invocation, str], Launch]  # settings, invocation, the key's variable
    logins: tuple[str, ...] = ()  # files under HOME that mean the CLI is signed in without a key

    def key_variable(self, settings: AgentSettings) -> str:
        return settings.api_key_env or self.key_env

    def check(self, settings: AgentSettings) -> None:
        """Before the baseline: the binary exists, a model is named where one is needed, and a key or a
        sign-in is there. Each miss is one line naming it, in seconds rather than after a night of retries."""
        if shutil.which(self.program) is None:
            raise UsageError(f"--agent {self.name} needs `{self.program}` on PATH ({self.install})")
        if self.needs_model and not settings.model:
            raise UsageError(f"--agent {self.name} needs a model: --model NAME (or [agent] model)")
        variable = self.key_variable(settings)
        signed_in = any((Path.home() / login).is_file() for login in self.logins)
        if not os.environ.get(variable) and not (signed_in and not settings.base_url):
            hint = f", or sign in with `{self.program}` first" if self.logins else ""
            raise UsageError(f"--agent {self.name} needs a key: set ${variable} (or name another variable in "
                             f"[agent] api_key_env){hint}")

    def build(self, settings: AgentSettings, invocation: Invocation) -> Launch:
        launch = self.launch(settings, invocation, self.key_variable(settings))
        extra = shlex.split(settings.args or "")
        at = len(launch.argv) - 1 if launch.argv[-1] == "-" else len(launch.argv)  # `-` (prompt on stdin) stays last
        launch.argv[at:at] = extra
        return launch


def _aider(settings: AgentSettings, inv: Invocation, key: str) -> Launch:
    """aider without git (the harness reads the edits; aider never commits or writes .git/config or
    .gitignore), SEARCH/REPLACE edits whatever the model, its history in its own folder, the editable files
    given (without git it picks none up from the prompt), and nothing that asks, scrapes URLs, installs
    Playwright, suggests shell commands, checks for updates, opts into analytics or signs in through a browser.
    (aider runs a message that starts with `/` or `!` as a command: the harness's prompt starts with `#`.)"""
    model = settings.model
    if settings.base_url and not model.startswith("openai/"):
        model = f"openai/{model}"  # an OpenAI-compatible endpoint, whatever the model's own name has in it
    argv = ["aider", "--model", model, "--edit-format", "diff", "--message-file", str(inv.prompt_file),
            "--yes-always", "--no-git", "--no-auto-commits", "--no-dirty-commits", "--no-gitignore",
            "--no-detect-urls", "--no-suggest-shell-commands", "--disable-playwright", "--no-check-update",
            "--no-show-release-notes", "--no-analytics", "--no-pretty", "--no-fancy-input", "--no-auto-lint",
            "--no-auto-test", "--no-show-model-warnings", "--map-tokens", "0",
            "--chat-history-file", str(inv.state_dir / "chat.history.md"),
            "--input-history-file", str(inv.state_dir / "input.history"),
            "--llm-history-file", str(inv.state_dir / "llm.history")]
    for path in inv.editable:
        argv += ["--file", path]
    for path in inv.locked:
        argv += ["--read", path]
    if settings.base_url:
        argv += ["--openai-api-base", settings.base_url]
    # COLUMNS: rich wraps a non-streamed reply at 80 columns otherwise, splitting the DESCRIPTION line
    return Launch(argv, {"OPENAI_API_KEY": os.environ.get(key, ""), "COLUMNS": "4096"})


def _claude_code(settings: AgentSettings, inv: Invocation, key: str) -> Launch:
    """Claude Code in print mode: edits accepted without asking, and only the file tools (an allow-list: a
    deny-list leaves worktree, skill and workflow tools on); no session files, updater, telemetry or other
    non-essential traffic; its retries and request timeout from [agent]. With a key it runs bare (no hooks, no
    CLAUDE.md) with its config in its own folder; without one it uses the user's sign-in under ~/.claude."""
    argv = ["claude", "-p", "--output-format", "text", "--permission-mode", "acceptEdits", "--no-session-persistence",
            "--disallowedTools", "Bash,WebFetch,WebSearch"]
    env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
           "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS": "1",
           "CLAUDE_CODE_MAX_RETRIES": str(settings.max_retries),
           "API_TIMEOUT_MS": str(int(settings.timeout_seconds * 1000))}
    if os.environ.get(key):
        argv += ["--bare", "--tools", "Read,Edit"]
        env.update({"ANTHROPIC_API_KEY": os.environ[key], "CLAUDE_CONFIG_DIR": str(inv.state_dir / "claude")})
    else:  # signed in: the login lives in the user's config folder, so that is where it runs
        argv += ["--tools", "Read,Edit,Write,Glob,Grep"]
    if settings.model:
        argv += ["--model", settings.model]
    if settings.base_url:
        env["ANTHROPIC_BASE_URL"] = settings.base_url
    return Launch(argv, env, stdin=True)


def _codex(settings: AgentSettings, inv: Invocation, key: str) -> Launch:
    """`codex exec` with its own sandbox writing the working folder only (no network, no commit), never an
    approval, no web search, plugins, analytics, feedback or update check, bounded retries, and the key hidden
    from its shell. With a key it talks through a provider of its own (the built-in one ignores OPENAI_API_KEY),
    with its home and TMPDIR in its own folder (under TMPDIR its sandbox cannot make its helper links); signed
    in, it keeps the user's ~/.codex, where the sign-in is."""
    argv = ["codex", "exec", "--skip-git-repo-check", "--ephemeral", "--ignore-user-config", "--ignore-rules",
            "--color", "never", "--sandbox", "workspace-write", "--model", settings.model,
            "-c", 'approval_policy="never"', "-c", 'web_search="disabled"', "-c", "analytics.enabled=false",
            "-c", "feedback.enabled=false", "-c", "check_for_update_on_startup=false",
            "-c", "sandbox_workspace_write.network_access=false", "-c", "sandbox_workspace_write.exclude_slash_tmp=true",
            "-c", "shell_environment_policy.ignore_default_excludes=false",
            "-c", f"shell_environment_policy.exclude={json.dumps([key])}",
            "--disable", "plugins", "--disable", "unbounded_connection_retries",
            "--output-last-message", str(inv.state_dir / "last-message.txt")]
    env = {}
    if os.environ.get(key):
        provider = {"name": "autoresearch", "base_url": settings.base_url or "https://api.openai.com/v1",
                    "env_key": key, "wire_api": "responses", "request_max_retries": settings.max_retries,
                    "stream_max_retries": 1, "stream_idle_timeout_ms": 120000}
        argv += ["-c", "model_provider=autoresearch", "-c", f"model_providers.autoresearch={_toml_inline(provider)}"]
        home, tmp = inv.state_dir / "codex-home", inv.state_dir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        env = {"CODEX_HOME": str(home), "TMPDIR": str(tmp), key: os.environ[key]}
    argv.append("-")  # the prompt on stdin
    return Launch(argv, env, stdin=True)


def _toml_inline(table: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + "}"


PRESETS = {
    "aider": Preset("aider", "aider", "pip install aider-chat, or pipx install aider-chat", "OPENAI_API_KEY", True,
                    (".aider*",), _aider),
    "claude-code": Preset("claude-code", "claude", "npm install -g @anthropic-ai/claude-code", "ANTHROPIC_API_KEY",
                          False, (".claude", ".claude/*", "CLAUDE.md"), _claude_code,
                          logins=(".claude/.credentials.json",)),
    "codex": Preset("codex", "codex", "npm install -g @openai/codex", "OPENAI_API_KEY", True,
                    (".codex", ".codex/*", "AGENTS.md"), _codex, logins=(".codex/auth.json",)),
}
