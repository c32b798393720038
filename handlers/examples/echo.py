#!/usr/bin/env python3
"""The echo agent of `runtimeuse --agent echo`, on the Python SDK.

    runtimeuse --handler handlers/examples/echo.py

Answers by the user prompt: ECHO:<text>, STRUCTURED:<json object>,
SLOW:<ms> (cancellable), STREAM:<n>, STREAM_TEXT:<text>, ERROR:<msg>,
WRITE_FILE:<path> <content>, READ_FILE:<path>, ENV:<name>; anything else
is echoed. The runtime makes `runtimeuse_handler` importable; elsewhere put
handlers/sdk/python on PYTHONPATH.
"""

import asyncio
import json
import pathlib

from runtimeuse_handler import HandlerError, run_handler

METADATA = {"handler": "echo-python"}


def text(value):
    return {"text": value, "metadata": METADATA}


def fail(message):
    return HandlerError(message, METADATA)


async def slow(rest):
    try:
        ms = int(rest.strip())
    except ValueError:
        raise fail(f"SLOW: not a number of milliseconds: {rest!r}") from None
    await asyncio.sleep(ms / 1000)  # a cancel cancels this task here
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


async def handle(invocation, ctx):
    verb, sep, rest = invocation.user_prompt.partition(":")
    if not sep:
        return text(invocation.user_prompt)
    if verb == "ECHO":
        return text(rest)
    if verb == "STRUCTURED":
        return structured(rest)
    if verb == "SLOW":
        return await slow(rest)
    if verb == "STREAM":
        return stream(rest, ctx)
    if verb == "STREAM_TEXT":
        ctx.send_assistant(rest)
        return text("done")
    if verb == "ERROR":
        raise fail(rest)
    if verb == "WRITE_FILE":
        return write_file(rest)
    if verb == "READ_FILE":
        return read_file(rest)
    if verb == "ENV":
        return env(rest, invocation)
    return text(invocation.user_prompt)


run_handler(handle)
