//! The QuorumVM compiler for JavaScript: wasm-bindgen exports over `quorumvm-compiler`, used by
//! the browser page (`web/static/app.js`) and the node CLI (`web/edge.mjs`).
//!
//! wasm-bindgen rather than a jco-transpiled component: the compiler is a plain library, so three
//! functions with strings and bytes are the whole interface, and the generated ES module loads in
//! a browser and in node alike with no runtime to ship.
//!
//! Structured results cross the boundary as JSON text: one `JSON.parse` in JS, no per-field glue,
//! and 128-bit numbers (ranges, constants) travel as decimal strings that JS cannot round.

use quorumvm_compiler::{CompileError, Program, Stats, compile_to_package, gate_counts};
use quorumvm_core::circuit::{Gate, Policy, ValueDecl};
use quorumvm_core::eval::{decode_outputs, encode_inputs, encode_values, eval_plain};
use quorumvm_core::fixed::Decimal;
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// What [`compile`] answers: `{"status": "ok", ...}` or `{"status": "error", ...}`. A compile
/// error is an expected outcome while someone types, so it is a value, not an exception.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Outcome<'p> {
    Ok(View<'p>),
    Error(ErrorView),
}

/// A compiled program as the page shows it.
#[derive(Serialize)]
struct View<'p> {
    name: &'p str,
    version: u32,
    policy: &'p Policy,
    inputs: Vec<DeclView<'p>>,
    private_inputs: Vec<DeclView<'p>>,
    secrets: Vec<DeclView<'p>>,
    outputs: Vec<DeclView<'p>>,
    /// The wire of each output, in `outputs` order.
    output_wires: &'p [u32],
    stats: &'p Stats,
    /// Gates per kind, as `[kind, count]` pairs in a fixed order (for the legend).
    counts: Vec<(&'static str, usize)>,
    gates: Vec<GateView>,
}

/// A declared value with its range decoded to decimals (`0.00`..`2500.00`).
#[derive(Serialize)]
struct DeclView<'p> {
    name: &'p str,
    scale: u8,
    min: String,
    max: String,
}

/// One gate for drawing: its kind, the wires it reads, a short label and its multiplicative
/// depth (the column it is drawn in).
#[derive(Serialize)]
struct GateView {
    kind: &'static str,
    args: Vec<u32>,
    label: String,
    depth: u32,
}

#[derive(Serialize)]
struct ErrorView {
    line: usize,
    col: usize,
    len: usize,
    message: String,
    excerpt: String,
}

fn decl_view(d: &ValueDecl) -> DeclView<'_> {
    let at = |raw| {
        Decimal {
            raw,
            scale: d.scale,
        }
        .to_string()
    };
    DeclView {
        name: &d.name,
        scale: d.scale,
        min: at(d.min),
        max: at(d.max),
    }
}

fn view(p: &Program) -> View<'_> {
    let m = &p.manifest;
    let gates = p
        .circuit
        .gates
        .iter()
        .zip(p.circuit.depths())
        .map(|(g, depth)| GateView {
            kind: g.kind(),
            args: g.operands(),
            label: match g {
                Gate::Input(k) => m.inputs[*k as usize].name.clone(),
                Gate::PrivateInput(k) => m.private_inputs[*k as usize].name.clone(),
                Gate::Secret(k) => m.secrets[*k as usize].name.clone(),
                Gate::Const(c) => c.to_string(),
                Gate::Scale(_, k) => format!("×{k}"),
                _ => String::new(),
            },
            depth,
        })
        .collect();
    View {
        name: &m.name,
        version: m.version,
        policy: &m.policy,
        inputs: m.inputs.iter().map(decl_view).collect(),
        private_inputs: m.private_inputs.iter().map(decl_view).collect(),
        secrets: m.secrets.iter().map(decl_view).collect(),
        outputs: m.outputs.iter().map(decl_view).collect(),
        output_wires: &p.circuit.outputs,
        stats: &p.stats,
        counts: gate_counts(&p.circuit),
        gates,
    }
}

fn error_view(e: &CompileError) -> ErrorView {
    ErrorView {
        line: e.span.line,
        col: e.span.col,
        len: e.span.len,
        message: e.message.clone(),
        excerpt: e.excerpt(),
    }
}

/// Compiles `src` and answers JSON: the manifest, the optimizer's figures, the gate counts and
/// the gate list with per-gate depth; or the error with its line, column and caret excerpt.
/// `default_name` names a program without a `program` line, as the CLI does with the file stem.
#[wasm_bindgen]
pub fn compile(src: &str, default_name: &str) -> String {
    let compiled = quorumvm_compiler::compile(src, default_name);
    let outcome = match &compiled {
        Ok(p) => Outcome::Ok(view(p)),
        Err(e) => Outcome::Error(error_view(e)),
    };
    serde_json::to_string(&outcome).expect("the views serialize")
}

/// Evaluates `src` in the clear on named decimal values, `[["x", "3"], ...]` as JSON for the
/// inputs and for the secrets, and answers `[["y", "100"], ...]`: each output decoded exactly
/// as `quorumvm eval-plain` prints it. Throws on a compile error or a refused value.
#[wasm_bindgen]
pub fn evaluate(
    src: &str,
    default_name: &str,
    inputs_json: &str,
    secrets_json: &str,
) -> Result<String, JsError> {
    let p = quorumvm_compiler::compile(src, default_name)?;
    let named = |json: &str| serde_json::from_str::<Vec<(String, String)>>(json);
    let inputs = encode_inputs(&p.manifest, &named(inputs_json)?)?;
    let secrets = encode_values("secret", &p.manifest.secrets, &named(secrets_json)?)?;
    let values = eval_plain(&p.circuit, &inputs.visible, &inputs.private, &secrets);
    let decoded: Vec<(String, String)> = decode_outputs(&p.manifest, &values)
        .into_iter()
        .map(|(name, d)| (name, d.to_string()))
        .collect();
    Ok(serde_json::to_string(&decoded)?)
}

/// The unsigned program package for `src`: the very bytes `quorumvm compile` writes. (Not
/// named `package`: that is a reserved word in JS modules.)
#[wasm_bindgen]
pub fn package_bytes(src: &str, default_name: &str) -> Result<Vec<u8>, JsError> {
    compile_to_package(src, default_name)
        .map(|(_, bytes)| bytes)
        .map_err(|e| JsError::new(&e))
}
