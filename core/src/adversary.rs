//! The attacker's tests: up to k − 1 custodians deviate, on purpose, in every way the protocol
//! gives them (preprocessing, the kit they hold, every round message, their answer), on random
//! circuits and on every quorum size from k to n. Whatever they do, the answer opened from the
//! quorum's answers ([`open_outputs`]) is the plain result or an error, never a wrong value;
//! and with the check switched off (the outputs interpolated as they were before the MACs)
//! the same deviations do give wrong values, so the check is what stops them.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::circuit::{Circuit, Gate};
use crate::dealer::share_values;
use crate::eval::eval_plain;
use crate::field::Fp;
use crate::preprocess::{KitShape, run_batch};
use crate::session::{Kit, Session, Setup, Step};
use crate::shamir::Threshold;
use crate::shares::{ReconstructError, open_outputs, open_unchecked};

/// What the liars do. Each shifts by a random nonzero offset unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deviation {
    /// A value of its answer: an output share, a MAC, its key share or its check share.
    Answer { value: usize },
    /// One value of its message in one round, to every peer.
    Opening { round: usize, value: usize },
    /// One value of its message in one round, to one peer only.
    Equivocation { round: usize, value: usize },
    /// One value it reshares in preprocessing layer 2 (a product or a MAC).
    Reshare { value: usize },
    /// Its share of a triple's `c`, once the kit is made.
    TripleC { triple: usize },
    /// Its message of one round is not sent.
    Withhold { round: usize },
    /// Its message of one round is the one it sent in the same round of an earlier session.
    Replay { round: usize },
}

/// How an attacked evaluation ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The receiver opened these values, naming these custodians.
    Opened(Vec<Fp>, Vec<u32>),
    /// The batch of kits was refused, a session failed, or the receiver refused.
    Refused(String),
}

/// One evaluation under attack: `circuit` by `quorum` of a k-of-n cluster, with `liars`
/// deviating as `deviation` says.
pub(crate) struct Scenario<'a> {
    pub circuit: &'a Circuit,
    pub cluster: (usize, usize),
    pub quorum: &'a [u32],
    pub liars: &'a [u32],
    pub deviation: Deviation,
    /// Visible inputs, private inputs, secrets.
    pub leaves: (&'a [Fp], &'a [Fp], &'a [Fp]),
    pub seed: u64,
}

/// Runs `s`; `checked` false opens the outputs without the MAC check.
pub(crate) fn attack(s: &Scenario<'_>, checked: bool) -> Outcome {
    let &Scenario {
        circuit,
        cluster: (k, n),
        quorum,
        liars,
        deviation,
        leaves,
        seed,
    } = s;
    let mut rng = StdRng::seed_from_u64(seed);
    let t = Threshold::new(k, n).unwrap();
    let offset = Fp::from(rng.gen_range(1..1000u64));
    let shape = KitShape::of(circuit);
    // Two kits: the first for an earlier honest session (what a replay replays).
    // A shifted reshare deals `v + offset` consistently: every share sent, and its own.
    let mut tamper = |layer: u32, sender: u32, messages: &mut [(u32, Vec<Fp>)]| {
        let Deviation::Reshare { value } = deviation else {
            return vec![];
        };
        let len = messages.first().map_or(0, |(_, m)| m.len());
        if layer != 2 || !liars.contains(&sender) || len == 0 {
            return vec![];
        }
        for (_, m) in messages.iter_mut() {
            m[value % len] += offset;
        }
        vec![(value % len, offset)]
    };
    let (visible, private, secrets) = leaves;
    let private = share_values(private, t, &mut rng);
    let secrets = share_values(secrets, t, &mut rng);
    let kits = match run_batch(&shape, 2, (k, n), &secrets, &mut rng, &mut tamper) {
        Ok(kits) => kits,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let kit = |x: u32, i: usize| -> Kit {
        let mut kit = Kit::unflatten(circuit, &kits[x as usize - 1][i]).unwrap();
        if let Deviation::TripleC { triple } = deviation
            && liars.contains(&x)
            && !kit.triples.is_empty()
        {
            let len = kit.triples.len();
            kit.triples[triple % len].c += offset;
        }
        kit
    };
    let begin = |x: u32, kit: Kit| {
        Session::begin(Setup {
            circuit: circuit.clone(),
            me: x,
            quorum: quorum.to_vec(),
            threshold: k,
            secrets: secrets[x as usize - 1].clone(),
            inputs: visible.to_vec(),
            private_inputs: private[x as usize - 1].clone(),
            kit,
        })
        .unwrap()
    };
    // The earlier session, honest, recorded.
    let earlier = run(
        quorum,
        quorum.iter().map(|&x| begin(x, kit(x, 0))).collect(),
        |_, _, _, _| {},
    );
    let replayed = earlier.sent;
    let deviate = |round: usize, sender: u32, to: u32, values: &mut Option<Vec<Fp>>| {
        if !liars.contains(&sender) {
            return;
        }
        let Some(v) = values.as_mut() else { return };
        match deviation {
            Deviation::Opening { round: r, value } if r == round && !v.is_empty() => {
                let len = v.len();
                v[value % len] += offset;
            }
            Deviation::Equivocation { round: r, value }
                if r == round
                    && !v.is_empty()
                    && to == *quorum.iter().find(|&&x| x != sender).unwrap() =>
            {
                let len = v.len();
                v[value % len] += offset;
            }
            Deviation::Withhold { round: r } if r == round => *values = None,
            Deviation::Replay { round: r } if r == round => {
                *values = replayed.get(&(round, sender)).cloned();
            }
            _ => {}
        }
    };
    let attacked = run(
        quorum,
        quorum.iter().map(|&x| begin(x, kit(x, 1))).collect(),
        deviate,
    );
    let mut answers = attacked.answers;
    if let Deviation::Answer { value } = deviation {
        for (x, a) in answers.iter_mut() {
            if liars.contains(x) {
                let len = a.len();
                a[value % len] += offset;
            }
        }
    }
    // A liar whose own session failed answers anyway: with its honest-looking garbage.
    for &x in liars {
        if quorum.contains(&x) && !answers.iter().any(|(y, _)| *y == x) {
            let len = crate::mac::answer_len(circuit.outputs.len());
            answers.push((x, (0..len).map(|_| Fp::random(&mut rng)).collect()));
        }
    }
    answers.sort_by_key(|(x, _)| *x);
    if answers.len() < k {
        return Outcome::Refused(format!(
            "{} answers: {:?}",
            answers.len(),
            attacked.failures
        ));
    }
    let outputs = circuit.outputs.len();
    if !checked {
        return Outcome::Opened(open_unchecked(&answers, k, outputs), vec![]);
    }
    match open_outputs(&answers, k, outputs) {
        Ok(r) => Outcome::Opened(r.values, r.inconsistent),
        Err(e @ ReconstructError::WrongLength { .. }) => Outcome::Refused(e.to_string()),
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

struct Run {
    /// Each member's answer, for those whose session completed.
    answers: Vec<(u32, Vec<Fp>)>,
    failures: Vec<String>,
    /// What each member sent in each round (to its first peer).
    sent: std::collections::HashMap<(usize, u32), Vec<Fp>>,
}

/// Runs the sessions of `quorum` to the end, passing each round's messages through
/// `deviate(round, sender, recipient, message)`; a member whose step fails stops.
fn run(
    quorum: &[u32],
    sessions: Vec<(Session, Step)>,
    mut deviate: impl FnMut(usize, u32, u32, &mut Option<Vec<Fp>>),
) -> Run {
    let mut live: Vec<(u32, Session, Step)> = quorum
        .iter()
        .zip(sessions)
        .map(|(&x, (s, step))| (x, s, step))
        .collect();
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    let mut sent = std::collections::HashMap::new();
    let mut round = 0;
    while !live.is_empty() {
        let mut still = Vec::new();
        let outbox: Vec<(u32, Vec<Fp>)> = live
            .iter()
            .filter_map(|(x, _, step)| match step {
                Step::Send(v) => Some((*x, v.clone())),
                Step::Done(_) => None,
            })
            .collect();
        for (x, v) in &outbox {
            sent.insert((round, *x), v.clone());
        }
        for (x, mut session, step) in live {
            if let Step::Done(answer) = step {
                answers.push((x, answer));
                continue;
            }
            let mut inbox = Vec::new();
            for (sender, values) in &outbox {
                if *sender == x {
                    continue;
                }
                let mut m = Some(values.clone());
                deviate(round, *sender, x, &mut m);
                if let Some(m) = m {
                    inbox.push((*sender, m));
                }
            }
            match session.advance(&inbox) {
                Ok(next) => still.push((x, session, next)),
                Err(e) => failures.push(format!("custodian {x}: {e}")),
            }
        }
        live = still;
        round += 1;
    }
    Run {
        answers,
        failures,
        sent,
    }
}

/// A random circuit of products, dot products, muxes and polynomial evaluations on 1–2 visible
/// inputs, 1–2 private inputs and 1–3 secrets.
fn random_circuit() -> impl Strategy<Value = (Circuit, [usize; 3])> {
    (
        1usize..3,
        0usize..3,
        1usize..4,
        prop::collection::vec((0u8..6, any::<u32>(), any::<u32>(), any::<u32>()), 1..8),
    )
        .prop_map(|(n_in, n_priv, n_sec, ops)| {
            let mut gates: Vec<Gate> = (0..n_in as u32).map(Gate::Input).collect();
            gates.extend((0..n_priv as u32).map(Gate::PrivateInput));
            gates.extend((0..n_sec as u32).map(Gate::Secret));
            let secrets = (n_in + n_priv) as u32;
            for (kind, a, b, c) in ops {
                let w = gates.len() as u32;
                let (a, b, c) = (a % w, b % w, c % w);
                match kind {
                    0 => gates.push(Gate::Mul(a, b)),
                    1 => gates.push(Gate::Dot(vec![(a, b), (b, c), (c, a)])),
                    2 => gates.push(Gate::Add(a, b)),
                    // mux: c ? a : b = b + c·(a − b)
                    3 => {
                        gates.push(Gate::Sub(a, b));
                        gates.push(Gate::Mul(c, w));
                        gates.push(Gate::Add(b, w + 1));
                    }
                    // polyeval: s_0 + x·(s_1 + x·s_2), by Horner, of wire x = a
                    4 => {
                        let s = |i: u32| secrets + i % n_sec as u32;
                        gates.push(Gate::Mul(a, s(2)));
                        gates.push(Gate::Add(s(1), w));
                        gates.push(Gate::Mul(a, w + 1));
                        gates.push(Gate::Add(s(0), w + 2));
                    }
                    _ => gates.push(Gate::Scale(a, 3)),
                }
            }
            let last = gates.len() as u32 - 1;
            (
                Circuit {
                    gates,
                    outputs: vec![last, last / 2],
                },
                [n_in, n_priv, n_sec],
            )
        })
}

fn deviation() -> impl Strategy<Value = Deviation> {
    let value = 0usize..64;
    let round = 0usize..3;
    prop_oneof![
        value.clone().prop_map(|value| Deviation::Answer { value }),
        (round.clone(), value.clone())
            .prop_map(|(round, value)| Deviation::Opening { round, value }),
        (round.clone(), value.clone())
            .prop_map(|(round, value)| Deviation::Equivocation { round, value }),
        value.clone().prop_map(|value| Deviation::Reshare { value }),
        value.prop_map(|triple| Deviation::TripleC { triple }),
        round
            .clone()
            .prop_map(|round| Deviation::Withhold { round }),
        round.prop_map(|round| Deviation::Replay { round }),
    ]
}

/// A cluster, a quorum of every size from k to n, and up to k − 1 liars in it.
fn cluster() -> impl Strategy<Value = ((usize, usize), Vec<u32>, Vec<u32>)> {
    prop_oneof![Just((2usize, 3usize)), Just((3, 5))]
        .prop_flat_map(|(k, n)| {
            let members = Just((1..=n as u32).collect::<Vec<_>>()).prop_shuffle();
            (Just((k, n)), k..=n, 1..k, members)
        })
        .prop_map(|((k, n), m, liars, members)| {
            let mut quorum = members[..m].to_vec();
            quorum.sort_unstable();
            let liars = members[..liars].to_vec();
            ((k, n), quorum, liars)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn whatever_k_minus_one_custodians_do_the_answer_is_right_or_an_error(
        (circuit, [n_in, n_priv, n_sec]) in random_circuit(),
        (cluster, quorum, liars) in cluster(),
        deviation in deviation(),
        values in prop::collection::vec(-1000i64..1000, 7),
        seed in any::<u64>(),
    ) {
        let values: Vec<Fp> = values.iter().map(|&v| Fp::from_i128(v as i128)).collect();
        let (visible, rest) = values.split_at(n_in);
        let (private, rest) = rest.split_at(n_priv);
        let secrets = &rest[..n_sec];
        let want = eval_plain(&circuit, visible, private, secrets);
        let scenario = Scenario {
            circuit: &circuit,
            cluster,
            quorum: &quorum,
            liars: &liars,
            deviation,
            leaves: (visible, private, secrets),
            seed,
        };
        let outcome = attack(&scenario, true);
        if let Outcome::Opened(values, named) = outcome {
            prop_assert_eq!(values, want, "a wrong value, {:?} by {:?} in {:?}", deviation, liars, quorum);
            prop_assert!(named.iter().all(|x| liars.contains(x)), "honest custodians named: {:?}", named);
        }
    }
}

/// `x·s` and `(x·s)·s + x` of a private x and a secret s: two rounds, a product in each.
fn two_rounds() -> Circuit {
    Circuit {
        gates: vec![
            Gate::PrivateInput(0),
            Gate::Secret(0),
            Gate::Mul(0, 1),
            Gate::Mul(2, 1),
            Gate::Add(3, 0),
        ],
        outputs: vec![2, 4],
    }
}

/// Every deviation, on a bare quorum and on the whole cluster: caught with the check, and (for
/// those that change a value) a wrong value without it.
#[test]
fn every_deviation_is_caught_and_the_check_is_what_catches_it() {
    let circuit = two_rounds();
    let (private, secrets) = ([Fp::from(6)], [Fp::from(7)]);
    let want = eval_plain(&circuit, &[], &private, &secrets);
    let deviations = [
        Deviation::Answer { value: 0 },
        Deviation::Answer { value: 3 },
        Deviation::Opening { round: 0, value: 0 },
        Deviation::Opening { round: 0, value: 2 },
        Deviation::Opening { round: 1, value: 1 },
        Deviation::Equivocation { round: 1, value: 0 },
        Deviation::Reshare { value: 0 },
        Deviation::TripleC { triple: 1 },
        Deviation::Withhold { round: 1 },
        Deviation::Replay { round: 0 },
        Deviation::Replay { round: 1 },
    ];
    for ((k, n), quorum, liars) in [
        ((2, 3), vec![1, 2], vec![2]),
        ((2, 3), vec![1, 2, 3], vec![3]),
        ((3, 5), vec![1, 3, 5], vec![1, 5]),
        ((3, 5), vec![1, 2, 3, 4], vec![2, 4]),
    ] {
        for d in deviations {
            let scenario = Scenario {
                circuit: &circuit,
                cluster: (k, n),
                quorum: &quorum,
                liars: &liars,
                deviation: d,
                leaves: (&[], &private, &secrets),
                seed: 1,
            };
            let checked = attack(&scenario, true);
            // A deviation that changes nothing the others rely on may still end in the right
            // answer (an equivocation to a member that then drops out, say): never a wrong one.
            assert!(
                matches!(&checked, Outcome::Refused(_))
                    || matches!(&checked, Outcome::Opened(v, _) if *v == want),
                "{d:?} by {liars:?} in {quorum:?}: {checked:?}"
            );
            let bare = quorum.len() == k;
            let changes_a_value = !matches!(
                d,
                Deviation::Withhold { .. }
                    | Deviation::Reshare { .. }
                    | Deviation::Answer { value: 3 }
                    // the mask of a private input: only its MAC changes
                    | Deviation::Opening { round: 0, value: 2 }
            );
            if bare && changes_a_value {
                let unchecked = attack(&scenario, false);
                assert!(
                    matches!(&unchecked, Outcome::Opened(v, _) if *v != want),
                    "without the check, {d:?} should give a wrong value: {unchecked:?}"
                );
            }
        }
    }
}

/// Where the quorum is large enough (m ≥ k + e + (k − 1): correcting e errors while detecting
/// k − 1), e liars in the answers are corrected and named, and the answer is served.
#[test]
fn liars_in_the_answers_are_corrected_and_named_where_the_quorum_allows() {
    let circuit = two_rounds();
    let (private, secrets) = ([Fp::from(6)], [Fp::from(7)]);
    let want = eval_plain(&circuit, &[], &private, &secrets);
    for ((k, n), liars) in [
        ((2, 4), vec![3]),
        ((2, 5), vec![2]),
        ((3, 7), vec![1, 6]),
        ((2, 7), vec![4, 7]),
    ] {
        let quorum: Vec<u32> = (1..=n as u32).collect();
        let e = crate::decode::radius(n, k, k - 1);
        assert!(liars.len() <= e, "{k}-of-{n} corrects {e}");
        for value in 0..crate::mac::answer_len(2) - 2 {
            let d = Deviation::Answer { value };
            let scenario = Scenario {
                circuit: &circuit,
                cluster: (k, n),
                quorum: &quorum,
                liars: &liars,
                deviation: d,
                leaves: (&[], &private, &secrets),
                seed: 2,
            };
            let outcome = attack(&scenario, true);
            match outcome {
                Outcome::Opened(v, named) => {
                    assert_eq!(v, want);
                    assert_eq!(named, liars, "{k}-of-{n}, {d:?}");
                }
                Outcome::Refused(e) => panic!("{k}-of-{n}, {d:?}: {e}"),
            }
        }
    }
}
