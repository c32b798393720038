import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { ClippedOutput, describeResult, runCommand } from "../lib/shell.mjs";

const env = { ...process.env, SHELL_TEST_VALUE: "from-env" };

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(predicate, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("runs a command with the env given and reports status and both streams", async () => {
  const result = await runCommand('echo "out $SHELL_TEST_VALUE"; echo err >&2; exit 3', { env });
  assert.equal(result.exitCode, 3);
  assert.equal(result.timedOut, false);
  assert.match(result.output, /out from-env\n/);
  assert.match(result.output, /err\n/);
  assert.equal(describeResult(result).split("\n")[0], "exit code 3");
});

test("a timeout ends the command's whole group", async () => {
  const dir = mkdtempSync(join(tmpdir(), "shell-test-"));
  const pidFile = join(dir, "bg.pid");
  const result = await runCommand(`sleep 60 & echo $! > ${pidFile}; wait`, { env, timeoutMs: 300 });
  assert.equal(result.timedOut, true);
  assert.match(describeResult(result, 300), /^timed out after 0 s and was killed/);
  const background = Number(readFileSync(pidFile, "utf8"));
  await until(() => !alive(background));
});

test("an abort ends the command's whole group and resolves with its output", async () => {
  const dir = mkdtempSync(join(tmpdir(), "shell-test-"));
  const started = join(dir, "started");
  const controller = new AbortController();
  const running = runCommand(`echo before; touch ${started}; sleep 60; echo never`, {
    env,
    signal: controller.signal,
  });
  await until(() => existsSync(started));
  controller.abort();
  const result = await running;
  assert.equal(result.signal, "SIGTERM");
  assert.match(result.output, /before/);
  assert.doesNotMatch(result.output, /never/);
});

test("a background job holding the pipes open does not hold the result", async () => {
  const begun = Date.now();
  const result = await runCommand("sleep 30 & echo done", { env });
  assert.equal(result.exitCode, 0);
  assert.match(result.output, /done/);
  assert.ok(Date.now() - begun < 10_000, "waited for the background job");
});

test("output is clipped to a head and a tail, in bounded memory", () => {
  const clip = new ClippedOutput(5);
  clip.push("abc");
  assert.equal(clip.toString(), "abc");
  clip.push("defghij");
  clip.push("klmnopqrstuvwxyz");
  assert.equal(clip.toString(), "abcde\n[... 16 characters omitted ...]\nvwxyz");
  assert.ok(clip.head.length <= 5 && clip.tail.length <= 5);
});
