// Validates docs/asyncapi.yaml with the official AsyncAPI parser (and its Spectral rules),
// resolving the payload $refs into schemas/. Exits 1 on any error diagnostic; prints warnings.
// Usage: node docs/validate-asyncapi.mjs [file]
import { fileURLToPath } from "node:url";
import { Parser, fromFile } from "@asyncapi/parser";

const file = process.argv[2] ?? fileURLToPath(new URL("asyncapi.yaml", import.meta.url));
const SEVERITY = ["error", "warning", "info", "hint"];

const { document, diagnostics } = await fromFile(new Parser(), file).parse();
for (const d of diagnostics) {
  const at = d.path?.join(".") || "(document)";
  console.log(`${SEVERITY[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${at}`);
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length > 0) {
  console.error(`${file}: ${errors.length} error(s)`);
  process.exit(1);
}
const operations = document.operations().all().map((o) => o.id());
console.log(`${file}: valid AsyncAPI ${document.version()}, operations: ${operations.join(", ")}`);
