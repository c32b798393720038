#!/usr/bin/env node
// `npx runtimeuse ...`: finds the native runtimeuse binary that npm installed
// for this platform (the optional dependency @runtimeuse/<os>-<cpu>, the way
// esbuild and Biome ship theirs) and runs it with the same arguments.
//
// The binary runs as a child so this works whatever npm did with file
// modes; signals sent to this process (a supervisor's SIGTERM, Ctrl-C) are
// passed on to it, and its exit status becomes ours, so `npx runtimeuse`
// behaves like the binary itself.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");

/** Platform packages by `${process.platform}-${process.arch}`. */
const PLATFORM_PACKAGES = {
  "linux-x64": "@runtimeuse/linux-x64",
  "linux-arm64": "@runtimeuse/linux-arm64",
};

/** How often to check whether our parent is gone (see watchParent). */
const PARENT_POLL_MS = 500;

/** Signals a supervisor or a terminal may send that the runtime must see. */
const FORWARDED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

function fail(message) {
  process.stderr.write(`runtimeuse: ${message}\n`);
  process.exit(1);
}

/** The binary to run: $RUNTIMEUSE_BINARY_PATH, else the platform package's. */
function binaryPath() {
  if (process.env.RUNTIMEUSE_BINARY_PATH) {
    return process.env.RUNTIMEUSE_BINARY_PATH;
  }
  const platform = `${process.platform}-${process.arch}`;
  const pkg = PLATFORM_PACKAGES[platform];
  if (!pkg) {
    fail(
      `no runtimeuse binary is published for ${platform} ` +
        `(there are: ${Object.keys(PLATFORM_PACKAGES).join(", ")}); ` +
        "build it with `cargo build --release` and run target/release/runtimeuse",
    );
  }
  try {
    return require.resolve(`${pkg}/bin/runtimeuse`);
  } catch {
    fail(
      `the package ${pkg}, which holds the binary for ${platform}, is not installed. ` +
        "It is an optional dependency of runtimeuse: reinstall without " +
        "--omit=optional / --no-optional",
    );
  }
}

/** npm may drop the executable bit; put it back (once) if we own the file. */
function ensureExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    try {
      fs.chmodSync(file, 0o755);
    } catch {
      // Leave it: spawn reports EACCES with the path below.
    }
  }
}

/**
 * `npx runtimeuse` runs this script under `sh -c`, and npx passes a SIGTERM
 * it gets only to that shell, which dies without passing it on: we would be
 * orphaned and the runtime would keep running. So a parent that goes away
 * counts as a SIGTERM for the runtime (graceful shutdown, then we exit).
 */
function watchParent(child) {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      clearInterval(timer);
      child.kill("SIGTERM");
    }
  }, PARENT_POLL_MS);
  timer.unref();
}

function run() {
  const binary = binaryPath();
  ensureExecutable(binary);
  const child = spawn(binary, process.argv.slice(2), { stdio: "inherit" });
  const forwarders = FORWARDED_SIGNALS.map((signal) => {
    const forward = () => child.kill(signal);
    process.on(signal, forward);
    return [signal, forward];
  });
  watchParent(child);
  child.on("error", (error) => fail(`cannot run ${binary}: ${error.message}`));
  child.on("exit", (code, signal) => {
    for (const [name, forward] of forwarders) {
      process.removeListener(name, forward);
    }
    if (signal) {
      // Die of the same signal, so our parent sees what the binary did.
      // If the signal is caught or ignored after all, exit as a shell would.
      process.kill(process.pid, signal);
      setTimeout(() => process.exit(128 + (os.constants.signals[signal] || 0)), 1000);
      return;
    }
    process.exit(code);
  });
}

run();
