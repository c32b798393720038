// The trivial Node handler of the one-shot figure: answers every invoke
// with its prompt. No dependencies, so its cost is the interpreter's.
import { createInterface } from "node:readline";

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const message = JSON.parse(line);
  if (message.type !== "invoke") return;
  const reply = { type: "result", id: message.id, text: message.user_prompt };
  process.stdout.write(JSON.stringify(reply) + "\n");
});
