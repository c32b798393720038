// Module resolve hook registered by launch.js: lets a handler started by
// the runtime `import "runtimeuse-handler"` with nothing installed. A copy
// the handler can resolve itself (installed beside it) wins; only when
// normal resolution fails does the specifier map to this package.

const OWN = new Map([
  ["runtimeuse-handler", new URL("./index.js", import.meta.url).href],
  ["runtimeuse-handler/node-runtime", new URL("./node-runtime.js", import.meta.url).href],
  ["runtimeuse-handler/package.json", new URL("./package.json", import.meta.url).href],
]);

export async function resolve(specifier, context, nextResolve) {
  const own = OWN.get(specifier);
  if (!own) return nextResolve(specifier, context);
  try {
    return await nextResolve(specifier, context);
  } catch (err) {
    if (err?.code !== "ERR_MODULE_NOT_FOUND") throw err;
    return { url: own, shortCircuit: true };
  }
}
