//! The evaluator plugin in the sandbox: every custodian's session runs in its own instance,
//! the test passes the round messages between them, and the output shares must reconstruct to
//! exactly the plain evaluation — under Cranelift, Winch, Pulley and a mix of the three.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use quorumvm_compiler::compile;
use quorumvm_core::dealer::{deal_kits, share_values};
use quorumvm_core::eval::{Inputs, encode_inputs, encode_values, eval_plain};
use quorumvm_core::session::{Setup, Step};
use quorumvm_core::shamir::Threshold;
use quorumvm_core::shares::open_outputs;
use quorumvm_core::{Circuit, Fp};
use quorumvm_guests::EVALUATOR;
use quorumvm_sandbox::{EngineKind, EvaluatorPlugin, Limits, PluginError, Sandbox, SandboxConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

const KINDS: [EngineKind; 3] = [EngineKind::Cranelift, EngineKind::Winch, EngineKind::Pulley];

/// One sandbox and one loaded plugin per engine kind for the whole test process.
fn plugin(kind: EngineKind) -> Arc<EvaluatorPlugin> {
    static PLUGINS: [OnceLock<Arc<EvaluatorPlugin>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = KINDS.iter().position(|&k| k == kind).unwrap();
    PLUGINS[i]
        .get_or_init(|| {
            let sandbox = Sandbox::with_config(SandboxConfig {
                engine: kind,
                ..SandboxConfig::default()
            })
            .unwrap();
            Arc::new(EvaluatorPlugin::load(&sandbox, EVALUATOR, Limits::default()).unwrap())
        })
        .clone()
}

/// Runs a threshold evaluation with custodian `quorum[i]` on engine `engines[i]`; returns the
/// reconstructed outputs.
fn evaluate(
    circuit: &Circuit,
    t: Threshold,
    quorum: &[u32],
    engines: &[EngineKind],
    inputs: &Inputs,
    secrets: &[Fp],
    seed: u64,
) -> Result<Vec<Fp>, PluginError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let triples = deal_kits(circuit, secrets, t, &mut rng);
    // Visible inputs are public: every member gets their values; private ones are shared.
    let ps = share_values(&inputs.private, t, &mut rng);
    let ss = share_values(secrets, t, &mut rng);
    let mut sessions = Vec::new();
    let mut steps = Vec::new();
    for (&me, &kind) in quorum.iter().zip(engines) {
        let p = me as usize - 1;
        let mut s = plugin(kind).session()?;
        steps.push(s.begin(&Setup {
            circuit: circuit.clone(),
            me,
            quorum: quorum.to_vec(),
            threshold: t.k(),
            secrets: ss[p].clone(),
            inputs: inputs.visible.clone(),
            private_inputs: ps[p].clone(),
            kit: triples[p].clone(),
        })?);
        sessions.push(s);
    }
    let mut rounds = 0;
    // Every member sends until every member is done.
    let sent = |steps: &[Step]| -> Option<Vec<Vec<Fp>>> {
        steps
            .iter()
            .map(|s| match s {
                Step::Send(v) => Some(v.clone()),
                Step::Done(_) => None,
            })
            .collect()
    };
    while let Some(values) = sent(&steps) {
        let outbox: Vec<(u32, Vec<Fp>)> = quorum.iter().copied().zip(values).collect();
        rounds += 1;
        steps = sessions
            .iter_mut()
            .zip(quorum)
            .map(|(s, &me)| {
                let msgs: Vec<_> = outbox.iter().filter(|(x, _)| *x != me).cloned().collect();
                s.advance(&msgs)
            })
            .collect::<Result<_, _>>()?;
    }
    // One round per layer, and one for the masks of private inputs where there is no layer.
    let leaves = circuit
        .gates
        .iter()
        .any(|g| matches!(g, quorumvm_core::Gate::PrivateInput(_)));
    assert_eq!(
        rounds as u32,
        circuit.depth().max(leaves as u32),
        "one round per layer"
    );
    let outs: Vec<Vec<Fp>> = steps
        .into_iter()
        .map(|s| match s {
            Step::Done(v) => v,
            Step::Send(_) => unreachable!(),
        })
        .collect();
    let answers: Vec<(u32, Vec<Fp>)> = quorum.iter().copied().zip(outs).collect();
    Ok(open_outputs(&answers, t.k(), circuit.outputs.len())
        .unwrap()
        .values)
}

/// Values by name, as `eval-plain` takes them.
type Named = Vec<(String, String)>;

/// A random program over decimal, signed inputs and secrets using every construct.
fn program() -> impl Strategy<Value = (String, Named, Named)> {
    let value = (-999i32..999, 0u32..3).prop_map(|(v, s)| (v, s));
    (
        prop::collection::vec(value.clone(), 3),
        prop::collection::vec(value, 3),
        prop::collection::vec((0u8..7, 0usize..99, 0usize..99, 0usize..99), 2..9),
        0u8..2,
    )
        .prop_map(|(ins, secs, ops, sel)| {
            let mut src = String::from("input sel in 0..1\n");
            let (mut inputs, mut secrets) = (vec![("sel".to_string(), sel.to_string())], vec![]);
            let mut names = vec![];
            let text = |v: i32, s: u32| {
                quorumvm_core::Decimal {
                    raw: v as i128,
                    scale: s as u8,
                }
                .to_string()
            };
            for (i, &(v, s)) in ins.iter().enumerate() {
                // x1 is private (shared by the caller), the others visible (public values).
                let kind = if i == 1 { "private" } else { "input" };
                src += &format!("{kind} x{i} in -10..10 scale {s}\n");
                inputs.push((
                    format!("x{i}"),
                    text(v.clamp(-10 * 10i32.pow(s), 10 * 10i32.pow(s)), s),
                ));
                names.push(format!("x{i}"));
            }
            for (i, &(v, s)) in secs.iter().enumerate() {
                src += &format!("secret w{i} in -10..10 scale {s}\n");
                secrets.push((
                    format!("w{i}"),
                    text(v.clamp(-10 * 10i32.pow(s), 10 * 10i32.pow(s)), s),
                ));
                names.push(format!("w{i}"));
            }
            src += "const c = -0.35\n";
            names.push("c".into());
            for (j, &(kind, a, b, c)) in ops.iter().enumerate() {
                let n = |k: usize| names[k % names.len()].clone();
                let line = match kind {
                    0 => format!("add t{j} = {} {}", n(a), n(b)),
                    1 => format!("sub t{j} = {} {}", n(a), n(b)),
                    2 => format!("mul t{j} = {} {}", n(a), n(b)),
                    3 => format!("neg t{j} = {}", n(a)),
                    4 => format!("mux t{j} = sel {} {}", n(a), n(b)),
                    5 => format!(
                        "dot t{j} = [{} {} {}] [{} {} {}]",
                        n(a),
                        n(b),
                        n(c),
                        n(c),
                        n(a),
                        n(b)
                    ),
                    _ => format!("polyeval t{j} = {} [{} {} {}]", n(a), n(b), n(c), n(a)),
                };
                src += &line;
                src.push('\n');
                names.push(format!("t{j}"));
            }
            src += &format!(
                "output {}\noutput {}\n",
                names[names.len() - 1],
                names[names.len() / 2]
            );
            (src, inputs, secrets)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn plugin_sessions_reconstruct_to_the_plain_evaluation(
        (src, inputs, secrets) in program(),
        seed in any::<u64>(),
    ) {
        let program = match compile(&src, "random") {
            Ok(p) => p,
            Err(e) => { prop_assert!(e.message.contains("overflow"), "{src}\n{e}"); return Ok(()); }
        };
        let m = &program.manifest;
        let xs = encode_inputs(m, &inputs).unwrap();
        let ss = encode_values("secret", &m.secrets, &secrets).unwrap();
        let want = eval_plain(&program.circuit, &xs.visible, &xs.private, &ss);
        for (k, n) in [(2usize, 3usize), (3, 5)] {
            let t = Threshold::new(k, n).unwrap();
            let all: Vec<u32> = (1..=n as u32).collect();
            for kind in KINDS {
                let got = evaluate(&program.circuit, t, &all, &vec![kind; n], &xs, &ss, seed).unwrap();
                prop_assert_eq!(&got, &want, "{:?} {}-of-{}\n{}", kind, k, n, src);
            }
            // Heterogeneous hosts: custodians on different engines in one quorum.
            let mixed: Vec<EngineKind> = (0..n).map(|i| KINDS[i % 3]).collect();
            let got = evaluate(&program.circuit, t, &all, &mixed, &xs, &ss, seed).unwrap();
            prop_assert_eq!(&got, &want, "mixed {}-of-{}\n{}", k, n, src);
            // A bare quorum of k (the last k custodians) is enough.
            let bare: Vec<u32> = ((n - k + 1) as u32..=n as u32).collect();
            let got = evaluate(&program.circuit, t, &bare, &mixed[..k], &xs, &ss, seed).unwrap();
            prop_assert_eq!(&got, &want, "bare quorum {:?}\n{}", bare, src);
        }
    }
}

#[test]
fn the_examples_evaluate_on_shares() {
    let src = include_str!("../../../packages/credit_score.qvm");
    let program = compile(src, "credit").unwrap();
    let example = src
        .lines()
        .find_map(|l| l.strip_prefix("# example: "))
        .unwrap();
    let (args, expected) = example.split_once(" => ").unwrap();
    let (ins, secs) = args.split_once(" --secret ").unwrap();
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.into(), v.into())
            })
            .collect()
    };
    let m = &program.manifest;
    let xs = encode_inputs(m, &pairs(ins)).unwrap();
    let ss = encode_values("secret", &m.secrets, &pairs(secs)).unwrap();
    let t = Threshold::new(2, 3).unwrap();
    let out = evaluate(
        &program.circuit,
        t,
        &[1, 3],
        &[EngineKind::Cranelift, EngineKind::Pulley],
        &xs,
        &ss,
        5,
    )
    .unwrap();
    let decoded = quorumvm_core::eval::decode_outputs(m, &out);
    assert_eq!(format!("score={}", decoded[0].1), expected);
}
