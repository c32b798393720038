// The warm-up a spare runs before its first line (lib/warm-up.js): it must
// happen before the handler reads stdin, and be invisible: the user's
// handler is not called for it and nothing of it reaches stdout.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { Child, killAll, scriptFile } from "./harness.js";

afterEach(killAll);

const LAUNCH = fileURLToPath(new URL("../launch.js", import.meta.url));

// Speaks the protocol itself without node:readline, and says whether the
// launcher had run readline (its warm-up) before this module loaded.
const SCRIPT = `
const warmedBefore = process.moduleLoadList.includes("NativeModule readline");
let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf("\\n")) !== -1) {
    const message = JSON.parse(buffered.slice(0, newline));
    buffered = buffered.slice(newline + 1);
    process.stdout.write(JSON.stringify({ type: "result", id: message.id, text: String(warmedBefore) }) + "\\n");
  }
});
`;

// Counts its calls.
const COUNTING = `
import { runHandler } from "SDK";
let calls = 0;
runHandler(async (invocation) => ({ text: invocation.userPrompt + " " + ++calls }));
`;

test("the launcher warms up before a script handler loads, writing nothing", async () => {
  const child = new Child([LAUNCH, scriptFile(SCRIPT, "script.mjs")]);
  child.invoke("a", "hi");
  // Anything else on stdout would have failed the harness's JSON.parse.
  assert.deepEqual(await child.untilTerminal(), [{ type: "result", id: "a", text: "true" }]);
  assert.deepEqual(await child.close(), { code: 0, signal: null });
});

test("runHandler's warm-up never calls the handler nor writes to stdout", async () => {
  for (const args of [[scriptFile(COUNTING)], [LAUNCH, scriptFile(COUNTING)]]) {
    const child = new Child(args);
    child.invoke("a", "one");
    assert.deepEqual(await child.untilTerminal(), [{ type: "result", id: "a", text: "one 1", metadata: {} }]);
    child.invoke("b", "two");
    assert.deepEqual(await child.untilTerminal(), [{ type: "result", id: "b", text: "two 2", metadata: {} }]);
    assert.deepEqual(await child.close(), { code: 0, signal: null });
    assert.equal(child.stdout, "");
  }
});
