//! The evaluator plugin against the same session code compiled natively:
//! `cargo bench -p quorumvm-sandbox --bench evaluator`.
//!
//! One "evaluation" is all three custodians of a 2-of-3 quorum running a ≈ 12,600-gate circuit
//! (5,000 multiplications, depth 2) in this one thread, messages passed in memory: the work of
//! the whole quorum, without the network. The ratio plugin/native is the sandbox's cost.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use quorumvm_core::dealer::{deal_kits, share_values};
use quorumvm_core::session::{Kit, Session, Setup, Step};
use quorumvm_core::shamir::Threshold;
use quorumvm_core::{Circuit, Fp};
use quorumvm_sandbox::{
    EngineKind, EvaluatorPlugin, Limits, PluginSession, Sandbox, SandboxConfig,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn program() -> String {
    let mut src = String::new();
    for i in 0..50 {
        // Private inputs: shared, so every `mul` below is a multiplication on shares.
        src += &format!("private x{i} in -1..1\nsecret w{i} in -1..1\n");
    }
    for i in 0..2500 {
        let (x, w) = (i % 50, (i / 50) % 50);
        let prev = if i == 0 {
            "x0".to_string()
        } else {
            format!("m{}", i - 1)
        };
        src += &format!(
            "mul m{i} = x{x} w{w}\nmul t{i} = m{i} {prev}\nadd a{i} = t{i} {i}\nsub d{i} = a{i} x{x}\noutput d{i}\n"
        );
    }
    src
}

struct Fixture {
    setups: Vec<(Vec<Fp>, Vec<Fp>, Kit)>,
    circuit: Circuit,
}

impl Fixture {
    fn setup(&self, me: u32) -> Setup {
        let (private_inputs, secrets, triples) = self.setups[me as usize - 1].clone();
        Setup {
            circuit: self.circuit.clone(),
            me,
            quorum: vec![1, 2, 3],
            threshold: 2,
            secrets,
            inputs: vec![],
            private_inputs,
            kit: triples,
        }
    }
}

/// Drives three parties (anything with begin/advance) to the end; returns the output count.
fn drive<S>(
    mut parties: Vec<S>,
    mut steps: Vec<Step>,
    advance: impl Fn(&mut S, &[(u32, Vec<Fp>)]) -> Step,
) -> usize {
    loop {
        let outbox: Vec<(u32, Vec<Fp>)> = match steps
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Step::Send(v) => Some((i as u32 + 1, v.clone())),
                Step::Done(_) => None,
            })
            .collect::<Option<Vec<_>>>()
        {
            Some(o) => o,
            None => {
                return steps
                    .iter()
                    .map(|s| if let Step::Done(v) = s { v.len() } else { 0 })
                    .sum();
            }
        };
        steps = parties
            .iter_mut()
            .enumerate()
            .map(|(i, p)| {
                let msgs: Vec<_> = outbox
                    .iter()
                    .filter(|(x, _)| *x != i as u32 + 1)
                    .cloned()
                    .collect();
                advance(p, &msgs)
            })
            .collect();
    }
}

fn native(f: &Fixture) -> usize {
    let mut parties = vec![];
    let mut steps = vec![];
    for me in 1..=3 {
        let (s, st) = Session::begin(f.setup(me)).unwrap();
        parties.push(s);
        steps.push(st);
    }
    drive(parties, steps, |s, m| s.advance(m).unwrap())
}

fn plugin(f: &Fixture, p: &Arc<EvaluatorPlugin>) -> usize {
    let mut parties: Vec<PluginSession> = vec![];
    let mut steps = vec![];
    for me in 1..=3 {
        let mut s = p.session().unwrap();
        steps.push(s.begin(&f.setup(me)).unwrap());
        parties.push(s);
    }
    drive(parties, steps, |s, m| s.advance(m).unwrap())
}

fn bench(c: &mut Criterion) {
    let program = quorumvm_compiler::compile(&program(), "bench").unwrap();
    let t = Threshold::new(2, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let triples = deal_kits(&program.circuit, &[Fp::ONE; 50], t, &mut rng);
    let xs = share_values(&vec![Fp::ONE; 50], t, &mut rng);
    let ss = share_values(&vec![Fp::ONE; 50], t, &mut rng);
    let fixture = Fixture {
        setups: (0..3)
            .map(|p| (xs[p].clone(), ss[p].clone(), triples[p].clone()))
            .collect(),
        circuit: program.circuit.clone(),
    };
    println!(
        "circuit: {} gates, {} multiplications, depth {}",
        program.stats.gates, program.stats.multiplications, program.stats.depth
    );
    let limits = Limits {
        fuel: u64::MAX / 4,
        ..Limits::default()
    };
    let mut g = c.benchmark_group("evaluate_12k_gates_2of3");
    g.sample_size(10);
    g.bench_function("native", |b| b.iter(|| black_box(native(&fixture))));
    for kind in [EngineKind::Cranelift, EngineKind::Winch, EngineKind::Pulley] {
        let sb = Sandbox::with_config(SandboxConfig {
            engine: kind,
            ..SandboxConfig::default()
        })
        .unwrap();
        let p = Arc::new(EvaluatorPlugin::load(&sb, quorumvm_guests::EVALUATOR, limits).unwrap());
        g.bench_function(format!("plugin_{kind:?}").to_lowercase(), |b| {
            b.iter(|| black_box(plugin(&fixture, &p)))
        });
    }
    g.finish();

    // Where the plugin's time goes: `begin` alone lifts the whole setup (circuit, shares,
    // triples) into the instance and runs the gates before the first layer.
    let mut g = c.benchmark_group("begin_12k_gates_one_party");
    g.sample_size(10);
    g.bench_function("native", |b| {
        b.iter(|| black_box(Session::begin(fixture.setup(1)).unwrap()))
    });
    let sb = Sandbox::new().unwrap();
    let p = Arc::new(EvaluatorPlugin::load(&sb, quorumvm_guests::EVALUATOR, limits).unwrap());
    g.bench_function("plugin_cranelift", |b| {
        b.iter_batched(
            || (p.session().unwrap(), fixture.setup(1)),
            |(mut s, setup)| black_box(s.begin(&setup).unwrap()),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();

    // Fixed costs: a fresh session (store + instance), and one layer call of a tiny circuit.
    let mut g = c.benchmark_group("plugin_fixed_costs");
    g.bench_function("new_session", |b| {
        b.iter(|| black_box(p.session().unwrap()))
    });
    let square = quorumvm_compiler::compile("private x\nmul y = x x\noutput y\n", "sq").unwrap();
    let sq_triples = deal_kits(&square.circuit, &[], t, &mut rng);
    let sq_x = share_values(&[Fp::from(3)], t, &mut rng);
    let setup = |me: u32| Setup {
        circuit: square.circuit.clone(),
        me,
        quorum: vec![1, 2],
        threshold: 2,
        secrets: vec![],
        inputs: vec![],
        private_inputs: sq_x[me as usize - 1].clone(),
        kit: sq_triples[me as usize - 1].clone(),
    };
    // Custodian 2's first message, as it sends it.
    let Step::Send(from_2) = Session::begin(setup(2)).unwrap().1 else {
        panic!("a product of two shared wires takes a round")
    };
    let peers = vec![(2, from_2)];
    g.bench_function("begin_plus_one_layer_call", |b| {
        b.iter_batched(
            || p.session().unwrap(),
            |mut s| {
                s.begin(&setup(1)).unwrap();
                black_box(s.advance(&peers).unwrap())
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.bench_function("native_begin_plus_one_layer", |b| {
        b.iter(|| {
            let (mut s, _) = Session::begin(setup(1)).unwrap();
            black_box(s.advance(&peers).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
