"""Runs the real aider twice against the scripted server in a temp git repo: python tests/wire/check_aider.py [AIDER]"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wire.openai_chat import Edit, OpenAIChatServer  # noqa: E402

TRAIN = "import math\n\nLR = 0.1\nSTEPS = 100\n\nprint(LR * STEPS)\n"
PREPARE = "DATA = 'kjv'\n"
EDITS = [
    Edit("train.py", "LR = 0.1", "LR = 0.2", "raise LR to 0.2"),
    Edit("train.py", "STEPS = 100", "STEPS = 200", "double STEPS"),
]


def aider_argv(aider: str, base_url: str, prompt: Path, state: Path, editable, locked) -> list[str]:
    """The preset's command line: one message from a file, SEARCH/REPLACE edits, no git, nothing that asks."""
    argv = [aider, "--model", "openai/scripted-model", "--openai-api-base", base_url, "--edit-format", "diff",
            "--message-file", str(prompt), "--yes-always",
            "--no-git", "--no-auto-commits", "--no-dirty-commits", "--no-gitignore",
            "--no-detect-urls", "--no-suggest-shell-commands", "--disable-playwright",
            "--no-check-update", "--no-show-release-notes", "--no-analytics",
            "--no-pretty", "--no-fancy-input", "--no-auto-lint", "--no-auto-test", "--no-show-model-warnings",
            "--map-tokens", "0",
            "--chat-history-file", str(state / "chat.history.md"),
            "--input-history-file", str(state / "input.history"),
            "--llm-history-file", str(state / "llm.history")]
    for path in editable:
        argv += ["--file", path]
    for path in locked:
        argv += ["--read", path]
    return argv


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (the .git folder included) with its content's hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def main() -> int:
    aider = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AIDER_BIN") or shutil.which("aider")
    if not aider:
        sys.exit("no aider: pass its path, set AIDER_BIN, or put it on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="check-aider-"))
    repo, state, home = tmp / "repo", tmp / "state", tmp / "home"
    for folder in (repo, state, home):
        folder.mkdir()
    (repo / "train.py").write_text(TRAIN)
    (repo / "prepare.py").write_text(PREPARE)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDER_")}
    env.update(OPENAI_API_KEY="sk-scripted", HOME=str(home), COLUMNS="4096")
    try:
        with OpenAIChatServer(EDITS) as server:
            expected = TRAIN
            for run, (edit, extra) in enumerate(zip(EDITS, ([], ["--no-stream"])), start=1):
                prompt = state / f"prompt-{run}.md"
                prompt.write_text("Improve train.py. Reply with SEARCH/REPLACE blocks, then a last line\n"
                                  "DESCRIPTION: <one line>\n\n" + (repo / "train.py").read_text())
                before = snapshot(repo)
                argv = aider_argv(aider, server.base_url, prompt, state, ["train.py"], ["prepare.py"]) + extra
                start = time.monotonic()
                done = subprocess.run(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=300)
                seconds = time.monotonic() - start
                expected = expected.replace(edit.search, edit.replace)
                after = snapshot(repo)
                changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
                descriptions = [line for line in done.stdout.splitlines() if line.startswith("DESCRIPTION:")]
                body = server.chat_requests[-1]
                assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
                assert (repo / "train.py").read_text() == expected, (repo / "train.py").read_text()
                assert changed == ["train.py"], f"aider changed more than train.py: {changed}"
                assert descriptions and descriptions[-1] == f"DESCRIPTION: {edit.description}", done.stdout
                assert body["model"] == "scripted-model" and bool(body.get("stream")) == (not extra), body.keys()
                print(f"run {run} ({'no-stream' if extra else 'stream'}): {seconds:.1f}s, exit 0, changed {changed}, "
                      f"{descriptions[-1]!r}")
            assert server.used == EDITS and len(server.chat_requests) == 2, server.requests
        assert git(repo, "log", "--format=%s") == "init\n", "aider committed"
        assert git(repo, "status", "--porcelain", "--ignored", "-uall") == " M train.py\n"
        written = [p for p in sorted(state.rglob("*")) + sorted(home.rglob("*")) if p.is_file()]
        print("aider wrote outside the repo:", [str(p.relative_to(tmp)) for p in written if "prompt-" not in p.name])
        print("ok")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
