"""A mock of the OpenAI Responses API (`POST /v1/responses`, streamed), on
127.0.0.1, speaking the server-sent events the `openai` client inside
`@openai/agents` parses: `response.created`, `response.output_item.added`,
`response.output_text.delta`, `response.function_call_arguments.delta`,
..., `response.completed` with the full response and its usage. Errors use
the API's `{"error": {"message", "type", "param", "code"}}` body.

Replies are scripted by directives (see `mock_model_server`). The shell
tool it calls is the function tool named `shell`, which the bundled openai
handler registers; a request without it gets a 500 naming what is missing,
so a handler that lost its tool fails loudly.
"""

from __future__ import annotations

import itertools
import json
import time

from mock_model_server import Directive, MockModelServer, chunks, first_user_text

SHELL_TOOL = "shell"

#: What the mock reports for every response (the handler reports it back).
USAGE = {
    "input_tokens": 21,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 28,
}


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [part.get("text", "") for part in content or [] if isinstance(part, dict)]


def user_prompt(body: dict) -> str:
    """The first user message's text."""
    items = body.get("input")
    if isinstance(items, str):
        return items
    return first_user_text(items, _texts)


def tool_outputs(body: dict) -> list[str]:
    """The outputs of function calls sent back to the model, in order."""
    outputs = []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            output = item.get("output")
            outputs.append(output if isinstance(output, str) else "\n".join(_texts(output)))
    return outputs


class MockOpenAI(MockModelServer):
    """`OPENAI_BASE_URL` is `self.base_url`."""

    endpoint = "/v1/responses"
    request_id_header = "x-request-id"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def user_prompt(self, body: dict) -> str:
        return user_prompt(body)

    def error_body(self, message: str, kind: str) -> dict:
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def answer(self, handler, body: dict, directive: Directive):
        offered = any(t.get("type") == "function" and t.get("name") == SHELL_TOOL for t in body.get("tools") or [])
        if directive.kind == "SHELL" and not tool_outputs(body) and not offered:
            handler.send_json(500, self.error_body(f"mock: the request has no function tool {SHELL_TOOL!r}", "server_error"))
            return
        Stream(self, handler, body).send(directive)


class Stream:
    """One streamed response: numbered events around one output item."""

    def __init__(self, server: MockOpenAI, handler, body: dict):
        self.server = server
        self.handler = handler
        self.body = body
        self.seq = itertools.count()
        n = next(server.ids)
        self.response = {
            "id": f"resp_mock{n}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": body.get("model") or "",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }
        self.item_id = f"item_mock{n}"
        self.call_id = f"call_mock{n}"

    def emit(self, kind: str, **fields):
        self.handler.event(kind, {"type": kind, "sequence_number": next(self.seq), **fields})

    def send(self, directive: Directive):
        self.handler.start_events()
        self.emit("response.created", response=self.response)
        self.emit("response.in_progress", response=self.response)
        if directive.kind == "HANG":
            self.server.hang(self.handler, b": keep-alive\n\n")
            return
        if directive.kind == "SHELL":
            outputs = tool_outputs(self.body)
            if not outputs:
                item = self.function_call(json.dumps({"command": directive.arg}))
            else:
                item = self.message(f"tool said: {outputs[-1].strip()}")
        else:  # TEXT, and JSON: the structured output is the message's text
            item = self.message(directive.arg)
        done = {**self.response, "status": "completed", "output": [item], "usage": USAGE}
        self.emit("response.completed", response=done)

    def message(self, text: str) -> dict:
        item = {"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        self.emit("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        self.emit("response.content_part.added", **where, part=part)
        for piece in chunks(text):
            self.emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        self.emit("response.output_text.done", **where, text=text, logprobs=[])
        part = {"type": "output_text", "text": text, "annotations": []}
        self.emit("response.content_part.done", **where, part=part)
        item = {**item, "status": "completed", "content": [part]}
        self.emit("response.output_item.done", output_index=0, item=item)
        return item

    def function_call(self, arguments: str) -> dict:
        item = {
            "id": self.item_id,
            "type": "function_call",
            "status": "in_progress",
            "call_id": self.call_id,
            "name": SHELL_TOOL,
            "arguments": "",
        }
        self.emit("response.output_item.added", output_index=0, item=item)
        where = {"item_id": self.item_id, "output_index": 0}
        for piece in chunks(arguments):
            self.emit("response.function_call_arguments.delta", **where, delta=piece)
        self.emit("response.function_call_arguments.done", **where, arguments=arguments)
        item = {**item, "status": "completed", "arguments": arguments}
        self.emit("response.output_item.done", output_index=0, item=item)
        return item
