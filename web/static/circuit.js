// Draws a compiled circuit as SVG: one band per multiplicative depth (band k > 0 is
// communication round k), and inside a band, columns by the longest chain of local gates, so
// every wire runs left to right. Gates are coloured by kind; outputs get their own column.

export const KIND_COLOURS = {
  input: "#2563eb",
  private: "#4f46e5",
  secret: "#b45309",
  const: "#64748b",
  add: "#059669",
  sub: "#0d9488",
  neg: "#7c3aed",
  scale: "#0891b2",
  mul: "#dc2626",
  dot: "#db2777",
};

// Past this many gates the drawing stops being readable; the counts still tell the story.
const MAX_DRAWN = 400;
const NODE_W = 96;
const NODE_H = 28;
const ROW_GAP = 10;
const COL_GAP = 44;
const BAND_PAD = 14;
const TOP = 40;

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function symbol(gate) {
  switch (gate.kind) {
    case "add": return "+";
    case "sub": return "−";
    case "neg": return "−x";
    case "mul": return "×";
    case "dot": return `Σ ${gate.args.length / 2} terms`;
    default: return gate.label;
  }
}

function clip(text, max = 12) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

// Column of each gate: bands by depth, then the local level inside the band.
function columns(gates) {
  const level = gates.map(() => 0);
  gates.forEach((g, i) => {
    for (const a of g.args) {
      if (gates[a].depth === g.depth) level[i] = Math.max(level[i], level[a] + 1);
    }
  });
  const depth = gates.reduce((m, g) => Math.max(m, g.depth), 0);
  const width = Array(depth + 1).fill(0);
  gates.forEach((g, i) => { width[g.depth] = Math.max(width[g.depth], level[i] + 1); });
  const first = [];
  let next = 0;
  for (const w of width) { first.push(next); next += w; }
  return { column: gates.map((g, i) => first[g.depth] + level[i]), first, width, count: next };
}

export function drawCircuit(program) {
  const gates = program.gates;
  if (gates.length > MAX_DRAWN) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = `${gates.length} gates: too many to draw legibly.`;
    return p;
  }
  const { column, first, width, count } = columns(gates);
  // Outputs are pseudo-nodes in a last column of their own.
  const outCol = count;
  const byCol = Array.from({ length: count + 1 }, () => []);
  gates.forEach((g, i) => byCol[column[i]].push(i));
  program.output_wires.forEach((w, k) => byCol[outCol].push(`out${k}`));

  // Rows: the first column in gate order, later ones by the mean row of what they read.
  const row = new Map();
  const readsOf = (id) => typeof id === "string"
    ? [program.output_wires[Number(id.slice(3))]]
    : gates[id].args;
  byCol.forEach((ids) => {
    const key = (id) => {
      const reads = readsOf(id).filter((a) => row.has(a));
      return reads.length ? reads.reduce((s, a) => s + row.get(a), 0) / reads.length : -1;
    };
    ids.sort((a, b) => key(a) - key(b) || (typeof a === "number" ? a : 0) - (typeof b === "number" ? b : 0));
    ids.forEach((id, r) => row.set(id, r));
  });
  const rows = Math.max(...byCol.map((ids) => ids.length));

  const bandOf = (col) => (col >= count ? width.length : first.findLastIndex((f) => f <= col));
  const colX = (col) => BAND_PAD + col * (NODE_W + COL_GAP) + bandOf(col) * 2 * BAND_PAD;
  const pos = (id) => {
    const col = typeof id === "string" ? outCol : column[id];
    const n = byCol[col].length;
    const offset = ((rows - n) * (NODE_H + ROW_GAP)) / 2;
    return { x: colX(col), y: TOP + offset + row.get(id) * (NODE_H + ROW_GAP) };
  };
  const W = colX(outCol) + NODE_W + BAND_PAD;
  const H = TOP + rows * (NODE_H + ROW_GAP) + BAND_PAD;

  const svg = el("svg", {
    viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `Circuit of ${gates.length} gates, depth ${program.stats.depth}`,
  });

  // Bands.
  width.forEach((w, d) => {
    if (w === 0) return;
    const x0 = colX(first[d]) - BAND_PAD;
    const x1 = colX(first[d] + w - 1) + NODE_W + BAND_PAD;
    svg.append(el("rect", { x: x0, y: 4, width: x1 - x0, height: H - 8, rx: 8, class: `band band-${d % 2}` }));
    svg.append(el("text", { x: x0 + 10, y: 24, class: "band-label" },
      d === 0 ? "depth 0 · local" : `depth ${d} · round ${d}`));
  });

  // Wires, under the gates.
  const wire = (from, to, kind) => {
    const a = pos(from);
    const b = pos(to);
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const y2 = b.y + NODE_H / 2;
    const mid = (x1 + b.x) / 2;
    svg.append(el("path", {
      d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${b.x},${y2}`,
      class: `wire${kind === "mul" || kind === "dot" ? " wire-round" : ""}`,
    }));
  };
  gates.forEach((g, i) => new Set(g.args).forEach((a) => wire(a, i, g.kind)));
  program.output_wires.forEach((w, k) => wire(w, `out${k}`, "output"));

  // Gates.
  gates.forEach((g, i) => {
    const { x, y } = pos(i);
    const group = el("g", { class: `gate gate-${g.kind}`, "data-kind": g.kind });
    group.append(el("title", {},
      `#${i} ${g.kind}${g.label ? " " + g.label : ""}${g.args.length ? " (" + g.args.map((a) => "#" + a).join(", ") + ")" : ""} · depth ${g.depth}`));
    group.append(el("rect", { x, y, width: NODE_W, height: NODE_H, rx: 6, fill: KIND_COLOURS[g.kind] }));
    group.append(el("text", { x: x + NODE_W / 2, y: y + NODE_H / 2 + 4.5, "text-anchor": "middle" }, clip(symbol(g))));
    svg.append(group);
  });
  program.outputs.forEach((o, k) => {
    const { x, y } = pos(`out${k}`);
    const group = el("g", { class: "gate gate-output" });
    group.append(el("title", {}, `output ${o.name} = #${program.output_wires[k]}, scale ${o.scale}`));
    group.append(el("rect", { x, y, width: NODE_W, height: NODE_H, rx: NODE_H / 2 }));
    group.append(el("text", { x: x + NODE_W / 2, y: y + NODE_H / 2 + 4.5, "text-anchor": "middle" }, clip(o.name)));
    svg.append(group);
  });
  return svg;
}
