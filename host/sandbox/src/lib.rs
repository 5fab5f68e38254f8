//! The wasmtime host side of QuorumVM's WebAssembly components.
//!
//! One [`wasmtime::Engine`] per process; every component runs in stores of its own, with a
//! memory cap and a fuel budget, so a hostile or buggy component can exhaust only itself.

pub mod engine;
pub mod package;

pub use engine::Sandbox;
pub use package::{PackageLimits, SandboxError};
