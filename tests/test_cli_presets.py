"""The aider, claude-code and codex presets with the real CLIs, each against a scripted server on 127.0.0.1 that
speaks its wire format, through the README's own example lines, run verbatim."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tasks
from tasks import NUMPY_TASK, git
from wire.anthropic_messages import AnthropicMessagesServer
from wire.anthropic_messages import Edit as ClaudeEdit
from wire.openai_chat import Edit as ChatEdit
from wire.openai_chat import OpenAIChatServer
from wire.openai_responses import Edit as ResponsesEdit
from wire.openai_responses import OpenAIResponsesServer

README = Path(__file__).resolve().parents[1] / "README.md"
CLI_DIR = Path(os.environ.get("AUTORESEARCH_CLI_DIR", Path.home() / ".cache" / "autoresearch-clis"))
BINARIES = {"aider": CLI_DIR / "aider" / "bin" / "aider", "claude": CLI_DIR / "npm" / "node_modules" / ".bin" / "claude",
            "codex": CLI_DIR / "npm" / "node_modules" / ".bin" / "codex"}
PRESETS = {  # preset -> (binary, server, its Edit, the port of the README's example)
    "aider": ("aider", OpenAIChatServer, ChatEdit),
    "claude-code": ("claude", AnthropicMessagesServer, ClaudeEdit),
    "codex": ("codex", OpenAIResponsesServer, ResponsesEdit),
}
EDITS = [("train.py", "LR = 0.1  # step size", "LR = 0.3  # step size", "raise the step size to 0.3"),
         ("train.py", "STEPS = 40", "STEPS = 80", "train for twice as many steps")]
STATUSES = ["keep", "discard"]  # at 0.3 the task has converged in 40 steps: 80 gain nothing beyond the noise rule


def readme_example(preset: str) -> str:
    """The README's example line for a preset, exactly as written there."""
    lines = [line.strip() for line in README.read_text().splitlines() if f"--agent {preset} " in line
             and line.strip().split("=")[0].isupper() and "autoresearch run" in line]
    assert len(lines) == 1, f"the README should have one example line for --agent {preset}: {lines}"
    return lines[0]


def example_port(line: str) -> int:
    return int(re.search(r"--base-url http://127\.0\.0\.1:(\d+)", line).group(1))


def bin_dir(tmp_path: Path, binary: str) -> Path:
    """A folder holding only the CLI (not its environment's python), for PATH."""
    target = BINARIES[binary]
    if not target.exists():
        pytest.skip(f"{binary} is not installed in {CLI_DIR} (.ci/run installs it there; set AUTORESEARCH_CLI_DIR)")
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (folder / binary).symlink_to(target)
    return folder


def environment(tmp_path: Path, folder: Path) -> dict[str, str]:
    """The user's environment as a fresh machine has it: a HOME of its own, no git identity, no keys."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not re.search(r"KEY|TOKEN|SECRET|^GIT_|ANTHROPIC|OPENAI|CODEX", k)}
    env.update(HOME=str(home), PATH=f"{folder}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_CONFIG_NOSYSTEM="1")
    return env


def task(tmp_path: Path, extra_config: str = "") -> Path:
    return tasks.make_task(tmp_path / "ws", NUMPY_TASK, extra_config=extra_config)


def rows(root: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM experiments ORDER BY id").fetchall()


def check_two_experiments(root: Path, proc: subprocess.CompletedProcess, preset: str) -> None:
    """Two experiments end to end: applied, committed by the harness as autoresearch, measured, recorded with the
    scripted description, and none of the CLI's files left in the task."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    experiments = [r for r in rows(root) if r["description"] != "baseline"]
    assert [r["description"] for r in experiments] == [e[3] for e in EDITS], output[-3000:]
    assert [r["status"] for r in experiments] == STATUSES, [dict(r) for r in experiments]
    for row, (_, search, replace, _) in zip(experiments, EDITS):
        assert row["agent"] == preset and row["metric"] is not None and row["propose_seconds"] > 0, dict(row)
        assert f"-{search}" in row["diff"] and f"+{replace}" in row["diff"]
        author = git(root, "log", "-1", "--format=%an <%ae>|%s", row["commit_sha"])
        assert author == f"autoresearch <autoresearch@localhost>|{row['description']}"
    assert (root / "results.tsv").read_text().count("\tkeep\t") == 2  # the baseline and the first experiment
    assert git(root, "status", "--porcelain", "--ignored") == "!! .autoresearch/\n!! results.tsv"
    assert git(root, "worktree", "list").count("\n") == 0  # no scratch worktree left
    assert "user.name" not in (root / ".git" / "config").read_text()


# The README's examples bind fixed ports (8000, 4000): under pytest-xdist they run one at a time, in one group.
@pytest.mark.xdist_group("readme-ports")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_readme_example_runs_two_experiments_with_the_real_cli(preset, tmp_path):
    binary, server_class, edit_class = PRESETS[preset]
    folder = bin_dir(tmp_path, binary)
    line = readme_example(preset)
    root = task(tmp_path)
    edits = [edit_class(*e) for e in EDITS]
    try:
        server = server_class(edits, port=example_port(line)).start()
    except OSError as exc:
        pytest.skip(f"port {example_port(line)} of the README's example is taken here: {exc}")
    try:
        proc = subprocess.run(["bash", "-c", line], cwd=root, env=environment(tmp_path, folder), capture_output=True,
                              text=True, timeout=600)
    finally:
        server.stop()
    check_two_experiments(root, proc, preset)
    assert len(server.used) == 2


@pytest.mark.xdist_group("readme-ports")
def test_the_readme_example_for_a_local_openai_compatible_server_runs_verbatim(tmp_path):
    line = readme_example("openai")
    root = task(tmp_path)
    try:
        server = OpenAIChatServer([ChatEdit(*e) for e in EDITS], port=example_port(line)).start()
    except OSError as exc:
        pytest.skip(f"port {example_port(line)} of the README's example is taken here: {exc}")
    try:
        proc = subprocess.run(["bash", "-c", line], cwd=root, env=environment(tmp_path, tmp_path), capture_output=True,
                              text=True, timeout=600)
    finally:
        server.stop()
    check_two_experiments(root, proc, "openai")
    assert {body["model"] for body in server.chat_requests} == {"qwen3-coder"}


def test_a_cli_that_hangs_is_killed_at_its_limit_and_the_loop_goes_on(tmp_path):
    folder = bin_dir(tmp_path, "claude")
    root = task(tmp_path, "\n[agent]\ntimeout_seconds = 8\n")
    server = AnthropicMessagesServer([ClaudeEdit(*e) for e in EDITS], hang=True).start()

    def answer_after_the_first_request():  # the first proposal waits on the endpoint; the next ones get answers
        while not server.agent_requests:
            time.sleep(0.05)
        server.hang = False

    threading.Thread(target=answer_after_the_first_request, daemon=True).start()
    env = environment(tmp_path, folder) | {"ANTHROPIC_API_KEY": "sk-test"}
    command = [sys.executable, "-m", "autoresearch", "run", "--agent", "claude-code", "--model", "m", "--base-url",
               server.base_url, "--max-experiments", "2", "--tag", "t"]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert "timed out after 8s and was killed" in proc.stdout + proc.stderr
    check_two_experiments(root, proc, "claude-code")
    assert time.monotonic() - started < 300  # one kill at 8 s, not a night of waits


@pytest.mark.parametrize("preset,binary,missing", [
    ("aider", None, "needs a model"), ("codex", None, "needs a key: set $OPENAI_API_KEY"),
    ("claude-code", "nowhere", "needs `claude` on PATH")])
def test_a_preset_that_cannot_run_fails_in_seconds_with_one_line(preset, binary, missing, tmp_path):
    root = task(tmp_path)
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    if binary is None:
        name = PRESETS[preset][0]
        folder = bin_dir(tmp_path, name)
    model = [] if preset == "aider" else ["--model", "m"]
    env = environment(tmp_path, folder)
    env["PATH"] = f"{folder}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--agent", preset, *model, "--tag", "t"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and missing in error[0], proc.stderr
    assert time.monotonic() - started < 60 and not (root / "results.tsv").exists()  # before any baseline


def test_the_preset_command_lines_say_what_they_turn_off(tmp_path, monkeypatch):
    from autoresearch.agents.presets import PRESETS as BUILT, Invocation
    from autoresearch.config import AgentSettings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    inv = Invocation(Path("/p/1.md"), tmp_path / "s", ["train.py"], ["prepare.py"])
    settings = AgentSettings(model="m", base_url="http://127.0.0.1:1/v1", args="--extra 1")
    aider = BUILT["aider"].build(settings, inv).argv
    for flag in ("--no-git", "--no-detect-urls", "--edit-format", "--no-suggest-shell-commands", "--no-check-update"):
        assert flag in aider
    assert aider[-2:] == ["--extra", "1"] and ["--file", "train.py"] == aider[aider.index("--file"):][:2]
    claude = BUILT["claude-code"].build(settings, inv)
    assert "Bash" not in claude.argv[claude.argv.index("--tools") + 1] and claude.stdin
    assert claude.env["CLAUDE_CONFIG_DIR"].startswith(str(tmp_path)) and "--bare" in claude.argv
    codex = BUILT["codex"].build(settings, inv)
    assert shlex.join(codex.argv).count("http://127.0.0.1:1/v1") == 1 and codex.argv[-3:] == ["--extra", "1", "-"]
    assert codex.env["CODEX_HOME"].startswith(str(tmp_path)) and Path(codex.env["TMPDIR"]).is_dir()
    assert 'shell_environment_policy.exclude=["OPENAI_API_KEY"]' in codex.argv
