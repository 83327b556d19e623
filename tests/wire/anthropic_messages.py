"""A scripted Anthropic Messages API server on 127.0.0.1 that drives a coding agent's Read/Edit tool loop."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Edit:
    """One scripted change: replace `search` by `replace` in `path`, explained by `description`."""

    path: str
    search: str
    replace: str
    description: str = "a scripted edit"


def _text(value) -> str:
    """All the text in a system prompt, a message list or a content block list, tool results included."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(item) for item in value)
    if isinstance(value, dict):
        return "\n".join(_text(value.get(key)) for key in ("text", "content") if key in value)
    return ""


def _cwd(body: dict) -> str | None:
    """The working directory the client announces: Claude Code says "Primary working directory: /..." in its
    system prompt, or "CWD: /..." with --bare."""
    text = _text(body.get("system")) + "\n" + _text(body.get("messages"))
    found = re.search(r"(?:[Ww]orking directory|CWD):\s*(/\S*)", text)
    return found.group(1) if found else None


class AnthropicMessagesServer:
    """Serves `POST /v1/messages` (JSON or SSE) and `POST /v1/messages/count_tokens` from a script of edits.

    A request that offers the `Read` and `Edit` tools is the agent's conversation: a fresh one gets a Read of
    the first unused edit whose `search` occurs in the request (else the next unused edit), the Read's result
    gets the Edit, the Edit's result gets the final text `DESCRIPTION: <description>`; with no edit left it
    gets `fallback`. Any other request (titles, quota checks) gets a short text. `status` other than 200
    answers every message request with that error; `hang` never answers one. Every request is recorded in
    `requests` as `(path, json_body_or_None)`.
    """

    def __init__(self, edits=(), *, model: str = "scripted-model", fallback: str = "I have no change to propose.",
                 status: int = 200, hang: bool = False, port: int = 0):
        self.edits = list(edits)
        self._begun: list[int] = []  # indices into `edits`, in the order their Read was sent
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
        return f"http://{host}:{port}"

    def start(self) -> "AnthropicMessagesServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                server._record(self.path, None)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                server._record(self.path, None)
                if self.path.split("?")[0].rstrip("/") == "/v1/models":
                    model = {"type": "model", "id": server.model, "display_name": server.model,
                             "created_at": "2025-01-01T00:00:00Z"}
                    return self._json(200, {"data": [model], "has_more": False, "first_id": server.model,
                                            "last_id": server.model})
                self._json(404, _error("not_found_error", f"no route for GET {self.path}"))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                server._record(self.path, body)
                route = self.path.split("?")[0].rstrip("/")
                if route not in ("/v1/messages", "/v1/messages/count_tokens"):
                    return self._json(404, _error("not_found_error", f"no route for POST {self.path}"))
                if not isinstance(body, dict):
                    return self._json(400, _error("invalid_request_error", "the body is not a JSON object"))
                if route.endswith("count_tokens"):
                    return self._json(200, {"input_tokens": max(1, len(_text(body.get("messages"))) // 4)})
                if server.hang:
                    server._stopping.wait()
                    self.close_connection = True
                    return
                if server.status != 200:
                    return self._json(server.status, _error("api_error", f"scripted HTTP {server.status}"))
                blocks = server._reply(body)
                usage = {"input_tokens": max(1, len(_text(body.get("system")) + _text(body.get("messages"))) // 4),
                         "output_tokens": max(1, len(json.dumps(blocks)) // 4)}
                stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
                message = {"id": f"msg_scripted_{len(server.requests)}", "type": "message", "role": "assistant",
                           "model": body.get("model") or server.model, "content": blocks, "stop_reason": stop,
                           "stop_sequence": None, "usage": usage}
                if body.get("stream"):
                    self._stream(message)
                else:
                    self._json(200, message)

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "req_scripted")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, message):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                start = dict(message, content=[], stop_reason=None,
                             usage={"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1})
                events = [("message_start", {"message": start})]
                for index, block in enumerate(message["content"]):
                    if block["type"] == "text":
                        empty, delta = dict(block, text=""), {"type": "text_delta", "text": block["text"]}
                    else:
                        empty, delta = dict(block, input={}), {"type": "input_json_delta",
                                                               "partial_json": json.dumps(block["input"])}
                    events += [("content_block_start", {"index": index, "content_block": empty}),
                               ("content_block_delta", {"index": index, "delta": delta}),
                               ("content_block_stop", {"index": index})]
                events += [("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                              "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
                           ("message_stop", {})]
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(dict(type=name, **data))}\n\n".encode())
                    self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="anthropic-messages-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "AnthropicMessagesServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def used(self) -> list[Edit]:
        """The edits begun so far, in order."""
        return [self.edits[n] for n in self._begun]

    @property
    def agent_requests(self) -> list[dict]:
        """The JSON bodies of the agent's conversation requests (those offering Read and Edit), in order."""
        return [body for path, body in self.requests
                if path.split("?")[0].rstrip("/") == "/v1/messages" and _is_agent(body)]

    def _record(self, path, body):
        with self._lock:
            self.requests.append((path, body))

    def _reply(self, body: dict) -> list[dict]:
        """The content blocks answering `body`: the next step of the Read -> Edit -> DESCRIPTION script."""
        if not _is_agent(body):  # a side request; one asking for JSON (a session title) gets a JSON object
            schema = ((body.get("output_config") or {}).get("format") or {}).get("schema") or {}
            fields = {key: "Scripted session" for key in schema.get("required", [])}
            return [{"type": "text", "text": json.dumps(fields) if schema else "Scripted session"}]
        messages = body.get("messages") or []
        last = messages[-1].get("content") if messages else None
        ids = [b.get("tool_use_id", "") for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(last, list) else []
        step = re.fullmatch(r"toolu_(read|edit)_(\d+)", ids[-1]) if ids else None
        if step and int(step.group(2)) < len(self.edits):
            n = int(step.group(2))
            edit = self.edits[n]
            if step.group(1) == "read":
                return [{"type": "tool_use", "id": f"toolu_edit_{n}", "name": "Edit",
                         "input": {"file_path": self._path(body, edit), "old_string": edit.search,
                                   "new_string": edit.replace}}]
            return [{"type": "text", "text": f"Done.\n\nDESCRIPTION: {edit.description}"}]
        text = _text(messages)
        with self._lock:
            unused = [n for n in range(len(self.edits)) if n not in self._begun]
            n = next((n for n in unused if self.edits[n].search in text), unused[0] if unused else None)
            if n is None:
                return [{"type": "text", "text": self.fallback}]
            self._begun.append(n)
        edit = self.edits[n]
        return [{"type": "text", "text": f"Let me read {edit.path}."},
                {"type": "tool_use", "id": f"toolu_read_{n}", "name": "Read",
                 "input": {"file_path": self._path(body, edit)}}]

    @staticmethod
    def _path(body: dict, edit: Edit) -> str:
        cwd = _cwd(body)
        return edit.path if edit.path.startswith("/") or not cwd else f"{cwd.rstrip('/')}/{edit.path}"


def _is_agent(body) -> bool:
    names = {tool.get("name") for tool in (body or {}).get("tools") or [] if isinstance(tool, dict)}
    return {"Read", "Edit"} <= names


def _error(kind, message):
    return {"type": "error", "error": {"type": kind, "message": message}}
