// The playground: compiles on each keystroke with the wasm build of the compiler, draws the
// circuit, evaluates it in the clear and downloads the unsigned package.

import init, { compile, evaluate, package_bytes } from "./pkg/quorumvm_web.js";
import examples from "./examples.js";
import { drawCircuit, KIND_COLOURS } from "./circuit.js";

const DEBOUNCE_MS = 150;
const $ = (id) => document.getElementById(id);

const ui = {
  example: $("example"), source: $("source"), gutter: $("gutter"), lineMark: $("line-mark"),
  status: $("status"), error: $("error"), title: $("program-title"), download: $("download"),
  graph: $("graph"), legend: $("legend"), side: document.querySelector(".side"),
  inputs: $("input-fields"), secrets: $("secret-fields"), form: $("values"), result: $("result"),
};

const state = {
  // Names a program without a `program` line, as the CLI does with the file stem.
  defaultName: "program",
  program: null,
  // What the user typed per field, kept across recompiles: `input:x` → "3".
  values: new Map(),
};

// The first `# example: x=3 --secret k=2 => y=100` line of the source, as field values.
function exampleValues(src) {
  const line = src.split("\n").find((l) => /^#\s*example:/.test(l));
  const values = new Map();
  if (!line) return values;
  let kind = "input";
  for (const token of line.replace(/^#\s*example:/, "").split("=>")[0].trim().split(/\s+/)) {
    if (token === "--secret") { kind = "secret"; continue; }
    const [name, value] = token.split("=");
    if (value !== undefined) values.set(`${kind}:${name}`, value);
  }
  return values;
}

function renderGutter(errorLine) {
  const lines = ui.source.value.split("\n").length;
  if (ui.gutter.childElementCount !== lines) {
    ui.gutter.replaceChildren(...Array.from({ length: lines }, (_, i) => {
      const div = document.createElement("div");
      div.textContent = i + 1;
      return div;
    }));
  }
  [...ui.gutter.children].forEach((div, i) => div.classList.toggle("bad", i + 1 === errorLine));
  ui.lineMark.hidden = !errorLine;
  ui.lineMark.dataset.line = errorLine || "";
  syncScroll();
}

function syncScroll() {
  ui.gutter.scrollTop = ui.source.scrollTop;
  const line = Number(ui.lineMark.dataset.line);
  if (line) {
    const lh = parseFloat(getComputedStyle(ui.source).lineHeight);
    const pad = parseFloat(getComputedStyle(ui.source).paddingTop);
    ui.lineMark.style.top = `${pad + (line - 1) * lh - ui.source.scrollTop}px`;
  }
}

function field(kind, decl) {
  const key = `${kind}:${decl.name}`;
  const label = document.createElement("label");
  const name = document.createElement("span");
  name.textContent = decl.name;
  const input = document.createElement("input");
  input.name = key;
  input.inputMode = "decimal";
  input.placeholder = `${decl.min} … ${decl.max}`;
  input.title = `scale ${decl.scale}, range ${decl.min}..${decl.max}`;
  input.value = state.values.get(key) ?? "";
  label.append(name, input);
  return label;
}

/** Visible and private inputs alike: evaluating in the clear here, the page needs them all. */
const allInputs = (p) => [...p.inputs, ...p.private_inputs];

function renderForm(program, src) {
  // Values typed so far win; new fields take the source's example values.
  for (const [key, value] of exampleValues(src)) {
    if (!state.values.has(key)) state.values.set(key, value);
  }
  const shape = (p) => JSON.stringify([allInputs(p).map((d) => d.name), p.secrets.map((d) => d.name)]);
  if (ui.form.dataset.shape === shape(program)) return;
  ui.form.dataset.shape = shape(program);
  ui.inputs.replaceChildren(...allInputs(program).map((d) => field("input", d)));
  ui.secrets.replaceChildren(...program.secrets.map((d) => field("secret", d)));
  ui.secrets.closest("fieldset").hidden = program.secrets.length === 0;
}

function runEvaluate() {
  const program = state.program;
  if (!program) return;
  const entries = (kind, decls) => decls.map((d) => [d.name, state.values.get(`${kind}:${d.name}`) ?? ""]);
  const inputs = entries("input", allInputs(program));
  const secrets = entries("secret", program.secrets);
  const missing = [...inputs, ...secrets].filter(([, v]) => v.trim() === "").map(([n]) => n);
  ui.result.className = "result";
  if (missing.length) {
    ui.result.textContent = `Enter ${missing.join(", ")} to evaluate.`;
    return;
  }
  try {
    const outputs = JSON.parse(evaluate(ui.source.value, state.defaultName,
      JSON.stringify(inputs), JSON.stringify(secrets)));
    const table = document.createElement("table");
    for (const [name, value] of outputs) {
      const tr = table.insertRow();
      tr.dataset.output = name;
      tr.insertCell().textContent = name;
      const cell = tr.insertCell();
      cell.className = "value";
      cell.textContent = value;
    }
    ui.result.replaceChildren(table);
  } catch (e) {
    ui.result.className = "result failed";
    ui.result.textContent = e.message;
  }
}

function renderProgram(program) {
  ui.title.textContent = `${program.name} v${program.version}`;
  $("stat-gates").textContent = program.stats.gates;
  $("stat-muls").textContent = program.stats.multiplications;
  $("stat-depth").textContent = program.stats.depth;
  $("stat-inputs").textContent = allInputs(program).length;
  $("stat-secrets").textContent = program.secrets.length;
  ui.graph.replaceChildren(drawCircuit(program));
  ui.legend.replaceChildren(...program.counts.map(([kind, n]) => {
    const li = document.createElement("li");
    li.classList.toggle("absent", n === 0);
    const swatch = document.createElement("i");
    swatch.style.background = KIND_COLOURS[kind];
    li.append(swatch, `${kind} ${n}`);
    return li;
  }));
  ui.download.textContent = `Download ${program.name}.wasm`;
}

function runCompile() {
  const src = ui.source.value;
  const t0 = performance.now();
  const outcome = JSON.parse(compile(src, state.defaultName));
  const ms = performance.now() - t0;
  delete ui.status.dataset.pending;
  ui.status.dataset.ms = ms.toFixed(3);
  ui.status.dataset.outcome = outcome.status;
  const took = `${ms < 1 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
  if (outcome.status === "error") {
    state.program = null;
    ui.status.className = "status failed";
    ui.status.textContent = `✗ error at line ${outcome.line}, column ${outcome.col} · ${took}`;
    ui.error.hidden = false;
    ui.error.dataset.line = outcome.line;
    ui.error.dataset.col = outcome.col;
    ui.error.textContent = `error at line ${outcome.line}, column ${outcome.col}: ${outcome.message}\n${outcome.excerpt}`;
    ui.side.classList.add("stale");
    ui.download.disabled = true;
    renderGutter(outcome.line);
    return;
  }
  state.program = outcome;
  ui.status.className = "status ok";
  ui.status.textContent = `✓ compiled in ${took} · ${outcome.stats.nodes_built} nodes built, ` +
    `${outcome.stats.gates} gates after folding, CSE and pruning`;
  ui.error.hidden = true;
  ui.side.classList.remove("stale");
  ui.download.disabled = false;
  renderGutter(0);
  renderProgram(outcome);
  renderForm(outcome, src);
  runEvaluate();
}

function loadExample(stem) {
  const example = examples.find((e) => e.stem === stem);
  state.defaultName = example.stem;
  state.values = new Map();
  ui.source.value = example.source;
  ui.source.scrollTop = 0;
  delete ui.form.dataset.shape;
  runCompile();
}

function download() {
  const program = state.program;
  const bytes = package_bytes(ui.source.value, state.defaultName);
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/wasm" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${program.name}.wasm`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  ui.download.title = `${bytes.length} bytes, unsigned`;
}

let timer;
ui.source.addEventListener("input", () => {
  renderGutter(Number(ui.lineMark.dataset.line) || 0);
  ui.status.dataset.pending = "true";
  clearTimeout(timer);
  timer = setTimeout(runCompile, DEBOUNCE_MS);
});
ui.source.addEventListener("scroll", syncScroll);
ui.example.addEventListener("change", () => loadExample(ui.example.value));
ui.form.addEventListener("input", (e) => {
  state.values.set(e.target.name, e.target.value);
  runEvaluate();
});
ui.form.addEventListener("submit", (e) => e.preventDefault());
ui.download.addEventListener("click", download);

await init();
ui.example.replaceChildren(...examples.map((e) => new Option(e.file, e.stem)));
ui.example.value = examples.some((e) => e.stem === "square") ? "square" : examples[0].stem;
loadExample(ui.example.value);
document.body.dataset.ready = "true";
