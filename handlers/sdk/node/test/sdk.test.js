// runHandler through a real child process speaking handler protocol v1.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { Child, killAll } from "./harness.js";

afterEach(killAll);

const ECHOISH = `
import { runHandler, HandlerError } from "SDK";
runHandler(async (invocation, ctx) => {
  const [verb, rest = ""] = invocation.userPrompt.split(/:(.*)/s);
  switch (verb) {
    case "TEXT": return { text: rest, metadata: { handler: "t" } };
    case "BARE": return rest;
    case "STRUCT": return { structuredOutput: JSON.parse(rest) };
    case "INFO": return { structuredOutput: invocation };
    case "SAY":
      ctx.sendAssistant(rest);
      ctx.sendAssistant([rest, "second"]);
      for (const level of ["debug", "info", "warn", "error"]) ctx.log[level]("log " + level);
      return { text: "said" };
    case "FAIL": throw new HandlerError(rest, { code: 7 });
    case "THROW": throw new TypeError("boom " + rest);
    case "REJECT_STRING": return Promise.reject("plain " + rest);
    case "SYNC_THROW": throw "sync " + rest;
    case "CONSOLE":
      console.log("chatter on stdout");
      process.stdout.write("more chatter\\n");
      return { text: "quiet" };
    case "BAD": return JSON.parse(rest);
    case "BIGINT": return { structuredOutput: { n: 1n } };
    case "WAIT":
      await new Promise((resolve, reject) => {
        ctx.signal.addEventListener("abort", () => {
          console.error("saw abort: " + ctx.signal.reason.name);
          ctx.sendAssistant("after cancel");
          setTimeout(() => resolve(), 5);
        });
      });
      return { text: "late" };
    case "HANG": return new Promise(() => {});
    default: return { text: invocation.userPrompt };
  }
});
`;

test("a text result carries the id and metadata", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("a1", "TEXT:hello");
  assert.deepEqual(await child.next(), { type: "result", text: "hello", metadata: { handler: "t" }, id: "a1" });
  child.invoke("a2", "BARE:just a string");
  assert.deepEqual(await child.next(), { type: "result", text: "just a string", metadata: {}, id: "a2" });
  assert.equal((await child.close()).code, 0);
});

test("structured output is sent as structured_output", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("s", 'STRUCT:{"a":[1,2],"b":{"c":null}}');
  const msg = await child.next();
  assert.deepEqual(msg.structured_output, { a: [1, 2], b: { c: null } });
  assert.equal(msg.text, undefined);
  await child.close();
});

test("the invocation is handed over camelCased with every field", async () => {
  const child = Child.script(ECHOISH);
  const outputFormat = { type: "json_schema", schema: { type: "object" } };
  child.invoke("i1", "INFO", {
    source_id: "src-1", system_prompt: "be brief", model: "gpt-x",
    output_format: outputFormat, env: { A: "1", B: "two" }, secrets: ["s3cret"],
    unknown_future_field: true,
  });
  const { structured_output: inv } = await child.next();
  assert.deepEqual(inv, {
    id: "i1", sourceId: "src-1", systemPrompt: "be brief", userPrompt: "INFO", model: "gpt-x",
    outputFormat, env: { A: "1", B: "two" }, secrets: ["s3cret"],
  });
  child.invoke("i2", "INFO");
  const { structured_output: plain } = await child.next();
  assert.equal(plain.sourceId, null);
  assert.equal(plain.outputFormat, null);
  await child.close();
});

test("assistant text and log lines stream before the terminal", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("x", "SAY:hi");
  const seen = await child.untilTerminal();
  assert.deepEqual(seen, [
    { type: "assistant", text_blocks: ["hi"], id: "x" },
    { type: "assistant", text_blocks: ["hi", "second"], id: "x" },
    { type: "log", level: "debug", message: "log debug", id: "x" },
    { type: "log", level: "info", message: "log info", id: "x" },
    { type: "log", level: "warn", message: "log warn", id: "x" },
    { type: "log", level: "error", message: "log error", id: "x" },
    { type: "result", text: "said", metadata: {}, id: "x" },
  ]);
  await child.close();
});

test("errors become one error each and the process stays warm", async () => {
  const child = Child.script(ECHOISH);
  const pid = child.proc.pid;
  const cases = [
    ["FAIL:nope", "nope", { code: 7 }],
    ["THROW:x", "boom x", {}],
    ["REJECT_STRING:y", "plain y", {}],
    ["SYNC_THROW:z", "sync z", {}],
  ];
  for (const [i, [prompt, error, metadata]] of cases.entries()) {
    child.invoke(`e${i}`, prompt);
    assert.deepEqual(await child.untilTerminal(), [{ type: "error", error, metadata, id: `e${i}` }]);
  }
  child.invoke("ok", "TEXT:still here");
  assert.equal((await child.next()).text, "still here");
  assert.equal(child.proc.pid, pid);
  // A generic exception leaves its stack in the handler's log; HandlerError does not.
  assert.match(child.stderr, /TypeError: boom x\n\s+at /);
  assert.doesNotMatch(child.stderr, /HandlerError/);
  await child.close();
});

test("a result that breaks the contract is an error, not a protocol violation", async () => {
  const child = Child.script(ECHOISH);
  const cases = [
    ['BAD:{"text":"a","structuredOutput":{}}', /exactly one of text and structuredOutput/],
    ["BAD:{}", /exactly one of text and structuredOutput/],
    ["BAD:null", /got null/],
    ["BAD:42", /got a number/],
    ['BAD:{"structuredOutput":[1]}', /structuredOutput must be an object, got an array/],
    ['BAD:{"text":5}', /text must be a string/],
    ['BAD:{"text":"a","metadata":"m"}', /metadata must be an object/],
    ["BIGINT", /cannot be sent as JSON/],
  ];
  for (const [i, [prompt, pattern]] of cases.entries()) {
    child.invoke(`b${i}`, prompt);
    const seen = await child.untilTerminal();
    assert.equal(seen.length, 1, prompt);
    assert.equal(seen[0].type, "error", prompt);
    assert.equal(seen[0].id, `b${i}`);
    assert.match(seen[0].error, pattern, prompt);
  }
  await child.close();
});

test("console.log and stdout writes go to stderr, never into the protocol", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("c", "CONSOLE");
  assert.deepEqual(await child.untilTerminal(), [{ type: "result", text: "quiet", metadata: {}, id: "c" }]);
  await child.close();
  assert.match(child.stderr, /chatter on stdout\nmore chatter\n/);
});

test("cancel answers at once, aborts the signal and drops the late outcome", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("w", "WAIT");
  child.send({ type: "cancel", id: "w" });
  assert.deepEqual(await child.untilTerminal(), [{ type: "error", error: "cancelled", metadata: {}, id: "w" }]);
  await child.until(() => child.stderr.includes("saw abort: AbortError"), "the abort");
  // The next invocation is served; nothing of the cancelled one shows up.
  child.invoke("n", "TEXT:next");
  assert.deepEqual(await child.untilTerminal(), [{ type: "result", text: "next", metadata: { handler: "t" }, id: "n" }]);
  await child.close();
  assert.deepEqual(child.messages, []);
});

test("a cancel for another id, or after the terminal, is ignored", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("t", "TEXT:one");
  assert.equal((await child.next()).text, "one");
  child.send({ type: "cancel", id: "t" });
  child.invoke("h", "HANG");
  child.send({ type: "cancel", id: "not-h" });
  child.send({ type: "cancel", id: "h" });
  assert.deepEqual(await child.untilTerminal(), [{ type: "error", error: "cancelled", metadata: {}, id: "h" }]);
  await child.close();
});

test("a second invoke while one runs is refused without disturbing the first", async () => {
  const child = Child.script(ECHOISH);
  child.invoke("first", "HANG");
  child.invoke("second", "TEXT:no");
  const refused = await child.next();
  assert.equal(refused.id, "second");
  assert.match(refused.error, /another invocation \(first\) is still running/);
  child.send({ type: "cancel", id: "first" });
  assert.equal((await child.next()).id, "first");
  await child.close();
});

test("bad input lines are skipped; a wrong protocol version is an error", async () => {
  const child = Child.script(ECHOISH);
  child.send("this is not json");
  child.send("[1,2]");
  child.send({ type: "mystery" });
  child.send({ type: "invoke", protocol: 1, user_prompt: "no id" });
  child.send("");
  child.invoke("v", "TEXT:x", { protocol: 2 });
  const refused = await child.next();
  assert.equal(refused.id, "v");
  assert.match(refused.error, /unsupported handler protocol 2/);
  // CRLF framing is fine too.
  child.proc.stdin.write(JSON.stringify({ type: "invoke", protocol: 1, id: "crlf", user_prompt: "TEXT:ok" }) + "\r\n");
  assert.deepEqual(await child.next(), { type: "result", text: "ok", metadata: { handler: "t" }, id: "crlf" });
  await child.close();
  assert.match(child.stderr, /not JSON/);
  assert.match(child.stderr, /unknown type "mystery"/);
  assert.match(child.stderr, /without a string id/);
});

test("stdin EOF resolves runHandler and aborts the running invocation", async () => {
  const child = Child.script(`
    import { runHandler } from "SDK";
    await runHandler(async (invocation, ctx) => {
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      console.error("aborted: " + ctx.signal.reason.message);
      return { text: "never sent" };
    });
    console.error("runHandler resolved");
  `);
  child.invoke("eof", "anything");
  const { code } = await child.close();
  assert.equal(code, 0);
  assert.match(child.stderr, /aborted: the runtime closed stdin/);
  assert.match(child.stderr, /runHandler resolved/);
  assert.deepEqual(child.messages, []);
});

test("a big invocation split across many reads arrives whole", async () => {
  const child = Child.script(ECHOISH);
  const big = "x".repeat(3 * 1024 * 1024) + "é";
  child.invoke("big", "TEXT:" + big);
  const msg = await child.next();
  assert.equal(msg.text.length, big.length);
  assert.equal(msg.text, big);
  await child.close();
});

test("runHandler refuses a non-function", async () => {
  const { runHandler } = await import("../index.js");
  assert.throws(() => runHandler({ run() {} }), /handler must be a function/);
});
