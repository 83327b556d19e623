"""A scripted OpenAI Chat Completions server on 127.0.0.1 that answers with SEARCH/REPLACE edits."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Edit:
    """One scripted change: replace `search` by `replace` in `path`, explained by `description`."""

    path: str
    search: str
    replace: str
    description: str = "a scripted edit"

    def reply(self) -> str:
        """The edit as a reply in aider's "diff" format, closed by the harness's DESCRIPTION line."""
        search, replace = (text if text.endswith("\n") else text + "\n" for text in (self.search, self.replace))
        return (
            f"{self.path}\n```python\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n\n"
            f"DESCRIPTION: {self.description}\n"
        )


def _text(messages) -> str:
    """Every message's text, whether `content` is a string or a list of parts."""
    parts = []
    for message in messages or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(part.get("text", "") for part in content if isinstance(part, dict))
    return "\n".join(parts)


class OpenAIChatServer:
    """Serves `POST /v1/chat/completions` (JSON or SSE) and `GET /v1/models` from a script of edits.

    Each chat request gets the first unused edit whose `search` text occurs in its messages, or the
    plain `fallback` text. `status` other than 200 answers every chat request with that error;
    `hang` never answers; `delay` makes every chat answer wait that long. Every request is recorded in `requests`
    as `(path, json_body_or_None)`.
    """

    def __init__(
        self,
        edits=(),
        *,
        model: str = "scripted-model",
        fallback: str = "I have no change to propose.",
        status: int = 200,
        hang: bool = False,
        port: int = 0,
        delay: float = 0.0,
    ):
        self.edits = list(edits)
        self.delay = delay  # seconds each chat request waits before its answer (an LLM's latency)
        self.spans: list[tuple[float, float]] = []  # (start, end) of each chat request answered, by time.time()
        self.used: list[Edit] = []
        self.model = model
        self.fallback = fallback
        self.status = status
        self.hang = hang
        self.port = port  # 0: any free port
        self.requests: list[tuple[str, dict | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "OpenAIChatServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server._record(self.path, None)
                if self.path.rstrip("/") == "/v1/models":
                    models = [{"id": server.model, "object": "model", "created": 0, "owned_by": "scripted"}]
                    self._json(200, {"object": "list", "data": models})
                else:
                    self._not_found()

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                server._record(self.path, body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._not_found()
                if not isinstance(body, dict):
                    return self._json(400, _error("the body is not a JSON object", "invalid_request_error"))
                if server.hang:
                    server._stopping.wait()
                    return
                if server.status != 200:
                    return self._json(server.status, _error(f"scripted HTTP {server.status}", "server_error"))
                began = time.time()
                time.sleep(server.delay)
                content = server._next_reply(body.get("messages"))
                with server._lock:
                    server.spans.append((began, time.time()))
                model = body.get("model") or server.model
                prompt_tokens, completion_tokens = len(_text(body.get("messages"))) // 4, len(content) // 4
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                if body.get("stream"):
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._stream(model, content, usage if include_usage else None)
                else:
                    message = {"role": "assistant", "content": content}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    self._json(200, _completion("chat.completion", model, [choice], usage=usage))

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self):
                message = f"no route for {self.command} {self.path}"
                self._json(404, _error(message, "invalid_request_error", "not_found"))

            def _stream(self, model, content, usage):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                chunks = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                chunks += [{"index": 0, "delta": {"content": line}, "finish_reason": None}
                           for line in content.splitlines(True)]
                chunks += [{"index": 0, "delta": {}, "finish_reason": "stop"}]
                events = [_completion("chat.completion.chunk", model, [choice]) for choice in chunks]
                if usage is not None:
                    events.append(_completion("chat.completion.chunk", model, [], usage=usage))
                for event in events:
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="openai-chat-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OpenAIChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def chat_requests(self) -> list[dict]:
        """The JSON bodies of the chat-completion requests, in order."""
        return [body for path, body in self.requests if path.rstrip("/") == "/v1/chat/completions"]

    def _record(self, path, body):
        with self._lock:
            self.requests.append((path, body))

    def _next_reply(self, messages) -> str:
        text = _text(messages)
        with self._lock:
            for edit in self.edits:
                if all(edit is not used for used in self.used) and edit.search in text:
                    self.used.append(edit)
                    return edit.reply()
        return self.fallback


def _completion(kind, model, choices, usage=None):
    payload = {"id": "chatcmpl-scripted", "object": kind, "created": int(time.time()), "model": model,
               "choices": choices}
    if usage is not None:
        payload["usage"] = usage
    return payload


def _error(message, kind, code=None):
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
