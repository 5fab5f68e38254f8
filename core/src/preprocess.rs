//! Dealer-free generation of kits by the custodians themselves, secure with abort against up
//! to k − 1 deviating custodians: the math, without I/O.
//!
//! A *kit* is everything one evaluation consumes ([`Kit`]): a Beaver triple per
//! multiplication gate (`c = Σ_j a_j·b_j`, one `c` for a dot product of any length), a random
//! mask per private input, and a MAC key `r`, every value with a sharing of its product by `r`
//! ([`crate::mac`]), and the MAC `r·s` of each secret `s` of the version, made from the
//! custodians' shares of it. A trusted dealer (`dealer`, for tests only) would see every kit in the
//! clear; here all `n` custodians make a batch among themselves and no one sees any of it.
//!
//! Products are made by the degree reduction of Gennaro–Rabin–Rabin as Damgård–Nielsen (2007)
//! use it: each custodian multiplies its shares locally (a point on a polynomial of degree 2t,
//! t = k − 1), deals the result at degree t, and everyone takes `Σ_i λ_i·[d_i]` with the
//! Lagrange coefficients at 0 over all n points, which is exact because `n ≥ 2t + 1 = 2k − 1`.
//! Against an active adversary this is secure up to an *additive attack* (D. Genkin, Y. Ishai,
//! M. Prabhakaran, A. Sahai, E. Tromer, STOC 2014): a deviating custodian can add an offset of
//! its choosing to a product, no more. The check below is the verification of K. Chida et al.
//! (CRYPTO 2018: compute `c` and `r·c` two ways and compare under a random combination), with
//! the kit's own MAC key as the verification key, so it costs one reduction per gate:
//!
//! 1. every custodian deals random `a`, `b` (per term), `r` (per kit), masks `ρ` (per private
//!    input), and per batch a random `z` (to hide the degree check) and `s` (the challenge);
//! 2. products: `c = a·b` per gate (a dot product summed first: one reduction), and the MACs
//!    `r·a`, `r·b`, `r·ρ` and `r·secret`;
//! 3. `r·c` per gate, and `w = Σ_j [r·a_j]·b_j`, which is `r·c` again when nobody cheated;
//! 4. everyone opens `s`, now that every product is fixed: the challenge `χ`;
//! 5. everyone opens `E = Σ χ^g (w_g − [r·c]_g)` over every gate of the batch, and
//!    `D = z + Σ χ^j y_j` over every value of every kit.
//!
//! A batch is kept only if `E` opens to 0 and all n points of `E`, `D` and `s` lie on one
//! polynomial of degree t. An offset `e` on some `c` makes `E = −r·Σχ^g e_g + …` with `r`
//! unknown to the adversary: zero with probability 1/p. An offset on `r·a` gives `E` a term
//! `e·b` with `b` unknown; one on `r·c` or `w` is in `E` itself. A dealing or a reshare off
//! degree t shows in `D` (`z` keeps `D` from revealing anything; opening it among all n, of
//! whom at most t lie, detects a polynomial of higher degree: n ≥ 2t + 1 points). Offsets on
//! `r·b`, `r·ρ` and `r·secret` are left to the evaluation's MAC check, where they make the
//! evaluation fail, never answer wrong. When the openings name a custodian as provably off the polynomial (by
//! [`crate::decode`] under the bound of t deviating), the error names it; a nonzero `E` names
//! nobody, since which custodian added the offset cannot be told.
//!
//! Every custodian keeps its own share of what it deals: a layer's [`Outgoing`] holds one
//! message for each of the n − 1 others, and the next step takes exactly one message from each
//! of them (none from itself). Steps run in order inside [`Preprocessing`]; an error ends the
//! batch. Every secret (states, messages, polynomial coefficients) is wiped when dropped.
//!
//! Message layouts, for a batch of `count` kits with T terms over G gates, L private inputs and
//! S secrets, each kit-major (a kit's terms in gate order, a gate's in order):
//!
//! 1. `a(T), b(T), r, ρ(L)` per kit, then `z, s`;
//! 2. `c(G), r·a(T), r·b(T), r·ρ(L), r·secret(S)` per kit;
//! 3. `r·c(G), w(G)` per kit;
//! 4. `s`;
//! 5. `E, D`.
//!
//! A kit is [`Kit::flatten`]'s layout, so [`Kit::unflatten`] reads it back against the circuit.

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::circuit::{Circuit, Publicity};
use crate::decode::decode_vectors;
use crate::field::Fp;
use crate::mac::fold;
use crate::rounds::{Dealer, Inbox, MessageError, Outgoing, Parties};
#[cfg(doc)]
use crate::session::Kit;
use crate::shamir::{Threshold, lagrange_coefficients};

/// What a batch of kits depends on: the number of terms of each multiplication gate of a
/// circuit, in gate order, its number of private-input gates, and the secrets it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitShape {
    terms: Vec<usize>,
    leaves: usize,
    secrets: usize,
}

impl KitShape {
    /// One entry per gate of `circuit` that needs a triple, of its products of two shared
    /// wires ([`Publicity::triple_terms`]); one leaf per private-input gate; the secrets read
    /// ([`Circuit::secrets_read`]).
    pub fn of(circuit: &Circuit) -> KitShape {
        let publicity = Publicity::of(circuit);
        let terms = circuit
            .gates
            .iter()
            .map(|gate| publicity.triple_terms(gate))
            .filter(|&terms| terms > 0)
            .collect();
        let leaves = circuit
            .gates
            .iter()
            .filter(|g| matches!(g, crate::circuit::Gate::PrivateInput(_)))
            .count();
        KitShape {
            terms,
            leaves,
            secrets: circuit.secrets_read(),
        }
    }

    /// The number of terms over all gates: the length of a kit's `a` (and of its `b`).
    pub fn terms(&self) -> usize {
        self.terms.iter().sum()
    }

    /// The number of multiplication gates: how many `c` a kit has.
    pub fn gates(&self) -> usize {
        self.terms.len()
    }

    /// The number of private-input gates: how many masks a kit has.
    pub fn leaves(&self) -> usize {
        self.leaves
    }

    /// The number of secrets a kit has a MAC of: this custodian's shares of as many make a
    /// batch ([`Preprocessing::begin`]).
    pub fn secrets(&self) -> usize {
        self.secrets
    }

    /// The length of one flattened kit.
    pub fn flat_len(&self) -> usize {
        4 * self.terms() + 2 * self.gates() + 2 * self.leaves + self.secrets + 1
    }

    /// The values one custodian sends another in the largest layer of a batch of `count`.
    pub fn largest_message(&self, count: usize) -> Option<usize> {
        let (t, g, l) = (self.terms(), self.gates(), self.leaves);
        let per_kit = (2 * t + 1 + l).max(self.products()).max(2 * g);
        count.checked_mul(per_kit)?.checked_add(2)
    }

    /// Per kit: values dealt in layer 1, and products dealt in layers 2 and 3.
    fn dealt(&self) -> usize {
        2 * self.terms() + 1 + self.leaves
    }
    fn products(&self) -> usize {
        self.gates() + 2 * self.terms() + self.leaves + self.secrets
    }
    fn last(&self) -> usize {
        2 * self.gates()
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
    #[error("the kits need the shares of {need} secrets; {got} given")]
    Secrets { need: usize, got: usize },
    #[error(transparent)]
    Messages(#[from] MessageError),
    /// The batch failed its check: some custodian deviated. `culprits` are those proven to.
    #[error("the batch fails its check ({check}): {}", blame(culprits))]
    Check {
        check: &'static str,
        culprits: Vec<u32>,
    },
}

fn blame(culprits: &[u32]) -> String {
    if culprits.is_empty() {
        "a custodian deviated, and which cannot be told".into()
    } else {
        format!("custodian(s) {culprits:?} provably deviated")
    }
}

/// How many message layers a batch takes.
pub const LAYERS: u32 = 5;

/// The public parameters of a batch, the same at every custodian.
struct Params {
    shape: KitShape,
    count: usize,
    parties: Parties,
    k: usize,
    /// The degree of every sharing, `k − 1`.
    degree: usize,
    /// Lagrange coefficients at 0 over `1..=n` (index `x − 1`).
    lambdas: Vec<Fp>,
}

/// Which layer's messages a batch awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Dealings,
    Products,
    Macs,
    Challenge,
    Check,
}

/// A batch under way at one custodian: its shares so far, and which layer it awaits. Its
/// secrets are wiped when it is dropped.
pub struct Preprocessing {
    p: Params,
    /// This custodian's shares of the secrets the kits authenticate.
    secrets: Zeroizing<Vec<Fp>>,
    awaiting: Awaiting,
    /// Layer 1's sums: per kit `a, b, r, ρ`, then `z, s`.
    dealt: Zeroizing<Vec<Fp>>,
    /// Layer 2's reductions: per kit `c, r·a, r·b, r·ρ, r·secret`.
    products: Zeroizing<Vec<Fp>>,
    /// Layer 3's reductions: per kit `r·c, w`.
    last: Zeroizing<Vec<Fp>>,
    /// This custodian's own point of what the awaited opening layer opens.
    opening: Vec<Fp>,
    /// The kits, once assembled, until the check passes.
    kits: Vec<Zeroizing<Vec<Fp>>>,
}

/// What a step leads to.
pub enum Progress {
    /// Send this to the others and come back with theirs.
    Send(Box<Preprocessing>, Outgoing),
    /// This custodian's share of every kit of the batch, in [`Kit::flatten`]'s layout. The
    /// caller owns them from here: they are secret and should be sealed or wiped.
    Done(Vec<Zeroizing<Vec<Fp>>>),
}

impl Preprocessing {
    /// Starts a batch of `count` kits of `shape` as custodian `me` of `1..=n`, any `k` of whom
    /// will be able to use the kits, holding `secrets` (its shares of the secrets the kits
    /// authenticate, [`KitShape::secrets`] of them): draws and deals its random values.
    pub fn begin(
        shape: KitShape,
        count: usize,
        (me, n, k): (u32, usize, usize),
        secrets: &[Fp],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Preprocessing, Outgoing), PreprocessError> {
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
        if secrets.len() != shape.secrets {
            return Err(PreprocessError::Secrets {
                need: shape.secrets,
                got: secrets.len(),
            });
        }
        // Every message and kit of the batch is at most this long, so no length overflows.
        let flat_len = shape.flat_len();
        if count.checked_mul(flat_len).is_none() || shape.largest_message(count).is_none() {
            return Err(PreprocessError::TooLarge { count, flat_len });
        }
        let xs: Vec<u32> = (1..=n as u32).collect();
        let p = Params {
            count,
            parties: Parties { me, n },
            k,
            degree: t.degree(),
            lambdas: lagrange_coefficients(&xs, Fp::ZERO).expect("1..=n are distinct, non-zero"),
            shape,
        };
        let len = count * p.shape.dealt() + 2;
        let mut values = Zeroizing::new((0..len).map(|_| Fp::random(rng)).collect::<Vec<_>>());
        let (own, out) = deal(&p, len, values.iter().copied(), rng);
        values.zeroize();
        let batch = Preprocessing {
            p,
            secrets: Zeroizing::new(secrets.to_vec()),
            awaiting: Awaiting::Dealings,
            dealt: own,
            products: Zeroizing::new(Vec::new()),
            last: Zeroizing::new(Vec::new()),
            opening: Vec::new(),
            kits: Vec::new(),
        };
        Ok((batch, out))
    }

    /// Takes the awaited layer's message from every other custodian and says what to send
    /// next, or returns the kits.
    pub fn step(
        mut self,
        received: Vec<(u32, Vec<Fp>)>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Progress, PreprocessError> {
        let mut inbox = Inbox(received);
        let (t, g) = (self.p.shape.terms(), self.p.shape.gates());
        match self.awaiting {
            Awaiting::Dealings => {
                self.p.parties.check(&mut inbox, self.dealt.len())?;
                for (_, values) in &inbox.0 {
                    for (s, &v) in self.dealt.iter_mut().zip(values) {
                        *s += v;
                    }
                }
                // c's points (a dot summed first), then r·a, r·b, r·ρ, r·secret.
                let per = self.p.shape.dealt();
                let mut local = Vec::with_capacity(self.p.count * self.p.shape.products());
                for kit in self.dealt.chunks(per).take(self.p.count) {
                    let (a, rest) = kit.split_at(t);
                    let (b, rest) = rest.split_at(t);
                    let (r, rho) = (rest[0], &rest[1..]);
                    let mut start = 0;
                    for &m in &self.p.shape.terms {
                        let d: Fp = (start..start + m).map(|j| a[j] * b[j]).sum();
                        local.push(d);
                        start += m;
                    }
                    local.extend(a.iter().map(|&x| r * x));
                    local.extend(b.iter().map(|&x| r * x));
                    local.extend(rho.iter().map(|&x| r * x));
                    local.extend(self.secrets.iter().map(|&x| r * x));
                }
                let (own, out) = self.reshare(local, rng);
                self.products = own;
                self.awaiting = Awaiting::Products;
                Ok(Progress::Send(Box::new(self), out))
            }
            Awaiting::Products => {
                reduce(&self.p, &mut inbox, &mut self.products)?;
                let (per_dealt, per_products) = (self.p.shape.dealt(), self.p.shape.products());
                let mut local = Vec::with_capacity(self.p.count * self.p.shape.last());
                for kit in 0..self.p.count {
                    let b = &self.dealt[kit * per_dealt + t..][..t];
                    let prods = &self.products[kit * per_products..][..per_products];
                    let (c, a_mac) = (&prods[..g], &prods[g..g + t]);
                    let r = self.dealt[kit * per_dealt + 2 * t];
                    local.extend(c.iter().map(|&x| r * x));
                    let mut start = 0;
                    for &m in &self.p.shape.terms {
                        local.push((start..start + m).map(|j| a_mac[j] * b[j]).sum());
                        start += m;
                    }
                }
                let (own, out) = self.reshare(local, rng);
                self.last = own;
                self.awaiting = Awaiting::Macs;
                Ok(Progress::Send(Box::new(self), out))
            }
            Awaiting::Macs => {
                reduce(&self.p, &mut inbox, &mut self.last)?;
                let s = self.dealt[self.dealt.len() - 1];
                self.opening = vec![s];
                self.awaiting = Awaiting::Challenge;
                let out = self.p.parties.broadcast(&self.opening);
                Ok(Progress::Send(Box::new(self), out))
            }
            Awaiting::Challenge => {
                let chi = self.open(&mut inbox, "the challenge")?[0];
                self.assemble();
                let (per_last, last) = (self.p.shape.last(), &self.last);
                let residues = (0..self.p.count).flat_map(|kit| {
                    let kit = &last[kit * per_last..][..per_last];
                    (0..g).map(move |i| kit[g + i] - kit[i])
                });
                let e = fold(chi, residues);
                let z = self.dealt[self.dealt.len() - 2];
                let d = z + fold(chi, self.kits.iter().flat_map(|k| k.iter().copied()));
                self.opening = vec![e, d];
                self.awaiting = Awaiting::Check;
                let out = self.p.parties.broadcast(&self.opening);
                Ok(Progress::Send(Box::new(self), out))
            }
            Awaiting::Check => {
                let opened = self.open(&mut inbox, "the degree and product check")?;
                if opened[0] != Fp::ZERO {
                    return Err(PreprocessError::Check {
                        check: "the products and their MACs disagree",
                        culprits: vec![],
                    });
                }
                Ok(Progress::Done(std::mem::take(&mut self.kits)))
            }
        }
    }

    /// Deals this custodian's local products at degree t; keeps its own term `λ_me·[d_me]` of
    /// the reduction.
    fn reshare(
        &self,
        mut local: Vec<Fp>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Zeroizing<Vec<Fp>>, Outgoing) {
        let len = local.len();
        let (mut own, out) = deal(&self.p, len, local.iter().copied(), rng);
        local.zeroize();
        let mine = self.p.lambdas[self.p.parties.me as usize - 1];
        for v in own.iter_mut() {
            *v *= mine;
        }
        (own, out)
    }

    /// Opens this layer's broadcast values from all n points: every point must lie on one
    /// polynomial of degree t; points provably off it name their senders.
    fn open(&mut self, inbox: &mut Inbox, check: &'static str) -> Result<Vec<Fp>, PreprocessError> {
        self.p.parties.check(inbox, self.opening.len())?;
        let mut points: Vec<(u32, Vec<Fp>)> = std::mem::take(&mut inbox.0);
        points.push((self.p.parties.me, std::mem::take(&mut self.opening)));
        let decoded = decode_vectors(&points, self.p.k, self.p.k - 1).map_err(|_| {
            PreprocessError::Check {
                check,
                culprits: vec![],
            }
        })?;
        if !decoded.liars.is_empty() {
            return Err(PreprocessError::Check {
                check,
                culprits: decoded.liars,
            });
        }
        Ok(decoded.value)
    }

    /// Lays every kit out as [`Kit::flatten`] does.
    fn assemble(&mut self) {
        let s = &self.p.shape;
        let (t, g) = (s.terms(), s.gates());
        let (per_dealt, per_products, per_last) = (s.dealt(), s.products(), s.last());
        self.kits = (0..self.p.count)
            .map(|kit| {
                let dealt = &self.dealt[kit * per_dealt..][..per_dealt];
                let (a, b, r, rho) = (
                    &dealt[..t],
                    &dealt[t..2 * t],
                    dealt[2 * t],
                    &dealt[2 * t + 1..],
                );
                let prods = &self.products[kit * per_products..][..per_products];
                let (c, a_mac, b_mac) = (&prods[..g], &prods[g..g + t], &prods[g + t..g + 2 * t]);
                let (rho_mac, secret_macs) = prods[g + 2 * t..].split_at(rho.len());
                let c_mac = &self.last[kit * per_last..][..g];
                let mut flat = Zeroizing::new(Vec::with_capacity(s.flat_len()));
                let mut start = 0;
                for (gate, &m) in s.terms.iter().enumerate() {
                    let terms = start..start + m;
                    flat.extend_from_slice(&a[terms.clone()]);
                    flat.extend_from_slice(&a_mac[terms.clone()]);
                    flat.extend_from_slice(&b[terms.clone()]);
                    flat.extend_from_slice(&b_mac[terms]);
                    flat.push(c[gate]);
                    flat.push(c_mac[gate]);
                    start += m;
                }
                for (&v, &m) in rho.iter().zip(rho_mac) {
                    flat.push(v);
                    flat.push(m);
                }
                flat.extend_from_slice(secret_macs);
                flat.push(r);
                flat
            })
            .collect();
    }
}

/// Deals `len` values at degree t to every custodian: this one's shares, and the others'.
fn deal(
    p: &Params,
    len: usize,
    values: impl Iterator<Item = Fp>,
    rng: &mut (impl RngCore + CryptoRng),
) -> (Zeroizing<Vec<Fp>>, Outgoing) {
    let mut dealer = Dealer::new(p.degree, p.parties.n);
    let mut shares = dealer.outputs(len);
    for v in values {
        dealer.deal(v, rng, &mut shares);
    }
    p.parties.split(shares)
}

/// Adds the others' terms `λ_x·[d_x]` of a reduction to this custodian's own.
fn reduce(p: &Params, inbox: &mut Inbox, acc: &mut [Fp]) -> Result<(), PreprocessError> {
    p.parties.check(inbox, acc.len())?;
    for (x, values) in &inbox.0 {
        let lambda = p.lambdas[*x as usize - 1];
        for (a, &d) in acc.iter_mut().zip(values) {
            *a += lambda * d;
        }
    }
    Ok(())
}

#[cfg(test)]
impl Preprocessing {
    /// Shifts this custodian's own share of value `index` of what it dealt in `layer` (1 to 3)
    /// by `delta`: with the same shift on every share it sent, it dealt `v + delta`, a
    /// consistent sharing of a value of its choosing.
    pub(crate) fn shift_own(&mut self, layer: u32, index: usize, delta: Fp) {
        let lambda = self.p.lambdas[self.p.parties.me as usize - 1];
        match layer {
            1 => self.dealt[index] += delta,
            2 => self.products[index] += lambda * delta,
            3 => self.last[index] += lambda * delta,
            _ => {}
        }
    }
}

/// What a test's custodian does to a layer before sending it: `(layer, sender, messages)`,
/// returning shifts of its own shares ([`Preprocessing::shift_own`]) by index.
#[cfg(test)]
pub(crate) type Tamper<'a> = dyn FnMut(u32, u32, &mut [(u32, Vec<Fp>)]) -> Vec<(usize, Fp)> + 'a;

/// A whole batch among custodians 1..=n in memory, for the tests of this module and of the
/// adversary, with `secrets[x − 1]` custodian x's shares of the secrets (at least as many as
/// the shape needs): `tamper` may change what a custodian sends and holds. Returns every
/// custodian's kits (index `x − 1`), or the first error any custodian's step returned.
#[cfg(test)]
pub(crate) fn run_batch(
    shape: &KitShape,
    count: usize,
    (k, n): (usize, usize),
    secrets: &[Vec<Fp>],
    rng: &mut (impl RngCore + CryptoRng),
    tamper: &mut Tamper<'_>,
) -> Result<Vec<Vec<Zeroizing<Vec<Fp>>>>, PreprocessError> {
    let mut states = Vec::new();
    let mut outs = Vec::new();
    for me in 1..=n as u32 {
        let own = &secrets[me as usize - 1][..shape.secrets];
        let (s, o) = Preprocessing::begin(shape.clone(), count, (me, n, k), own, rng)?;
        states.push(s);
        outs.push(o);
    }
    for layer in 1..=LAYERS {
        let mut sent: Vec<Vec<(u32, Vec<Fp>)>> =
            outs.iter().map(|o| o.messages().to_vec()).collect();
        for ((sender, messages), state) in (1..).zip(sent.iter_mut()).zip(states.iter_mut()) {
            for (index, delta) in tamper(layer, sender, messages) {
                state.shift_own(layer, index, delta);
            }
        }
        let mut inboxes: Vec<Vec<(u32, Vec<Fp>)>> = vec![Vec::new(); n];
        for (sender, messages) in (1..).zip(sent) {
            for (to, values) in messages {
                inboxes[to as usize - 1].push((sender, values));
            }
        }
        let mut next = Vec::new();
        outs = Vec::new();
        let mut done = Vec::new();
        for (s, inbox) in states.into_iter().zip(inboxes) {
            match s.step(inbox, rng)? {
                Progress::Send(s, o) => {
                    next.push(*s);
                    outs.push(o);
                }
                Progress::Done(kits) => done.push(kits),
            }
        }
        if done.len() == n {
            return Ok(done);
        }
        states = next;
    }
    unreachable!("a batch ends after {LAYERS} layers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Gate;
    use crate::dealer::share_values;
    use crate::rounds::MessageError;
    use crate::session::Kit;
    use crate::shamir::{Share, interpolate_at};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;

    /// A circuit on one secret and one private input whose multiplication gates have these
    /// shapes: 0 is a `mul`, m > 0 a `dot` of m terms.
    fn circuit_of(shapes: &[usize]) -> Circuit {
        let mut gates = vec![Gate::Secret(0), Gate::PrivateInput(0)];
        for &m in shapes {
            gates.push(match m {
                0 => Gate::Mul(0, 1),
                m => Gate::Dot(vec![(0, 1); m]),
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

    /// Opens kit `kit` from the given custodians' shares.
    fn open_kit(
        circuit: &Circuit,
        kits: &[Vec<Zeroizing<Vec<Fp>>>],
        holders: &[u32],
        kit: usize,
    ) -> Kit {
        let len = kits[0][kit].len();
        let flat: Vec<Fp> = (0..len)
            .map(|i| {
                let points: Vec<Share> = holders
                    .iter()
                    .map(|&x| Share {
                        x,
                        y: kits[x as usize - 1][kit][i],
                    })
                    .collect();
                interpolate_at(&points, Fp::ZERO).unwrap()
            })
            .collect();
        Kit::unflatten(circuit, &flat).unwrap()
    }

    /// The one secret of [`circuit_of`], and each custodian's share of it.
    const SECRET: u64 = 5;
    fn secrets(k: usize, n: usize) -> Vec<Vec<Fp>> {
        let t = Threshold::new(k, n).unwrap();
        share_values(&[Fp::from(SECRET)], t, &mut StdRng::seed_from_u64(99))
    }

    fn params() -> impl Strategy<Value = (usize, usize)> {
        prop_oneof![Just((2usize, 3usize)), Just((3, 5)), Just((2, 4))]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any k custodians open the same authenticated kits: `c = Σ a·b`, every MAC is the
        /// value times the key.
        #[test]
        fn any_k_custodians_open_authenticated_kits(
            shapes in prop::collection::vec(0usize..4, 0..4),
            count in 1usize..4,
            (k, n) in params(),
            seed in any::<u64>(),
        ) {
            let circuit = circuit_of(&shapes);
            let shape = KitShape::of(&circuit);
            let kits = run_batch(&shape, count, (k, n), &secrets(k, n), &mut StdRng::seed_from_u64(seed), &mut honest).unwrap();
            for kit in 0..count {
                let mut first = None;
                for holders in subsets(n as u32, k) {
                    let opened = open_kit(&circuit, &kits, &holders, kit);
                    let r = opened.key;
                    for t in &opened.triples {
                        let c: Fp = t.a.iter().zip(&t.b).map(|(&a, &b)| a * b).sum();
                        prop_assert_eq!(t.c, c);
                        prop_assert_eq!(t.c_mac, r * c);
                        for (v, m) in t.a.iter().chain(&t.b).zip(t.a_mac.iter().chain(&t.b_mac)) {
                            prop_assert_eq!(*m, r * *v);
                        }
                    }
                    for m in &opened.masks {
                        prop_assert_eq!(m.mac, r * m.value);
                    }
                    prop_assert_eq!(&opened.secret_macs, &vec![r * Fp::from(SECRET)]);
                    let flat = opened.flatten();
                    match &first {
                        None => first = Some(flat),
                        Some(f) => prop_assert_eq!(f, &flat),
                    }
                }
            }
        }
    }

    fn honest(_: u32, _: u32, _: &mut [(u32, Vec<Fp>)]) -> Vec<(usize, Fp)> {
        vec![]
    }

    /// Custodian `who` deals value `i` of `layer` plus 1: every share it sends, and its own.
    fn shift(layer: u32, who: u32, i: usize) -> Box<Tamper<'static>> {
        Box::new(move |l, sender, messages: &mut [(u32, Vec<Fp>)]| {
            if l != layer || sender != who {
                return vec![];
            }
            for (_, m) in messages.iter_mut() {
                m[i] += Fp::ONE;
            }
            vec![(i, Fp::ONE)]
        })
    }

    #[test]
    fn a_shifted_reshare_is_caught() {
        // The attack of the issue: a custodian shifts its degree-reduction reshare of c (layer
        // 2, the first value of each message): the shares stay consistent, c is off. And the
        // same against each other product and MAC it deals.
        let circuit = circuit_of(&[0, 2]);
        let shape = KitShape::of(&circuit);
        let (t, g, l) = (shape.terms(), shape.gates(), shape.leaves());
        let layer2 = g + 2 * t + l + shape.secrets();
        for (k, n) in [(2, 3), (3, 5)] {
            for i in 0..layer2 {
                if (g + t..layer2).contains(&i) {
                    // r·b, r·ρ, r·secret: left to the evaluation's check (see the module doc).
                    continue;
                }
                let e = run_batch(
                    &shape,
                    1,
                    (k, n),
                    &secrets(k, n),
                    &mut StdRng::seed_from_u64(i as u64),
                    &mut shift(2, 2, i),
                )
                .err()
                .unwrap_or_else(|| {
                    panic!("a shift of value {i} of layer 2 got through ({k}-of-{n})")
                });
                assert!(matches!(e, PreprocessError::Check { .. }), "{e}");
            }
            for i in 0..2 * g {
                let e = run_batch(
                    &shape,
                    1,
                    (k, n),
                    &secrets(k, n),
                    &mut StdRng::seed_from_u64(7),
                    &mut shift(3, 1, i),
                );
                assert!(
                    matches!(e, Err(PreprocessError::Check { .. })),
                    "layer 3 value {i}"
                );
            }
        }
    }

    #[test]
    fn a_dealing_off_the_polynomial_is_caught() {
        // Custodian 3 deals inconsistent shares of one value: only to custodian 1 is its share
        // shifted. The degree check sees a polynomial of too high a degree.
        let circuit = circuit_of(&[0]);
        let shape = KitShape::of(&circuit);
        for i in 0..shape.dealt() {
            let mut tamper = |layer: u32, sender: u32, messages: &mut [(u32, Vec<Fp>)]| {
                if layer == 1 && sender == 3 {
                    messages[0].1[i] += Fp::ONE;
                }
                vec![]
            };
            let e = run_batch(
                &shape,
                2,
                (2, 3),
                &secrets(2, 3),
                &mut StdRng::seed_from_u64(3),
                &mut tamper,
            );
            assert!(matches!(e, Err(PreprocessError::Check { .. })), "value {i}");
        }
    }

    #[test]
    fn a_lie_in_an_opening_names_the_liar_where_it_can_be_told() {
        let circuit = circuit_of(&[0]);
        let shape = KitShape::of(&circuit);
        // 2-of-5 opens among five points, one wrong: corrected, and the liar named.
        let e = run_batch(
            &shape,
            1,
            (2, 5),
            &secrets(2, 5),
            &mut StdRng::seed_from_u64(1),
            &mut shift(4, 4, 0),
        );
        assert_eq!(
            e.err(),
            Some(PreprocessError::Check {
                check: "the challenge",
                culprits: vec![4]
            })
        );
        // 2-of-3: seen, but nobody can be told.
        let e = run_batch(
            &shape,
            1,
            (2, 3),
            &secrets(2, 3),
            &mut StdRng::seed_from_u64(1),
            &mut shift(5, 2, 1),
        );
        assert_eq!(
            e.err(),
            Some(PreprocessError::Check {
                check: "the degree and product check",
                culprits: vec![]
            })
        );
    }

    #[test]
    fn kits_are_random_and_distinct() {
        let circuit = circuit_of(&[0, 3, 0, 5]);
        let shape = KitShape::of(&circuit);
        let mut seen = HashSet::new();
        for seed in [11, 12] {
            let kits = run_batch(
                &shape,
                4,
                (2, 3),
                &secrets(2, 3),
                &mut StdRng::seed_from_u64(seed),
                &mut honest,
            )
            .unwrap();
            for kit in 0..4 {
                let flat = open_kit(&circuit, &kits, &[1, 2], kit).flatten();
                for v in flat {
                    assert_ne!(v, Fp::ZERO);
                    assert!(seen.insert(v), "{v:?} appears twice");
                }
            }
        }
        assert_eq!(seen.len(), 2 * 4 * shape.flat_len());
    }

    #[test]
    fn shapes_count_terms_gates_and_leaves() {
        let shape = KitShape::of(&circuit_of(&[0, 3, 0, 5]));
        assert_eq!(
            (
                shape.terms(),
                shape.gates(),
                shape.leaves(),
                shape.flat_len()
            ),
            (10, 4, 1, 4 * 10 + 2 * 4 + 2 + 1 + 1)
        );
        assert_eq!(shape.secrets(), 1);
        assert_eq!(shape.largest_message(3), Some(3 * (4 + 20 + 1 + 1) + 2));
        let none = KitShape::of(&Circuit {
            gates: vec![Gate::Input(0)],
            outputs: vec![0],
        });
        assert_eq!(none.flat_len(), 1);
    }

    #[test]
    fn too_few_custodians_and_bad_parameters_are_refused() {
        let shape = KitShape::of(&circuit_of(&[0, 2]));
        let begin = |me, n, k| {
            let own = [Fp::ONE];
            Preprocessing::begin(
                shape.clone(),
                2,
                (me, n, k),
                &own,
                &mut StdRng::seed_from_u64(1),
            )
            .err()
        };
        assert_eq!(
            begin(1, 4, 3),
            Some(PreprocessError::TooFewParties {
                k: 3,
                n: 4,
                need: 5
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
            begin(4, 3, 2),
            Some(PreprocessError::NotAParty { me: 4, n: 3 })
        );
        for (me, n, k) in [(3, 3, 2), (5, 5, 3), (1, 1, 1), (4, 4, 2)] {
            assert_eq!(begin(me, n, k), None, "{k}-of-{n}");
        }
        let e = Preprocessing::begin(
            shape.clone(),
            usize::MAX / 2,
            (1, 3, 2),
            &[Fp::ONE],
            &mut StdRng::seed_from_u64(1),
        );
        assert!(matches!(e.err(), Some(PreprocessError::TooLarge { .. })));
        let e = Preprocessing::begin(shape, 1, (1, 3, 2), &[], &mut StdRng::seed_from_u64(1));
        assert_eq!(e.err(), Some(PreprocessError::Secrets { need: 1, got: 0 }));
    }

    #[test]
    fn wrong_senders_and_lengths_are_refused() {
        let (k, n) = (2, 3);
        let shape = KitShape::of(&circuit_of(&[0, 2]));
        let first = |inbox: Vec<(u32, Vec<Fp>)>| {
            let mut rng = StdRng::seed_from_u64(4);
            let (s, _) =
                Preprocessing::begin(shape.clone(), 2, (1, n, k), &[Fp::ONE], &mut rng).unwrap();
            s.step(inbox, &mut rng).err()
        };
        let len = 2 * shape.dealt() + 2;
        let good = vec![(2, vec![Fp::ONE; len]), (3, vec![Fp::ONE; len])];
        let senders = |got: Vec<u32>| {
            Some(PreprocessError::Messages(MessageError::WrongSenders {
                expected: vec![2, 3],
                got,
            }))
        };
        assert_eq!(first(good[..1].to_vec()), senders(vec![2]), "missing");
        let dup = vec![good[0].clone(), good[0].clone(), good[1].clone()];
        assert_eq!(first(dup), senders(vec![2, 2, 3]), "duplicate");
        let mut itself = good.clone();
        itself.push((1, good[0].1.clone()));
        assert_eq!(first(itself), senders(vec![1, 2, 3]), "itself");
        let mut short = good.clone();
        short[1].1.pop();
        assert_eq!(
            first(short),
            Some(PreprocessError::Messages(MessageError::WrongLength {
                sender: 3,
                expected: len,
                got: len - 1
            }))
        );
        let mut reversed = good;
        reversed.reverse();
        assert!(first(reversed).is_none(), "order does not matter");
    }

    #[test]
    fn outgoing_debug_hides_the_shares() {
        let shape = KitShape::of(&circuit_of(&[0]));
        let (_, out) = Preprocessing::begin(
            shape.clone(),
            1,
            (1, 3, 2),
            &[Fp::ONE],
            &mut StdRng::seed_from_u64(6),
        )
        .unwrap();
        let shown = format!("{out:?}");
        assert!(
            shown.contains(&format!("(2, {})", shape.dealt() + 2)),
            "{shown}"
        );
        assert!(
            !shown.contains(&out.messages()[0].1[0].to_string()),
            "{shown}"
        );
    }
}
