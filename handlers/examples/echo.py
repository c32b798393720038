#!/usr/bin/env python3
"""The echo agent of `runtimeuse --agent echo`, on the Python SDK.

    runtimeuse --handler handlers/examples/echo.py

Answers by the user prompt: ECHO:<text>, STRUCTURED:<json object>,
SLOW:<ms> (cancellable), STREAM:<n>, STREAM_TEXT:<text>, ERROR:<msg>,
WRITE_FILE:<path> <content>, READ_FILE:<path>, ENV:<name>; anything else
is echoed. The runtime makes `runtimeuse_handler` importable; elsewhere put
handlers/sdk/python on PYTHONPATH.

A plain function (the SDK runs it on a thread and sets `ctx.cancelled` on
cancel), so the handler starts without asyncio; an `async def` handler
works the same way, cancelled as a task.
"""

import json
import pathlib

from runtimeuse_handler import HandlerError, run_handler

METADATA = {"handler": "echo-python"}


def text(value):
    return {"text": value, "metadata": METADATA}


def fail(message):
    return HandlerError(message, METADATA)


def slow(rest, ctx):
    try:
        ms = int(rest.strip())
    except ValueError:
        raise fail(f"SLOW: not a number of milliseconds: {rest!r}") from None
    # A sleep that a cancel cuts short; the SDK has answered the cancel
    # already, so what is returned then is dropped.
    ctx.cancelled.wait(ms / 1000)
    return text("done")


def stream(rest, ctx):
    try:
        n = int(rest.strip())
    except ValueError:
        raise fail(f"STREAM: not a count: {rest!r}") from None
    for i in range(1, n + 1):
        ctx.send_assistant(f"message {i} of {n}")
    return text(f"streamed {n} messages")


def structured(rest):
    try:
        value = json.loads(rest)
    except ValueError as exc:
        raise fail(f"STRUCTURED: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise fail("STRUCTURED: expected a JSON object")
    return {"structured_output": value, "metadata": METADATA}


def write_file(rest):
    path, _, content = rest.partition(" ")
    try:
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    except OSError as exc:
        raise fail(f"WRITE_FILE: cannot write {path}: {exc}") from None
    return text(f"wrote {path}")


def read_file(path):
    try:
        return text(pathlib.Path(path).read_bytes().decode("utf-8", "replace"))
    except OSError as exc:
        raise fail(f"READ_FILE: cannot read {path}: {exc}") from None


def env(name, invocation):
    if name not in invocation.env:
        raise fail(f"ENV: {name} is not set")
    return text(invocation.env[name])


def stream_text(rest, ctx):
    ctx.send_assistant(rest)
    return text("done")


def error(rest):
    raise fail(rest)


#: verb -> what it answers, given (rest of the prompt, invocation, ctx).
VERBS = {
    "ECHO": lambda rest, inv, ctx: text(rest),
    "STRUCTURED": lambda rest, inv, ctx: structured(rest),
    "SLOW": lambda rest, inv, ctx: slow(rest, ctx),
    "STREAM": lambda rest, inv, ctx: stream(rest, ctx),
    "STREAM_TEXT": lambda rest, inv, ctx: stream_text(rest, ctx),
    "ERROR": lambda rest, inv, ctx: error(rest),
    "WRITE_FILE": lambda rest, inv, ctx: write_file(rest),
    "READ_FILE": lambda rest, inv, ctx: read_file(rest),
    "ENV": lambda rest, inv, ctx: env(rest, inv),
}


def handle(invocation, ctx):
    verb, sep, rest = invocation.user_prompt.partition(":")
    answer = VERBS.get(verb) if sep else None
    return answer(rest, invocation, ctx) if answer else text(invocation.user_prompt)


run_handler(handle)
