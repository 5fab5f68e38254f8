//! The guest components, built once by this crate's build script (the shape of wasmtime's
//! `test-programs/artifacts`): tests and hosts use these bytes and never run cargo themselves.

/// The custodian evaluator plugin component (`wit/evaluator.wit`, world `evaluator-plugin`).
pub const EVALUATOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evaluator.wasm"));
