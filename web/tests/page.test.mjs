// End to end in headless Chromium: the page served by `quorumvm web` compiles as you type,
// evaluates, reports errors where they are, and downloads the CLI's exact package bytes.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import { ARTIFACTS, cliPackage, examples, requireBuilt, startWebServer, tempDir } from "./support.mjs";

const SQUARE = "program square\ninput x\nadd t = x 7\nmul y = t t\noutput y";
const BROKEN = "mul z = y q"; // `q` is undefined

describe("the compiler page", () => {
  let server, context, page, dir;

  before(async () => {
    requireBuilt();
    dir = tempDir();
    server = await startWebServer();
    context = await chromium.launchPersistentContext(join(dir, "profile"), {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      args: [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
      viewport: { width: 1400, height: 1000 },
      acceptDownloads: true,
    });
    page = context.pages()[0] ?? (await context.newPage());
    // The page must need nothing but its own server.
    await page.route((url) => !url.href.startsWith(server.url), (route) => route.abort());
    page.on("pageerror", (e) => { throw e; });
    await page.goto(server.url);
    await page.locator("body[data-ready=true]").waitFor();
  });

  after(async () => {
    await context?.close();
    server?.stop();
  });

  const stat = (name) => page.locator(`#stat-${name}`);
  // Typing compiles after a debounce; this waits until the text on screen is compiled.
  const compiled = (outcome) => page.locator(`#status:not([data-pending])[data-outcome="${outcome}"]`).waitFor();

  async function download() {
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    return { name: dl.suggestedFilename(), bytes: readFileSync(await dl.path()) };
  }

  it("offers every example of packages/", async () => {
    const offered = await page.locator("#example option").allTextContents();
    assert.deepEqual(offered, examples().map((e) => e.file));
  });

  it("compiles the largest example, with its figures and its example result", async () => {
    const largest = examples().reduce((a, b) => (b.source.length > a.source.length ? b : a));
    const times = [];
    for (let i = 0; i < 5; i++) {
      await page.selectOption("#example", i % 2 ? examples()[0].stem : largest.stem);
      if (i % 2 === 0) times.push(Number(await page.getAttribute("#status", "data-ms")));
    }
    console.log(`compile time of ${largest.file} in Chromium: first ${times[0].toFixed(3)} ms, ` +
      `then ${times.slice(1).map((t) => t.toFixed(3)).join(" ms, ")} ms`);

    assert.equal(await page.getAttribute("#status", "data-outcome"), "ok");
    const declared = (kind) => largest.source.split("\n").filter((l) => l.startsWith(`${kind} `)).length;
    assert.equal(await stat("inputs").textContent(), String(declared("input")));
    assert.equal(await stat("secrets").textContent(), String(declared("secret")));
    // Secret weights times visible features: products with a public factor, local on shares.
    assert.equal(await stat("depth").textContent(), "0");
    const drawn = Number(await stat("gates").textContent()) + declared("output");
    assert.equal(await page.locator("#graph svg .gate").count(), drawn);

    // The `# example:` line's values are filled in; the page must print what the CLI printed.
    const expected = /=>\s*(.+)$/.exec(largest.source.split("\n").find((l) => l.includes("# example:")))[1];
    for (const pair of expected.trim().split(/\s+/)) {
      const [name, value] = pair.split("=");
      assert.equal(await page.locator(`tr[data-output="${name}"] td.value`).textContent(), value);
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "page.png"), fullPage: true });
  });

  it("downloads, for every example, the bytes `quorumvm compile` writes", async () => {
    for (const example of examples()) {
      await page.selectOption("#example", example.stem);
      const title = await page.locator("#program-title").textContent();
      const { name, bytes } = await download();
      assert.equal(name, `${title.split(" ")[0]}.wasm`);
      assert.ok(bytes.equals(cliPackage(example.path, dir)), `${example.file}: the page's package differs`);
    }
  });

  it("compiles (x+7)^2 as it is typed: depth 0 (x is visible), and 100 for x = 3", async () => {
    const editor = page.locator("#source");
    await editor.fill("");
    await editor.pressSequentially(SQUARE);
    await compiled("ok");
    assert.equal(await page.locator("#program-title").textContent(), "square v1");
    assert.equal(await stat("depth").textContent(), "0");
    assert.equal(await stat("muls").textContent(), "0");
    assert.equal(await stat("inputs").textContent(), "1");
    assert.equal(await stat("secrets").textContent(), "0");

    const x = page.locator('input[name="input:x"]');
    const y = page.locator('tr[data-output="y"] td.value');
    await x.fill("-7");
    assert.equal(await y.textContent(), "0");
    // x is declared without a scale: a fraction is refused, not rounded.
    await x.fill("0.5");
    assert.match(await page.locator("#result.failed").textContent(), /input `x`/);
    await x.fill("3");
    assert.equal(await y.textContent(), "100");

    const src = join(dir, "typed.qvm");
    writeFileSync(src, SQUARE + "\n");
    const { name, bytes } = await download();
    assert.equal(name, "square.wasm");
    assert.ok(bytes.equals(cliPackage(src, dir)), "the typed program's package differs from the CLI's");
  });

  it("shows a broken line's error at its line and column, with the caret", async () => {
    const editor = page.locator("#source");
    await editor.press("Control+End");
    await editor.pressSequentially("\n" + BROKEN);
    await compiled("error");

    const line = SQUARE.split("\n").length + 1;
    const col = BROKEN.indexOf("q") + 1;
    assert.equal(await page.getAttribute("#error", "data-line"), String(line));
    assert.equal(await page.getAttribute("#error", "data-col"), String(col));
    const shown = await page.locator("#error").textContent();
    assert.match(shown, new RegExp(`^error at line ${line}, column ${col}: undefined name \`q\``));
    assert.ok(shown.includes(`${line} | ${BROKEN}\n  | ${" ".repeat(col - 1)}^`), shown);
    assert.match(await page.locator("#status").textContent(), new RegExp(`line ${line}, column ${col}`));
    assert.deepEqual(await page.locator("#gutter .bad").allTextContents(), [String(line)]);
    assert.equal(await page.locator("#line-mark").isVisible(), true);
    assert.equal(await page.locator("#download").isDisabled(), true);
    await page.screenshot({ path: join(ARTIFACTS, "page-error.png"), fullPage: true });

    // Fixing the line clears the mark.
    await editor.press("Backspace");
    await editor.pressSequentially("t");
    await compiled("ok");
    assert.equal(await page.locator("#gutter .bad").count(), 0);
    assert.equal(await page.locator("#line-mark").isVisible(), false);
  });
});
