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
import threading
import urllib.error
import urllib.request

PROTOCOL = 1
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 600.0
MISSING_KEY = "OPENAI_API_KEY is not set (pass it in agent_env or the runtime's environment)"
REDACTED = "[REDACTED]"

_stdout_lock = threading.Lock()


def send(message):
    """Writes one protocol message to stdout and flushes it."""
    line = json.dumps(message, ensure_ascii=False) + "\n"
    with _stdout_lock:
        sys.stdout.buffer.write(line.encode("utf-8"))
        sys.stdout.buffer.flush()


def redact(text, secrets):
    """Replaces every non-empty secret in `text` with [REDACTED], longest first."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def log(text, secrets=()):
    """Writes a line to stderr, this handler's log."""
    sys.stderr.write("[openai-handler] " + redact(str(text), secrets) + "\n")
    sys.stderr.flush()


class Failure(Exception):
    """An invocation failed; `str(self)` is the error text for the runtime."""

    def __init__(self, message, metadata=None):
        super().__init__(message)
        self.metadata = metadata or {}


def strip_fences(text):
    """Removes a surrounding ```json ... ``` fence, if there is one."""
    text = text.strip()
    if text.startswith("```"):
        first_newline = text.find("\n")
        text = text[first_newline + 1 :] if first_newline != -1 else text[3:]
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


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
    output_format = invocation.get("output_format")
    if output_format is not None and (
        not isinstance(output_format, dict) or output_format.get("type") != "json_schema"
    ):
        raise Failure(
            'unsupported output_format (expected {"type": "json_schema", "schema": {...}})'
        )

    api_key = env.get("OPENAI_API_KEY") or ""
    if not api_key:
        raise Failure(MISSING_KEY)
    base_url = (env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    try:
        timeout = float(env.get("OPENAI_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    except ValueError:
        raise Failure("OPENAI_TIMEOUT_S is not a number")

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
        )
    except (socket.timeout, TimeoutError):
        raise Failure("OpenAI API request timed out after %g s" % timeout, meta)
    except urllib.error.URLError as err:
        if isinstance(err.reason, (socket.timeout, TimeoutError)):
            raise Failure("OpenAI API request timed out after %g s" % timeout, meta)
        raise Failure("OpenAI API request failed: %s" % (err.reason,), meta)
    except (OSError, ValueError) as err:
        raise Failure("OpenAI API request failed: %s" % (err,), meta)

    try:
        reply = json.loads(raw.decode("utf-8"))
        choice = reply["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Failure(
            "OpenAI API returned an unexpected response: %s" % raw[:500].decode("utf-8", "replace"),
            meta,
        )

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
        raise Failure("the model's reply is not valid JSON%s: %s" % (hint, err), metadata)
    if not isinstance(structured, dict):
        raise Failure("the model's reply is JSON but not an object", metadata)
    return {"type": "result", "structured_output": structured, "metadata": metadata}


class Invocation:
    """One running invocation; identity (not `id`) tells runs apart."""

    def __init__(self, inv_id, secrets):
        self.id = inv_id
        self.secrets = secrets


class Handler:
    def __init__(self):
        self.lock = threading.Lock()
        self.current = None  # the running Invocation, if any

    def finish(self, invocation, message):
        """Sends a terminal message unless the invocation was cancelled."""
        with self.lock:
            if self.current is not invocation:
                log("dropping the late outcome of cancelled invocation %s" % invocation.id)
                return
            self.current = None
            message["id"] = invocation.id
            send(message)

    def worker(self, invocation, message, env):
        try:
            outcome = run(message, env)
        except Failure as failure:
            secrets = invocation.secrets + [env.get("OPENAI_API_KEY") or ""]
            text = redact(str(failure), secrets)
            log("invocation %s failed: %s" % (invocation.id, text))
            outcome = {"type": "error", "error": text, "metadata": failure.metadata}
        except Exception as exc:  # a bug here must still end the invocation
            secrets = invocation.secrets + [env.get("OPENAI_API_KEY") or ""]
            text = redact("openai handler crashed: %r" % (exc,), secrets)
            log(text)
            outcome = {"type": "error", "error": text, "metadata": {}}
        self.finish(invocation, outcome)

    def invoke(self, message):
        inv_id = message.get("id")
        if not isinstance(inv_id, str):
            log("ignoring an invoke without a string id")
            return
        if message.get("protocol") != PROTOCOL:
            send(
                {
                    "type": "error",
                    "error": "unsupported handler protocol %r (this handler speaks %d)"
                    % (message.get("protocol"), PROTOCOL),
                    "metadata": {},
                    "id": inv_id,
                }
            )
            return
        secrets = [s for s in (message.get("secrets") or []) if isinstance(s, str)]
        invocation = Invocation(inv_id, secrets)
        with self.lock:
            if self.current is not None:
                send(
                    {
                        "type": "error",
                        "error": "another invocation (%s) is still running" % self.current.id,
                        "metadata": {},
                        "id": inv_id,
                    }
                )
                return
            self.current = invocation
        env = dict(os.environ)
        extra = message.get("env") or {}
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items() if v is not None})
        send(
            {
                "type": "log",
                "level": "info",
                "message": "calling OpenAI chat completions with model %s"
                % (message.get("model"),),
                "id": inv_id,
            }
        )
        thread = threading.Thread(target=self.worker, args=(invocation, message, env), daemon=True)
        thread.start()

    def cancel(self, message):
        inv_id = message.get("id")
        with self.lock:
            invocation = self.current
            if invocation is None or (inv_id is not None and inv_id != invocation.id):
                log("cancel for %r: no such invocation running" % (inv_id,))
                return
            self.current = None
            send({"type": "error", "error": "cancelled", "metadata": {}, "id": invocation.id})
        log("invocation %s cancelled; its request is abandoned" % invocation.id)


def main():
    handler = Handler()
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            log("ignoring a line that is not JSON")
            continue
        if not isinstance(message, dict):
            log("ignoring a message that is not an object")
            continue
        kind = message.get("type")
        if kind == "invoke":
            handler.invoke(message)
        elif kind == "cancel":
            handler.cancel(message)
        else:
            log("ignoring a message of unknown type %r" % (kind,))
    # EOF: the runtime is done with us. Abandoned requests live in daemon
    # threads; exit without waiting for them.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
