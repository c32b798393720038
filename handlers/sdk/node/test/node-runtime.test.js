// launch.js: modules written for the original Node runtime, run unchanged,
// and the other kinds of .js handler it must tell apart.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { Child, killAll, scriptFile } from "./harness.js";

afterEach(killAll);

const LAUNCH = fileURLToPath(new URL("../launch.js", import.meta.url));

function launch(source, name) {
  return new Child([LAUNCH, scriptFile(source, name)]);
}

// Every part of the Node runtime's interface, driven by the prompt.
const LEGACY_ESM = `
console.log("loading the handler module");
export const handler = {
  async run(invocation, sender) {
    const p = invocation.userPrompt;
    invocation.logger.log("run", p, { n: 1 });
    invocation.logger.debug("debug line");
    invocation.logger.error("error line");
    if (p === "INFO") {
      const { signal, logger, ...rest } = invocation;
      return { type: "structured_output", structuredOutput: { ...rest, hasSignal: signal instanceof AbortSignal }, metadata: { via: "legacy" } };
    }
    if (p === "SAY") {
      sender.sendAssistantMessage(["one", "two"]);
      console.log("console chatter");
      return { type: "text", text: "said", metadata: { via: "legacy" } };
    }
    if (p === "ERR_THEN_THROW") {
      sender.sendErrorMessage("reported", { code: "E1" });
      throw new Error("thrown after reporting");
    }
    if (p === "ERR_THEN_RETURN") {
      sender.sendErrorMessage("reported again");
      return { type: "text", text: "too late" };
    }
    if (p === "THROW") throw new Error("plain throw");
    if (p === "WAIT") {
      await new Promise((resolve) => invocation.signal.addEventListener("abort", resolve));
      return { type: "text", text: "late" };
    }
    return { type: "text", text: "legacy:" + p };
  },
};
`;

test("a Node-runtime module's handler export gets the whole interface", async () => {
  const child = launch(LEGACY_ESM, "legacy.mjs");
  const outputFormat = { type: "json_schema", schema: { type: "object" } };
  child.invoke("i", "INFO", {
    system_prompt: "sys!", model: "gpt", output_format: outputFormat, env: { K: "v" },
    secrets: ["s1"], source_id: "src",
  });
  const seen = await child.untilTerminal();
  assert.deepEqual(seen.filter((m) => m.type === "log").map((m) => [m.level, m.message]), [
    ["info", "run INFO { n: 1 }"],
    ["debug", "debug line"],
    ["error", "error line"],
  ]);
  assert.deepEqual(seen.at(-1), {
    type: "result", id: "i", metadata: { via: "legacy" },
    structured_output: {
      systemPrompt: "sys!", userPrompt: "INFO", model: "gpt", outputFormat, env: { K: "v" },
      secrets: ["s1"], sourceId: "src", hasSignal: true,
    },
  });
  // No output format: undefined, as the Node runtime passed it.
  child.invoke("j", "INFO");
  const { structured_output: plain } = await child.terminal();
  assert.equal("outputFormat" in plain, false);

  child.invoke("s", "SAY");
  const said = (await child.untilTerminal()).filter((m) => m.type !== "log");
  assert.deepEqual(said, [
    { type: "assistant", text_blocks: ["one", "two"], id: "s" },
    { type: "result", text: "said", metadata: { via: "legacy" }, id: "s" },
  ]);
  await child.close();
  assert.match(child.stderr, /loading the handler module\n/);
  assert.match(child.stderr, /console chatter\n/);
});

test("sendErrorMessage then throw (or return) is exactly one error", async () => {
  const child = launch(LEGACY_ESM, "legacy.mjs");
  child.invoke("e1", "ERR_THEN_THROW");
  assert.deepEqual((await child.untilTerminal()).filter((m) => m.type !== "log"), [
    { type: "error", error: "reported", metadata: { code: "E1" }, id: "e1" },
  ]);
  child.invoke("e2", "ERR_THEN_RETURN");
  assert.deepEqual((await child.terminal()), { type: "error", error: "reported again", metadata: {}, id: "e2" });
  child.invoke("e3", "THROW");
  assert.deepEqual((await child.terminal()), { type: "error", error: "plain throw", metadata: {}, id: "e3" });
  child.invoke("ok", "fine");
  assert.equal((await child.terminal()).text, "legacy:fine");
  await child.close();
  // Nothing of the dropped outcomes was sent after all.
  assert.deepEqual(child.messages.filter((m) => m.type !== "log"), []);
});

test("the invocation's signal is aborted by a cancel", async () => {
  const child = launch(LEGACY_ESM, "legacy.mjs");
  child.invoke("w", "WAIT");
  child.send({ type: "cancel", id: "w" });
  assert.deepEqual(await child.terminal(), { type: "error", error: "cancelled", metadata: {}, id: "w" });
  child.invoke("n", "next");
  assert.equal((await child.terminal()).text, "legacy:next");
  await child.close();
});

test("default exports and CommonJS modules are found too", async () => {
  const kinds = [
    ["default.mjs", "export default { async run(inv) { return { type: 'text', text: 'default ' + inv.userPrompt } } };"],
    ["cjs.cjs", "module.exports = { async run(inv) { return { type: 'text', text: 'default ' + inv.userPrompt } } };"],
    ["cjs-named.cjs", "exports.handler = { async run(inv) { return { type: 'text', text: 'default ' + inv.userPrompt } } };"],
    ["cjs-plain.js", "module.exports = { handler: { run: async (inv) => ({ type: 'text', text: 'default ' + inv.userPrompt }) } };"],
  ];
  for (const [name, source] of kinds) {
    const child = launch(source, name);
    child.invoke("d", "x");
    assert.deepEqual(await child.terminal(), { type: "result", text: "default x", metadata: {}, id: "d" }, name);
    assert.equal((await child.close()).code, 0, name);
  }
});

test("a .js script that speaks the protocol itself keeps its stdout", async () => {
  const scripts = [
    ["script.js", `
      const readline = require("node:readline");
      console.log("before reading: goes to the log");
      readline.createInterface({ input: process.stdin }).on("line", (line) => {
        const msg = JSON.parse(line);
        if (msg.type === "invoke") console.log(JSON.stringify({ type: "result", id: msg.id, text: "raw " + msg.user_prompt }));
      });
    `],
    ["tla.mjs", `
      import readline from "node:readline";
      for await (const line of readline.createInterface({ input: process.stdin })) {
        const msg = JSON.parse(line);
        if (msg.type === "invoke") process.stdout.write(JSON.stringify({ type: "result", id: msg.id, text: "raw " + msg.user_prompt }) + "\\n");
      }
    `],
  ];
  for (const [name, source] of scripts) {
    const child = launch(source, name);
    child.invoke("r1", "a");
    assert.deepEqual(await child.terminal(), { type: "result", id: "r1", text: "raw a" }, name);
    child.invoke("r2", "b");
    assert.deepEqual(await child.terminal(), { type: "result", id: "r2", text: "raw b" }, name);
    assert.equal((await child.close()).code, 0, name);
  }
});

test("a module calling runHandler imports the SDK by name with nothing installed", async () => {
  const child = launch(`
    import { runHandler } from "runtimeuse-handler";
    runHandler((invocation) => ({ text: "sdk " + invocation.userPrompt }));
  `, "sdk-user.mjs");
  child.invoke("k", "hi");
  assert.deepEqual(await child.terminal(), { type: "result", text: "sdk hi", metadata: {}, id: "k" });
  assert.equal((await child.close()).code, 0);
});

test("a module that is neither says so and ends", async () => {
  const child = launch("export const notAHandler = 1;", "nothing.mjs");
  const { code } = await child.exited;
  assert.equal(code, 0);
  assert.match(child.stderr, /exports no handler with run\(invocation, sender\)/);
});

test("a module that fails to load ends with its error on stderr", async () => {
  const child = launch("throw new Error('broken at load');", "broken.mjs");
  const { code } = await child.exited;
  assert.equal(code, 1);
  assert.match(child.stderr, /cannot load .*broken\.mjs: Error: broken at load/);
});

test("the SDK imported only by another file of the handler resolves too", async () => {
  const sdkUser = scriptFile(`
    import { runHandler } from "runtimeuse-handler";
    runHandler((invocation) => ({ text: "indirect " + invocation.userPrompt }));
  `, "agent.mjs");
  const child = launch(`import ${JSON.stringify(sdkUser)};`, "main.mjs");
  child.invoke("k", "hi");
  assert.deepEqual(await child.terminal(), { type: "result", text: "indirect hi", metadata: {}, id: "k" });
  assert.equal((await child.close()).code, 0);
});
