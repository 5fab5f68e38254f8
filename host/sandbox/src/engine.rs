//! The process-wide engine, how components are compiled (or loaded precompiled), and the
//! wall-clock backstop.
//!
//! Fuel is the deterministic bound on a call's work; an epoch deadline is the wall-clock
//! backstop (a ticker thread advances the epoch every [`EPOCH_TICK`]). Winch has no epoch
//! interruption, so under Winch fuel is the only bound.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Which compiler turns components into code. Every kind must give identical results: a
/// quorum may mix custodians running different engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Optimizing compiler: the default.
    Cranelift,
    /// Baseline compiler: fast to compile, slower code, no epoch interruption.
    Winch,
    /// Portable interpreter of Pulley bytecode (compiled by Cranelift).
    Pulley,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineKind, String> {
        match s {
            "cranelift" => Ok(EngineKind::Cranelift),
            "winch" => Ok(EngineKind::Winch),
            "pulley" => Ok(EngineKind::Pulley),
            _ => Err(format!("unknown engine `{s}` (cranelift, winch or pulley)")),
        }
    }
}

impl EngineKind {
    pub fn has_epochs(self) -> bool {
        !matches!(self, EngineKind::Winch)
    }
}

/// How a sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub engine: EngineKind,
    /// Where precompiled components are kept, keyed by the component's SHA-256 and the
    /// engine's compatibility hash; `None` compiles in memory every time a component loads.
    pub cache_dir: Option<PathBuf>,
    /// Instance slots of the pooling allocator: the most sessions alive at once.
    pub max_instances: u32,
    /// The largest linear memory any instance may have.
    pub max_memory_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            engine: EngineKind::Cranelift,
            cache_dir: None,
            max_instances: 128,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// The process's wasmtime engine, configured for metered, isolated execution.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    config: SandboxConfig,
}

impl Sandbox {
    /// A Cranelift sandbox with default limits and no disk cache.
    pub fn new() -> wasmtime::Result<Sandbox> {
        Sandbox::with_config(SandboxConfig::default())
    }

    pub fn with_config(config: SandboxConfig) -> wasmtime::Result<Sandbox> {
        let mut c = Config::new();
        c.consume_fuel(true);
        match config.engine {
            EngineKind::Cranelift => {
                c.strategy(Strategy::Cranelift);
            }
            EngineKind::Winch => {
                c.strategy(Strategy::Winch);
            }
            EngineKind::Pulley => {
                c.strategy(Strategy::Cranelift);
                c.target("pulley64")?;
            }
        }
        c.epoch_interruption(config.engine.has_epochs());
        // Every instance is carved from pre-reserved slots: instantiation is a few
        // microseconds, and the slot count bounds how many sessions can exist at once.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 2)
            .max_memory_size(config.max_memory_bytes);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c)?;
        if config.engine.has_epochs() {
            spawn_ticker(&engine);
        }
        Ok(Sandbox { engine, config })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn kind(&self) -> EngineKind {
        self.config.engine
    }

    /// Compiles a component, or loads its precompiled form from the cache directory.
    pub fn load_component(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, bytes);
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let key = format!(
            "{}-{:016x}.cwasm",
            hex::encode(Sha256::digest(bytes)),
            compat.finish()
        );
        let path = dir.join(key);
        if path.is_file() {
            // SAFETY: the file is an artifact this process family wrote with an engine of the
            // same compatibility hash (it is in the name), into a directory the operator owns;
            // deserializing such an artifact is what `deserialize_file` requires.
            if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                return Ok(c);
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &artifact)?;
        std::fs::rename(&tmp, &path)?;
        // SAFETY: `artifact` was produced just now by this very engine.
        unsafe { Component::deserialize(&self.engine, &artifact) }
    }
}

/// Why a component could not be prepared for instantiation.
pub(crate) enum Unloadable {
    NotAComponent(String),
    HasImports(Vec<String>),
    WrongExports(String),
}

impl Sandbox {
    /// Loads a component that must import nothing and prepares it for instantiation through the
    /// bindings' `Pre::new` (which checks the exports against the WIT). Both kinds of component
    /// this host runs (program packages and evaluator plugins) come through here.
    pub(crate) fn prepare<P>(
        &self,
        bytes: &[u8],
        bindings: impl FnOnce(
            wasmtime::component::InstancePre<wasmtime::StoreLimits>,
        ) -> wasmtime::Result<P>,
    ) -> Result<P, Unloadable> {
        let component = self
            .load_component(bytes)
            .map_err(|e| Unloadable::NotAComponent(format!("{e:#}")))?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !imports.is_empty() {
            return Err(Unloadable::HasImports(imports));
        }
        wasmtime::component::Linker::new(&self.engine)
            .instantiate_pre(&component)
            .and_then(bindings)
            .map_err(|e| Unloadable::WrongExports(format!("{e:#}")))
    }
}

/// Advances the engine's epoch until the engine is dropped.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker");
}

/// What a store may consume: memory for its whole life; fuel and wall-clock time per call
/// (both are reset before every call).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: usize,
    pub fuel: u64,
    /// Wall-clock backstop per call; not enforced under Winch (no epochs), where fuel bounds.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 64 << 20,
            fuel: 1_000_000_000,
            deadline: Duration::from_secs(2),
        }
    }
}

impl Sandbox {
    /// A fresh store with the memory cap (growing past it traps, with a clear error).
    pub(crate) fn store(&self, limits: &Limits) -> wasmtime::Store<wasmtime::StoreLimits> {
        let data = wasmtime::StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .trap_on_grow_failure(true)
            .instances(16)
            .memories(4)
            .tables(4)
            .build();
        let mut store = wasmtime::Store::new(&self.engine, data);
        store.limiter(|s| s);
        store
    }

    /// Resets a store's fuel and deadline before a call.
    pub(crate) fn arm<T>(
        &self,
        store: &mut wasmtime::Store<T>,
        limits: &Limits,
    ) -> wasmtime::Result<()> {
        store.set_fuel(limits.fuel)?;
        if self.kind().has_epochs() {
            let ticks = limits
                .deadline
                .as_millis()
                .div_ceil(EPOCH_TICK.as_millis())
                .max(1);
            store.set_epoch_deadline(ticks as u64);
        }
        Ok(())
    }
}

/// Names a trap the way an operator wants to read it.
pub(crate) fn describe_trap(e: &wasmtime::Error, limits: &Limits) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => {
            format!("out of fuel (the limit is {} units per call)", limits.fuel)
        }
        Some(wasmtime::Trap::Interrupt) => {
            format!("interrupted at the {:?} deadline", limits.deadline)
        }
        _ => format!("{e:#}"),
    }
}
