"""The pure pieces: results, errors, redaction, line reading."""

import io
import os
import threading

import pytest

from runtimeuse_handler import HandlerError, Invocation, redact, run_handler
from runtimeuse_handler._types import InvalidResult, error_message, result_message
from runtimeuse_handler._wire import encode, read_lines


def test_redact_longest_first_and_ignores_empty():
    assert redact("key=abc123 and abc", ["abc", "abc123", ""]) == "key=[REDACTED] and [REDACTED]"


def test_result_message_shapes():
    assert result_message("t") == {"type": "result", "text": "t", "metadata": {}}
    assert result_message({"structured_output": {"a": 1}, "metadata": None}) == {
        "type": "result",
        "structured_output": {"a": 1},
        "metadata": {},
    }
    with pytest.raises(InvalidResult):
        result_message({"text": None})


def test_error_message_uses_the_exception_text_or_its_type():
    assert error_message(HandlerError("no", {"k": 1})) == {
        "type": "error",
        "error": "no",
        "metadata": {"k": 1},
    }
    assert error_message(RuntimeError()) == {"type": "error", "error": "RuntimeError", "metadata": {}}


def test_encode_is_one_compact_line_even_with_newlines_in_values():
    line = encode({"type": "result", "text": "a\nb", "id": "x"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert b'"text":"a\\nb"' in line


def test_invocation_from_a_sparse_message():
    inv = Invocation.from_message({"id": "1", "env": {"A": "x", "B": 2}, "secrets": ["s", 3]})
    assert inv == Invocation(
        id="1",
        source_id=None,
        system_prompt="",
        user_prompt="",
        model="",
        output_format=None,
        env={"A": "x"},
        secrets=["s"],
    )


def test_read_lines_skips_an_oversized_line(monkeypatch):
    from runtimeuse_handler import _wire

    monkeypatch.setattr(_wire, "MAX_LINE_BYTES", 16)
    seen, complaints = [], []
    source = io.BytesIO(b'{"type":"a"}\n' + b"x" * 100 + b'\n{"type":"b"}')
    read_lines(source, seen.append, complaints.append)
    assert seen == [{"type": "a"}, {"type": "b"}]
    assert complaints == ["skipping a line over 16 bytes"]


def test_run_handler_over_given_streams():
    """Embedding: any pair of binary streams instead of stdin/stdout."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    source, sink = os.fdopen(in_r, "rb"), os.fdopen(out_w, "wb")
    server = threading.Thread(
        target=run_handler,
        args=(lambda inv, ctx: inv.user_prompt * 2,),
        kwargs={"input": source, "output": sink},
    )
    server.start()
    with os.fdopen(in_w, "wb") as requests, os.fdopen(out_r, "rb") as replies:
        requests.write(b'{"type":"invoke","protocol":1,"id":"z","user_prompt":"q"}\n')
        requests.flush()
        assert replies.readline() == b'{"type":"result","text":"qq","metadata":{},"id":"z"}\n'
    server.join(15)
    assert not server.is_alive()
    sink.close()


def test_run_handler_refuses_a_non_callable():
    with pytest.raises(TypeError):
        run_handler("nope")
