//! The process-wide engine and the limits every store gets.

use wasmtime::{Config, Engine, Strategy};

/// The process's wasmtime engine, configured for metered, isolated execution.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
}

impl Sandbox {
    /// An engine compiling with Cranelift, with fuel metering on (fuel is the deterministic
    /// bound on how much work a call may do).
    pub fn new() -> anyhow::Result<Sandbox> {
        let mut config = Config::new();
        config.strategy(Strategy::Cranelift);
        config.consume_fuel(true);
        Ok(Sandbox {
            engine: Engine::new(&config)?,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
