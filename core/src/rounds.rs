//! One layer of messages among custodians 1..=n, as the step machines of
//! [`crate::preprocess`] and [`crate::share_check`] exchange them: dealing sharings to every
//! custodian, what a layer sends, and the checks on what it receives.
//!
//! A layer's [`Outgoing`] holds one message for each of the n − 1 others, and the next step
//! takes exactly one message from each of them (none from itself). Messages sent and received
//! and the dealer's coefficients are wiped from memory when dropped.

use rand_core::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::decode::open_unanimous;
use crate::field::Fp;
use crate::shamir::{Threshold, eval_poly};

/// What a layer received is not one message of the expected length from each other custodian:
/// the layer cannot complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("expected one message from each of {expected:?}, got them from {got:?}")]
    WrongSenders { expected: Vec<u32>, got: Vec<u32> },
    #[error("custodian {sender} sent {got} values; this round takes {expected}")]
    WrongLength {
        sender: u32,
        expected: usize,
        got: usize,
    },
}

/// What one round sends: for each other custodian, in increasing order of x, the values meant
/// for it alone. They may be shares of secrets, so they must travel sealed to their recipient;
/// they are wiped when this is dropped.
pub struct Outgoing {
    messages: Vec<(u32, Vec<Fp>)>,
}

impl Outgoing {
    /// The messages `(recipient, values)`, in increasing order of recipient, of a protocol
    /// whose parties are not custodians 1..=n of one threshold (a re-dealing to another set).
    pub(crate) fn new(mut messages: Vec<(u32, Vec<Fp>)>) -> Outgoing {
        messages.sort_unstable_by_key(|(x, _)| *x);
        Outgoing { messages }
    }

    /// `(recipient, values)` for every other custodian, in increasing order of recipient.
    pub fn messages(&self) -> &[(u32, Vec<Fp>)] {
        &self.messages
    }

    /// Adds `delta` to the first value of every message: what a custodian that lies in its
    /// dealing does (the security tests' deviating custodian; see `quorumvm_server::Lie`).
    pub fn shift_first(&mut self, delta: Fp) {
        for (_, values) in &mut self.messages {
            if let Some(v) = values.first_mut() {
                *v += delta;
            }
        }
    }

    /// Takes out the values meant for custodian `x`, if any: what a party that is also a
    /// recipient keeps for itself (a re-dealing's dealer that is in the new set).
    pub fn take(&mut self, x: u32) -> Option<Zeroizing<Vec<Fp>>> {
        let at = self.messages.iter().position(|(r, _)| *r == x)?;
        Some(Zeroizing::new(self.messages.remove(at).1))
    }

    /// The values meant for custodian `x`; `None` for this custodian itself or a stranger.
    pub fn to(&self, x: u32) -> Option<&[Fp]> {
        self.messages
            .iter()
            .find(|(r, _)| *r == x)
            .map(|(_, v)| v.as_slice())
    }
}

impl core::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The values are secret: only who gets how many reaches a log line.
        let lens: Vec<(u32, usize)> = self.messages.iter().map(|(x, v)| (*x, v.len())).collect();
        write!(f, "Outgoing {{ recipients and lengths: {lens:?} }}")
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        wipe(&mut self.messages);
    }
}

fn wipe(messages: &mut [(u32, Vec<Fp>)]) {
    for (_, values) in messages {
        values.zeroize();
    }
}

/// Received messages, wiped however the step that reads them ends.
pub(crate) struct Inbox(pub(crate) Vec<(u32, Vec<Fp>)>);

impl Inbox {
    /// Checks that this holds exactly one message of `len` values from each of `expected` (in
    /// increasing order), and sorts it by sender.
    pub fn check(&mut self, expected: Vec<u32>, len: usize) -> Result<(), MessageError> {
        self.0.sort_unstable_by_key(|(x, _)| *x);
        let got: Vec<u32> = self.0.iter().map(|(x, _)| *x).collect();
        if got != expected {
            return Err(MessageError::WrongSenders { expected, got });
        }
        match self.0.iter().find(|(_, v)| v.len() != len) {
            Some((sender, v)) => Err(MessageError::WrongLength {
                sender: *sender,
                expected: len,
                got: v.len(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// The parameters of a protocol among all n do not name a party of a valid threshold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartyError {
    #[error("threshold {k}-of-{n} is invalid: need 1 <= k <= n")]
    BadThreshold { k: usize, n: usize },
    #[error("custodian {me} is not one of 1..={n}")]
    NotAParty { me: u32, n: usize },
}

/// Who takes part: custodian `me` of `1..=n`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parties {
    pub me: u32,
    pub n: usize,
}

impl Parties {
    /// Custodian `me` of `1..=n` at threshold `k`, checked: the threshold first, then the party.
    pub fn join(me: u32, n: usize, k: usize) -> Result<(Parties, Threshold), PartyError> {
        let t = Threshold::new(k, n).map_err(|_| PartyError::BadThreshold { k, n })?;
        if me == 0 || me as usize > n {
            return Err(PartyError::NotAParty { me, n });
        }
        Ok((Parties { me, n }, t))
    }

    /// Checks that `inbox` holds exactly one message of `len` values from each other
    /// custodian, and sorts it by sender.
    pub fn check(&self, inbox: &mut Inbox, len: usize) -> Result<(), MessageError> {
        inbox.check(self.others(), len)
    }

    /// Every custodian but this one, in increasing order.
    pub fn others(&self) -> Vec<u32> {
        (1..=self.n as u32).filter(|&x| x != self.me).collect()
    }

    /// Splits per-custodian shares (index `x − 1`) into this custodian's own and the messages
    /// for the others.
    pub fn split(&self, mut shares: Vec<Vec<Fp>>) -> (Zeroizing<Vec<Fp>>, Outgoing) {
        let own = Zeroizing::new(std::mem::take(&mut shares[self.me as usize - 1]));
        let messages = (1..).zip(shares).filter(|(x, _)| *x != self.me).collect();
        (own, Outgoing { messages })
    }

    /// The same values for every other custodian.
    pub fn broadcast(&self, values: &[Fp]) -> Outgoing {
        let messages = (1..=self.n as u32)
            .filter(|&x| x != self.me)
            .map(|x| (x, values.to_vec()))
            .collect();
        Outgoing { messages }
    }
}

/// Opens a value that `me` and each of `others` broadcast (one value from each), accepting only
/// when every point lies on one polynomial of degree below k: the checks among all parties (a
/// refresh, a re-dealing) go ahead only when nobody deviated. `Ok(Err(culprits))`: the points
/// do not, and `culprits` are the senders proven off (none when that cannot be told).
pub(crate) fn open_broadcast(
    received: Vec<(u32, Vec<Fp>)>,
    others: Vec<u32>,
    me: u32,
    mine: Fp,
    k: usize,
) -> Result<Result<Fp, Vec<u32>>, MessageError> {
    let mut inbox = Inbox(received);
    inbox.check(others, 1)?;
    let mut points: Vec<(u32, Fp)> = inbox.0.iter().map(|(x, v)| (*x, v[0])).collect();
    points.push((me, mine));
    points.sort_unstable_by_key(|(x, _)| *x);
    Ok(open_unanimous(&points, k))
}

/// Shares values at a fixed degree among custodians 1..=n. Each polynomial is evaluated by
/// Horner at every x straight into per-custodian vectors, with no allocation per value; the
/// coefficient buffer is reused and wiped.
pub(crate) struct Dealer {
    coeffs: Zeroizing<Vec<Fp>>,
    xs: Vec<Fp>,
}

impl Dealer {
    pub fn new(degree: usize, n: usize) -> Dealer {
        Dealer::at(degree, (1..=n as u32).collect::<Vec<_>>().as_slice())
    }

    /// Shares at `degree` among the custodians at the points `xs` (shares are appended in the
    /// order of `xs`).
    pub fn at(degree: usize, xs: &[u32]) -> Dealer {
        Dealer {
            coeffs: Zeroizing::new(vec![Fp::ZERO; degree + 1]),
            xs: xs.iter().map(|&x| Fp::from(x as u64)).collect(),
        }
    }

    /// A vector per custodian with room for `len` shares, so that pushing never reallocates
    /// (which would leave copies of shares in freed memory).
    pub fn outputs(&self, len: usize) -> Vec<Vec<Fp>> {
        (0..self.xs.len())
            .map(|_| Vec::with_capacity(len))
            .collect()
    }

    /// Appends the share of `secret` of the custodian at the i-th point to `shares[i]`
    /// (custodian x's to `shares[x − 1]` for a dealer of [`Dealer::new`]).
    pub fn deal(&mut self, secret: Fp, rng: &mut impl RngCore, shares: &mut [Vec<Fp>]) {
        self.coeffs[0] = secret;
        for c in &mut self.coeffs[1..] {
            *c = Fp::random(rng);
        }
        for (out, &x) in shares.iter_mut().zip(&self.xs) {
            out.push(eval_poly(&self.coeffs, x));
        }
    }
}

/// What every custodian receives, entry `x − 1` for custodian x, in increasing order of
/// sender: the in-memory network of the step machines' tests.
#[cfg(test)]
pub(crate) type Inboxes = Vec<Vec<(u32, Vec<Fp>)>>;

/// Delivers every custodian's outgoing messages (`outs[x − 1]` is custodian x's).
#[cfg(test)]
pub(crate) fn route(outs: &[Outgoing]) -> Inboxes {
    let mut inboxes: Inboxes = vec![Vec::new(); outs.len()];
    for (sender, out) in (1..).zip(outs) {
        for (to, values) in out.messages() {
            inboxes[*to as usize - 1].push((sender, values.clone()));
        }
    }
    inboxes
}
