//! Reading a program package: instantiate it in a fresh, limited store, call its two exports,
//! and check that the circuit it returns is well formed and matches its manifest.

use crate::engine::{Limits, Sandbox, Unloadable, describe_trap};
use quorumvm_core::circuit::{
    Action, Circuit, CircuitError, Gate, Manifest, Policy, Rule, ValueDecl, Watch,
};

wasmtime::component::bindgen!({
    path: "../../wit/program.wit",
    world: "program-package",
});

use exports::quorumvm::program::definition as wit;

/// What reading one package may consume: its data is all it has, so the limits are small.
pub fn package_limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        fuel: 10_000_000,
        deadline: std::time::Duration::from_secs(1),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the package imports {0:?}; a program package must import nothing")]
    HasImports(Vec<String>),
    #[error("the package does not export the quorumvm:program/definition interface: {0}")]
    WrongExports(String),
    #[error("the package was stopped: {0}")]
    Trapped(String),
    #[error("the package's circuit does not match its manifest: {0}")]
    Mismatch(#[from] CircuitError),
}

impl Sandbox {
    /// Reads and checks a program package (signed or not: the signature is a custom section
    /// the runtime ignores; checking it is the caller's business).
    pub fn read_package(
        &self,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<(Manifest, Circuit), SandboxError> {
        let pre = self
            .prepare(bytes, ProgramPackagePre::new)
            .map_err(|e| match e {
                Unloadable::NotAComponent(m) => SandboxError::NotAComponent(m),
                Unloadable::HasImports(i) => SandboxError::HasImports(i),
                Unloadable::WrongExports(m) => SandboxError::WrongExports(m),
            })?;
        let mut store = self.store(&limits);
        self.arm(&mut store, &limits)
            .map_err(|e| SandboxError::Trapped(format!("{e:#}")))?;
        let trapped = |e: wasmtime::Error| SandboxError::Trapped(describe_trap(&e, &limits));
        let bindings = pre.instantiate(&mut store).map_err(trapped)?;
        let api = bindings.quorumvm_program_definition();
        let manifest = api.call_get_manifest(&mut store).map_err(trapped)?;
        let circuit = api.call_get_circuit(&mut store).map_err(trapped)?;
        let manifest = convert_manifest(manifest);
        let circuit = convert_circuit(circuit);
        circuit.check(&manifest)?;
        Ok((manifest, circuit))
    }
}

fn int(v: wit::Int128) -> i128 {
    ((v.hi as i128) << 64) | v.lo as i128
}

fn decl(d: wit::ValueDecl) -> ValueDecl {
    ValueDecl {
        name: d.name,
        scale: d.scale,
        min: int(d.min),
        max: int(d.max),
    }
}

fn convert_manifest(m: wit::Manifest) -> Manifest {
    Manifest {
        name: m.name,
        version: m.version,
        inputs: m.inputs.into_iter().map(decl).collect(),
        private_inputs: m.private_inputs.into_iter().map(decl).collect(),
        secrets: m.secrets.into_iter().map(decl).collect(),
        outputs: m.outputs.into_iter().map(decl).collect(),
        policy: Policy {
            cost_per_eval: m.policy.cost_per_eval,
            budget_per_identity: m.policy.budget_per_identity,
            rate_limit: m.policy.rate_limit,
            rate_window_secs: m.policy.rate_window_secs,
            watch: m.watch.into_iter().map(watch).collect(),
        },
        depth: m.depth,
    }
}

fn watch(w: wit::Watch) -> Watch {
    Watch {
        rule: match w.rule {
            wit::Rule::Rate(factor) => Rule::Rate { factor },
            wit::Rule::Edges(percent) => Rule::Edges { percent },
            wit::Rule::NearDuplicates(percent) => Rule::NearDuplicates { percent },
            wit::Rule::Sweep(length) => Rule::Sweep { length },
        },
        action: match w.action {
            wit::Action::Audit => Action::Audit,
            wit::Action::Throttle => Action::Throttle,
            wit::Action::Freeze => Action::Freeze,
        },
    }
}

fn convert_circuit(c: wit::Circuit) -> Circuit {
    let gates = c
        .gates
        .into_iter()
        .map(|g| match g {
            wit::Gate::Input(i) => Gate::Input(i),
            wit::Gate::PrivateInput(i) => Gate::PrivateInput(i),
            wit::Gate::Secret(i) => Gate::Secret(i),
            wit::Gate::Const(v) => Gate::Const(int(v)),
            wit::Gate::Add(p) => Gate::Add(p.a, p.b),
            wit::Gate::Sub(p) => Gate::Sub(p.a, p.b),
            wit::Gate::Neg(a) => Gate::Neg(a),
            wit::Gate::Scale((a, k)) => Gate::Scale(a, int(k)),
            wit::Gate::Mul(p) => Gate::Mul(p.a, p.b),
            wit::Gate::Dot(terms) => Gate::Dot(terms.into_iter().map(|p| (p.a, p.b)).collect()),
        })
        .collect();
    Circuit {
        gates,
        outputs: c.outputs,
    }
}
