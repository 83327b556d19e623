"""Runs the real Codex CLI twice against the scripted Responses server in a throwaway git repo, and checks the edits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wire.openai_responses import Edit, OpenAIResponsesServer  # noqa: E402

KEY = "SCRIPTED_CODEX_KEY"
CLI_DIR = Path(os.environ.get("AUTORESEARCH_CLI_DIR", Path.home() / ".cache" / "autoresearch-clis"))
CODEX = shutil.which("codex") or str(CLI_DIR / "npm" / "node_modules" / ".bin" / "codex")


def codex_launch(model: str, base_url: str, key_env: str, state: Path, last_message: Path) -> tuple[list[str], dict]:
    """The argv (prompt on stdin) and the environment it adds: Codex's home and TMPDIR in `state`, off the repo."""
    provider = (f'{{name="autoresearch", base_url="{base_url}", env_key="{key_env}", wire_api="responses", '
                f'request_max_retries=1, stream_max_retries=1, stream_idle_timeout_ms=120000}}')
    argv = [CODEX, "exec", "--skip-git-repo-check", "--ephemeral", "--ignore-user-config",
            "--ignore-rules", "--strict-config", "--color", "never", "--sandbox", "workspace-write", "--model", model,
            "-c", "model_provider=autoresearch", "-c", f"model_providers.autoresearch={provider}",
            "-c", 'approval_policy="never"', "-c", 'web_search="disabled"', "-c", "analytics.enabled=false",
            "-c", "feedback.enabled=false", "-c", "check_for_update_on_startup=false",
            "-c", "sandbox_workspace_write.network_access=false",
            "-c", "sandbox_workspace_write.exclude_slash_tmp=true",  # its shell writes the repo and $TMPDIR only
            "-c", "shell_environment_policy.ignore_default_excludes=false",  # no *KEY*/*SECRET*/*TOKEN* in its shell
            "-c", f'shell_environment_policy.exclude=["{key_env}"]',
            "--disable", "plugins", "--disable", "unbounded_connection_retries",
            "--output-last-message", str(last_message), "-"]
    (state / "codex-home").mkdir(parents=True, exist_ok=True)
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    # CODEX_HOME must not lie under TMPDIR: there Codex refuses to make the helper links its sandbox needs.
    return argv, {"CODEX_HOME": str(state / "codex-home"), "TMPDIR": str(state / "tmp")}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def run(server, repo: Path, state: Path, model: str, prompt: str) -> subprocess.CompletedProcess:
    last = state / "last-message.txt"
    argv, env = codex_launch(model, server.base_url, KEY, state, last)
    started = time.monotonic()
    done = subprocess.run(argv, input=prompt, cwd=repo, env={**os.environ, **env, KEY: "sk-scripted"},
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    print(f"{model}: exit {done.returncode} in {time.monotonic() - started:.2f}s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"DESCRIPTION: {server.used[-1].description}"), done.stdout
    assert last.read_text().rstrip() == done.stdout.rstrip(), (last.read_text(), done.stdout)
    return done


def main() -> None:
    edits = [Edit("train.py", "LR = 0.1", "LR = 0.2", "raise the learning rate"),
             Edit("train.py", "STEPS = 100", "STEPS = 200", "train twice as long")]
    with tempfile.TemporaryDirectory() as tmp, OpenAIResponsesServer(edits) as server:
        repo, states = Path(tmp) / "repo", Path(tmp) / "state"
        repo.mkdir()
        (repo / "train.py").write_text("LR = 0.1\nSTEPS = 100\n")
        git(repo, "init", "-q")
        git(repo, "add", ".")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
        head = git(repo, "rev-parse", "HEAD")

        # Bundled metadata: apply_patch is a custom (freeform) tool; the file is in the prompt, so no read first.
        run(server, repo, states / "1", "gpt-5.5", "Improve val_bpb.\n\ntrain.py:\nLR = 0.1\nSTEPS = 100\n")
        first = server.agent_requests
        assert any(t.get("name") == "apply_patch" and t.get("type") == "custom" for t in first[0]["tools"])
        assert not any(t.get("type") == "web_search" for t in first[0]["tools"])
        assert [i["type"] for i in first[-1]["input"][-2:]] == ["custom_tool_call", "custom_tool_call_output"]
        assert (repo / "train.py").read_text() == "LR = 0.2\nSTEPS = 100\n"

        # An unknown model name: fallback metadata offers no apply_patch tool, so the script reads the file with
        # exec_command, then patches through an `apply_patch` heredoc, which Codex intercepts as its patch tool.
        run(server, repo, states / "2", "scripted-model", "Improve val_bpb by editing train.py.\n")
        second = server.agent_requests[len(first):]
        assert [body["input"][-1].get("call_id") for body in second[1:]] == ["call_read_1", "call_patch_1"]
        assert "STEPS = 100" in second[1]["input"][-1]["output"]
        assert (repo / "train.py").read_text() == "LR = 0.2\nSTEPS = 200\n"

        status = git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
        assert status == " M train.py\n", status
        assert git(repo, "rev-parse", "HEAD") == head
        print(f"ok: both edits applied, no commit, nothing else in the repo; {len(server.requests)} requests")


if __name__ == "__main__":
    main()
