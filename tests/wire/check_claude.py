"""Runs the real Claude Code CLI twice against the scripted Messages server in a temp git repo; not a pytest test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wire.anthropic_messages import AnthropicMessagesServer, Edit  # noqa: E402

CLAUDE = os.environ.get("CLAUDE_BIN") or shutil.which("claude") or "/tmp/clis/npm/node_modules/.bin/claude"
# The prompt arrives on stdin; the final text (with the DESCRIPTION line) is printed on stdout.
ARGV = [CLAUDE, "-p", "--bare", "--model", "scripted-model", "--permission-mode", "acceptEdits",
        "--tools", "Read,Edit", "--disallowedTools", "Bash,WebFetch,WebSearch", "--no-session-persistence",
        "--output-format", "text"]
QUIET = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
         "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS": "1",  # no git status/log runs
         "CLAUDE_CODE_MAX_RETRIES": "2", "API_TIMEOUT_MS": "60000"}  # defaults: 10 retries, 600 s a request
TRAIN = "LR = 0.1\nEPOCHS = 3\nprint('score: 1.0')\n"
EDITS = [Edit("train.py", "LR = 0.1", "LR = 0.05", "halve the learning rate"),
         Edit("train.py", "EPOCHS = 3", "EPOCHS = 5", "train for more epochs")]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="check-claude-") as tmp, AnthropicMessagesServer(EDITS) as server:
        tmp = Path(tmp)
        repo, home, config = tmp / "repo", tmp / "home", tmp / "claude-config"
        for folder in (repo, home, config):
            folder.mkdir()
        (repo / "train.py").write_text(TRAIN)
        git(repo, "init", "-q")
        git(repo, "add", "train.py")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CLAUDE_CONFIG_DIR": str(config),
               "ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "sk-scripted", **QUIET}
        expected = TRAIN
        for edit in EDITS:
            head = git(repo, "rev-parse", "HEAD")
            prompt = (f"Improve the score. The editable file is train.py:\n\n{(repo / 'train.py').read_text()}\n"
                      "Edit it in place, then end your reply with a line `DESCRIPTION: <one line>`.\n")
            start = time.monotonic()
            proc = subprocess.run(ARGV, cwd=repo, env=env, input=prompt, capture_output=True, text=True, timeout=120)
            seconds = time.monotonic() - start
            expected = expected.replace(edit.search, edit.replace)
            assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
            assert (repo / "train.py").read_text() == expected, (repo / "train.py").read_text()
            last = [line for line in proc.stdout.splitlines() if line.startswith("DESCRIPTION:")][-1:]
            assert last == [f"DESCRIPTION: {edit.description}"], proc.stdout
            status = git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
            assert status == " M train.py\n", f"unexpected files in the repo:\n{status}"
            assert git(repo, "rev-parse", "HEAD") == head, "the CLI committed"
            assert not any(home.iterdir()), f"the CLI wrote into HOME: {sorted(home.rglob('*'))}"
            print(f"{edit.description!r}: exit 0 in {seconds:.1f}s, {len(server.agent_requests)} agent requests so far")
            git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", edit.description)
        assert server.used == EDITS, server.used
        tools = {tool["name"] for body in server.agent_requests for tool in body["tools"]}
        assert tools == {"Read", "Edit"}, tools
        print("the CLI's own files, all under CLAUDE_CONFIG_DIR:",
              ", ".join(sorted(str(p.relative_to(config)) for p in config.rglob("*"))))
        print("requests:", ", ".join(sorted({path for path, _ in server.requests})))
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
