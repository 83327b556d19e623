"""The OpenAI and Anthropic agents against real local HTTP servers that speak each wire format, with scripted replies.

No SDK is patched: each test starts a ThreadingHTTPServer on 127.0.0.1 whose reply queue holds texts, HTTP status codes
or delays, and which records every request body so the tests can check what the model was sent.
"""

import json
import sqlite3
import textwrap
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import subprocess

from autoresearch import UsageError
from autoresearch.agents import make_agent
from autoresearch.agents.base import Context, CrashToFix, Usage
from autoresearch.agents.llm import AnthropicAgent, OpenAIAgent
from autoresearch.agents.pricing import cost, price_of
from autoresearch.config import AgentSettings, Price
from autoresearch.session import run_session
from tasks import make_task

TRAIN = textwrap.dedent("""\
    import numpy as np

    LR = 0.1
    STEPS = 40
    w = np.zeros(3)
    for _ in range(STEPS):
        w -= LR * w
""")

GOOD = ("I think a larger learning rate converges faster.\n"
        "DESCRIPTION: raise LR to 0.3\n\n"
        "train.py\n```python\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.3\n>>>>>>> REPLACE\n```\n")
WRONG = ("DESCRIPTION: more steps\n\ntrain.py\n<<<<<<< SEARCH\nLR = 0.1\nSTEPS = 400\n=======\nLR = 0.1\nSTEPS = 80\n"
         ">>>>>>> REPLACE\n")
FIXED = "train.py\n<<<<<<< SEARCH\nLR = 0.1\nSTEPS = 40\n=======\nLR = 0.1\nSTEPS = 80\n>>>>>>> REPLACE\n"


@dataclass
class Delay:
    """Answer `text` only after `seconds`: longer than the client's timeout, it is a timeout."""

    seconds: float
    text: str = ""


class FakeLLM:
    """A local chat server: POST /v1/chat/completions (OpenAI) or /v1/messages (Anthropic), scripted replies."""

    def __init__(self, kind: str, usage=(1000, 200)):
        self.kind, self.usage = kind, usage
        self.script: deque = deque()
        self.requests: list[dict] = []  # the JSON bodies received, in order
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                fake.requests.append(body)
                fake.paths.append(self.path)
                entry = fake.script.popleft() if fake.script else ""
                try:
                    if isinstance(entry, int):
                        self._send(entry, {"error": {"type": "server_error", "message": f"scripted {entry}"}})
                        return
                    if isinstance(entry, Delay):
                        time.sleep(entry.seconds)
                        entry = entry.text
                    self._send(200, fake.reply(body, entry))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # keep the SDKs' backoff short
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1" if kind == "openai" else f"http://127.0.0.1:{port}"

    def reply(self, body: dict, text: str) -> dict:
        prompt_tokens, completion_tokens = self.usage
        if self.kind == "openai":
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}}
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}

    def sent(self, n: int) -> list[dict]:
        """The messages of the n-th request."""
        return self.requests[n]["messages"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


KINDS = {"openai": (OpenAIAgent, "gpt-4o-mini"), "anthropic": (AnthropicAgent, "claude-haiku-4-5")}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def server(kind):
    fake = FakeLLM(kind)
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-test")
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def make(kind, server, **kw):
    cls, model = KINDS[kind]
    settings = dict(model=model, base_url=server.base_url, api_key_env="FAKE_LLM_KEY", max_retries=2,
                    timeout_seconds=5.0, max_tokens=1024)
    return cls(AgentSettings(**{**settings, **kw}))


def context(**kw):
    base = dict(program="Make the score go up.", files={"train.py": TRAIN}, locked={"prepare.py": "DATA = 1\n"},
                history=[], metric="score", maximize=True, best=-0.5, editable=["train.py"])
    return Context(**{**base, **kw})


def text_of(message) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_a_good_edit_is_applied(kind, server):
    server.script.append(GOOD)
    agent = make(kind, server)
    proposal = agent.propose(context())
    assert proposal.description == "raise LR to 0.3"
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}
    assert agent.name == kind and agent.last_error is None
    assert server.paths == ["/v1/chat/completions" if kind == "openai" else "/v1/messages"]
    request = server.requests[0]
    assert request["model"] == KINDS[kind][1]
    assert request["max_tokens"] == 1024  # not api.openai.com: the field every compatible server knows
    prompt = text_of(server.sent(0)[0])
    assert "Make the score go up." in prompt and "SEARCH" in prompt and "LR = 0.1" in prompt


def test_a_mismatched_search_is_sent_back_with_the_closest_lines_and_fixed(kind, server):
    server.script.extend([WRONG, FIXED])
    agent = make(kind, server)
    proposal = agent.propose(context())
    assert proposal.files == {"train.py": TRAIN.replace("STEPS = 40", "STEPS = 80")}
    assert proposal.description == "more steps"  # kept from the first reply
    assert len(server.requests) == 2
    second = server.sent(1)
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert text_of(second[1]) == WRONG  # the same conversation goes on
    feedback = text_of(second[2])
    assert "SEARCH text was not found in train.py" in feedback
    assert "The closest lines in train.py (lines 3-4) are:\n```\nLR = 0.1\nSTEPS = 40\n```" in feedback
    assert agent.spent.calls == 2


def test_only_the_failed_block_is_retried_and_a_resent_good_block_does_no_harm(kind, server):
    lr = "train.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.3\n>>>>>>> REPLACE\n"
    steps = "train.py\n<<<<<<< SEARCH\nSTEPS = {}\n=======\nSTEPS = 80\n>>>>>>> REPLACE\n"
    server.script.extend(["DESCRIPTION: raise LR to 0.3\n" + lr + steps.format(400),
                          lr + steps.format(40)])  # the second reply resends the block that was applied
    proposal = make(kind, server).propose(context())
    assert proposal.description == "raise LR to 0.3"
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3").replace("STEPS = 40", "STEPS = 80")}
    feedback = text_of(server.sent(1)[2])
    assert "1 of your edits could not be applied" in feedback and "The other 1 edit(s) were applied" in feedback


def test_edits_that_never_match_give_up_after_two_retries(kind, server):
    server.script.extend([WRONG, WRONG, WRONG])
    agent = make(kind, server)
    assert agent.propose(context()) is None
    assert len(server.requests) == 3
    assert "did not apply" in agent.last_error


def test_a_reply_without_blocks_is_none(kind, server):
    server.script.append("I have nothing more to try; the setup is already optimal.")
    agent = make(kind, server)
    assert agent.propose(context()) is None
    assert len(server.requests) == 1 and agent.spent.calls == 1


def test_429_and_500_are_retried_then_succeed(kind, server):
    server.script.extend([429, 500, GOOD])
    agent = make(kind, server, max_retries=2)
    started = time.monotonic()
    proposal = agent.propose(context())
    assert proposal is not None and "LR = 0.3" in proposal.files["train.py"]
    assert len(server.requests) == 3 and time.monotonic() - started < 3
    assert agent.spent.calls == 1 and len(agent.calls) == 1  # one call billed, its retries are the SDK's


def test_errors_beyond_the_retries_give_none_not_an_exception(kind, server):
    server.script.extend([503, 503, GOOD])
    agent = make(kind, server, max_retries=1)
    assert agent.propose(context()) is None
    assert "503" in agent.last_error or "scripted" in agent.last_error
    assert agent.propose(context()) is not None  # the next proposal works


def test_a_timeout_is_survived(kind, server):
    server.script.extend([Delay(1.5, GOOD), GOOD])
    agent = make(kind, server, timeout_seconds=0.5, max_retries=0)
    started = time.monotonic()
    assert agent.propose(context()) is None
    assert time.monotonic() - started < 1.4
    assert "Timeout" in agent.last_error or "timed out" in agent.last_error.lower()
    assert agent.spent == Usage()  # nothing came back, nothing billed
    proposal = agent.propose(context())
    assert proposal is not None and agent.last_error is None


def test_an_edit_to_a_locked_file_is_rejected(kind, server):
    only_locked = "DESCRIPTION: more data\nprepare.py\n<<<<<<< SEARCH\nDATA = 1\n=======\nDATA = 2\n>>>>>>> REPLACE\n"
    server.script.extend([only_locked, only_locked + GOOD.split("\n\n", 1)[1]])
    agent = make(kind, server)
    assert agent.propose(context()) is None  # nothing editable remained
    assert "prepare.py is not an editable file" in agent.last_error
    proposal = agent.propose(context())  # the locked edit is dropped, the editable one kept
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}
    assert len(server.requests) == 2  # a locked edit is not argued about


def test_fix_mode_sends_the_crash_log_and_edits_the_crashed_files(kind, server):
    crashed = TRAIN.replace("LR = 0.1", "LR = 0.3").replace("w -= LR * w", "w -= LR * v")
    fix = CrashToFix("raise LR to 0.3", {"train.py": crashed}, "Traceback (most recent call last):\nNameError: name 'v' is not defined\n", 1)
    server.script.append("DESCRIPTION: raise LR to 0.3 (fixed)\ntrain.py\n"
                         "<<<<<<< SEARCH\n    w -= LR * v\n=======\n    w -= LR * w\n>>>>>>> REPLACE\n")
    agent = make(kind, server)
    proposal = agent.propose(context(fix=fix))
    prompt = text_of(server.sent(0)[0])
    assert "NameError: name 'v' is not defined" in prompt and "fix attempt 1 of 2" in prompt
    assert "w -= LR * v" in prompt  # the crashed version is what it edits
    assert proposal.description == "raise LR to 0.3 (fixed)"
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}  # the fix on top of the idea


def test_fix_mode_reply_without_edits_gives_the_idea_up(kind, server):
    server.script.append("This idea cannot work; giving it up.")
    fix = CrashToFix("bad", {"train.py": TRAIN + "oops(\n"}, "SyntaxError", 2)
    assert make(kind, server).propose(context(fix=fix)) is None


def test_tokens_and_cost_are_billed(kind, server):
    server.script.extend([WRONG, FIXED])
    agent = make(kind, server)
    agent.propose(context())
    expected = cost(KINDS[kind][1], 1000, 200)
    assert expected > 0
    assert agent.spent.input_tokens == 2000 and agent.spent.output_tokens == 400 and agent.spent.calls == 2
    assert agent.spent.cost_usd == pytest.approx(2 * expected)
    assert [(c["model"], c["input_tokens"], c["output_tokens"]) for c in agent.calls] == [(KINDS[kind][1], 1000, 200)] * 2
    assert all(c["cost_usd"] == pytest.approx(expected) and c["seconds"] >= 0 for c in agent.calls)


def test_price_overrides_from_settings(kind, server):
    server.script.append(GOOD)
    agent = make(kind, server, prices={KINDS[kind][1]: Price(input=10.0, output=100.0)})
    agent.propose(context())
    assert agent.spent.cost_usd == pytest.approx((1000 * 10.0 + 200 * 100.0) / 1e6)


def test_missing_key_or_model_is_a_usage_error(kind, server, monkeypatch):
    cls, _ = KINDS[kind]
    monkeypatch.delenv("FAKE_LLM_KEY")
    with pytest.raises(UsageError, match="FAKE_LLM_KEY"):
        make(kind, server)
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    with pytest.raises(UsageError, match="model"):
        cls(AgentSettings(api_key_env="FAKE_LLM_KEY"))
    default_env = "OPENAI_API_KEY" if kind == "openai" else "ANTHROPIC_API_KEY"
    monkeypatch.delenv(default_env, raising=False)
    with pytest.raises(UsageError, match=default_env):
        make_agent(kind, AgentSettings(name=kind, model="m"))


def test_price_table_longest_prefix_and_unknown_models():
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_of("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_of("openrouter/anthropic/claude-sonnet-4-5") == (3.00, 15.00)
    assert price_of("my-model", {"my": Price(input=1, output=2)}) == (1.0, 2.0)
    assert price_of("gpt-4o", {"gpt-4o": {"input": 9, "output": 9}}) == (9.0, 9.0)
    with pytest.warns(UserWarning, match="no price known"):
        assert cost("totally-unknown-model", 10**6, 10**6) == 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cost("totally-unknown-model", 1, 1) == 0.0  # warned once only


def committed_train(root) -> str:
    """train.py at the tip of autoresearch/t: the best kept candidate (the user's checkout is never changed)."""
    return subprocess.run(["git", "show", "autoresearch/t:train.py"], cwd=root, capture_output=True, text=True, check=True).stdout


# --- end to end: the real loop, a real git workspace, the OpenAI agent on the local server ------------------------

def test_end_to_end_the_loop_keeps_the_models_edit(tmp_path):
    fake = FakeLLM("openai")
    fake.script.append("DESCRIPTION: five times more steps\ntrain.py\n"
                       "<<<<<<< SEARCH\nSTEPS = 40\n=======\nSTEPS = 200\n>>>>>>> REPLACE\n")
    try:
        root = make_task(tmp_path / "ws")
        agent = OpenAIAgent(AgentSettings(name="openai", model="gpt-4o-mini", base_url=fake.base_url,
                                          api_key_env="FAKE_LLM_KEY", max_retries=0, timeout_seconds=10))
        run_session(root, tag="t", agent=agent, max_experiments=1, echo=lambda *_: None)
    finally:
        fake.close()
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    rows = db.execute("SELECT description, status FROM experiments ORDER BY id").fetchall()
    db.close()
    assert rows == [("baseline", "keep"), ("five times more steps", "keep")]
    assert "STEPS = 200" in committed_train(root)
    assert "Maximize the score." in text_of(fake.sent(0)[0])
    assert agent.spent.calls == 1
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    spend = db.execute("SELECT input_tokens, output_tokens, llm_calls, cost_usd FROM experiments ORDER BY id").fetchall()
    db.close()
    assert spend[1][:3] == (1000, 200, 1) and spend[1][3] == pytest.approx(agent.spent.cost_usd) and spend[1][3] > 0


def journal(root, columns):
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    out = db.execute(f"SELECT {columns} FROM experiments ORDER BY id").fetchall()
    db.close()
    return out


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_end_to_end_a_crash_is_fixed_after_the_model_sees_the_log_tail(tmp_path, kind):
    fake = FakeLLM(kind)
    fake.script.append("DESCRIPTION: faster\ntrain.py\n<<<<<<< SEARCH\nSTEPS = 40\n=======\nSTEPS = 200\nbroken_name\n>>>>>>> REPLACE\n")
    fake.script.append("DESCRIPTION: faster (fixed)\ntrain.py\n<<<<<<< SEARCH\nbroken_name\n=======\n>>>>>>> REPLACE\n")
    try:
        root = make_task(tmp_path / "ws")
        cls = OpenAIAgent if kind == "openai" else AnthropicAgent
        agent = cls(AgentSettings(name=kind, model="m", base_url=fake.base_url, api_key_env="FAKE_LLM_KEY", max_retries=0))
        run_session(root, tag="t", agent=agent, max_experiments=2, echo=lambda *_: None)
    finally:
        fake.close()
    assert journal(root, "description, status, attempt") == [("baseline", "keep", 0), ("faster", "crash", 0), ("faster (fixed)", "keep", 1)]
    assert "NameError: name 'broken_name' is not defined" in text_of(fake.sent(1)[0])
    assert "STEPS = 200" in committed_train(root) and "broken_name" not in committed_train(root)


def test_end_to_end_the_cost_cap_stops_the_loop(tmp_path):
    fake = FakeLLM("openai", usage=(100_000, 10_000))
    for i in range(1, 6):
        fake.script.append(f"DESCRIPTION: steps {40 + i}\ntrain.py\n<<<<<<< SEARCH\nSTEPS = {40 + i - 1}\n=======\nSTEPS = {40 + i}\n>>>>>>> REPLACE\n")
    try:
        root = make_task(tmp_path / "ws")
        prices = {"priced-model": Price(input=10.0, output=20.0)}  # $1.00 + $0.20 = $1.20 a call
        agent = OpenAIAgent(AgentSettings(name="openai", model="priced-model", base_url=fake.base_url, api_key_env="FAKE_LLM_KEY",
                                          max_retries=0, prices=prices))
        run_session(root, tag="t", agent=agent, max_experiments=5, max_cost=2.0, echo=lambda *_: None)
    finally:
        fake.close()
    spend = journal(root, "cost_usd")
    assert [round(c, 6) for (c,) in spend] == [0.0, 1.2, 1.2]  # the cap of $2 is reached after two calls
    assert len(fake.requests) == 2
