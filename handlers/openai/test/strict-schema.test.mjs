import assert from "node:assert/strict";
import { test } from "node:test";

import { strictSchema } from "../lib/strict-schema.mjs";

test("objects are closed and require every property, at every depth", () => {
  const schema = {
    type: "object",
    properties: {
      name: { type: "string" },
      tags: { type: "array", items: { type: "object", properties: { k: { type: "string" } } } },
      either: { anyOf: [{ type: "object", properties: { a: { type: "number" } } }, { type: "null" }] },
      ref: { $ref: "#/$defs/point" },
    },
    required: ["name"],
    $defs: { point: { type: "object", properties: { x: { type: "number" }, y: { type: "number" } } } },
  };
  const strict = strictSchema(schema);
  assert.deepEqual(strict.required, ["name", "tags", "either", "ref"]);
  assert.equal(strict.additionalProperties, false);
  const item = strict.properties.tags.items;
  assert.deepEqual([item.required, item.additionalProperties], [["k"], false]);
  const branch = strict.properties.either.anyOf[0];
  assert.deepEqual([branch.required, branch.additionalProperties], [["a"], false]);
  assert.deepEqual(strict.properties.either.anyOf[1], { type: "null" });
  const point = strict.$defs.point;
  assert.deepEqual([point.required, point.additionalProperties], [["x", "y"], false]);
  assert.deepEqual(strict.properties.ref, { $ref: "#/$defs/point" });
});

test("the client's schema is not modified", () => {
  const schema = { type: "object", properties: { a: { type: "object", properties: {} } } };
  const copy = structuredClone(schema);
  strictSchema(schema);
  assert.deepEqual(schema, copy);
});

test("an object without properties is closed and empty; non-objects are left alone", () => {
  assert.deepEqual(strictSchema({ type: "object" }), {
    type: "object",
    properties: {},
    required: [],
    additionalProperties: false,
  });
  assert.deepEqual(strictSchema({ type: ["object", "null"], properties: { a: {} } }).required, ["a"]);
  assert.deepEqual(strictSchema({ type: "string", enum: ["x"] }), { type: "string", enum: ["x"] });
  assert.deepEqual(strictSchema({ type: "array", items: { type: "integer" } }), {
    type: "array",
    items: { type: "integer" },
  });
});
