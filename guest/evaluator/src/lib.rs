//! The evaluator plugin: a thin adapter between the WIT contract (`wit/evaluator.wit`) and
//! [`quorumvm_core::session`], which holds the protocol. The host instantiates this component
//! afresh for every session, so the session lives in this instance's memory and nowhere else.

use std::cell::RefCell;

use quorumvm_core::circuit::{Circuit, Gate};
use quorumvm_core::field::Fp;
use quorumvm_core::session::{Kit, Session, Setup, Step};

wit_bindgen::generate!({
    path: "../../wit/evaluator.wit",
    world: "evaluator-plugin",
});

use exports::quorumvm::evaluator::session as wit;

struct Plugin;

thread_local! {
    /// The one session of this instance.
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

fn int(v: wit::Int128) -> i128 {
    ((v.hi as i128) << 64) | v.lo as i128
}

fn fps(words: Vec<u64>) -> Result<Vec<Fp>, String> {
    Fp::from_u64_pairs(&words)
        .ok_or_else(|| "field elements must be canonical (lo, hi) pairs".to_string())
}

fn circuit(c: wit::Circuit) -> Circuit {
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
            wit::Gate::Dot(t) => Gate::Dot(t.into_iter().map(|p| (p.a, p.b)).collect()),
        })
        .collect();
    Circuit {
        gates,
        outputs: c.outputs,
    }
}

fn step(s: Step) -> wit::Step {
    match s {
        Step::Send(v) => wit::Step::Send(Fp::to_u64_pairs(&v)),
        Step::Done(v) => wit::Step::Done(Fp::to_u64_pairs(&v)),
    }
}

impl wit::Guest for Plugin {
    fn begin(setup: wit::Setup) -> Result<wit::Step, String> {
        if SESSION.with_borrow(Option::is_some) {
            return Err("this instance already runs a session".into());
        }
        let circuit = circuit(setup.circuit);
        let kit = Kit::unflatten(&circuit, &fps(setup.kit)?).map_err(|e| e.to_string())?;
        let setup = Setup {
            circuit,
            me: setup.me,
            quorum: setup.quorum,
            threshold: setup.threshold as usize,
            secrets: fps(setup.secrets)?,
            inputs: fps(setup.inputs)?,
            private_inputs: fps(setup.private_inputs)?,
            kit,
        };
        let (session, first) = Session::begin(setup).map_err(|e| e.to_string())?;
        SESSION.set(Some(session));
        Ok(step(first))
    }

    fn advance(messages: Vec<wit::PeerMessage>) -> Result<wit::Step, String> {
        let messages = messages
            .into_iter()
            .map(|m| Ok((m.sender, fps(m.values)?)))
            .collect::<Result<Vec<_>, String>>()?;
        SESSION.with_borrow_mut(|s| {
            let session = s.as_mut().ok_or("no session: call begin first")?;
            session
                .advance(&messages)
                .map(step)
                .map_err(|e| e.to_string())
        })
    }
}

export!(Plugin);
