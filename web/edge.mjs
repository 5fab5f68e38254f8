#!/usr/bin/env node
// The compiler outside the browser: the same wasm-bindgen build the page loads (web/dist/pkg),
// run by node, compiling a .qvm source into the unsigned program package that
// `quorumvm compile` writes, byte for byte.
//
//   node web/edge.mjs packages/square.qvm -o square.wasm [--json]
//
// Build web/dist first with web/build.sh.

import { readFileSync, writeFileSync } from "node:fs";
import { basename, extname } from "node:path";
import { parseArgs } from "node:util";
import { initSync, compile, package_bytes } from "./dist/pkg/quorumvm_web.js";

const usage = "usage: node web/edge.mjs <source.qvm> -o <package.wasm> [--json]";
let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: { output: { type: "string", short: "o" }, json: { type: "boolean" } },
  });
} catch (e) {
  console.error(`${e.message}\n${usage}`);
  process.exit(2);
}
const [source] = args.positionals;
const output = args.values.output;
if (args.positionals.length !== 1 || !output) {
  console.error(usage);
  process.exit(2);
}

initSync({ module: readFileSync(new URL("./dist/pkg/quorumvm_web_bg.wasm", import.meta.url)) });

// The program's name when the source has no `program` line: the file stem, as the CLI derives it.
const stem = [...basename(source, extname(source))]
  .map((c) => (/[A-Za-z0-9]/.test(c) ? c : "_"))
  .join("");
const defaultName = /^[A-Za-z_][A-Za-z0-9_]*$/.test(stem) ? stem : "program";

const src = readFileSync(source, "utf8");
const t0 = performance.now();
const outcome = JSON.parse(compile(src, defaultName));
const ms = performance.now() - t0;
if (outcome.status === "error") {
  console.error(`${source}: error at line ${outcome.line}, column ${outcome.col}: ${outcome.message}\n${outcome.excerpt}`);
  process.exit(1);
}
const bytes = package_bytes(src, defaultName);
writeFileSync(output, bytes);

const s = outcome.stats;
if (args.values.json) {
  console.log(JSON.stringify({
    name: outcome.name, version: outcome.version, output, bytes: bytes.length,
    nodes_built: s.nodes_built, gates: s.gates, multiplications: s.multiplications, depth: s.depth,
    inputs: outcome.inputs.length, secrets: outcome.secrets.length, compile_ms: ms,
  }));
} else {
  console.log(`compiled ${outcome.name} v${outcome.version}: ${s.gates} gates (${s.nodes_built} before pruning), ` +
    `${s.multiplications} multiplications, depth ${s.depth}, ${outcome.inputs.length} inputs, ` +
    `${outcome.secrets.length} secrets in ${ms.toFixed(2)} ms -> ${output} (${bytes.length} bytes, unsigned)`);
}
