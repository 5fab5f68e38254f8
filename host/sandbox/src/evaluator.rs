//! The custodian evaluator plugin: loading a version, running sessions, swapping versions.
//!
//! A plugin version is compiled once into an `InstancePre`; every session is a fresh store and
//! a fresh instance (a few microseconds from the pooling allocator), so no session can read
//! another's memory or state, and a session that traps or runs out of fuel takes nothing else
//! down. The host passes bytes in and out: all arithmetic on shares happens in the plugin.

use std::sync::{Arc, RwLock};

use quorumvm_core::circuit::Gate;
use quorumvm_core::field::Fp;
use quorumvm_core::session::{Setup, Step};
use sha2::{Digest, Sha256};
use wasmtime::StoreLimits;

use crate::engine::{Limits, Sandbox, Unloadable, describe_trap};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/evaluator.wit",
        world: "evaluator-plugin",
    });
}

use bindings::exports::quorumvm::evaluator::session as wit;

/// The interface a plugin must export.
pub const SESSION_INTERFACE: &str = "quorumvm:evaluator/session@0.1.0";

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the plugin imports {0:?}; an evaluator plugin must import nothing")]
    HasImports(Vec<String>),
    #[error("the plugin does not export {SESSION_INTERFACE} as the WIT defines it: {0}")]
    WrongExports(String),
    #[error("the plugin refused: {0}")]
    Refused(String),
    #[error("the plugin was stopped: {0}")]
    Trapped(String),
    #[error("the plugin returned a value that is not a field element")]
    NonCanonical,
}

/// One loaded plugin version.
pub struct EvaluatorPlugin {
    sandbox: Sandbox,
    pre: bindings::EvaluatorPluginPre<StoreLimits>,
    /// SHA-256 of the component bytes: names the version in logs and audit.
    digest: [u8; 32],
    limits: Limits,
}

impl EvaluatorPlugin {
    /// Compiles (or loads precompiled) and checks a plugin component.
    pub fn load(
        sandbox: &Sandbox,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<EvaluatorPlugin, PluginError> {
        let pre = sandbox
            .prepare(bytes, bindings::EvaluatorPluginPre::new)
            .map_err(|e| match e {
                Unloadable::NotAComponent(m) => PluginError::NotAComponent(m),
                Unloadable::HasImports(i) => PluginError::HasImports(i),
                Unloadable::WrongExports(m) => PluginError::WrongExports(m),
            })?;
        Ok(EvaluatorPlugin {
            sandbox: sandbox.clone(),
            pre,
            digest: Sha256::digest(bytes).into(),
            limits,
        })
    }

    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// A new session in a store and instance of its own.
    pub fn session(self: &Arc<Self>) -> Result<PluginSession, PluginError> {
        let mut store = self.sandbox.store(&self.limits);
        self.sandbox
            .arm(&mut store, &self.limits)
            .map_err(|e| PluginError::Trapped(format!("{e:#}")))?;
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Trapped(describe_trap(&e, &self.limits)))?;
        Ok(PluginSession {
            plugin: Arc::clone(self),
            store,
            bindings,
        })
    }
}

/// One evaluation session inside its own instance. It keeps its plugin version alive, so a
/// session started before a swap finishes on the version it started with.
pub struct PluginSession {
    plugin: Arc<EvaluatorPlugin>,
    store: wasmtime::Store<StoreLimits>,
    bindings: bindings::EvaluatorPlugin,
}

impl PluginSession {
    /// The version this session runs on.
    pub fn plugin_digest(&self) -> [u8; 32] {
        self.plugin.digest
    }

    /// Starts the session: the plugin checks the setup and runs up to the first layer.
    pub fn begin(&mut self, setup: &Setup) -> Result<Step, PluginError> {
        let wit_setup = to_wit_setup(setup);
        self.call(|b, s| b.quorumvm_evaluator_session().call_begin(s, &wit_setup))
    }

    /// Completes the current layer with the other members' messages.
    pub fn advance(&mut self, messages: &[(u32, Vec<Fp>)]) -> Result<Step, PluginError> {
        let msgs: Vec<wit::PeerMessage> = messages
            .iter()
            .map(|(sender, values)| wit::PeerMessage {
                sender: *sender,
                values: Fp::to_u64_pairs(values),
            })
            .collect();
        self.call(|b, s| b.quorumvm_evaluator_session().call_advance(s, &msgs))
    }

    fn call(
        &mut self,
        f: impl FnOnce(
            &bindings::EvaluatorPlugin,
            &mut wasmtime::Store<StoreLimits>,
        ) -> wasmtime::Result<Result<wit::Step, String>>,
    ) -> Result<Step, PluginError> {
        let limits = self.plugin.limits;
        self.plugin
            .sandbox
            .arm(&mut self.store, &limits)
            .map_err(|e| PluginError::Trapped(format!("{e:#}")))?;
        let step = f(&self.bindings, &mut self.store)
            .map_err(|e| PluginError::Trapped(describe_trap(&e, &limits)))?
            .map_err(PluginError::Refused)?;
        let values = |v: Vec<u64>| Fp::from_u64_pairs(&v).ok_or(PluginError::NonCanonical);
        Ok(match step {
            wit::Step::Send(v) => Step::Send(values(v)?),
            wit::Step::Done(v) => Step::Done(values(v)?),
        })
    }
}

/// The current plugin version of a custodian: new sessions take the current one; replacing
/// it never disturbs sessions already running (they hold their version).
pub struct PluginSlot {
    current: RwLock<Arc<EvaluatorPlugin>>,
}

impl PluginSlot {
    pub fn new(plugin: EvaluatorPlugin) -> PluginSlot {
        PluginSlot {
            current: RwLock::new(Arc::new(plugin)),
        }
    }

    pub fn current(&self) -> Arc<EvaluatorPlugin> {
        Arc::clone(&self.current.read().expect("slot lock"))
    }

    /// Installs a new version, returning the previous one.
    pub fn replace(&self, plugin: EvaluatorPlugin) -> Arc<EvaluatorPlugin> {
        std::mem::replace(
            &mut *self.current.write().expect("slot lock"),
            Arc::new(plugin),
        )
    }

    pub fn session(&self) -> Result<PluginSession, PluginError> {
        self.current().session()
    }
}

fn int128(v: i128) -> wit::Int128 {
    wit::Int128 {
        lo: v as u64,
        hi: (v >> 64) as i64,
    }
}

fn to_wit_setup(s: &Setup) -> wit::Setup {
    let pair = |a: u32, b: u32| wit::Pair { a, b };
    let gates = s
        .circuit
        .gates
        .iter()
        .map(|g| match g {
            Gate::Input(i) => wit::Gate::Input(*i),
            Gate::PrivateInput(i) => wit::Gate::PrivateInput(*i),
            Gate::Secret(i) => wit::Gate::Secret(*i),
            Gate::Const(c) => wit::Gate::Const(int128(*c)),
            Gate::Add(a, b) => wit::Gate::Add(pair(*a, *b)),
            Gate::Sub(a, b) => wit::Gate::Sub(pair(*a, *b)),
            Gate::Neg(a) => wit::Gate::Neg(*a),
            Gate::Scale(a, k) => wit::Gate::Scale((*a, int128(*k))),
            Gate::Mul(a, b) => wit::Gate::Mul(pair(*a, *b)),
            Gate::Dot(t) => wit::Gate::Dot(t.iter().map(|&(a, b)| pair(a, b)).collect()),
        })
        .collect();
    wit::Setup {
        circuit: wit::Circuit {
            gates,
            outputs: s.circuit.outputs.clone(),
        },
        me: s.me,
        quorum: s.quorum.clone(),
        threshold: s.threshold as u32,
        secrets: Fp::to_u64_pairs(&s.secrets),
        inputs: Fp::to_u64_pairs(&s.inputs),
        private_inputs: Fp::to_u64_pairs(&s.private_inputs),
        kit: Fp::to_u64_pairs(&s.kit.flatten()),
    }
}
