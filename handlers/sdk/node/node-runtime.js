// Runs handler modules written for the original Node runtime, unchanged.
//
// That runtime imported `--handler ./my-handler.js` and called
// `handler.run(invocation, sender)` (from the `handler` export, or the
// default export). Here such a module is served through runHandler: its
// `invocation` and `sender` are built from the SDK's invocation and ctx,
// and its `{ type: "text" | "structured_output", ... }` result is mapped
// back. `sender.sendErrorMessage` ends the invocation with that error at
// once; whatever `run` throws or returns afterwards is dropped, so the
// client gets exactly one error (the original runtime sent two).

import { format } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve as resolvePath } from "node:path";
import { FAIL_NOW, runHandler } from "./lib/serve.js";
import { divertStdout, isServing, restoreStdout } from "./lib/stdout.js";

/**
 * The object with `run(invocation, sender)` a Node-runtime module exports,
 * or null: the `handler` export first, then the default export (itself, or
 * its `handler` property, for CommonJS `module.exports = { handler }`).
 */
export function findNodeRuntimeHandler(mod) {
  const candidates = [mod?.handler, mod?.default, mod?.default?.handler];
  for (const candidate of candidates) {
    if (typeof candidate?.run === "function") return candidate;
  }
  return null;
}

/** Serves a Node-runtime handler object (`{ run(invocation, sender) }`). */
export function runNodeRuntimeHandler(handler, options) {
  return runHandler((invocation, ctx) => runOnce(handler, invocation, ctx), options);
}

async function runOnce(handler, invocation, ctx) {
  const result = await handler.run(legacyInvocation(invocation, ctx), legacySender(ctx));
  return modernResult(result);
}

/** The AgentInvocation the Node runtime passed to `run`. */
function legacyInvocation(invocation, ctx) {
  return {
    systemPrompt: invocation.systemPrompt,
    userPrompt: invocation.userPrompt,
    model: invocation.model,
    outputFormat: invocation.outputFormat ?? undefined,
    env: invocation.env,
    secrets: invocation.secrets,
    signal: ctx.signal,
    logger: legacyLogger(ctx),
    sourceId: invocation.sourceId ?? undefined,
  };
}

/** A console-like logger whose lines go to the runtime's log. */
function legacyLogger(ctx) {
  const line = (level) => (...args) => ctx.log[level](format(...args));
  return {
    log: line("info"),
    info: line("info"),
    warn: line("warn"),
    error: line("error"),
    debug: line("debug"),
    trace: line("debug"),
  };
}

/** The MessageSender the Node runtime passed to `run`. */
function legacySender(ctx) {
  return {
    sendAssistantMessage(textBlocks) {
      ctx.sendAssistant(Array.isArray(textBlocks) ? textBlocks.map(String) : String(textBlocks));
    },
    sendErrorMessage(message, metadata) {
      ctx[FAIL_NOW](message, metadata);
    },
  };
}

/** `{ type: "text", text }` / `{ type: "structured_output", structuredOutput }` -> SDK result. */
function modernResult(result) {
  if (result?.type === "text") return { text: result.text, metadata: result.metadata };
  if (result?.type === "structured_output") {
    return { structuredOutput: result.structuredOutput, metadata: result.metadata };
  }
  return result;
}

/**
 * Loads the module at `path` and serves it: a Node-runtime handler module
 * through runHandler, a module that calls runHandler itself as it is, and
 * a script that speaks the protocol on its own (it reads `process.stdin`
 * while loading) with stdout left to it.
 *
 * Until it is known which, stdout writes go to stderr: a protocol line
 * written before reading any input would be meaningless anyway. `load`
 * imports the module's URL (the launcher's adds a resolve hook if needed).
 */
export async function runNodeRuntimeModule(path, { load = (url) => import(url) } = {}) {
  const watch = watchStdin();
  divertStdout();
  let mod;
  try {
    mod = await load(pathToFileURL(resolvePath(path)).href);
  } finally {
    watch.stop();
  }
  if (isServing() || watch.touched) return;
  const handler = findNodeRuntimeHandler(mod);
  if (handler) return runNodeRuntimeHandler(handler);
  restoreStdout();
  process.stderr.write(
    `[runtimeuse-handler] ${path} exports no handler with run(invocation, sender) ` +
      "and did not read process.stdin while loading; leaving it to run as a script\n",
  );
}

/**
 * Notices the first read of `process.stdin`. A module that touches it while
 * loading, without runHandler, speaks the protocol itself: it gets its real
 * stdout back at once (a top-level `for await` over stdin never finishes
 * loading, so this cannot wait for the import).
 */
function watchStdin() {
  const descriptor = Object.getOwnPropertyDescriptor(process, "stdin");
  const watch = {
    touched: false,
    stop() {
      Object.defineProperty(process, "stdin", descriptor);
    },
  };
  Object.defineProperty(process, "stdin", {
    configurable: true,
    enumerable: descriptor.enumerable,
    get() {
      watch.stop();
      if (!isServing()) {
        watch.touched = true;
        restoreStdout();
      }
      return descriptor.get.call(process);
    },
  });
  return watch;
}
