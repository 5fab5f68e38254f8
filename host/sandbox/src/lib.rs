//! The wasmtime host side of QuorumVM's WebAssembly components.
//!
//! One [`wasmtime::Engine`] per process; every component runs in stores of its own, with a
//! memory cap and a fuel budget, so a hostile or buggy component can exhaust only itself.

pub mod engine;
pub mod evaluator;
pub mod package;

pub use engine::{EngineKind, Limits, Sandbox, SandboxConfig};
pub use evaluator::{EvaluatorPlugin, PluginError, PluginSession, PluginSlot};
pub use package::{SandboxError, package_limits};
