"""A scripted OpenAI Responses API server on 127.0.0.1 that drives Codex CLI's shell and apply_patch tool loop."""

from __future__ import annotations

import gzip
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUTPUTS = ("function_call_output", "custom_tool_call_output")


@dataclass(frozen=True)
class Edit:
    """One scripted change: replace `search` by `replace` in `path`, explained by `description`."""

    path: str
    search: str
    replace: str
    description: str = "a scripted edit"

    def patch(self, seen: str = "") -> str:
        """The edit in apply_patch's format, whole lines out and in: a `search` that only occurs inside a line of
        `seen` (the conversation so far) is widened to its last such line, as apply_patch matches whole lines."""
        search, replace = self.search.rstrip("\n"), self.replace.rstrip("\n")
        at = seen.rfind(search) if search else -1
        if at >= 0 and not re.search(rf"(?m)^{re.escape(search)}$", seen):
            start, end = seen.rfind("\n", 0, at) + 1, seen.find("\n", at + len(search))
            search = seen[start:end if end >= 0 else len(seen)]
            replace = search.replace(self.search.rstrip("\n"), replace, 1)
        old = "".join(f"-{line}\n" for line in search.split("\n"))
        new = "".join(f"+{line}\n" for line in replace.split("\n")) if replace else ""
        return f"*** Begin Patch\n*** Update File: {self.path}\n@@\n{old}{new}*** End Patch\n"


def _text(value) -> str:
    """Every string in a Responses `input` (messages, tool calls and their outputs), newline-joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(item) for item in value)
    if isinstance(value, dict):
        return "\n".join(_text(item) for key, item in value.items() if key not in ("type", "id", "call_id", "role"))
    return ""


def _tools(body: dict) -> dict[str, str]:
    """The tools offered, name -> type ("function" or "custom"), namespaces flattened."""
    found = {}
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            for inner in tool.get("tools") or [tool]:
                if isinstance(inner, dict) and inner.get("name"):
                    found[inner["name"]] = inner.get("type", "function")
    return found


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hangs up (a killed CLI) is no test failure
        pass


class OpenAIResponsesServer:
    """Serves `POST /v1/responses` (SSE, or JSON when `stream` is false) and `GET /v1/models` from a script of edits.

    A new turn (the input ends with a user message) takes the first unused edit whose `search` occurs in the
    input, and answers with its patch through the `apply_patch` tool (custom or function, whichever is offered;
    through the shell tool when neither is); when no unused edit's `search` is visible it takes the next unused
    edit and first reads the file with the shell tool (`exec_command`, `shell_command` or `shell`). The read's
    output gets the patch, the patch's output gets the final message ending `DESCRIPTION: <description>`; with no
    edit left a turn gets `fallback`. `status` other than 200 answers every responses request with that error;
    `hang` never answers one (read per request: a test may clear it). `port` 0 takes any free port. Every request
    is recorded in `requests` as `(path, json_body_or_None)`.
    """

    def __init__(self, edits=(), *, model: str = "scripted-model", fallback: str = "I have no change to propose.",
                 status: int = 200, hang: bool = False, port: int = 0):
        self.edits = list(edits)
        self.used: list[Edit] = []
        self._taken: set[int] = set()
        self.model = model
        self.fallback = fallback
        self.status = status
        self.hang = hang
        self.port = port
        self.requests: list[tuple[str, dict | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "OpenAIResponsesServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server._record(self.path, None)
                if self.path.split("?")[0].rstrip("/") == "/v1/models":
                    model = {"id": server.model, "object": "model", "created": 0, "owned_by": "scripted"}
                    return self._json(200, {"object": "list", "data": [model]})
                self._json(404, _error("not_found", f"no route for GET {self.path}"))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                server._record(self.path, body)
                if self.path.split("?")[0].rstrip("/") != "/v1/responses":
                    return self._json(404, _error("not_found", f"no route for POST {self.path}"))
                if not isinstance(body, dict):
                    return self._json(400, _error("invalid_request_error", "the body is not a JSON object"))
                if server.hang:
                    server._stopping.wait()
                    self.close_connection = True
                    return
                if server.status != 200:
                    return self._json(server.status, _error("server_error", f"scripted HTTP {server.status}"))
                n = len(server.requests)
                items = [dict(item, id=f"{item['type'][:2]}_scripted_{n}_{i}")
                         for i, item in enumerate(server._reply(body))]
                tokens_in = max(1, len(_text(body.get("input")) + _text(body.get("instructions"))) // 4)
                tokens_out = max(1, len(json.dumps(items)) // 4)
                response = {"id": f"resp_scripted_{n}", "object": "response", "created_at": 0, "status": "completed",
                            "model": body.get("model") or server.model, "output": items,
                            "usage": {"input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0},
                                      "output_tokens": tokens_out, "output_tokens_details": {"reasoning_tokens": 0},
                                      "total_tokens": tokens_in + tokens_out}}
                if body.get("stream", False):
                    self._stream(response)
                else:
                    self._json(200, response)

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", "req_scripted")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, response):
                data = "".join(f"event: {name}\ndata: {json.dumps(dict(type=name, sequence_number=i, **payload))}\n\n"
                               for i, (name, payload) in enumerate(_events(response))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", "req_scripted")
                self.end_headers()
                self.wfile.write(data)

        self._httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, name="openai-responses-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OpenAIResponsesServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def agent_requests(self) -> list[dict]:
        """The JSON bodies of the `POST /v1/responses` requests, in order."""
        return [body for path, body in self.requests
                if path.split("?")[0].rstrip("/") == "/v1/responses" and isinstance(body, dict)]

    def _record(self, path, body):
        with self._lock:
            self.requests.append((path, body))

    def _reply(self, body: dict) -> list[dict]:
        """The output items answering `body`: the next step of the read -> patch -> DESCRIPTION script."""
        items = [item for item in body.get("input") or [] if isinstance(item, dict)]
        if isinstance(body.get("input"), str):
            items = [{"type": "message", "role": "user", "content": body["input"]}]
        tools = _tools(body)
        step = None
        for item in reversed(items):
            if item.get("type") in OUTPUTS:
                step = re.fullmatch(r"call_(read|patch)_(\d+)", str(item.get("call_id")))
                break
            if item.get("type") == "message" and item.get("role") == "user":
                break
        text = _text(items)
        if step and int(step.group(2)) < len(self.edits):
            n, edit = int(step.group(2)), self.edits[int(step.group(2))]
            if step.group(1) == "read":
                return [_patch_call(tools, n, edit, text)]
            return [_message(f"Done: {edit.description}.\n\nDESCRIPTION: {edit.description}")]
        with self._lock:
            unused = [n for n in range(len(self.edits)) if n not in self._taken]
            n = next((n for n in unused if self.edits[n].search in text), None)
            read = n is None
            n = unused[0] if read and unused else n
            if n is None:
                return [_message(self.fallback)]
            self._taken.add(n)
            self.used.append(self.edits[n])
        edit = self.edits[n]
        if read:
            return [_message(f"Let me read {edit.path}."), _shell_call(tools, f"read_{n}", f"cat {edit.path}")]
        return [_patch_call(tools, n, edit, text)]


def _events(response: dict) -> list[tuple[str, dict]]:
    """The SSE events streaming `response`: created, each output item added, its text in one delta, done, completed."""
    started = dict(response, status="in_progress", output=[], usage=None)
    events = [("response.created", {"response": started}), ("response.in_progress", {"response": started})]
    for index, item in enumerate(response["output"]):
        at = {"output_index": index, "item_id": item["id"]}
        if item["type"] == "message":
            text, part = item["content"][0]["text"], {"type": "output_text", "text": "", "annotations": []}
            events += [("response.output_item.added", {"output_index": index, "item": dict(item, content=[])}),
                       ("response.content_part.added", dict(at, content_index=0, part=part)),
                       ("response.output_text.delta", dict(at, content_index=0, delta=text)),
                       ("response.output_text.done", dict(at, content_index=0, text=text)),
                       ("response.content_part.done", dict(at, content_index=0, part=dict(part, text=text)))]
        else:
            key, kind = ("input", "custom_tool_call_input") if item["type"] == "custom_tool_call" \
                else ("arguments", "function_call_arguments")
            events += [("response.output_item.added", {"output_index": index, "item": dict(item, **{key: ""})}),
                       (f"response.{kind}.delta", dict(at, delta=item[key])),
                       (f"response.{kind}.done", dict(at, **{key: item[key]}))]
        events.append(("response.output_item.done", {"output_index": index, "item": item}))
    return events + [("response.completed", {"response": response})]


def _message(text: str) -> dict:
    return {"type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _shell_call(tools: dict, name: str, command: str) -> dict:
    """A call of whichever shell tool is offered, running `command`."""
    if "exec_command" in tools:
        tool, args = "exec_command", {"cmd": command, "yield_time_ms": 10000}
    elif "shell_command" in tools:
        tool, args = "shell_command", {"command": command}
    else:
        tool, args = "shell", {"command": ["bash", "-lc", command]}
    return {"type": "function_call", "status": "completed", "call_id": f"call_{name}", "name": tool,
            "arguments": json.dumps(args)}


def _patch_call(tools: dict, n: int, edit: Edit, seen: str) -> dict:
    """The edit through the apply_patch tool as offered, or as an `apply_patch` heredoc for the shell tool."""
    patch = edit.patch(seen)
    if tools.get("apply_patch") == "custom":
        return {"type": "custom_tool_call", "status": "completed", "call_id": f"call_patch_{n}",
                "name": "apply_patch", "input": patch}
    if "apply_patch" in tools:
        return {"type": "function_call", "status": "completed", "call_id": f"call_patch_{n}", "name": "apply_patch",
                "arguments": json.dumps({"input": patch})}
    return _shell_call(tools, f"patch_{n}", f"apply_patch <<'PATCH'\n{patch}PATCH")


def _error(kind, message):
    return {"error": {"type": kind, "code": kind, "message": message, "param": None}}
