//! Dealer-free generation of Beaver triples by the custodians themselves: the math, without I/O.
//!
//! A *kit* is everything one evaluation of a circuit consumes: one [`Triple`] per multiplication
//! gate, in gate order, with `c = Σ_j a_j·b_j` (one `c` for a dot product of any length). A
//! trusted dealer (`dealer`, for tests only) would see every triple in the clear; here all `n`
//! custodians make a batch of kits among themselves and no one sees `a`, `b` or `c`.
//!
//! The protocol is the degree reduction of Gennaro–Rabin–Rabin as used by Damgård–Nielsen
//! (2007), semi-honest with an honest majority, in two rounds. With `t = k − 1`:
//!
//! 1. [`Generation::begin`]: every custodian draws random `a`, `b` vectors and deals them as
//!    degree-t Shamir sharings. The sum of all dealings is a sharing of vectors that no `t`
//!    custodians know anything about, as long as one dealer is honest.
//! 2. [`Generation::reshare`]: each custodian multiplies its shares locally. For each gate,
//!    `d = Σ_j a_j(x)·b_j(x)` is its point on a polynomial of degree 2t whose constant term is
//!    `c`; it deals `d` as a degree-t sharing (a dot product is summed before this, hence one
//!    reduction however many terms).
//! 3. [`Reduction::finish`]: `c`'s share is `Σ_i λ_i·[d_i]`, where `λ_i` are the Lagrange
//!    coefficients at 0 over all n points. Any fixed linear combination of degree-t sharings is
//!    a degree-t sharing, here of `Σ_i λ_i·d_i = c`; it is exact because n points determine a
//!    polynomial of degree 2t only when `n ≥ 2t + 1 = 2k − 1`, which is therefore required.
//!
//! Semi-honest means nothing here checks that a dealer's shares lie on one polynomial of degree
//! t: a custodian that deviates can spoil the batch undetected (the evaluation's consistency
//! checks may notice later). Against that, verifiable sharing would be needed.
//!
//! Every custodian keeps its own share of what it deals: a round's [`Outgoing`] holds one
//! message for each of the n − 1 others, and the next step takes exactly one message from each
//! of them (none from itself). A step consumes its state and returns the next, so steps cannot
//! run out of order; an error ends the batch, since a missing or malformed message means it
//! cannot complete. Every secret (states, messages sent and received, polynomial coefficients)
//! is wiped from memory when dropped.
//!
//! Layouts, for a batch of `count` kits of a [`KitShape`] with `terms` terms over `gates`
//! multiplication gates:
//!
//! - round 1 message (`2·count·terms` values): the shares of `a`, then those of `b`; each is
//!   kit-major, a kit being its gates in gate order and a gate its terms in order;
//! - round 2 message (`count·gates` values): the shares of `d`, kit-major, gates in order;
//! - a kit (`2·terms + gates` values): [`Triple::flatten`]'s layout, so
//!   [`Triple::unflatten`] reads it back against the circuit.
//!
//! [`Triple`]: crate::session::Triple
//! [`Triple::flatten`]: crate::session::Triple::flatten
//! [`Triple::unflatten`]: crate::session::Triple::unflatten

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::circuit::{Circuit, Publicity};
use crate::field::Fp;
use crate::rounds::{Dealer, Inbox, MessageError, Outgoing, Parties};
use crate::shamir::{Threshold, lagrange_coefficients};

/// The number of terms of each multiplication gate of a circuit, in gate order: all a batch of
/// kits depends on (the wires the gates read do not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitShape {
    terms: Vec<usize>,
}

impl KitShape {
    /// One entry per gate of `circuit` that needs a triple, of its products of two shared
    /// wires ([`Publicity::triple_terms`]).
    pub fn of(circuit: &Circuit) -> KitShape {
        let publicity = Publicity::of(circuit);
        let terms = circuit
            .gates
            .iter()
            .map(|gate| publicity.triple_terms(gate))
            .filter(|&terms| terms > 0)
            .collect();
        KitShape { terms }
    }

    /// The number of terms over all gates: the length of a kit's `a` (and of its `b`).
    pub fn terms(&self) -> usize {
        self.terms.iter().sum()
    }

    /// The number of multiplication gates: how many `c` a kit has.
    pub fn gates(&self) -> usize {
        self.terms.len()
    }

    /// The length of one flattened kit.
    pub fn flat_len(&self) -> usize {
        2 * self.terms() + self.gates()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("threshold {k}-of-{n} is invalid: need 1 <= k <= n")]
    BadThreshold { k: usize, n: usize },
    #[error(
        "degree reduction needs at least 2k - 1 = {need} custodians for threshold {k}; there are {n}"
    )]
    TooFewParties { k: usize, n: usize, need: usize },
    #[error("custodian {me} is not one of 1..={n}")]
    NotAParty { me: u32, n: usize },
    #[error("a batch of {count} kits of {flat_len} values each is too large")]
    TooLarge { count: usize, flat_len: usize },
    #[error(transparent)]
    Messages(#[from] MessageError),
}

/// The public parameters of a batch, the same at every custodian.
struct Params {
    shape: KitShape,
    count: usize,
    parties: Parties,
    /// The degree of every sharing, `k − 1`.
    degree: usize,
}

/// Round 1 done: this custodian's shares of its own random `a`, `b` are kept, its dealing to
/// the others is out; awaiting theirs. Its secrets are wiped when it is dropped.
pub struct Generation {
    params: Params,
    /// This custodian's shares of its own dealing, in the round 1 layout.
    own: Zeroizing<Vec<Fp>>,
}

impl Generation {
    /// Starts a batch of `count` kits of `shape` as custodian `me` of `1..=n`, any `k` of whom
    /// will be able to use the kits: draws and deals this custodian's random `a` and `b`.
    pub fn begin(
        shape: KitShape,
        count: usize,
        me: u32,
        n: usize,
        k: usize,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Generation, Outgoing), PreprocessError> {
        let t = Threshold::new(k, n).map_err(|_| PreprocessError::BadThreshold { k, n })?;
        // n ≥ 2(k − 1) + 1, written so that it cannot overflow (k ≤ n).
        if k - 1 > n - k {
            return Err(PreprocessError::TooFewParties {
                k,
                n,
                need: 2 * k - 1,
            });
        }
        if me == 0 || me as usize > n {
            return Err(PreprocessError::NotAParty { me, n });
        }
        // Every message and kit of the batch is at most this long, so no length overflows.
        let flat_len = shape.flat_len();
        if count.checked_mul(flat_len).is_none() {
            return Err(PreprocessError::TooLarge { count, flat_len });
        }
        let params = Params {
            count,
            parties: Parties { me, n },
            degree: t.degree(),
            shape,
        };
        let len = 2 * count * params.shape.terms();
        let mut dealer = Dealer::new(params.degree, n);
        let mut shares = dealer.outputs(len);
        for _ in 0..len {
            dealer.deal(Fp::random(rng), rng, &mut shares);
        }
        let (own, out) = params.parties.split(shares);
        Ok((Generation { params, own }, out))
    }

    /// Takes the round 1 message of every other custodian: sums the dealings into this
    /// custodian's shares of `a` and `b`, multiplies them locally gate by gate and deals the
    /// products at degree t.
    pub fn reshare(
        self,
        received: Vec<(u32, Vec<Fp>)>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Reduction, Outgoing), PreprocessError> {
        let Generation {
            params: p,
            own: mut ab,
        } = self;
        let mut inbox = Inbox(received);
        p.parties.check(&mut inbox, ab.len())?;
        for (_, values) in &inbox.0 {
            for (s, &v) in ab.iter_mut().zip(values) {
                *s += v;
            }
        }
        let terms = p.shape.terms();
        let (a, b) = ab.split_at(p.count * terms);
        let mut dealer = Dealer::new(p.degree, p.parties.n);
        let mut shares = dealer.outputs(p.count * p.shape.gates());
        for kit in 0..p.count {
            let (ak, bk) = (&a[kit * terms..][..terms], &b[kit * terms..][..terms]);
            let mut start = 0;
            for &m in &p.shape.terms {
                let end = start + m;
                let d: Fp = ak[start..end]
                    .iter()
                    .zip(&bk[start..end])
                    .map(|(&x, &y)| x * y)
                    .sum();
                dealer.deal(d, rng, &mut shares);
                start = end;
            }
        }
        let xs: Vec<u32> = (1..=p.parties.n as u32).collect();
        let lambdas =
            lagrange_coefficients(&xs, Fp::ZERO).expect("1..=n are distinct and non-zero");
        let (mut c, out) = p.parties.split(shares);
        // This custodian's own term of Σ_i λ_i·[d_i]; the others' come with round 2.
        let mine = lambdas[p.parties.me as usize - 1];
        for v in c.iter_mut() {
            *v *= mine;
        }
        let reduction = Reduction {
            params: p,
            ab,
            c,
            lambdas,
        };
        Ok((reduction, out))
    }
}

/// Round 2 done: this custodian holds its shares of `a` and `b` and its own term of `c`;
/// awaiting the others' sharings of their products. Its secrets are wiped when it is dropped.
pub struct Reduction {
    params: Params,
    /// Shares of `a`, then `b`, in the round 1 layout.
    ab: Zeroizing<Vec<Fp>>,
    /// The running `Σ_i λ_i·[d_i]`, in the round 2 layout.
    c: Zeroizing<Vec<Fp>>,
    /// Lagrange coefficients at 0 over `1..=n` (index `x − 1`).
    lambdas: Vec<Fp>,
}

impl Reduction {
    /// Takes the round 2 message of every other custodian and returns this custodian's share
    /// of every kit of the batch, each in [`Triple::flatten`]'s layout. The caller owns them
    /// from here: they are secret and should be sealed or wiped.
    ///
    /// [`Triple::flatten`]: crate::session::Triple::flatten
    pub fn finish(self, received: Vec<(u32, Vec<Fp>)>) -> Result<Vec<Vec<Fp>>, PreprocessError> {
        let Reduction {
            params: p,
            ab,
            mut c,
            lambdas,
        } = self;
        let mut inbox = Inbox(received);
        p.parties.check(&mut inbox, c.len())?;
        for (x, values) in &inbox.0 {
            let lambda = lambdas[*x as usize - 1];
            for (acc, &d) in c.iter_mut().zip(values) {
                *acc += lambda * d;
            }
        }
        let (terms, gates) = (p.shape.terms(), p.shape.gates());
        let (a, b) = ab.split_at(p.count * terms);
        let kits = (0..p.count)
            .map(|kit| {
                let (ak, bk) = (&a[kit * terms..][..terms], &b[kit * terms..][..terms]);
                let ck = &c[kit * gates..][..gates];
                let mut flat = Vec::with_capacity(p.shape.flat_len());
                let mut start = 0;
                for (&m, &cg) in p.shape.terms.iter().zip(ck) {
                    flat.extend_from_slice(&ak[start..start + m]);
                    flat.extend_from_slice(&bk[start..start + m]);
                    flat.push(cg);
                    start += m;
                }
                flat
            })
            .collect();
        Ok(kits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Gate;
    use crate::dealer::share_values;
    use crate::decode::decode;
    use crate::eval::eval_plain;
    use crate::rounds::MessageError;
    use crate::rounds::{Inboxes, route};
    use crate::session::{Session, Setup, Step, Triple};
    use crate::shamir::{Share, interpolate_at};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;

    /// A whole batch among custodians 1..=n in memory: both rounds' messages (inboxes, as
    /// [`route`] delivers them) and every custodian's kits (index `x − 1`).
    struct Batch {
        round1: Inboxes,
        round2: Inboxes,
        kits: Vec<Vec<Vec<Fp>>>,
    }

    fn run_batch(shape: &KitShape, count: usize, k: usize, n: usize, seed: u64) -> Batch {
        let mut rng = StdRng::seed_from_u64(seed);
        let (gens, outs): (Vec<_>, Vec<_>) = (1..=n as u32)
            .map(|me| Generation::begin(shape.clone(), count, me, n, k, &mut rng).unwrap())
            .unzip();
        let round1 = route(&outs);
        let (reds, outs): (Vec<_>, Vec<_>) = gens
            .into_iter()
            .zip(round1.clone())
            .map(|(g, inbox)| g.reshare(inbox, &mut rng).unwrap())
            .unzip();
        let round2 = route(&outs);
        let kits = reds
            .into_iter()
            .zip(round2.clone())
            .map(|(r, inbox)| r.finish(inbox).unwrap())
            .collect();
        Batch {
            round1,
            round2,
            kits,
        }
    }

    /// A circuit on one secret whose multiplication gates have these shapes: 0 is a `mul`,
    /// m > 0 a `dot` of m terms.
    fn circuit_of(shapes: &[usize]) -> Circuit {
        let mut gates = vec![Gate::Secret(0)];
        for &m in shapes {
            gates.push(match m {
                0 => Gate::Mul(0, 0),
                m => Gate::Dot(vec![(0, 0); m]),
            });
        }
        Circuit {
            gates,
            outputs: vec![0],
        }
    }

    /// Every k-element subset of `1..=n`.
    fn subsets(n: u32, k: usize) -> Vec<Vec<u32>> {
        if k == 0 {
            return vec![vec![]];
        }
        (k as u32..=n)
            .flat_map(|last| {
                subsets(last - 1, k - 1).into_iter().map(move |mut s| {
                    s.push(last);
                    s
                })
            })
            .collect()
    }

    /// The value shared at position `i` of the given custodians' vectors.
    fn open(holders: &[u32], vectors: &[&[Fp]], i: usize) -> Fp {
        let points: Vec<Share> = holders
            .iter()
            .zip(vectors)
            .map(|(&x, v)| Share { x, y: v[i] })
            .collect();
        interpolate_at(&points, Fp::ZERO).unwrap()
    }

    /// Opens every value of every kit from custodians 1..=k, as triples.
    fn open_kits(
        shape: &KitShape,
        circuit: &Circuit,
        kits: &[Vec<Vec<Fp>>],
        k: usize,
    ) -> Vec<Vec<Triple>> {
        let holders: Vec<u32> = (1..=k as u32).collect();
        (0..kits[0].len())
            .map(|kit| {
                let vectors: Vec<&[Fp]> = kits[..k].iter().map(|p| p[kit].as_slice()).collect();
                let flat: Vec<Fp> = (0..shape.flat_len())
                    .map(|i| open(&holders, &vectors, i))
                    .collect();
                Triple::unflatten(circuit, &flat).unwrap()
            })
            .collect()
    }

    fn params() -> impl Strategy<Value = (usize, usize)> {
        prop_oneof![Just((2usize, 3usize)), Just((3, 5)), Just((2, 4))]
    }

    /// Runs a session for each custodian 1..=n with its own kit, passing messages between
    /// them; returns each one's output shares. `visible` is every member's; `private` and
    /// `secrets` are shares, per member.
    fn evaluate(
        circuit: &Circuit,
        k: usize,
        kits: Vec<Vec<Triple>>,
        visible: &[Fp],
        private: &[Vec<Fp>],
        secrets: &[Vec<Fp>],
    ) -> Vec<Vec<Fp>> {
        let quorum: Vec<u32> = (1..=kits.len() as u32).collect();
        let (mut sessions, mut steps): (Vec<_>, Vec<_>) = kits
            .into_iter()
            .enumerate()
            .map(|(p, triples)| {
                Session::begin(Setup {
                    circuit: circuit.clone(),
                    me: p as u32 + 1,
                    quorum: quorum.clone(),
                    threshold: k,
                    secrets: secrets[p].clone(),
                    inputs: visible.to_vec(),
                    private_inputs: private[p].clone(),
                    triples,
                })
                .unwrap()
            })
            .unzip();
        loop {
            let sent: Vec<Vec<Fp>> = match steps
                .iter()
                .map(|s| match s {
                    Step::Send(v) => Ok(v.clone()),
                    Step::Done(v) => Err(v.clone()),
                })
                .collect::<Result<_, _>>()
            {
                Ok(sent) => sent,
                Err(_) => {
                    return steps
                        .into_iter()
                        .map(|s| match s {
                            Step::Done(v) => v,
                            Step::Send(_) => panic!("members disagree on the depth"),
                        })
                        .collect();
                }
            };
            steps = sessions
                .iter_mut()
                .zip(&quorum)
                .map(|(s, &me)| {
                    let msgs: Vec<(u32, Vec<Fp>)> = quorum
                        .iter()
                        .zip(&sent)
                        .filter(|(x, _)| **x != me)
                        .map(|(&x, v)| (x, v.clone()))
                        .collect();
                    s.advance(&msgs).unwrap()
                })
                .collect();
        }
    }

    fn random_circuit() -> impl Strategy<Value = Circuit> {
        prop::collection::vec(
            (0u8..7, any::<u32>(), any::<u32>(), 1usize..6, -5i128..5),
            1..25,
        )
        .prop_map(|ops| {
            let mut gates = vec![Gate::Input(0), Gate::PrivateInput(0), Gate::Secret(0)];
            for (kind, a, b, len, c) in ops {
                let n = gates.len() as u32;
                let (a, b) = (a % n, b % n);
                gates.push(match kind {
                    0 => Gate::Add(a, b),
                    1 => Gate::Sub(a, b),
                    2 => Gate::Scale(a, c),
                    3 => Gate::Const(c),
                    4 => Gate::Mul(a, b),
                    _ => Gate::Dot(
                        (0..len as u32)
                            .map(|j| ((a + j) % n, (b + 2 * j) % n))
                            .collect(),
                    ),
                });
            }
            let last = gates.len() as u32 - 1;
            Circuit {
                gates,
                outputs: vec![last, last / 2],
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_k_custodians_open_beaver_triples(
            shapes in prop::collection::vec(0usize..7, 0..6),
            count in 1usize..=5,
            (k, n) in params(),
            seed in any::<u64>(),
        ) {
            let circuit = circuit_of(&shapes);
            let shape = KitShape::of(&circuit);
            prop_assert_eq!(shape.gates(), shapes.len());
            let batch = run_batch(&shape, count, k, n, seed);
            for kits in &batch.kits {
                prop_assert_eq!(kits.len(), count);
                for kit in kits {
                    prop_assert_eq!(kit.len(), shape.flat_len());
                }
            }
            for kit in 0..count {
                let vectors: Vec<&[Fp]> = batch.kits.iter().map(|p| p[kit].as_slice()).collect();
                // Every value is a sharing of degree k − 1 by all n custodians ...
                for i in 0..shape.flat_len() {
                    let all: Vec<(u32, Fp)> = (1..=n as u32).zip(&vectors).map(|(x, v)| (x, v[i])).collect();
                    let off = decode(&all, k, 0).map(|d| d.liars);
                    prop_assert_eq!(off, Ok(vec![]), "kit {} value {} is not of degree {}", kit, i, k - 1);
                }
                // ... and any k of them open triples with c = Σ a·b.
                for holders in subsets(n as u32, k) {
                    let chosen: Vec<&[Fp]> = holders.iter().map(|&x| vectors[x as usize - 1]).collect();
                    let flat: Vec<Fp> = (0..shape.flat_len()).map(|i| open(&holders, &chosen, i)).collect();
                    for t in Triple::unflatten(&circuit, &flat).unwrap() {
                        let sum: Fp = t.a.iter().zip(&t.b).map(|(&a, &b)| a * b).sum();
                        prop_assert_eq!(t.c, sum);
                    }
                }
            }
        }

        #[test]
        fn messages_follow_the_documented_layout(
            shapes in prop::collection::vec(0usize..5, 1..4),
            count in 1usize..=3,
            (k, n) in params(),
            seed in any::<u64>(),
        ) {
            let circuit = circuit_of(&shapes);
            let shape = KitShape::of(&circuit);
            let (terms, gates) = (shape.terms(), shape.gates());
            let batch = run_batch(&shape, count, k, n, seed);
            let opened = open_kits(&shape, &circuit, &batch.kits, k);
            let everyone: Vec<u32> = (1..=n as u32).collect();
            // What dealer `d` sent, opened from the n − 1 ≥ k others that received it.
            let dealt = |round: &Inboxes, d: u32, i: usize| {
                let (holders, vectors): (Vec<u32>, Vec<&[Fp]>) = everyone
                    .iter()
                    .filter(|&&x| x != d)
                    .map(|&x| {
                        let (_, v) = round[x as usize - 1].iter().find(|(s, _)| *s == d).unwrap();
                        (x, v.as_slice())
                    })
                    .unzip();
                open(&holders, &vectors, i)
            };
            for (kit, triples) in opened.iter().enumerate() {
                let mut term = 0;
                for (g, t) in triples.iter().enumerate() {
                    // Round 1: a then b, kit-major; a and b are the sums of every dealing.
                    for j in 0..t.a.len() {
                        let i = kit * terms + term + j;
                        let a: Fp = everyone.iter().map(|&d| dealt(&batch.round1, d, i)).sum();
                        let b: Fp = everyone.iter().map(|&d| dealt(&batch.round1, d, count * terms + i)).sum();
                        prop_assert_eq!((a, b), (t.a[j], t.b[j]));
                    }
                    term += t.a.len();
                    // Round 2: custodian d's d = Σ a(d)·b(d) of the gate, kit-major.
                    for &d in &everyone {
                        let own = Triple::unflatten(&circuit, &batch.kits[d as usize - 1][kit]).unwrap();
                        let product: Fp = own[g].a.iter().zip(&own[g].b).map(|(&x, &y)| x * y).sum();
                        prop_assert_eq!(dealt(&batch.round2, d, kit * gates + g), product);
                    }
                }
            }
        }

        #[test]
        fn kits_drive_sessions_to_the_plain_result(
            circuit in random_circuit(),
            (k, n) in params(),
            seed in any::<u64>(),
            values in prop::collection::vec(any::<i64>(), 3),
        ) {
            let shape = KitShape::of(&circuit);
            // The second kit of a batch of two: a kit not at the start of the layout.
            let batch = run_batch(&shape, 2, k, n, seed);
            let kits: Vec<Vec<Triple>> = batch
                .kits
                .iter()
                .map(|p| Triple::unflatten(&circuit, &p[1]).unwrap())
                .collect();
            let values: Vec<Fp> = values.iter().map(|&v| Fp::from_i128(v as i128)).collect();
            let (visible, private, secrets) = (&values[..1], &values[1..2], &values[2..]);
            let mut rng = StdRng::seed_from_u64(seed ^ 1);
            let t = Threshold::new(k, n).unwrap();
            let ps = share_values(private, t, &mut rng);
            let ss = share_values(secrets, t, &mut rng);
            let outs = evaluate(&circuit, k, kits, visible, &ps, &ss);
            let holders: Vec<u32> = (1..=k as u32).collect();
            let vectors: Vec<&[Fp]> = outs[..k].iter().map(Vec::as_slice).collect();
            let plain = eval_plain(&circuit, visible, private, secrets);
            for (o, want) in plain.into_iter().enumerate() {
                prop_assert_eq!(open(&holders, &vectors, o), want);
            }
        }
    }

    #[test]
    fn kits_are_random_and_distinct() {
        let circuit = circuit_of(&[0, 3, 0, 5]);
        let shape = KitShape::of(&circuit);
        let batch = run_batch(&shape, 4, 2, 3, 11);
        let mut seen = HashSet::new();
        for t in open_kits(&shape, &circuit, &batch.kits, 2).iter().flatten() {
            for &v in t.a.iter().chain(&t.b) {
                assert_ne!(v, Fp::ZERO);
                assert!(seen.insert(v), "{v:?} appears twice");
            }
            assert!(seen.insert(t.c), "c = {:?} appears twice", t.c);
        }
        assert_eq!(seen.len(), 4 * shape.flat_len());
        // And another batch is another set of kits.
        let again = run_batch(&shape, 4, 2, 3, 12);
        let other = open_kits(&shape, &circuit, &again.kits, 2);
        assert!(other.iter().flatten().all(|t| !seen.contains(&t.a[0])));
    }

    #[test]
    fn shapes_count_terms_and_gates() {
        let shape = KitShape::of(&circuit_of(&[0, 3, 0, 5]));
        assert_eq!(
            (shape.terms(), shape.gates(), shape.flat_len()),
            (10, 4, 24)
        );
        let none = KitShape::of(&circuit_of(&[]));
        assert_eq!((none.terms(), none.gates(), none.flat_len()), (0, 0, 0));
    }

    #[test]
    fn too_few_custodians_and_bad_parameters_are_refused() {
        let shape = KitShape::of(&circuit_of(&[0, 2]));
        let begin = |me, n, k| {
            Generation::begin(shape.clone(), 2, me, n, k, &mut StdRng::seed_from_u64(1)).err()
        };
        assert_eq!(
            begin(1, 4, 3),
            Some(PreprocessError::TooFewParties {
                k: 3,
                n: 4,
                need: 5
            })
        );
        assert_eq!(
            begin(1, 2, 2),
            Some(PreprocessError::TooFewParties {
                k: 2,
                n: 2,
                need: 3
            })
        );
        assert!(
            begin(1, 4, 3)
                .unwrap()
                .to_string()
                .contains("at least 2k - 1 = 5")
        );
        assert_eq!(
            begin(1, 3, 0),
            Some(PreprocessError::BadThreshold { k: 0, n: 3 })
        );
        assert_eq!(
            begin(1, 3, 4),
            Some(PreprocessError::BadThreshold { k: 4, n: 3 })
        );
        assert_eq!(
            begin(0, 3, 2),
            Some(PreprocessError::NotAParty { me: 0, n: 3 })
        );
        assert_eq!(
            begin(4, 3, 2),
            Some(PreprocessError::NotAParty { me: 4, n: 3 })
        );
        for (me, n, k) in [(3, 3, 2), (5, 5, 3), (1, 1, 1), (4, 4, 2)] {
            assert_eq!(begin(me, n, k), None, "{k}-of-{n}");
        }
        let e = Generation::begin(
            shape,
            usize::MAX / 2,
            1,
            3,
            2,
            &mut StdRng::seed_from_u64(1),
        );
        assert!(matches!(e.err(), Some(PreprocessError::TooLarge { .. })));
    }

    #[test]
    fn wrong_senders_and_lengths_are_refused() {
        let (k, n) = (2, 3);
        let shape = KitShape::of(&circuit_of(&[0, 2]));
        let mut rng = StdRng::seed_from_u64(3);
        // Custodian 1's round 1 state (a fresh one per attempt: a refused step ends the batch),
        // and what the others send it.
        let start = |rng: &mut StdRng| {
            let mut gens = Vec::new();
            let mut outs = Vec::new();
            for me in 1..=n as u32 {
                let (g, o) = Generation::begin(shape.clone(), 2, me, n, k, rng).unwrap();
                gens.push(g);
                outs.push(o);
            }
            (gens, route(&outs))
        };
        let round1 = |inbox: Vec<(u32, Vec<Fp>)>| {
            let mut rng = StdRng::seed_from_u64(4);
            let (mut gens, _) = start(&mut rng);
            gens.swap_remove(0).reshare(inbox, &mut rng).err()
        };
        let (_, inboxes) = start(&mut rng);
        let good = inboxes[0].clone();
        assert_eq!(good.iter().map(|(x, _)| *x).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(good[0].1.len(), 2 * 2 * 3);
        let senders = |got: Vec<u32>| {
            Some(PreprocessError::Messages(MessageError::WrongSenders {
                expected: vec![2, 3],
                got,
            }))
        };
        assert_eq!(round1(good[..1].to_vec()), senders(vec![2]), "missing");
        let dup = vec![good[0].clone(), good[0].clone(), good[1].clone()];
        assert_eq!(round1(dup), senders(vec![2, 2, 3]), "duplicate");
        let mut stranger = good.clone();
        stranger[1].0 = 4;
        assert_eq!(round1(stranger), senders(vec![2, 4]), "unknown");
        let mut itself = good.clone();
        itself.push((1, good[0].1.clone()));
        assert_eq!(round1(itself), senders(vec![1, 2, 3]), "itself");
        let mut short = good.clone();
        short[1].1.pop();
        assert_eq!(
            round1(short),
            Some(PreprocessError::Messages(MessageError::WrongLength {
                sender: 3,
                expected: 12,
                got: 11
            }))
        );
        // Out of order, shuffled messages are fine.
        let mut rng = StdRng::seed_from_u64(5);
        let (gens, inboxes) = start(&mut rng);
        let mut reds = Vec::new();
        let mut outs = Vec::new();
        for (g, mut inbox) in gens.into_iter().zip(inboxes) {
            inbox.reverse();
            let (r, o) = g.reshare(inbox, &mut rng).unwrap();
            reds.push(r);
            outs.push(o);
        }
        assert_eq!(outs[0].to(2).map(<[Fp]>::len), Some(2 * 2));
        assert_eq!(outs[0].to(1), None);
        let mut inboxes = route(&outs);
        let mut long = inboxes.remove(0);
        long[0].1.push(Fp::ONE);
        assert_eq!(
            reds.remove(0).finish(long).err(),
            Some(PreprocessError::Messages(MessageError::WrongLength {
                sender: 2,
                expected: 4,
                got: 5
            }))
        );
        let partial = inboxes.remove(0)[..1].to_vec();
        assert_eq!(
            reds.remove(0).finish(partial).err(),
            Some(PreprocessError::Messages(MessageError::WrongSenders {
                expected: vec![1, 3],
                got: vec![1]
            }))
        );
    }

    #[test]
    fn outgoing_debug_hides_the_shares() {
        let shape = KitShape::of(&circuit_of(&[0]));
        let (_, out) = Generation::begin(shape, 1, 1, 3, 2, &mut StdRng::seed_from_u64(6)).unwrap();
        let shown = format!("{out:?}");
        assert!(shown.contains("(2, 2)"), "{shown}");
        assert!(
            !shown.contains(&out.messages()[0].1[0].to_string()),
            "{shown}"
        );
    }
}
