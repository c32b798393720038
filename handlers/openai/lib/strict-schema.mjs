// The client's JSON schema, made acceptable to the Responses API's strict
// structured outputs: every object is closed (`additionalProperties: false`)
// and lists all its properties as `required`, at every depth (properties,
// array items, tuples, combinators, definitions). The input is not modified.

const SCHEMA_MAPS = ["properties", "$defs", "definitions", "patternProperties"];
const SCHEMA_LISTS = ["anyOf", "oneOf", "allOf", "prefixItems"];
const SCHEMA_VALUES = ["items", "not", "if", "then", "else", "additionalItems", "contains"];

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function mapValues(object, fn) {
  return Object.fromEntries(Object.entries(object).map(([key, value]) => [key, fn(value)]));
}

/** Whether `schema` describes objects (by `type`, or by having properties). */
function describesObjects(schema) {
  const type = schema.type;
  return type === "object" || (Array.isArray(type) && type.includes("object")) || isObject(schema.properties);
}

/** A strict copy of `schema`. */
export function strictSchema(schema) {
  if (Array.isArray(schema)) return schema.map(strictSchema);
  if (!isObject(schema)) return schema;
  const out = { ...schema };
  for (const key of SCHEMA_MAPS) {
    if (isObject(out[key])) out[key] = mapValues(out[key], strictSchema);
  }
  for (const key of SCHEMA_LISTS) {
    if (Array.isArray(out[key])) out[key] = out[key].map(strictSchema);
  }
  for (const key of SCHEMA_VALUES) {
    if (isObject(out[key]) || Array.isArray(out[key])) out[key] = strictSchema(out[key]);
  }
  if (describesObjects(out)) {
    out.properties = out.properties ?? {};
    out.required = Object.keys(out.properties);
    out.additionalProperties = false;
  }
  return out;
}
