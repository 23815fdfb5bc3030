// Validates medflow's AsyncAPI document, then real Kafka messages against it.
//
//   node validate.mjs DOCUMENT.json [SAMPLES.json]
//
// DOCUMENT: the AsyncAPI 3.0 document (GET /api/v1/asyncapi.json). It must parse with
// @asyncapi/parser without an error-level diagnostic (its Spectral rules included).
// SAMPLES: [{topic, key, headers: {name: value}, value: <JSON or null>}] as consumed. Each
// must match one of the messages its channel lists: the payload against the message's
// payload schema, the headers against its headers schema (ajv, draft-07, formats checked).
// Prints one line per failure and a summary; exits 1 on any failure.

import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const [documentPath, samplesPath] = process.argv.slice(2);
if (!documentPath) {
  console.error("usage: node validate.mjs DOCUMENT.json [SAMPLES.json]");
  process.exit(2);
}
const text = readFileSync(documentPath, "utf8");
const raw = JSON.parse(text);

const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = ["error", "warning", "info", "hint"][d.severity] ?? d.severity;
  console.log(`${level}: ${d.code}: ${d.message} at /${d.path.join("/")}`);
}
if (!document || errors.length > 0) {
  console.error(`the AsyncAPI document is invalid: ${errors.length} error(s)`);
  process.exit(1);
}
console.log(
  `AsyncAPI ${document.version()}: ${document.channels().length} channels, ` +
    `${document.operations().length} operations, ${document.components().messages().length} messages`,
);
if (!samplesPath) process.exit(0);

// The raw document as one schema, so `#/components/schemas/…` references resolve (without
// AsyncAPI's own `id`, which JSON Schema drafts read as a schema id).
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
const { id: _documentId, ...schemaRoot } = raw;
ajv.addSchema(schemaRoot, "urn:medflow:asyncapi");

const resolve = (node) => {
  let current = node;
  while (current && current.$ref) {
    const pointer = current.$ref.replace(/^#/, "");
    current = pointer
      .split("/")
      .slice(1)
      .map((segment) => segment.replace(/~1/g, "/").replace(/~0/g, "~"))
      .reduce((object, key) => object?.[key], raw);
  }
  return current;
};
const validatorFor = (schema) => {
  if (!schema) return () => true;
  if (schema.$ref) return ajv.compile({ $ref: `urn:medflow:asyncapi${schema.$ref}` });
  return ajv.compile({ ...schema, $id: undefined });
};

const channels = Object.values(raw.channels);
const samples = JSON.parse(readFileSync(samplesPath, "utf8"));
const matched = {};
let failures = 0;
for (const sample of samples) {
  const channel = channels.find((c) => c.address === sample.topic);
  if (!channel) {
    console.log(`FAIL ${sample.topic}: no channel with this address`);
    failures += 1;
    continue;
  }
  const reasons = [];
  let name = null;
  for (const [key, reference] of Object.entries(channel.messages)) {
    const message = resolve(reference);
    const payloadOk = validatorFor(message.payload);
    const headersOk = validatorFor(message.headers);
    const okPayload = payloadOk(sample.value);
    const okHeaders = headersOk(sample.headers ?? {});
    if (okPayload && okHeaders) {
      name = message.name ?? key;
      break;
    }
    reasons.push(
      `${key}: ${ajv.errorsText(okPayload ? headersOk.errors : payloadOk.errors)}`,
    );
  }
  if (name) {
    matched[name] = (matched[name] ?? 0) + 1;
  } else {
    failures += 1;
    console.log(
      `FAIL ${sample.topic} key=${sample.key}: ${reasons.join(" | ")}\n  value: ${JSON.stringify(sample.value)}`,
    );
  }
}
console.log(`matched: ${JSON.stringify(matched)}`);
console.log(`${samples.length} samples, ${failures} failures`);
process.exit(failures > 0 ? 1 : 0);
