// Shared by the tests: paths, the `quorumvm` binary, and the `quorumvm web` server.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const DIST = join(ROOT, "web/dist");
export const QUORUMVM = process.env.QUORUMVM_BIN || join(ROOT, "target/debug/quorumvm");
export const ARTIFACTS = join(ROOT, "target/web-artifacts");

export function tempDir() {
  return mkdtempSync(join(tmpdir(), "quorumvm-web-"));
}

/** The example programs of packages/, with their sources. */
export function examples() {
  return readdirSync(join(ROOT, "packages"))
    .filter((f) => f.endsWith(".qvm"))
    .sort()
    .map((file) => {
      const path = join(ROOT, "packages", file);
      return { file, stem: file.slice(0, -4), path, source: readFileSync(path, "utf8") };
    });
}

export function requireBuilt() {
  if (!existsSync(join(DIST, "pkg/quorumvm_web_bg.wasm"))) {
    throw new Error("web/dist is not built: run web/build.sh first");
  }
}

/** Runs a command to completion; throws with its output if it fails. */
export function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: "utf8" });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited with ${r.status}:\n${r.stdout}${r.stderr}`);
  }
  return r.stdout;
}

/** The package `quorumvm compile` writes for `source`. */
export function cliPackage(source, dir) {
  const out = join(dir, `cli-${Date.now()}-${Math.random().toString(36).slice(2)}.wasm`);
  run(QUORUMVM, ["compile", source, "-o", out]);
  return readFileSync(out);
}

/**
 * Starts `quorumvm web` on a port the OS picks and resolves to `{ url, stop }` once its first
 * stdout line, `serving <dir> on http://<ip>:<port>/`, names the address.
 */
export function startWebServer() {
  const child = spawn(QUORUMVM, ["web", "--addr", "127.0.0.1:0", "--dir", DIST], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "inherit"],
    // Its own process group, so stopping it also stops anything it started (QUORUMVM_BIN may
    // be a wrapper script).
    detached: true,
  });
  const stop = () => {
    try { process.kill(-child.pid); } catch { /* already gone */ }
  };
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`quorumvm web exited early (${code})`)));
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      const m = /^serving (.+) on (http:\/\/127\.0\.0\.1:\d+\/)$/.exec(line);
      if (m) resolve({ url: m[2], stop });
      else {
        stop();
        reject(new Error(`unexpected first line from quorumvm web: ${JSON.stringify(line)}`));
      }
    });
  });
}
