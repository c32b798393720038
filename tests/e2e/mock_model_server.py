"""The part of the mock model APIs both vendors share: an HTTP server on
127.0.0.1 that records every request, picks a scripted reply from a
directive in the conversation's first user message, and streams it as
server-sent events.

Directives (anywhere in the user prompt):

| directive | reply |
|---|---|
| `MOCK:TEXT <words>` | the words as text, one streamed chunk per word |
| `MOCK:SHELL <command>` | a call of the agent's shell tool with `command`; once the tool's output comes back (the next request), text `tool said: <output>` |
| `MOCK:JSON <object>` | that object as the structured output |
| `MOCK:ERROR <status> <message>` | an HTTP error with the vendor's error body |
| `MOCK:HANG` | starts a stream, then sends only keep-alives until the client goes away |
| anything else | text `ok` |

The vendor modules (`mock_openai`, `mock_anthropic`) turn these into their
own wire formats, exactly as the real APIs stream them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIRECTIVE = re.compile(r"MOCK:(TEXT|SHELL|JSON|ERROR|HANG)\b ?(.*)", re.DOTALL)

#: Between keep-alives of a hanging reply: how soon a client that left is noticed.
KEEPALIVE_SECONDS = 0.1


@dataclasses.dataclass
class Directive:
    kind: str
    arg: str

    @classmethod
    def find(cls, text: str) -> Directive:
        match = DIRECTIVE.search(text or "")
        if not match:
            return cls("TEXT", "ok")
        return cls(match.group(1), match.group(2).strip())

    def error(self) -> tuple[int, str]:
        status, _, message = self.arg.partition(" ")
        return int(status), message


@dataclasses.dataclass
class Recorded:
    """One request the mock received."""

    method: str
    path: str
    headers: dict
    body: object


class MockModelServer:
    """Base of the vendor mocks: serves POST `endpoint`, answers `MOCK:ERROR`
    with the vendor's `error_body`, and leaves every other directive to the
    vendor's `answer(handler, body, directive)`.

    `wait_hanging(n)` returns once `n` `MOCK:HANG` replies have started,
    `wait_released(n)` once `n` of their clients closed the connection:
    together they show a cancel really reached the model request.
    """

    #: The POST path the vendor's API serves (query string ignored).
    endpoint = ""
    #: The response header carrying a request id, as the vendor names it.
    request_id_header = ""

    def __init__(self):
        self.ids = itertools.count(1)
        self.requests: list[Recorded] = []
        self._hangs = {"started": 0, "released": 0}
        self._hang_change = threading.Condition()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer._record(self, None)
                self.send_json(404, {"error": {"message": f"no such endpoint {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                outer._record(self, body)
                outer.reply(self, body)

            def send_json(self, status: int, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def start_events(self):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True

            def event(self, name: str | None, data):
                head = f"event: {name}\n" if name else ""
                self.wfile.write(f"{head}data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, handler, body):
        with self._lock:
            self.requests.append(Recorded(handler.command, handler.path, dict(handler.headers), body))

    def posts(self, path_prefix: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.startswith(path_prefix)]

    def hang(self, handler, keepalive: bytes):
        """Holds a started event stream open, writing only `keepalive`, until
        the client leaves (or the mock closes)."""
        self._count_hang("started")
        try:
            while not self._closing.wait(KEEPALIVE_SECONDS):
                handler.wfile.write(keepalive)
                handler.wfile.flush()
        except OSError:
            self._count_hang("released")

    def _count_hang(self, what: str):
        with self._hang_change:
            self._hangs[what] += 1
            self._hang_change.notify_all()

    def _wait_hangs(self, what: str, count: int, timeout: float) -> bool:
        with self._hang_change:
            return self._hang_change.wait_for(lambda: self._hangs[what] >= count, timeout)

    def wait_hanging(self, count: int = 1, timeout: float = 60) -> bool:
        return self._wait_hangs("started", count, timeout)

    def wait_released(self, count: int = 1, timeout: float = 10) -> bool:
        return self._wait_hangs("released", count, timeout)

    def reply(self, handler, body):
        if handler.path.split("?")[0].rstrip("/") != self.endpoint or not isinstance(body, dict):
            handler.send_json(404, self.error_body(f"mock: no such endpoint {handler.path}", "not_found_error"))
            return
        directive = Directive.find(self.user_prompt(body))
        if directive.kind == "ERROR":
            status, message = directive.error()
            headers = [(self.request_id_header, "req_mock")]
            handler.send_json(status, self.error_body(message, "invalid_request_error"), headers)
            return
        self.answer(handler, body, directive)

    def user_prompt(self, body: dict) -> str:  # pragma: no cover - vendors
        raise NotImplementedError

    def error_body(self, message: str, kind: str) -> dict:  # pragma: no cover - vendors
        raise NotImplementedError

    def answer(self, handler, body: dict, directive: Directive):  # pragma: no cover - vendors
        raise NotImplementedError

    def close(self):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


def first_user_text(items, texts) -> str:
    """The text of the first item with role `user` (a message in either
    vendor's format), its content read by `texts`."""
    for item in items or []:
        if isinstance(item, dict) and item.get("role") == "user":
            return "\n".join(texts(item.get("content")))
    return ""


def chunks(text: str) -> list[str]:
    """`text` in word-sized pieces (spaces kept), as models stream it."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    return pieces or [""]
