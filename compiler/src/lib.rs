//! The QuorumVM compiler: DSL source → IR (folded, CSE'd, pruned, depth-annotated) → a signed-
//! ready program package component.
//!
//! Pure: no files, network or clock, so it builds for `wasm32-unknown-unknown` and runs in the
//! browser demo unchanged.

pub mod compile;
pub mod error;
pub mod ir;
pub mod package;
pub mod syntax;

pub use compile::{Program, Stats, compile, gate_counts};
pub use error::{CompileError, Span};

/// Compiles source straight to unsigned package bytes.
pub fn compile_to_package(src: &str, default_name: &str) -> Result<(Program, Vec<u8>), String> {
    let program = compile(src, default_name).map_err(|e| e.to_string())?;
    let bytes = package::encode(&program.manifest, &program.circuit).map_err(|e| e.to_string())?;
    Ok((program, bytes))
}
