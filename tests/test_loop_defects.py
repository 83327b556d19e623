"""Defects found in the loop, each reproduced: σ in the prompt, the agent checked before the baseline, one-line errors
for bad settings, a corrupt journal and a missing extra, and a progress line while a run trains."""

import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoresearch.agents.base import Proposal
from autoresearch.session import run_session
from tasks import make_task
from tasks import journal_rows as rows
from test_decide import DECIDE, NOISE_TASK
from test_loop import ScriptedAgent, edit


def autoresearch(*args, cwd, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_noise_floor_reaches_the_agents_context(tmp_path):
    root = make_task(tmp_path / "ws", train=NOISE_TASK, extra_config=DECIDE)
    agent = ScriptedAgent(edit("SALT = 0", "SALT = 1"))
    run_session(root, tag="t", agent=agent, max_experiments=1, echo=lambda *_: None)
    assert agent.contexts[0].noise_floor is not None and agent.contexts[0].noise_floor > 0
    assert agent.contexts[0].parent_commit == rows(root)[0]["commit_sha"]


class Refusing(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses every key."""

    def do_GET(self):
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}')

    do_POST = do_GET

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["dead endpoint", "refused key"])
def test_a_bad_endpoint_or_key_fails_in_seconds_before_the_baseline_naming_the_url(tmp_path, case):
    root = make_task(tmp_path / "ws")
    server = None
    if case == "refused key":
        server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    else:
        url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    started = time.monotonic()
    try:
        result = autoresearch("run", "--tag", "t", "--agent", "openai", "--model", "m", "--base-url", url, cwd=root,
                              env={**__import__("os").environ, "OPENAI_API_KEY": "sk-wrong"})
    finally:
        if server:
            server.shutdown()
    one_line_error(result, url, "AuthenticationError" if case == "refused key" else "APIConnectionError")
    assert time.monotonic() - started < 60
    assert not (root / ".autoresearch" / "journal.sqlite").exists() or rows(root) == []  # no baseline was run


def test_seeds_zero_is_a_one_line_error(tmp_path):
    root = make_task(tmp_path / "ws", extra_config="\n[decide]\nseeds = 0\n")
    one_line_error(autoresearch("run", "--tag", "t", "--agent", "perturb", cwd=root), "decide.seeds")


def test_a_corrupt_journal_is_a_one_line_error_and_is_left_as_it_is(tmp_path):
    root = make_task(tmp_path / "ws")
    (root / ".autoresearch").mkdir()
    journal = root / ".autoresearch" / "journal.sqlite"
    journal.write_bytes(b"this is not a database" * 100)
    for command in (("run", "--tag", "t", "--agent", "perturb"), ("status",)):
        one_line_error(autoresearch(*command, cwd=root), "journal", "cannot be read")
    assert journal.read_bytes() == b"this is not a database" * 100


def test_a_missing_llm_extra_is_a_one_line_error(tmp_path):
    root = make_task(tmp_path / "ws")
    shadow = tmp_path / "no-sdk"  # a folder that makes `import openai` fail, as without the [llm] extra
    (shadow / "openai").mkdir(parents=True)
    (shadow / "openai" / "__init__.py").write_text("raise ImportError('No module named openai')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(shadow), "OPENAI_API_KEY": "x"}
    one_line_error(autoresearch("run", "--tag", "t", "--agent", "openai", "--model", "m", cwd=root, env=env),
                   "pip install 'autoresearch[llm]'")


def test_each_run_is_announced_and_a_long_one_shows_progress(tmp_path, monkeypatch):
    slow = textwrap.dedent('''\
        import os, time
        LR = 0.1
        time.sleep(2.5)
        print("---")
        print(f"score: {LR:.6f}")
    ''')
    root = make_task(tmp_path / "ws", train=slow, extra_config="startup_allowance_seconds = 10\n")
    from autoresearch import reporter

    monkeypatch.setattr(reporter, "PROGRESS_SECONDS", 1.0)  # a progress line every second instead of every 30
    lines = []
    run_session(root, tag="t", agent=ScriptedAgent(edit("LR = 0.1", "LR = 0.2", "raise LR")), max_experiments=1,
                echo=lines.append)
    announce = [i for i, line in enumerate(lines) if line.startswith("#2 raise LR")]
    assert announce, lines
    progress = [line for line in lines[announce[0]:] if line.strip().startswith("… #2")]
    assert len(progress) >= 2, lines
