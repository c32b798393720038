// The handler protocol v1 loop: reads `invoke` / `cancel` lines, runs the
// handler once per invocation, and writes exactly one terminal for each.
// Spec: protocol/handler-protocol.md.

import { readLines } from "./lines.js";
import { divertStdout, markServing, writeProtocol } from "./stdout.js";
import { errorMessage, isObject, isUnexpected, resultMessage } from "./result.js";
import { feedWarmUpLine, sink } from "./warm-up.js";

export const PROTOCOL = 1;

/**
 * Ends an invocation now with an error, whatever its handler does next.
 * Not public: the Node-runtime adapter needs it for `sendErrorMessage`.
 */
export const FAIL_NOW = Symbol("runtimeuse-handler.failNow");

const LEVELS = ["debug", "info", "warn", "error"];

/**
 * Serves `handler` on stdin/stdout until stdin closes; see index.d.ts.
 * `options.input` / `options.output` / `options.log` replace the process's
 * stdio (tests); with the real stdout, stray writes to it go to stderr.
 */
export function runHandler(handler, options = {}) {
  if (typeof handler !== "function") {
    throw new TypeError("runHandler(handler): handler must be a function");
  }
  const io = processIo(options);
  const server = new Server(handler, io);
  if (io.real) warmUpServer();
  return new Promise((resolve) => {
    readLines(io.input, (line) => server.line(line), () => {
      server.stop();
      resolve();
    });
    io.onGone(() => {
      server.stop();
      resolve();
    });
  });
}

function processIo(options) {
  const log = options.log ?? ((text) => process.stderr.write(text));
  if (options.output) {
    return {
      input: options.input ?? process.stdin,
      write: (text) => options.output.write(text),
      log,
      onGone: (callback) => options.output.on?.("error", callback),
    };
  }
  // Before touching process.stdin: the launcher watches for that.
  markServing();
  divertStdout();
  return {
    input: options.input ?? process.stdin,
    write: writeProtocol,
    log,
    // EPIPE: the runtime is gone, so is our reason to run.
    onGone: (callback) => process.stdout.on("error", callback),
    real: true,
  };
}

/**
 * Runs this module's invocation path once, before the first real line can
 * be read, on a made-up invoke: a Server of its own with a handler that is
 * not the user's, writing to a sink. The real first invocation then runs
 * compiled code (see warm-up.js). Started synchronously: its stream events
 * are queued ahead of any stdin read.
 */
function warmUpServer() {
  const out = sink();
  const server = new Server(() => ({ text: "warm-up" }), {
    write: (text) => out.write(text),
    log: () => {},
  });
  feedWarmUpLine((line) => server.line(line)).catch(() => {});
}

class Server {
  constructor(handler, io) {
    this.handler = handler;
    this.io = io;
    this.current = null; // the running Invocation, if any
  }

  diag(text) {
    this.io.log(`[runtimeuse-handler] ${text}\n`);
  }

  send(message) {
    let line;
    try {
      line = JSON.stringify(message);
    } catch (err) {
      line = JSON.stringify({
        type: "error",
        id: message.id,
        error: `the handler's ${message.type} cannot be sent as JSON: ${err.message}`,
        metadata: {},
      });
    }
    this.io.write(line + "\n");
  }

  line(line) {
    if (!line.trim()) return;
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      this.diag("ignoring a line that is not JSON");
      return;
    }
    if (!isObject(message)) {
      this.diag("ignoring a message that is not an object");
    } else if (message.type === "invoke") {
      this.invoke(message);
    } else if (message.type === "cancel") {
      this.cancel(message);
    } else {
      this.diag(`ignoring a message of unknown type ${JSON.stringify(message.type)}`);
    }
  }

  invoke(message) {
    if (typeof message.id !== "string") {
      this.diag("ignoring an invoke without a string id");
      return;
    }
    const refusal = this.refusal(message);
    if (refusal) {
      this.send({ type: "error", id: message.id, error: refusal, metadata: {} });
      return;
    }
    const run = new Run(this, message.id);
    this.current = run;
    run.start(invocationOf(message));
  }

  refusal(message) {
    if (message.protocol !== PROTOCOL) {
      return `unsupported handler protocol ${JSON.stringify(message.protocol)} (this handler speaks ${PROTOCOL})`;
    }
    if (this.current) return `another invocation (${this.current.id}) is still running`;
    return null;
  }

  cancel(message) {
    const run = this.current;
    if (!run || (message.id !== undefined && message.id !== run.id)) {
      this.diag(`cancel for ${JSON.stringify(message.id)}: no such invocation running`);
      return;
    }
    run.finish({ type: "error", error: "cancelled", metadata: {} });
    run.controller.abort(new DOMException("cancelled by the runtime", "AbortError"));
  }

  /** stdin closed: stop whatever runs; its terminal no longer matters. */
  stop() {
    const run = this.current;
    this.current = null;
    if (run) {
      run.done = true;
      run.controller.abort(new DOMException("the runtime closed stdin", "AbortError"));
    }
  }
}

/** One invocation, from `invoke` to its terminal. */
class Run {
  constructor(server, id) {
    this.server = server;
    this.id = id;
    this.controller = new AbortController();
    this.done = false;
  }

  start(invocation) {
    // Called synchronously, so the handler is running (and has had a chance
    // to listen on ctx.signal) before the next stdin line, maybe a cancel,
    // is processed.
    let outcome;
    try {
      outcome = this.server.handler(invocation, this.context());
    } catch (thrown) {
      this.fail(thrown);
      return;
    }
    Promise.resolve(outcome)
      .then(
        (result) => this.finish(resultMessage(result)),
        (thrown) => this.fail(thrown),
      )
      .catch((thrown) => this.fail(thrown));
  }

  fail(thrown) {
    if (isUnexpected(thrown) && !this.done) {
      this.server.diag(`invocation ${this.id} failed: ${thrown?.stack ?? String(thrown)}`);
    }
    this.finish(errorMessage(thrown));
  }

  /** Sends the terminal, once; anything later for this run is dropped. */
  finish(message) {
    if (this.done) return;
    this.done = true;
    if (this.server.current === this) this.server.current = null;
    this.server.send({ ...message, id: this.id });
  }

  send(message) {
    if (!this.done) this.server.send({ ...message, id: this.id });
  }

  context() {
    const log = {};
    for (const level of LEVELS) {
      log[level] = (message) => this.send({ type: "log", level, message: String(message) });
    }
    return {
      signal: this.controller.signal,
      log,
      sendAssistant: (text) => this.send({ type: "assistant", text_blocks: textBlocks(text) }),
      [FAIL_NOW]: (error, metadata) => {
        this.finish({ type: "error", error: String(error), metadata: isObject(metadata) ? metadata : {} });
        this.controller.abort(new DOMException(String(error), "AbortError"));
      },
    };
  }
}

function textBlocks(text) {
  if (typeof text === "string") return [text];
  if (Array.isArray(text) && text.every((block) => typeof block === "string")) return text;
  throw new TypeError("sendAssistant(text): text must be a string or an array of strings");
}

function stringMap(value) {
  const map = {};
  if (!isObject(value)) return map;
  for (const [key, item] of Object.entries(value)) {
    if (typeof item === "string") map[key] = item;
  }
  return map;
}

/** The invoke line as the handler sees it: camelCase, defaults filled in. */
function invocationOf(message) {
  const outputFormat = isObject(message.output_format) ? message.output_format : null;
  return {
    id: message.id,
    sourceId: typeof message.source_id === "string" ? message.source_id : null,
    systemPrompt: String(message.system_prompt ?? ""),
    userPrompt: String(message.user_prompt ?? ""),
    model: String(message.model ?? ""),
    outputFormat,
    env: stringMap(message.env),
    secrets: Array.isArray(message.secrets) ? message.secrets.filter((s) => typeof s === "string") : [],
  };
}
