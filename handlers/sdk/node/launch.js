#!/usr/bin/env node
// `node launch.js HANDLER` is how the runtime starts a `.js`, `.mjs` or
// `.cjs` handler: it makes `import "runtimeuse-handler"` resolve without an
// install, then serves the module (see node-runtime.js for the kinds).

import module from "node:module";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

const SDK = "runtimeuse-handler";
/** Set on the relaunch after the SDK turned out to be needed. */
const ALWAYS_HOOK = "RUNTIMEUSE_HANDLER_RESOLVE_HOOK";

if (process.argv.length < 3) {
  process.stderr.write("usage: launch.js HANDLER_MODULE\n");
  process.exit(2);
}
const path = resolve(process.argv[2]);
const { runNodeRuntimeModule } = await import("./node-runtime.js");
// Before the handler loads (it may read stdin as it does): the paths of a
// first invocation, run once while this process waits as a spare.
const { warmUpNode } = await import("./lib/warm-up.js");
await warmUpNode();
try {
  await runNodeRuntimeModule(path, { load });
} catch (err) {
  if (missingSdk(err) && !process.env[ALWAYS_HOOK]) {
    relaunchWithHook();
  } else {
    process.stderr.write(`[runtimeuse-handler] cannot load ${path}: ${err?.stack ?? err}\n`);
    process.exit(1);
  }
}

/**
 * Imports the handler, registering the resolve hook first only when it
 * looks needed: the hook runs on a loader thread that costs ~60 ms and
 * ~10 MB at startup, which handlers that do not use the SDK (or have it
 * installed) should not pay.
 */
function load(url) {
  if (process.env[ALWAYS_HOOK] || (mentionsSdk(path) && !resolvable(path))) registerHook();
  return import(url);
}

function registerHook() {
  // module.register: Node >= 18.19 / 20.6. Older Nodes still run handlers
  // that do not import the SDK, or that have it installed.
  if (typeof module.register === "function") {
    module.register("./resolve-hook.js", import.meta.url);
  }
}

/**
 * The SDK is imported by another file of the handler only. A static import
 * fails while linking, before any handler code ran or any input was read,
 * so starting over is safe; in this process the failed modules are cached,
 * hence a new one (in the handler's process group, like this one).
 */
function relaunchWithHook() {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), path], {
    stdio: "inherit",
    env: { ...process.env, [ALWAYS_HOOK]: "1" },
  });
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(signal, () => child.kill(signal));
  }
  child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

function mentionsSdk(file) {
  try {
    return readFileSync(file, "utf8").includes(SDK);
  } catch {
    return false;
  }
}

function resolvable(file) {
  try {
    module.createRequire(file).resolve(SDK);
    return true;
  } catch {
    return false;
  }
}

function missingSdk(err) {
  return err?.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes(`'${SDK}'`);
}
