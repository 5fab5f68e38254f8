// The edge CLI: the page's wasm build, run by node, writes the CLI's exact package bytes.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { ROOT, cliPackage, examples, requireBuilt, tempDir } from "./support.mjs";

const EDGE = join(ROOT, "web/edge.mjs");
// A component's preamble: `\0asm`, version 0x0d, layer 1.
const COMPONENT_MAGIC = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);

function edge(...args) {
  return spawnSync(process.execPath, [EDGE, ...args], { cwd: ROOT, encoding: "utf8" });
}

describe("node web/edge.mjs", () => {
  let dir;
  before(() => {
    requireBuilt();
    dir = tempDir();
  });

  for (const example of examples()) {
    it(`compiles ${example.file} to the bytes \`quorumvm compile\` writes`, () => {
      const out = join(dir, `${example.stem}.wasm`);
      const r = edge(example.path, "-o", out, "--json");
      assert.equal(r.status, 0, r.stderr);
      const summary = JSON.parse(r.stdout);
      const bytes = readFileSync(out);
      assert.equal(summary.bytes, bytes.length);
      assert.ok(bytes.subarray(0, 8).equals(COMPONENT_MAGIC), "not a component");
      assert.ok(summary.gates > 0 && summary.depth <= summary.multiplications);
      assert.ok(bytes.equals(cliPackage(example.path, dir)), `${example.file}: edge and CLI differ`);
    });
  }

  it("prints a one-line summary", () => {
    const r = edge("packages/square.qvm", "-o", join(dir, "sq.wasm"));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^compiled square v1: \d+ gates .*0 multiplications, depth 0, 1 inputs, 0 secrets in [\d.]+ ms -> .*sq\.wasm \(\d+ bytes, unsigned\)\n$/);
  });

  it("names a program without a `program` line after its file, as the CLI does", () => {
    const src = join(dir, "no-name.qvm");
    writeFileSync(src, "input x\nmul y = x x\noutput y\n");
    const out = join(dir, "no-name.wasm");
    const r = edge(src, "-o", out, "--json");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).name, "no_name");
    assert.ok(readFileSync(out).equals(cliPackage(src, dir)));
  });

  it("reports a compile error with its line and column, and fails", () => {
    const src = join(dir, "broken.qvm");
    writeFileSync(src, "input x\nmul y = x zz\noutput y\n");
    const r = edge(src, "-o", join(dir, "broken.wasm"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /broken\.qvm: error at line 2, column 11: undefined name `zz`/);
    assert.ok(r.stderr.includes("2 | mul y = x zz\n  |           ^^"), r.stderr);
  });
});
