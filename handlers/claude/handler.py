#!/usr/bin/env python3
"""runtimeuse bundled agent handler: Claude Code (the `claude` CLI).

Speaks runtimeuse handler protocol v1 (newline-delimited JSON): reads
`invoke` / `cancel` messages on stdin, writes `assistant`, `log`, `result`
and `error` messages on stdout, one JSON object per line. The process stays
warm and serves one invocation at a time; stdin EOF makes it exit 0 at once.

For each invocation it runs Claude Code in print mode with all its tools and
no permission prompts, like the Node runtime's `--agent claude`:

  claude -p --output-format stream-json --verbose
         --permission-mode bypassPermissions
         [--model MODEL] [--append-system-prompt SYSTEM_PROMPT]

with the user prompt on the CLI's stdin, the invocation's `env` laid over
this process's environment, in a process group of its own. The CLI's
stream-json events are mapped as follows:
  assistant message text blocks  -> `assistant` messages, as they arrive
  final `result` event, success  -> `result` with the text, and metadata
                                    (total_cost_usd, usage, num_turns,
                                    session_id, duration_ms)
  `result` with is_error, or a subtype other than success -> `error`
  the CLI exiting with no `result` -> `error` with the end of its stderr

With an `output_format` JSON schema, the schema is added to the system
prompt with an instruction to answer with JSON only, and the final text
(```json fences stripped) must parse as a JSON object: it is sent as
`structured_output`.

`cancel` kills the CLI's process group (SIGTERM, SIGKILL after 2 s) and is
answered at once with `{"type": "error", "error": "cancelled"}`. On stdin EOF,
SIGTERM or SIGHUP the running CLI's group is killed before exiting: it is in
a session of its own, so signals sent to this handler's group miss it.

Standard library only (Python 3.9+): the sandbox may not allow pip.

Environment (the invocation's `env` overrides the process environment):
  RUNTIMEUSE_CLAUDE_BIN  path of the claude executable (default: `claude`
                         on PATH); tests point it at a fake.
  ANTHROPIC_API_KEY etc. read by the CLI itself.
  IS_SANDBOX             set to 1 for the CLI when running as root and not
                         already set: Claude Code refuses bypassPermissions
                         as root otherwise, and this runs inside a sandbox.

stderr is this handler's log (the CLI's stderr is forwarded to it); values
listed in the invocation's `secrets` are redacted from everything written
there and from error messages.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque

# The shared protocol module sits beside this script when the runtime has
# materialized it, and in ../common in the source tree.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:0] = [_HERE, os.path.normpath(os.path.join(_HERE, "..", "common"))]
sys.dont_write_bytecode = True  # leave no __pycache__ in the cache dir
from runtimeuse_protocol import (  # noqa: E402
    BaseHandler,
    Failure,
    Invocation,
    exit_now,
    make_log,
    output_format_of,
    redact,
    require_protocol,
    send,
    serve,
    strip_fences,
)

PROTOCOL = 1
require_protocol(PROTOCOL)

KILL_GRACE_S = 2.0  # after SIGTERM on cancel, before SIGKILL
EXIT_GRACE_S = 1.0  # the same when the handler itself is exiting
STDERR_TAIL_LINES = 20
NOT_INSTALLED = "the claude CLI is not installed (npm install -g @anthropic-ai/claude-code)"

log = make_log("claude")


def parse_json_object(text):
    """Parses the model's final answer as a JSON object, or raises Failure."""
    candidate = strip_fences(text)
    try:
        value = json.loads(candidate)
    except ValueError as err:
        # Prose around the object: try the outermost braces before giving up.
        start, end = candidate.find("{"), candidate.rfind("}")
        value = None
        if 0 <= start < end:
            try:
                value = json.loads(candidate[start : end + 1])
            except ValueError:
                pass
        if value is None:
            raise Failure("the final answer is not valid JSON: %s" % err) from None
    if not isinstance(value, dict):
        raise Failure("the final answer is JSON but not an object")
    return value


def schema_instructions(schema):
    """What is appended to the system prompt when structured output is asked for."""
    return (
        "\n\nWhen you have finished the task, your final answer must be only a "
        "JSON object that validates against the JSON schema below: no prose, "
        "no markdown code fences, nothing before or after it.\n"
        "JSON schema:\n" + json.dumps(schema, indent=2)
    )


def build_command(binary, invocation):
    """argv for the CLI; the user prompt goes to its stdin."""
    argv = [
        binary,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
    ]
    model = invocation.get("model")
    if isinstance(model, str) and model:
        argv += ["--model", model]
    system_prompt = invocation.get("system_prompt") or ""
    output_format = invocation.get("output_format")
    if output_format is not None:
        system_prompt += schema_instructions(output_format.get("schema") or {})
    if system_prompt:
        argv += ["--append-system-prompt", system_prompt]
    return argv


def find_binary(env):
    """The claude executable to run, or raises Failure."""
    override = env.get("RUNTIMEUSE_CLAUDE_BIN")
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise Failure("RUNTIMEUSE_CLAUDE_BIN=%s is not an executable file" % override)
    found = shutil.which("claude", path=env.get("PATH", os.defpath))
    if not found:
        raise Failure(NOT_INSTALLED)
    return found


def result_metadata(event):
    """The metadata reported for the CLI's final `result` event."""
    keys = ("total_cost_usd", "usage", "num_turns", "session_id", "duration_ms", "subtype")
    return {k: event[k] for k in keys if k in event}


def group_alive(pgid):
    """Whether any live (non-zombie) process is left in the group.

    Zombies do not count: a killed grandchild is reparented to PID 1, and
    sandbox init processes do not always reap, so its zombie can stay in the
    group for good.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: trust kill(2)
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # After "(comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def kill_group(proc, grace):
    """SIGTERM to the CLI's whole group, SIGKILL to what is left after `grace`."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:  # gone already (or, absurdly, no longer ours)
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so a zombie does not keep the group "alive"
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class ClaudeInvocation(Invocation):
    """An invocation that may have started the CLI, which cancel must kill."""

    def __init__(self, inv_id, secrets):
        super().__init__(inv_id, secrets)
        self.proc = None  # the CLI, once started


class Handler(BaseHandler):
    """Runs each invocation as one `claude -p` process group."""

    name = "claude"
    invocation_class = ClaudeInvocation

    def emit(self, invocation, message):
        """Sends a non-terminal message unless the invocation was cancelled."""
        with self.lock:
            if self.current is not invocation:
                return
            message["id"] = invocation.id
            send(message)

    # -- running the CLI --

    def run(self, invocation, message, env):
        """Runs the CLI to completion; returns the terminal message (no `id`)."""
        output_format = output_format_of(message)
        binary = find_binary(env)
        argv = build_command(binary, message)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.setdefault("IS_SANDBOX", "1")

        with self.lock:
            if invocation.cancelled:
                raise Failure("cancelled")
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
            except OSError as err:
                raise Failure("could not start the claude CLI (%s): %s" % (binary, err)) from None
            invocation.proc = proc
        log("invocation %s: started claude (pid %d)" % (invocation.id, proc.pid))

        prompt = (message.get("user_prompt") or "").encode("utf-8")
        threading.Thread(target=self._write_stdin, args=(proc, prompt), daemon=True).start()
        stderr_tail = deque(maxlen=STDERR_TAIL_LINES)
        stderr_thread = threading.Thread(
            target=self._forward_stderr, args=(proc, invocation, stderr_tail), daemon=True
        )
        stderr_thread.start()

        final = None
        try:
            for raw in proc.stdout:
                event = self._parse_event(raw, invocation)
                if event is None:
                    continue
                kind = event.get("type")
                if kind == "assistant":
                    self._forward_assistant(invocation, event)
                elif kind == "system" and event.get("subtype") == "init":
                    log(
                        "invocation %s: claude session %s, model %s"
                        % (invocation.id, event.get("session_id"), event.get("model"))
                    )
                elif kind == "result":
                    final = event
                    # Everything needed is here; do not wait on pipes that
                    # background jobs of the CLI may hold open.
                    break
        finally:
            self._wind_down(proc, finished=final is not None)
            stderr_thread.join(timeout=1.0)

        if final is None:
            tail = redact(" | ".join(stderr_tail), invocation.secrets)
            text = "claude exited with code %s without a result" % (proc.returncode,)
            if tail:
                text += ": " + tail
            raise Failure(text, {"exit_code": proc.returncode})
        return self._terminal(final, output_format)

    @staticmethod
    def _write_stdin(proc, data):
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    @staticmethod
    def _forward_stderr(proc, invocation, tail):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line:
                tail.append(line)
                log("claude: " + line, invocation.secrets)

    @staticmethod
    def _parse_event(raw, invocation):
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            log("claude stdout (not JSON): " + line[:500], invocation.secrets)
            return None
        return event if isinstance(event, dict) else None

    def _forward_assistant(self, invocation, event):
        content = (event.get("message") or {}).get("content")
        if not isinstance(content, list):
            return
        texts = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                log("invocation %s: claude uses tool %s" % (invocation.id, block.get("name")))
        if texts:
            self.emit(invocation, {"type": "assistant", "text_blocks": texts})

    def _wind_down(self, proc, finished):
        """Lets the CLI exit after its result, then clears its whole group."""
        if finished:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log("claude (pid %d) did not exit after its result" % proc.pid)
        else:
            proc.wait()
        # Whatever the CLI left behind in its group (background jobs) goes too.
        kill_group(proc, KILL_GRACE_S)
        if proc.poll() is None:
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    @staticmethod
    def _terminal(event, output_format):
        metadata = result_metadata(event)
        subtype = event.get("subtype")
        text = event.get("result")
        if event.get("is_error") or subtype != "success":
            if isinstance(text, str) and text.strip():
                message = text.strip()
            else:
                message = "claude finished with %s" % (subtype or "an error")
            raise Failure(message, metadata)
        if not isinstance(text, str):
            text = ""
        if output_format is None:
            return {"type": "result", "text": text, "metadata": metadata}
        structured = event.get("structured_output")
        if not isinstance(structured, dict):
            try:
                structured = parse_json_object(text)
            except Failure as failure:
                raise Failure(str(failure), metadata) from None
        return {"type": "result", "structured_output": structured, "metadata": metadata}

    def log_failure(self, invocation, text):
        # A cancelled run fails because its CLI was killed: not news.
        if not invocation.cancelled:
            super().log_failure(invocation, text)

    def cancelled(self, invocation):
        log("invocation %s cancelled" % invocation.id)
        # Read after the lock: once `cancelled` is set, `run` starts no CLI.
        proc = invocation.proc
        if proc is not None:
            # The worker, blocked on the CLI's stdout, wakes when it dies.
            threading.Thread(target=kill_group, args=(proc, KILL_GRACE_S), daemon=True).start()

    def shutdown(self):
        """Kills the running CLI's group, if any (before the handler exits)."""
        with self.lock:
            invocation = self.current
            if invocation is not None:
                invocation.cancelled = True
            self.current = None
            proc = invocation.proc if invocation is not None else None
        if proc is not None and proc.poll() is None:
            kill_group(proc, EXIT_GRACE_S)


def main():
    handler = Handler()

    def on_signal(signum, _frame):
        try:
            log("got signal %d: stopping" % signum)
        except RuntimeError:  # interrupted a write to stderr
            pass
        exit_now(handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    serve(handler)


if __name__ == "__main__":
    main()
