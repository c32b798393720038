"""A mock of the Anthropic Messages API (`POST /v1/messages`), on
127.0.0.1, speaking the server-sent events Claude Code (inside
`@anthropic-ai/claude-agent-sdk`) parses: `message_start`,
`content_block_start` / `content_block_delta` (`text_delta`,
`input_json_delta`) / `content_block_stop`, `ping`, `message_delta` with
the stop reason and usage, `message_stop`. Errors use the API's
`{"type": "error", "error": {"type", "message"}}` body.

Replies are scripted by directives (see `mock_model_server`). The shell
tool is Claude Code's `Bash`; structured output is Claude Code's
`StructuredOutput` tool, which it offers the model when the query has an
output schema. A request that lacks the tool a directive needs gets a 500
naming it, so a handler that lost it fails loudly.
"""

from __future__ import annotations

import json

from mock_model_server import Directive, MockModelServer, chunks, first_user_text

SHELL_TOOL = "Bash"
STRUCTURED_TOOL = "StructuredOutput"

USAGE = {"input_tokens": 25, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [block.get("text", "") for block in content or [] if isinstance(block, dict) and block.get("type") == "text"]


def user_prompt(body: dict) -> str:
    """The text of the conversation's first user message."""
    return first_user_text(body.get("messages"), _texts)


def tool_results(body: dict) -> list[str]:
    """The `tool_result` contents sent back to the model, in order."""
    results = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append("\n".join(_texts(block.get("content"))))
    return results


def tool_names(body: dict) -> list[str]:
    return [tool.get("name") for tool in body.get("tools") or []]


class MockAnthropic(MockModelServer):
    """`ANTHROPIC_BASE_URL` is `self.url`."""

    endpoint = "/v1/messages"
    request_id_header = "request-id"

    def user_prompt(self, body: dict) -> str:
        return user_prompt(body)

    def error_body(self, message: str, kind: str) -> dict:
        return {"type": "error", "error": {"type": kind, "message": message}}

    def answer(self, handler, body: dict, directive: Directive):
        needed = {"SHELL": SHELL_TOOL, "JSON": STRUCTURED_TOOL}.get(directive.kind)
        if needed and not tool_results(body) and needed not in tool_names(body):
            handler.send_json(500, self.error_body(f"mock: the request has no tool {needed!r}", "api_error"))
            return
        message = Message(self, handler, body)
        if not body.get("stream"):
            handler.send_json(200, message.whole("ok"))
            return
        message.stream(directive)


class Message:
    """One assistant message: its blocks streamed, or whole."""

    def __init__(self, server: MockAnthropic, handler, body: dict):
        self.server = server
        self.handler = handler
        self.body = body
        n = next(server.ids)
        self.id = f"msg_mock{n}"
        self.tool_use_id = f"toolu_mock{n}"
        self.model = body.get("model") or ""

    def _head(self) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**USAGE, "output_tokens": 1},
        }

    def whole(self, text: str) -> dict:
        return {**self._head(), "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": USAGE}

    def emit(self, kind: str, **fields):
        self.handler.event(kind, {"type": kind, **fields})

    def stream(self, directive: Directive):
        self.handler.start_events()
        self.emit("message_start", message=self._head())
        if directive.kind == "HANG":
            self.server.hang(self.handler, b'event: ping\ndata: {"type": "ping"}\n\n')
            return
        self.emit("ping")
        results = tool_results(self.body)
        if directive.kind == "SHELL" and not results:
            stop = self.tool_use(SHELL_TOOL, {"command": directive.arg})
        elif directive.kind == "JSON" and not results:
            stop = self.tool_use(STRUCTURED_TOOL, json.loads(directive.arg))
        elif directive.kind == "SHELL":
            stop = self.text(f"tool said: {results[-1].strip()}")
        elif directive.kind == "JSON":
            stop = self.text("done")
        else:
            stop = self.text(directive.arg)
        self.emit("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": USAGE["output_tokens"]})
        self.emit("message_stop")

    def text(self, text: str) -> str:
        self.emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
        for piece in chunks(text):
            self.emit("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
        self.emit("content_block_stop", index=0)
        return "end_turn"

    def tool_use(self, name: str, tool_input: dict) -> str:
        block = {"type": "tool_use", "id": self.tool_use_id, "name": name, "input": {}}
        self.emit("content_block_start", index=0, content_block=block)
        for piece in chunks(json.dumps(tool_input)):
            self.emit("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": piece})
        self.emit("content_block_stop", index=0)
        return "tool_use"
