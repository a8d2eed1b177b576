"""A small OpenAI-compatible chat-completions server for judge tests (127.0.0.1, ephemeral port).

``JudgeServer(respond)`` runs a ``ThreadingHTTPServer`` in a daemon thread. For each
``POST .../chat/completions`` it calls ``respond(call)`` with a ``Call`` (its index, path,
headers with Title-Case names, JSON body, prompt fields) and sends the ``Reply`` it returns, after
``reply.delay_s`` seconds. It records every call and the most requests in flight at once.
Delays wait on an event that ``stop()`` sets, so a stopped server never hangs a test.

    with JudgeServer(contains_grader) as server:
        judge = LLMJudge(JudgeConfig(base_url=server.url, ...))
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    """One request as the server saw it."""

    index: int
    path: str
    headers: dict[str, str]
    body: dict

    def user_text(self) -> str:
        """The user messages' text, joined by newlines."""
        return "\n".join(m.get("content") or "" for m in self.body.get("messages", []) if m.get("role") == "user")

    def line(self, label: str) -> str:
        """The rest of the first line starting with ``label`` in the user message ('' if absent):
        the fields of the reference prompt (``Gold answer: ...``)."""
        m = re.search(rf"^{re.escape(label)} ?(.*)$", self.user_text(), re.M)
        return m.group(1) if m else ""

    def field(self, name: str) -> str:
        """The text between ``<name>`` and ``</name>`` in the user message ('' if absent)."""
        text = "\n".join(
            m.get("content") or "" for m in self.body.get("messages", []) if m.get("role") == "user"
        )
        m = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
        return m.group(1) if m else ""


@dataclass
class Reply:
    """What to send: a chat completion whose message is ``content`` (status 200), or a raw
    ``body`` with ``status``; extra ``headers``; sent after ``delay_s`` seconds."""

    content: str | None = None
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(content: str) -> bytes:
    """An OpenAI chat-completions response body with one choice."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": "test-judge",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def error_body(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


def contains_grader(call: Call) -> Reply:
    """A correct judge: "yes" if the gold answer occurs in the prediction (case-insensitive)."""
    ok = call.field("gold").strip().lower() in call.field("prediction").lower()
    return Reply("Yes." if ok else "no")


def reference_grader(call: Call) -> Reply:
    """A correct judge for the reference prompt (``qa.judge.prompt: reference``): "yes" if the
    ``Gold answer:`` line's text occurs in the ``Student answer:`` line's (case-insensitive)."""
    ok = call.line("Gold answer:").strip().lower() in call.line("Student answer:").lower()
    return Reply("yes" if ok else "no")


class JudgeServer:
    """See the module docstring. ``url`` is the base URL (``http://127.0.0.1:<port>/v1``)."""

    def __init__(self, respond: Callable[[Call], Reply] = contains_grader):
        self.respond = respond
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                # header names as ``Title-Case`` (clients send them in either case)
                headers = {k.title(): v for k, v in self.headers.items()}
                with server._lock:
                    call = Call(len(server.calls), self.path, headers, {})
                    server.calls.append(call)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    try:
                        call.body = json.loads(raw)
                    except ValueError:
                        reply = Reply(
                            status=400, body=error_body("bad json", "invalid_request_error")
                        )
                    else:
                        reply = server.respond(call)
                    if reply.delay_s > 0 and server._stop.wait(reply.delay_s):
                        return  # stopping: drop the request
                    if reply.body is not None:
                        body = reply.body
                    elif reply.status == 200:
                        body = completion(reply.content or "")
                    else:
                        body = error_body(f"status {reply.status}")
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # the client gave up: fine
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
