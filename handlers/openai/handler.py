#!/usr/bin/env python3
"""runtimeuse bundled agent handler: OpenAI Chat Completions.

Speaks runtimeuse handler protocol v1 (newline-delimited JSON): reads
`invoke` / `cancel` messages on stdin, writes `log`, `result` and `error`
messages on stdout, one JSON object per line. The process stays warm and
serves one invocation at a time; stdin EOF makes it exit 0 at once.

For each invocation it sends one non-streaming request,
`POST {OPENAI_BASE_URL}/chat/completions`, with the system prompt (if any)
and the user prompt, and answers with the reply's text, or, when the
invocation has an `output_format` JSON schema, with the reply parsed as a
JSON object (`structured_output`, requested via `response_format`).
Result metadata is `{"model": ..., "usage": {...}}` from the API's reply.

The request runs in a worker thread, so a `cancel` is answered at once with
`{"type": "error", "error": "cancelled"}`; whatever the abandoned request
returns later is dropped.

Standard library only (Python 3.9+): the sandbox may not allow pip.

Environment (the invocation's `env` overrides the process environment;
neither is modified):
  OPENAI_API_KEY      required; sent as the bearer token, never printed.
  OPENAI_BASE_URL     API root, default https://api.openai.com/v1.
  OPENAI_TIMEOUT_S    request timeout in seconds, default 600.
  OPENAI_ORG_ID       optional, sent as the OpenAI-Organization header.
  OPENAI_PROJECT_ID   optional, sent as the OpenAI-Project header.

stderr is this handler's log; values listed in the invocation's `secrets`
and the API key are redacted from everything it writes there and from error
messages.
"""

import json
import os
import socket
import sys
import urllib.error
import urllib.request

# The shared protocol module sits beside this script when the runtime has
# materialized it, and in ../common in the source tree.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:0] = [_HERE, os.path.normpath(os.path.join(_HERE, "..", "common"))]
sys.dont_write_bytecode = True  # leave no __pycache__ in the cache dir
from runtimeuse_protocol import (  # noqa: E402
    BaseHandler,
    Failure,
    output_format_of,
    require_protocol,
    send,
    serve,
    strip_fences,
)

PROTOCOL = 1
require_protocol(PROTOCOL)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 600.0
MISSING_KEY = "OPENAI_API_KEY is not set (pass it in agent_env or the runtime's environment)"


def api_error_message(body):
    """The `error.message` of an OpenAI error body, else the body's start."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    body = body.strip()
    return body[:500] if body else "(empty response body)"


def build_request_body(invocation):
    """The JSON body of the chat completion request for an invocation."""
    messages = []
    system_prompt = invocation.get("system_prompt") or ""
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": invocation.get("user_prompt") or ""})
    body = {"model": invocation["model"], "messages": messages}
    output_format = invocation.get("output_format")
    if output_format is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "output",
                "schema": output_format.get("schema") or {},
                "strict": False,
            },
        }
    return body


def run(invocation, env):
    """Runs one invocation; returns its terminal message (without `id`).

    Raises Failure for anything that should become an `error` message.
    """
    model = invocation.get("model")
    if not isinstance(model, str) or not model:
        raise Failure("no model given in the invocation")
    output_format = output_format_of(invocation)

    api_key = env.get("OPENAI_API_KEY") or ""
    if not api_key:
        raise Failure(MISSING_KEY)
    base_url = (env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    try:
        timeout = float(env.get("OPENAI_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    except ValueError:
        raise Failure("OPENAI_TIMEOUT_S is not a number") from None

    headers = {
        "Authorization": "Bearer " + api_key,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "runtimeuse-openai-handler/1",
    }
    if env.get("OPENAI_ORG_ID"):
        headers["OpenAI-Organization"] = env["OPENAI_ORG_ID"]
    if env.get("OPENAI_PROJECT_ID"):
        headers["OpenAI-Project"] = env["OPENAI_PROJECT_ID"]

    data = json.dumps(build_request_body(invocation)).encode("utf-8")
    request = urllib.request.Request(
        base_url + "/chat/completions", data=data, headers=headers, method="POST"
    )
    meta = {"model": model}
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        try:
            body = err.read().decode("utf-8", "replace")
        except Exception:  # the body is best effort
            body = ""
        raise Failure(
            "OpenAI API error: HTTP %d: %s" % (err.code, api_error_message(body)),
            dict(meta, status=err.code),
        ) from None
    except (socket.timeout, TimeoutError):
        raise Failure("OpenAI API request timed out after %g s" % timeout, meta) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (socket.timeout, TimeoutError)):
            raise Failure("OpenAI API request timed out after %g s" % timeout, meta) from None
        raise Failure("OpenAI API request failed: %s" % (err.reason,), meta) from None
    except (OSError, ValueError) as err:
        raise Failure("OpenAI API request failed: %s" % (err,), meta) from None

    try:
        reply = json.loads(raw.decode("utf-8"))
        choice = reply["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Failure(
            "OpenAI API returned an unexpected response: %s" % raw[:500].decode("utf-8", "replace"),
            meta,
        ) from None

    metadata = {"model": reply.get("model") or model, "usage": reply.get("usage") or {}}
    if message.get("refusal"):
        raise Failure("the model refused: %s" % message["refusal"], metadata)
    content = message.get("content")
    if not isinstance(content, str):
        content = ""

    if output_format is None:
        return {"type": "result", "text": content, "metadata": metadata}
    try:
        structured = json.loads(strip_fences(content))
    except ValueError as err:
        finish = choice.get("finish_reason")
        hint = " (finish_reason: %s)" % finish if finish and finish != "stop" else ""
        raise Failure("the model's reply is not valid JSON%s: %s" % (hint, err), metadata) from None
    if not isinstance(structured, dict):
        raise Failure("the model's reply is JSON but not an object", metadata)
    return {"type": "result", "structured_output": structured, "metadata": metadata}


class Handler(BaseHandler):
    """Runs each invocation as one chat completion request."""

    name = "openai"

    def run(self, invocation, message, env):
        return run(message, env)

    def secrets_for(self, invocation, env):
        # The key is never in the invocation's secrets when it comes from
        # our own environment, yet must not leak through an error text.
        return invocation.secrets + [env.get("OPENAI_API_KEY") or ""]

    def starting(self, invocation, message):
        send(
            {
                "type": "log",
                "level": "info",
                "message": "calling OpenAI chat completions with model %s"
                % (message.get("model"),),
                "id": invocation.id,
            }
        )

    def cancelled(self, invocation):
        self.log("invocation %s cancelled; its request is abandoned" % invocation.id)


def main():
    serve(Handler())


if __name__ == "__main__":
    main()
