// The trivial handler of the one-shot figure as a user of the Node SDK
// writes it: answers every invocation with its prompt. Its cost is the
// interpreter's plus the SDK's (resolved by the runtime's launcher).
import { runHandler } from "runtimeuse-handler";

runHandler(async (invocation) => ({ text: invocation.userPrompt }));
