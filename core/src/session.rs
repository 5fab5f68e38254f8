//! One custodian's side of a threshold evaluation: the logic the evaluator plugin runs.
//!
//! Honest-majority Shamir sharing with Beaver triples, secure with abort against up to k − 1
//! deviating custodians by MACs ([`crate::mac`]). Every wire holds this custodian's share of a
//! degree-(k−1) sharing; a public wire (a constant, a visible input, or what is computed from
//! those alone: [`Publicity`]) holds its value, which is its own share of degree 0. Linear
//! gates are local, and so is a product with a public factor. A product `x·y` of two shared
//! wires consumes a triple `(a, b, c = a·b)`: the quorum opens `ε = x − a` and `δ = y − b`
//! (uniformly random, so they reveal nothing), and each member sets
//! `z = c + ε·b + δ·a + ε·δ`. A dot product opens `ε_j, δ_j` for its shared products only, uses
//! one `c`, and adds its public-factor products locally. All gates of one depth layer open
//! together: one message per peer per layer.
//!
//! The MACs ride along at no extra round for programs whose inputs are visible: a secret's MAC
//! comes with the kit (made in preprocessing from the custodians' shares of the secret), and
//! the first layer's message also opens each private input minus a random mask of the kit,
//! which gives its MAC locally. When the session is over, one local pass computes every wire's
//! MAC from these, the triples' MACs and the values opened, folds the openings into a check
//! share, and the answer carries the output shares with their MACs, the key share, the check
//! share and the digest of everything opened ([`crate::mac::answer_len`]). A circuit without
//! products of shared wires but with private inputs takes one round, for the masks.
//!
//! Openings use every share received: with more than `k` members, each value is interpolated
//! from `k` of them and checked against the rest; a mismatch fails the session and names the
//! custodian(s) whose share is provably wrong (Reed–Solomon decoding, [`crate::decode`]), or
//! nobody when that cannot be proven. With `k` members a lie cannot be seen here: the MACs
//! catch it where the outputs are opened.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::circuit::{Circuit, Gate, Publicity, WireId};
use crate::decode::{Decoded, decode};
use crate::field::Fp;
use crate::mac::{Transcript, challenge, fold};
use crate::shamir::{check_points, lagrange_coefficients};

/// This custodian's shares of one Beaver triple (vectors for a dot product), each with its
/// share of the MAC (the product with the kit's key).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Triple {
    pub a: Vec<Fp>,
    pub a_mac: Vec<Fp>,
    pub b: Vec<Fp>,
    pub b_mac: Vec<Fp>,
    pub c: Fp,
    pub c_mac: Fp,
}

/// This custodian's shares of a random mask for one private input, and of its MAC.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Mask {
    pub value: Fp,
    pub mac: Fp,
}

/// Everything one evaluation consumes, as one custodian holds it: a triple per gate with a
/// product of two shared wires (in gate order), a mask per private-input gate (in gate order),
/// a MAC of each secret the circuit reads ([`Circuit::secrets_read`]), and its share of the
/// MAC key they are all authenticated under.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Kit {
    pub triples: Vec<Triple>,
    pub masks: Vec<Mask>,
    pub secret_macs: Vec<Fp>,
    pub key: Fp,
}

impl Kit {
    /// The flat layout the plugin and the custodians' storage use: for each triple
    /// `a_1..a_n, a_mac_1..a_mac_n, b_1..b_n, b_mac_1..b_mac_n, c, c_mac`; then each mask's
    /// `value, mac`; then the secrets' MACs; then the key.
    pub fn flatten(&self) -> Vec<Fp> {
        let triples: usize = self.triples.iter().map(|t| 4 * t.a.len() + 2).sum();
        let mut out =
            Vec::with_capacity(triples + 2 * self.masks.len() + self.secret_macs.len() + 1);
        for t in &self.triples {
            out.extend_from_slice(&t.a);
            out.extend_from_slice(&t.a_mac);
            out.extend_from_slice(&t.b);
            out.extend_from_slice(&t.b_mac);
            out.push(t.c);
            out.push(t.c_mac);
        }
        for m in &self.masks {
            out.push(m.value);
            out.push(m.mac);
        }
        out.extend_from_slice(&self.secret_macs);
        out.push(self.key);
        out
    }

    /// Reads a flat kit back against `circuit`: one triple per gate that needs one, shaped by
    /// its products of two shared wires ([`Publicity::triple_terms`]), one mask per private
    /// input gate, one MAC per secret read, the key.
    pub fn unflatten(circuit: &Circuit, flat: &[Fp]) -> Result<Kit, SessionError> {
        let publicity = Publicity::of(circuit);
        let mut triples = Vec::new();
        let mut rest = flat;
        let mut take = |n: usize, what: &str| -> Result<&[Fp], SessionError> {
            if rest.len() < n {
                return Err(setup_error(format!("the kit runs out at {what}")));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        for gate in &circuit.gates {
            let n = publicity.triple_terms(gate);
            if n == 0 {
                continue;
            }
            let t = take(4 * n + 2, &format!("multiplication gate {}", triples.len()))?;
            triples.push(Triple {
                a: t[..n].to_vec(),
                a_mac: t[n..2 * n].to_vec(),
                b: t[2 * n..3 * n].to_vec(),
                b_mac: t[3 * n..4 * n].to_vec(),
                c: t[4 * n],
                c_mac: t[4 * n + 1],
            });
        }
        let leaves = circuit
            .gates
            .iter()
            .filter(|g| matches!(g, Gate::PrivateInput(_)))
            .count();
        let masks = (0..leaves)
            .map(|i| {
                let m = take(2, &format!("mask {i}"))?;
                Ok(Mask {
                    value: m[0],
                    mac: m[1],
                })
            })
            .collect::<Result<_, SessionError>>()?;
        let secret_macs = take(circuit.secrets_read(), "the secrets' MACs")?.to_vec();
        let key = take(1, "the key")?[0];
        if !rest.is_empty() {
            return Err(setup_error(format!(
                "{} field elements of the kit are left over",
                rest.len()
            )));
        }
        Ok(Kit {
            triples,
            masks,
            secret_macs,
            key,
        })
    }
}

/// Everything a session starts from.
pub struct Setup {
    pub circuit: Circuit,
    pub me: u32,
    pub quorum: Vec<u32>,
    pub threshold: usize,
    pub secrets: Vec<Fp>,
    /// The visible inputs' values, in the manifest's order.
    pub inputs: Vec<Fp>,
    /// This custodian's shares of the private inputs, in the manifest's order.
    pub private_inputs: Vec<Fp>,
    pub kit: Kit,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.secrets.zeroize();
        self.inputs.zeroize();
        self.private_inputs.zeroize();
    }
}

/// What the host must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these values to every other quorum member and come back with theirs.
    Send(Vec<Fp>),
    /// This custodian's answer: its output shares, their MACs, its key share, its check share
    /// and its transcript digest ([`crate::mac::answer_len`]), for whoever opens the outputs
    /// ([`crate::shares::open_outputs`]).
    Done(Vec<Fp>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("invalid setup: {0}")]
    Setup(String),
    #[error("the session is finished or was never started")]
    NotRunning,
    #[error("expected one message from each of {expected:?}, got them from {got:?}")]
    WrongSenders { expected: Vec<u32>, got: Vec<u32> },
    #[error("custodian {sender} sent {got} values; this layer opens {expected}")]
    WrongLength {
        sender: u32,
        expected: usize,
        got: usize,
    },
    #[error(
        "inconsistent shares in layer {layer}: custodian(s) {culprits:?} disagree with the rest"
    )]
    Inconsistent { layer: u32, culprits: Vec<u32> },
    #[error(
        "inconsistent shares in layer {layer}: the {members} quorum members do not agree and too few remain to tell who is wrong"
    )]
    Unattributable { layer: u32, members: usize },
}

/// A running session.
pub struct Session {
    circuit: Circuit,
    publicity: Publicity,
    wires: Vec<Fp>,
    /// Gates that need a triple, of each round (index = depth − 1; one empty round when only
    /// the masks are opened), and the other gates of each depth (index = depth), both in gate
    /// order.
    layers: Vec<Vec<WireId>>,
    locals: Vec<Vec<WireId>>,
    /// Index into the kit's triples of each gate that needs one.
    triple_of: Vec<u32>,
    kit: Kit,
    /// The private inputs' gates, in gate order: the first round opens each minus its mask.
    leaves: Vec<WireId>,
    inputs: Vec<Fp>,
    private_inputs: Vec<Fp>,
    secrets: Vec<Fp>,
    me: u32,
    /// Quorum x-coordinates, sorted; `k` of them interpolate, the rest check.
    quorum: Vec<u32>,
    k: usize,
    /// λ at 0 for the first `k` members, and, for each checking member, λ at its x.
    at_zero: Vec<Fp>,
    at_checkers: Vec<Vec<Fp>>,
    /// The layer whose messages are awaited (1-based); `None` when finished.
    layer: Option<u32>,
    /// This member's own opened shares for the awaited layer.
    mine: Vec<Fp>,
    /// Every `ε, δ` opened so far, round by round; where each triple gate's start.
    opened: Vec<Fp>,
    opened_at: Vec<u32>,
    /// Each private input minus its mask, opened in the first round.
    leaves_opened: Vec<Fp>,
    transcript: Transcript,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.wires.zeroize();
        self.inputs.zeroize();
        self.private_inputs.zeroize();
        self.secrets.zeroize();
        self.mine.zeroize();
    }
}

fn setup_error(msg: impl Into<String>) -> SessionError {
    SessionError::Setup(msg.into())
}

impl Session {
    /// Checks the setup, evaluates everything before the first layer, and says what to send.
    pub fn begin(mut setup: Setup) -> Result<(Session, Step), SessionError> {
        let circuit = std::mem::replace(
            &mut setup.circuit,
            Circuit {
                gates: vec![],
                outputs: vec![],
            },
        );
        let mut quorum = setup.quorum.clone();
        quorum.sort_unstable();
        check_points(&quorum).map_err(|e| setup_error(e.to_string()))?;
        let k = setup.threshold;
        if k == 0 || quorum.len() < k {
            return Err(setup_error(format!(
                "a quorum of {} cannot reach threshold {k}",
                quorum.len()
            )));
        }
        if !quorum.contains(&setup.me) {
            return Err(setup_error(format!(
                "custodian {} is not in the quorum {quorum:?}",
                setup.me
            )));
        }
        // Structure: topological order, leaf indices, triple shapes.
        for (i, gate) in circuit.gates.iter().enumerate() {
            if let Some(&w) = gate.operands().iter().find(|&&w| w as usize >= i) {
                return Err(setup_error(format!(
                    "gate {i} reads wire {w}, not an earlier gate"
                )));
            }
            let (index, given, kind) = match gate {
                Gate::Input(j) => (*j, setup.inputs.len(), "input"),
                Gate::PrivateInput(j) => (*j, setup.private_inputs.len(), "private input"),
                Gate::Secret(j) => (*j, setup.secrets.len(), "secret"),
                Gate::Dot(t) if t.is_empty() => {
                    return Err(setup_error(format!("gate {i} is an empty dot product")));
                }
                _ => continue,
            };
            if index as usize >= given {
                return Err(setup_error(format!(
                    "gate {i} reads {kind} #{index}; {given} given"
                )));
            }
        }
        let publicity = Publicity::of(&circuit);
        let kit = std::mem::replace(
            &mut setup.kit,
            Kit {
                triples: vec![],
                masks: vec![],
                secret_macs: vec![],
                key: Fp::ZERO,
            },
        );
        let mut triple_of = vec![u32::MAX; circuit.gates.len()];
        let mut next_triple = 0usize;
        for (i, gate) in circuit.gates.iter().enumerate() {
            let terms = publicity.triple_terms(gate);
            if terms == 0 {
                continue;
            }
            let t = kit
                .triples
                .get(next_triple)
                .ok_or_else(|| setup_error(format!("no triple for multiplication gate {i}")))?;
            if [t.a.len(), t.a_mac.len(), t.b.len(), t.b_mac.len()] != [terms; 4] {
                return Err(setup_error(format!(
                    "the triple for gate {i} is not shaped for its {terms} term(s)"
                )));
            }
            triple_of[i] = next_triple as u32;
            next_triple += 1;
        }
        if next_triple != kit.triples.len() {
            return Err(setup_error(format!(
                "{} triples given for {next_triple} multiplication gates",
                kit.triples.len()
            )));
        }
        let leaves: Vec<WireId> = (0..circuit.gates.len() as WireId)
            .filter(|&g| matches!(circuit.gates[g as usize], Gate::PrivateInput(_)))
            .collect();
        if leaves.len() != kit.masks.len() {
            return Err(setup_error(format!(
                "{} masks given for {} private inputs",
                kit.masks.len(),
                leaves.len()
            )));
        }
        if kit.secret_macs.len() != circuit.secrets_read() {
            return Err(setup_error(format!(
                "{} MACs given for {} secrets",
                kit.secret_macs.len(),
                circuit.secrets_read()
            )));
        }
        if let Some(&o) = circuit
            .outputs
            .iter()
            .find(|&&o| o as usize >= circuit.gates.len())
        {
            return Err(setup_error(format!("output wire {o} does not exist")));
        }

        let depths = circuit.depths();
        let depth = depths.iter().copied().max().unwrap_or(0) as usize;
        // The masks open in the first round: a circuit of depth 0 with private inputs has one.
        let rounds = depth.max(!leaves.is_empty() as usize);
        let mut layers = vec![Vec::new(); rounds];
        let mut locals = vec![Vec::new(); rounds + 1];
        for (i, &d) in depths.iter().enumerate() {
            if triple_of[i] != u32::MAX {
                layers[d as usize - 1].push(i as WireId);
            } else {
                locals[d as usize].push(i as WireId);
            }
        }
        let at_zero = lagrange_coefficients(&quorum[..k], Fp::ZERO)
            .map_err(|e| setup_error(e.to_string()))?;
        let at_checkers = quorum[k..]
            .iter()
            .map(|&x| lagrange_coefficients(&quorum[..k], Fp::from(x as u64)))
            .collect::<Result<_, _>>()
            .map_err(|e| setup_error(e.to_string()))?;
        let transcript = Transcript::new(b"quorumvm session", &quorum);
        let mut session = Session {
            wires: vec![Fp::ZERO; circuit.gates.len()],
            opened_at: vec![u32::MAX; circuit.gates.len()],
            circuit,
            publicity,
            layers,
            locals,
            triple_of,
            kit,
            leaves,
            inputs: std::mem::take(&mut setup.inputs),
            private_inputs: std::mem::take(&mut setup.private_inputs),
            secrets: std::mem::take(&mut setup.secrets),
            me: setup.me,
            quorum,
            k,
            at_zero,
            at_checkers,
            layer: None,
            mine: Vec::new(),
            opened: Vec::new(),
            leaves_opened: Vec::new(),
            transcript,
        };
        session.run_locals(0);
        let step = session.open_layer(1);
        Ok((session, step))
    }

    /// How many `Send` steps the session takes: the multiplicative depth, or one where only
    /// the masks of private inputs are opened.
    pub fn rounds(&self) -> usize {
        self.layers.len()
    }

    fn run_locals(&mut self, depth: usize) {
        for &g in &self.locals[depth] {
            let w = &self.wires;
            let v = match &self.circuit.gates[g as usize] {
                Gate::Input(j) => self.inputs[*j as usize],
                Gate::PrivateInput(j) => self.private_inputs[*j as usize],
                Gate::Secret(j) => self.secrets[*j as usize],
                Gate::Const(c) => Fp::from_i128(*c),
                Gate::Add(a, b) => w[*a as usize] + w[*b as usize],
                Gate::Sub(a, b) => w[*a as usize] - w[*b as usize],
                Gate::Neg(a) => -w[*a as usize],
                Gate::Scale(a, k) => w[*a as usize] * Fp::from_i128(*k),
                // Every product has a public factor here (the others are in layers): a share
                // times a value is a share of the product.
                gate @ (Gate::Mul(..) | Gate::Dot(_)) => gate
                    .products()
                    .map(|(a, b)| w[a as usize] * w[b as usize])
                    .sum(),
            };
            self.wires[g as usize] = v;
        }
    }

    /// Masks the operands of every multiplication of `layer` (1-based), and in the first layer
    /// every private input; or finishes.
    fn open_layer(&mut self, layer: u32) -> Step {
        if layer as usize > self.layers.len() {
            self.layer = None;
            return Step::Done(self.answer());
        }
        let mut out = Vec::new();
        for &g in &self.layers[layer as usize - 1] {
            let t = &self.kit.triples[self.triple_of[g as usize] as usize];
            let shared = self.circuit.gates[g as usize]
                .products()
                .filter(|&p| self.publicity.needs_triple(p));
            for (j, (x, y)) in shared.enumerate() {
                out.push(self.wires[x as usize] - t.a[j]);
                out.push(self.wires[y as usize] - t.b[j]);
            }
        }
        if layer == 1 {
            for (&g, m) in self.leaves.iter().zip(&self.kit.masks) {
                out.push(self.wires[g as usize] - m.value);
            }
        }
        self.layer = Some(layer);
        self.mine = out.clone();
        Step::Send(out)
    }

    /// Completes the awaited layer with one message from every other quorum member.
    pub fn advance(&mut self, messages: &[(u32, Vec<Fp>)]) -> Result<Step, SessionError> {
        let layer = self.layer.ok_or(SessionError::NotRunning)?;
        let n = self.mine.len();
        // Gather the shares in quorum order.
        let mut by_member: Vec<&[Fp]> = Vec::with_capacity(self.quorum.len());
        let mut senders: Vec<u32> = messages.iter().map(|(s, _)| *s).collect();
        senders.sort_unstable();
        let expected: Vec<u32> = self
            .quorum
            .iter()
            .copied()
            .filter(|&x| x != self.me)
            .collect();
        if senders != expected {
            return Err(SessionError::WrongSenders {
                expected,
                got: senders,
            });
        }
        for &x in &self.quorum {
            if x == self.me {
                by_member.push(&self.mine);
                continue;
            }
            let (_, values) = messages
                .iter()
                .find(|(s, _)| *s == x)
                .expect("checked above");
            if values.len() != n {
                return Err(SessionError::WrongLength {
                    sender: x,
                    expected: n,
                    got: values.len(),
                });
            }
            by_member.push(values);
        }
        // Open every value: interpolate from the first k members, check the others.
        let mut opened = Vec::with_capacity(n);
        for v in 0..n {
            let base = &by_member[..self.k];
            let value: Fp = base.iter().zip(&self.at_zero).map(|(s, &l)| s[v] * l).sum();
            for (c, lambdas) in self.at_checkers.iter().enumerate() {
                let predicted: Fp = base.iter().zip(lambdas).map(|(s, &l)| s[v] * l).sum();
                if predicted != by_member[self.k + c][v] {
                    return Err(self.blame(layer, &by_member, v));
                }
            }
            opened.push(value);
        }
        self.transcript.absorb(&opened);
        if layer == 1 {
            self.leaves_opened = opened.split_off(n - self.leaves.len());
        }
        // z = c + Σ (ε·b + δ·a + ε·δ) over the shared products of each gate of the layer,
        // plus its products with a public factor, which are local.
        let mut cursor = 0;
        for &g in &self.layers[layer as usize - 1] {
            let t = &self.kit.triples[self.triple_of[g as usize] as usize];
            self.opened_at[g as usize] = (self.opened.len() + cursor) as u32;
            let mut z = t.c;
            for j in 0..t.a.len() {
                let (eps, delta) = (opened[cursor], opened[cursor + 1]);
                z += eps * t.b[j] + delta * t.a[j] + eps * delta;
                cursor += 2;
            }
            for (a, b) in self.circuit.gates[g as usize].products() {
                if !self.publicity.needs_triple((a, b)) {
                    z += self.wires[a as usize] * self.wires[b as usize];
                }
            }
            self.wires[g as usize] = z;
        }
        self.opened.extend_from_slice(&opened);
        self.run_locals(layer as usize);
        Ok(self.open_layer(layer + 1))
    }

    /// The answer: output shares, their MACs, the key share, the check share, the digest.
    ///
    /// Every wire's MAC, in gate order: a public value's is the value times the key; a secret's
    /// comes with the kit; a private input's is its mask's MAC plus the opened difference times
    /// the key; linear gates act on
    /// MACs as on values; a product's is `[r·c] + Σ (ε·[r·b] + δ·[r·a] + ε·δ·[r])` plus its
    /// public-factor products. The check share folds `[r·o] − o·[r]` over every `ε`, `δ`
    /// opened, whose MACs are those of the operand minus the triple's.
    fn answer(&mut self) -> Vec<Fp> {
        let r = self.kit.key;
        let w = &self.wires;
        let mut macs: Vec<Fp> = Vec::with_capacity(w.len());
        let mut leaf = 0;
        for (g, gate) in self.circuit.gates.iter().enumerate() {
            let local = |macs: &[Fp], (a, b): (WireId, WireId)| {
                if self.publicity.is_public(a) {
                    w[a as usize] * macs[b as usize]
                } else {
                    w[b as usize] * macs[a as usize]
                }
            };
            let m = match gate {
                Gate::Input(_) | Gate::Const(_) => w[g] * r,
                Gate::Secret(j) => self.kit.secret_macs[*j as usize],
                Gate::PrivateInput(_) => {
                    let mask = &self.kit.masks[leaf];
                    let m = mask.mac + self.leaves_opened[leaf] * r;
                    leaf += 1;
                    m
                }
                Gate::Add(a, b) => macs[*a as usize] + macs[*b as usize],
                Gate::Sub(a, b) => macs[*a as usize] - macs[*b as usize],
                Gate::Neg(a) => -macs[*a as usize],
                Gate::Scale(a, k) => macs[*a as usize] * Fp::from_i128(*k),
                Gate::Mul(..) | Gate::Dot(_) => {
                    let mut m = Fp::ZERO;
                    if let Some(t) = self.kit.triples.get(self.triple_of[g] as usize) {
                        let start = self.opened_at[g] as usize;
                        m = t.c_mac;
                        for j in 0..t.a.len() {
                            let (eps, delta) =
                                (self.opened[start + 2 * j], self.opened[start + 2 * j + 1]);
                            m += eps * t.b_mac[j] + delta * t.a_mac[j] + eps * delta * r;
                        }
                    }
                    for p in gate.products() {
                        if !self.publicity.needs_triple(p) {
                            m += local(&macs, p);
                        }
                    }
                    m
                }
            };
            macs.push(m);
        }
        let transcript = std::mem::replace(&mut self.transcript, Transcript::new(b"", &[]));
        let digest = transcript.finish();
        // [r·o] − o·[r] for every ε and δ, in the order they were opened.
        let mut residues = Vec::with_capacity(self.opened.len());
        for layer in &self.layers {
            for &g in layer {
                let t = &self.kit.triples[self.triple_of[g as usize] as usize];
                let start = self.opened_at[g as usize] as usize;
                let shared = self.circuit.gates[g as usize]
                    .products()
                    .filter(|&p| self.publicity.needs_triple(p));
                for (j, (x, y)) in shared.enumerate() {
                    let (eps, delta) = (self.opened[start + 2 * j], self.opened[start + 2 * j + 1]);
                    residues.push(macs[x as usize] - t.a_mac[j] - eps * r);
                    residues.push(macs[y as usize] - t.b_mac[j] - delta * r);
                }
            }
        }
        let check = fold(challenge(digest), residues.iter().copied());
        residues.zeroize();
        let outputs = &self.circuit.outputs;
        let mut answer = Vec::with_capacity(crate::mac::answer_len(outputs.len()));
        answer.extend(outputs.iter().map(|&o| self.wires[o as usize]));
        answer.extend(outputs.iter().map(|&o| macs[o as usize]));
        answer.extend([r, check, digest[0], digest[1]]);
        macs.zeroize();
        answer
    }

    /// Names the members whose share of opened value `v` is provably off the polynomial: by
    /// Reed–Solomon decoding under the bound of k − 1 deviating members ([`crate::decode`]),
    /// so an honest member is never named; when the bound leaves more than one polynomial
    /// possible, nobody is.
    fn blame(&self, layer: u32, by_member: &[&[Fp]], v: usize) -> SessionError {
        let points: Vec<(u32, Fp)> = self
            .quorum
            .iter()
            .zip(by_member)
            .map(|(&x, s)| (x, s[v]))
            .collect();
        let members = self.quorum.len();
        match decode(&points, self.k, self.k - 1) {
            Ok(Decoded { liars, .. }) if !liars.is_empty() => SessionError::Inconsistent {
                layer,
                culprits: liars,
            },
            _ => SessionError::Unattributable { layer, members },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dealer::{deal_kits, share_values};
    use crate::eval::eval_plain;
    use crate::shamir::Threshold;
    use crate::shares::open_outputs;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The leaves' values of a test evaluation: visible inputs are given to every member as
    /// they are, private inputs and secrets are shared.
    pub(crate) struct Values<'a> {
        pub visible: &'a [Fp],
        pub private: &'a [Fp],
        pub secrets: &'a [Fp],
    }

    /// Runs all members of `quorum` to completion, passing messages between them; returns each
    /// member's final step result.
    pub(crate) fn run(
        circuit: &Circuit,
        t: Threshold,
        quorum: &[u32],
        values: &Values<'_>,
        seed: u64,
        tamper: Option<(u32, usize)>,
    ) -> Result<Vec<Vec<Fp>>, SessionError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let kits = deal_kits(circuit, values.secrets, t, &mut rng);
        let ps = share_values(values.private, t, &mut rng);
        let ss = share_values(values.secrets, t, &mut rng);
        let mut sessions = Vec::new();
        let mut sends = Vec::new();
        for &me in quorum {
            let p = me as usize - 1;
            let (s, step) = Session::begin(Setup {
                circuit: circuit.clone(),
                me,
                quorum: quorum.to_vec(),
                threshold: t.k(),
                secrets: ss[p].clone(),
                inputs: values.visible.to_vec(),
                private_inputs: ps[p].clone(),
                kit: kits[p].clone(),
            })?;
            sessions.push(s);
            sends.push(step);
        }
        let mut round = 0;
        loop {
            if let Step::Done(_) = &sends[0] {
                return Ok(sends
                    .into_iter()
                    .map(|s| match s {
                        Step::Done(v) => v,
                        Step::Send(_) => panic!("members disagree on the depth"),
                    })
                    .collect());
            }
            let mut outbox: Vec<(u32, Vec<Fp>)> = quorum
                .iter()
                .zip(&sends)
                .map(|(&x, s)| match s {
                    Step::Send(v) => (x, v.clone()),
                    Step::Done(_) => panic!("members disagree on the depth"),
                })
                .collect();
            if let Some((who, r)) = tamper
                && r == round
                && let Some(m) = outbox.iter_mut().find(|(x, _)| *x == who)
            {
                m.1[0] += Fp::ONE;
            }
            round += 1;
            sends = sessions
                .iter_mut()
                .zip(quorum)
                .map(|(s, &me)| {
                    let msgs: Vec<_> = outbox.iter().filter(|(x, _)| *x != me).cloned().collect();
                    s.advance(&msgs)
                })
                .collect::<Result<_, _>>()?;
        }
    }

    /// A random circuit on `n_in` visible inputs, `n_priv` private inputs and `n_sec` secrets.
    fn random_circuit() -> impl Strategy<Value = (Circuit, [usize; 3])> {
        (
            0usize..3,
            0usize..3,
            0usize..3,
            prop::collection::vec((0u8..8, any::<u32>(), any::<u32>(), -5i128..5), 1..30),
        )
            .prop_filter("a leaf", |(i, p, s, _)| i + p + s > 0)
            .prop_map(|(n_in, n_priv, n_sec, ops)| {
                let mut gates: Vec<Gate> = (0..n_in as u32).map(Gate::Input).collect();
                gates.extend((0..n_priv as u32).map(Gate::PrivateInput));
                gates.extend((0..n_sec as u32).map(Gate::Secret));
                for (kind, a, b, k) in ops {
                    let n = gates.len() as u32;
                    let (a, b) = (a % n, b % n);
                    gates.push(match kind {
                        0 => Gate::Add(a, b),
                        1 => Gate::Sub(a, b),
                        2 => Gate::Neg(a),
                        3 => Gate::Scale(a, k),
                        4 => Gate::Const(k),
                        5 | 6 => Gate::Mul(a, b),
                        _ => Gate::Dot(vec![(a, b), (b, a), (a, a)]),
                    });
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn shares_reconstruct_to_the_plain_result(
            (circuit, [n_in, n_priv, n_sec]) in random_circuit(),
            (k, n) in prop_oneof![Just((2usize, 3usize)), Just((3, 5)), Just((2, 5))],
            seed in any::<u64>(),
            values in prop::collection::vec(any::<i64>(), 6),
        ) {
            let t = Threshold::new(k, n).unwrap();
            let values: Vec<Fp> = values.iter().map(|&v| Fp::from_i128(v as i128)).collect();
            let (visible, rest) = values.split_at(n_in);
            let (private, rest) = rest.split_at(n_priv);
            let values = Values { visible, private, secrets: &rest[..n_sec] };
            let want = eval_plain(&circuit, visible, private, values.secrets);
            // Exactly as many rounds as the circuit's depth, which counts only the gates with
            // a product of two shared wires; one for the masks where that is 0.
            let depth = circuit.depths().into_iter().max().unwrap_or(0) as usize;
            let leaves = circuit.gates.iter().any(|g| matches!(g, Gate::PrivateInput(_)));
            let (session, _) = Session::begin(Setup {
                circuit: circuit.clone(),
                me: 1,
                quorum: (1..=n as u32).collect(),
                threshold: k,
                secrets: vec![Fp::ZERO; n_sec],
                inputs: visible.to_vec(),
                private_inputs: vec![Fp::ZERO; n_priv],
                kit: deal_kits(&circuit, values.secrets, t, &mut StdRng::seed_from_u64(seed)).swap_remove(0),
            }).unwrap();
            prop_assert_eq!(session.rounds(), depth.max(leaves as usize));
            // Every member of the full set, and a bare quorum of k.
            for quorum in [(1..=n as u32).collect::<Vec<_>>(), (1..=k as u32).rev().collect()] {
                let outs = run(&circuit, t, &quorum, &values, seed, None).unwrap();
                let answers: Vec<(u32, Vec<Fp>)> = quorum.iter().copied().zip(outs).collect();
                let opened = open_outputs(&answers, k, want.len()).unwrap();
                prop_assert_eq!(opened.values, want.clone());
                prop_assert!(opened.inconsistent.is_empty());
            }
        }
    }

    /// `(x + 7)²` of a private `x`: one round.
    fn square() -> Circuit {
        Circuit {
            gates: vec![
                Gate::PrivateInput(0),
                Gate::Const(7),
                Gate::Add(0, 1),
                Gate::Mul(2, 2),
            ],
            outputs: vec![3],
        }
    }

    #[test]
    fn an_inconsistent_share_is_named() {
        let t = Threshold::new(2, 5).unwrap();
        let x = Values {
            visible: &[],
            private: &[Fp::from(3)],
            secrets: &[],
        };
        let err = run(&square(), t, &[1, 2, 3, 4, 5], &x, 9, Some((4, 0))).unwrap_err();
        assert_eq!(
            err,
            SessionError::Inconsistent {
                layer: 1,
                culprits: vec![4]
            }
        );
        // With k + 1 members a mismatch is seen but cannot be pinned on anyone.
        let t = Threshold::new(2, 3).unwrap();
        let err = run(&square(), t, &[1, 2, 3], &x, 9, Some((2, 0))).unwrap_err();
        assert_eq!(
            err,
            SessionError::Unattributable {
                layer: 1,
                members: 3
            }
        );
    }

    #[test]
    fn kits_flatten_and_unflatten_by_the_circuit() {
        // A private x, a visible y: x·x needs a triple, x·y and y·y do not, so the dot's
        // triple has one term (x·(x·x)) of its three.
        let c = Circuit {
            gates: vec![
                Gate::PrivateInput(0),
                Gate::Mul(0, 0),
                Gate::Input(0),
                Gate::Dot(vec![(0, 1), (0, 2), (2, 2)]),
                Gate::Mul(1, 2),
            ],
            outputs: vec![3, 4],
        };
        assert_eq!(c.depths(), vec![0, 1, 0, 2, 1]);
        assert_eq!(c.multiplications(), 2);
        let t = Threshold::new(2, 3).unwrap();
        let kits = deal_kits(&c, &[], t, &mut StdRng::seed_from_u64(2));
        let flat = kits[0].flatten();
        // Two one-term triples with their MACs, one mask (the private input), the key.
        assert_eq!(flat.len(), 6 + 6 + 2 + 1);
        let back = Kit::unflatten(&c, &flat).unwrap();
        assert_eq!(back.flatten(), flat);
        assert!(Kit::unflatten(&c, &flat[..14]).is_err());
        assert!(Kit::unflatten(&c, &[flat.clone(), vec![Fp::ONE]].concat()).is_err());
    }

    #[test]
    fn bad_setups_and_messages_are_refused() {
        let t = Threshold::new(2, 3).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let kits = deal_kits(&square(), &[], t, &mut rng);
        let setup = |me, quorum: Vec<u32>, kit: Kit| Setup {
            circuit: square(),
            me,
            quorum,
            threshold: 2,
            secrets: vec![],
            inputs: vec![],
            private_inputs: vec![Fp::from(3)],
            kit,
        };
        let refused = |s| Session::begin(s).err().unwrap().to_string();
        assert!(refused(setup(4, vec![1, 2], kits[0].clone())).contains("not in the quorum"));
        assert!(refused(setup(1, vec![1], kits[0].clone())).contains("cannot reach threshold"));
        assert!(refused(setup(1, vec![1, 1], kits[0].clone())).contains("repeated"));
        let empty = Kit {
            triples: vec![],
            masks: vec![],
            secret_macs: vec![],
            key: Fp::ZERO,
        };
        assert!(refused(setup(1, vec![1, 2], empty)).contains("no triple"));
        let (mut s, _) = Session::begin(setup(1, vec![1, 2, 3], kits[0].clone())).unwrap();
        let e = s.advance(&[(2, vec![Fp::ONE, Fp::ONE])]).unwrap_err();
        assert!(matches!(e, SessionError::WrongSenders { .. }), "{e}");
        let e = s
            .advance(&[(2, vec![Fp::ONE]), (3, vec![Fp::ONE])])
            .unwrap_err();
        assert!(
            matches!(e, SessionError::WrongLength { sender: 2, .. }),
            "{e}"
        );
    }
}
