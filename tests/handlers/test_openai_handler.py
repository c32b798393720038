"""The bundled OpenAI handler against a fake Chat Completions server on
127.0.0.1 (no other network)."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler_harness import REPO

SCRIPT = REPO / "handlers" / "openai" / "handler.py"
KEY = "sk-test-0123456789abcdef"
MISSING_KEY = "OPENAI_API_KEY is not set (pass it in agent_env or the runtime's environment)"


def completion(content, model="test-model-2024"):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }


class FakeOpenAI:
    """Records requests; answers with `self.reply` = (status, body dict)."""

    def __init__(self):
        self.requests = []
        self.reply = (200, completion("hi"))
        self.stall = None  # an Event: when set on a request, wait for it first
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                fake.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if fake.stall is not None:
                    fake.stall.wait(30)
                status, payload = fake.reply
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.server.server_address[1]

    def close(self):
        if self.stall is not None:
            self.stall.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(extra)
    return env


@pytest.fixture
def handler(spawn, fake):
    """A handler whose process env points at the fake but has no key."""
    return spawn(SCRIPT, base_env(OPENAI_BASE_URL=fake.base_url))


def test_text_result_and_request_shape(handler, fake):
    fake.reply = (200, completion("Hello there"))
    handler.invoke(
        "inv-1",
        system_prompt="Be brief.",
        user_prompt="Greet me.",
        model="gpt-test",
        env={"OPENAI_API_KEY": KEY},
    )
    messages = handler.until_terminal()
    assert messages[0]["type"] == "log" and messages[0]["id"] == "inv-1"
    result = messages[-1]
    assert result == {
        "type": "result",
        "text": "Hello there",
        "metadata": {
            "model": "test-model-2024",
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        },
        "id": "inv-1",
    }
    (request,) = fake.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer " + KEY
    assert request["body"] == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Greet me."},
        ],
    }
    assert KEY not in handler.stderr


def test_empty_system_prompt_is_not_sent(handler, fake):
    handler.invoke(system_prompt="", env={"OPENAI_API_KEY": KEY})
    assert handler.until_terminal()[-1]["type"] == "result"
    assert fake.requests[0]["body"]["messages"] == [{"role": "user", "content": "Say hi."}]


def test_key_and_base_url_from_process_env(spawn, fake):
    handler = spawn(SCRIPT, base_env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-process"))
    handler.invoke()
    assert handler.until_terminal()[-1]["text"] == "hi"
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-process"


def test_invocation_env_overrides_process_env(spawn, fake):
    handler = spawn(
        SCRIPT, base_env(OPENAI_BASE_URL="http://127.0.0.1:9/nowhere", OPENAI_API_KEY="sk-process")
    )
    handler.invoke(env={"OPENAI_API_KEY": "sk-invocation", "OPENAI_BASE_URL": fake.base_url})
    assert handler.until_terminal()[-1]["type"] == "result"
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-invocation"


def test_structured_output(handler, fake):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
    }
    fake.reply = (200, completion('{"answer": 42}'))
    handler.invoke(
        output_format={"type": "json_schema", "schema": schema},
        env={"OPENAI_API_KEY": KEY},
    )
    result = handler.until_terminal()[-1]
    assert result["type"] == "result"
    assert result["structured_output"] == {"answer": 42}
    assert "text" not in result
    assert result["metadata"]["model"] == "test-model-2024"
    assert fake.requests[0]["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},
    }


def test_structured_output_invalid_json_is_an_error(handler, fake):
    fake.reply = (200, completion("not json at all"))
    handler.invoke(
        output_format={"type": "json_schema", "schema": {"type": "object"}},
        env={"OPENAI_API_KEY": KEY},
    )
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "not valid JSON" in error["error"]


def test_structured_output_must_be_an_object(handler, fake):
    fake.reply = (200, completion("[1, 2]"))
    handler.invoke(
        output_format={"type": "json_schema", "schema": {"type": "object"}},
        env={"OPENAI_API_KEY": KEY},
    )
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "not an object" in error["error"]


def test_http_error_reports_status_and_message_not_key(handler, fake):
    fake.reply = (
        401,
        {
            "error": {
                "message": "Incorrect API key provided: %s." % KEY,
                "type": "invalid_request_error",
            }
        },
    )
    handler.invoke(env={"OPENAI_API_KEY": KEY})
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert error["id"] == "inv-1"
    assert "401" in error["error"]
    assert "Incorrect API key provided" in error["error"]
    assert KEY not in error["error"]
    assert error["metadata"]["status"] == 401
    assert KEY not in handler.stderr


def test_secrets_are_redacted_from_errors(handler, fake):
    fake.reply = (500, {"error": {"message": "upstream said hunter2-secret"}})
    handler.invoke(env={"OPENAI_API_KEY": KEY}, secrets=["hunter2-secret"])
    error = handler.until_terminal()[-1]
    assert "500" in error["error"]
    assert "hunter2-secret" not in error["error"]
    assert "[REDACTED]" in error["error"]
    assert "hunter2-secret" not in handler.stderr


def test_missing_key(handler, fake):
    handler.invoke()
    error = handler.until_terminal()[-1]
    assert error == {"type": "error", "error": MISSING_KEY, "metadata": {}, "id": "inv-1"}
    assert fake.requests == []


def test_unreachable_server(spawn):
    handler = spawn(SCRIPT, base_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY=KEY))
    handler.invoke()
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert error["error"].startswith("OpenAI API request failed")


def test_timeout(handler, fake):
    fake.stall = threading.Event()
    handler.invoke(env={"OPENAI_API_KEY": KEY, "OPENAI_TIMEOUT_S": "0.5"})
    error = handler.until_terminal(timeout=10)[-1]
    assert error["type"] == "error"
    assert "timed out" in error["error"]


def test_cancel_while_server_stalls_then_serve_next(handler, fake):
    fake.stall = threading.Event()
    handler.invoke("slow", env={"OPENAI_API_KEY": KEY})
    assert handler.recv()["type"] == "log"
    deadline = time.monotonic() + 5
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.requests, "the request never reached the fake server"

    started = time.monotonic()
    handler.send({"type": "cancel", "id": "slow"})
    assert handler.recv(timeout=2) == {
        "type": "error",
        "error": "cancelled",
        "metadata": {},
        "id": "slow",
    }
    assert time.monotonic() - started < 1.0

    # The abandoned request finishing later must not produce anything.
    fake.stall.set()
    handler.assert_silent(0.5)

    fake.stall = None
    fake.reply = (200, completion("second"))
    handler.invoke("next", env={"OPENAI_API_KEY": KEY})
    result = handler.until_terminal()[-1]
    assert result["id"] == "next" and result["text"] == "second"


def test_cancel_for_another_id_is_ignored(handler, fake):
    fake.stall = threading.Event()
    handler.invoke("a", env={"OPENAI_API_KEY": KEY})
    assert handler.recv()["type"] == "log"
    handler.send({"type": "cancel", "id": "someone-else"})
    handler.assert_silent(0.3)
    fake.stall.set()
    assert handler.until_terminal()[-1] == {
        "type": "result",
        "text": "hi",
        "metadata": {"model": "test-model-2024", "usage": completion("")["usage"]},
        "id": "a",
    }


def test_two_invocations_on_one_warm_process(handler, fake):
    fake.reply = (200, completion("first"))
    handler.invoke("one", env={"OPENAI_API_KEY": KEY}, model="m1")
    assert handler.until_terminal()[-1]["text"] == "first"
    fake.reply = (200, completion("second"))
    handler.invoke("two", env={"OPENAI_API_KEY": KEY}, model="m2")
    result = handler.until_terminal()[-1]
    assert result["id"] == "two" and result["text"] == "second"
    assert [r["body"]["model"] for r in fake.requests] == ["m1", "m2"]
    assert handler.proc.poll() is None
    assert handler.close() == 0


def test_second_invoke_while_busy_is_refused(handler, fake):
    fake.stall = threading.Event()
    handler.invoke("a", env={"OPENAI_API_KEY": KEY})
    assert handler.recv()["type"] == "log"
    handler.invoke("b", env={"OPENAI_API_KEY": KEY})
    busy = handler.recv()
    assert busy["type"] == "error" and busy["id"] == "b"
    assert "still running" in busy["error"]
    fake.stall.set()
    assert handler.until_terminal()[-1]["id"] == "a"


def test_wrong_protocol_version(handler):
    handler.invoke(protocol=2)
    error = handler.recv()
    assert error["type"] == "error" and "protocol" in error["error"]


def test_eof_exits_at_once_even_mid_request(handler, fake):
    fake.stall = threading.Event()
    handler.invoke(env={"OPENAI_API_KEY": KEY})
    assert handler.recv()["type"] == "log"
    started = time.monotonic()
    assert handler.close(timeout=5) == 0
    assert time.monotonic() - started < 2.0


def test_garbage_lines_are_ignored(handler, fake):
    handler.proc.stdin.write(b'not json\n[1,2]\n\n{"type":"what"}\n')
    handler.proc.stdin.flush()
    handler.invoke(env={"OPENAI_API_KEY": KEY})
    assert handler.until_terminal()[-1]["text"] == "hi"
