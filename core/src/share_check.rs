//! The custodians' joint check, before a version serves, that the n shares of every secret lie
//! on one polynomial of degree k − 1: the math, without I/O.
//!
//! A custodian checks that its own share is the one the publisher signed (the deal), but not
//! that the publisher dealt consistent shares: a share that is off (a publisher's mistake, or a
//! substitution it signed) would make every evaluation fail or, opened from k shares alone,
//! wrong. The check is the usual batch test of sharings' degree: open one random linear
//! combination of all of them, masked by a fresh random sharing, and see that it has the right
//! degree. Its challenge is a hash of public data (Fiat and Shamir, 1986) rather than a value
//! the custodians draw together, which would take one more round:
//!
//! 1. [`Masking::begin`]: custodian j deals a random `r_j`, a sharing of degree k − 1 of a random
//!    value, to all n (one value per recipient, sealed to it).
//! 2. [`Masking::open`]: custodian i sums what it received into `ρ_i = Σ_j r_j(i)` and sends
//!    every other custodian `v_i = Σ_s γ^(s+1)·share_s(i) + ρ_i`, where `share_s(i)` is its share
//!    of secret `s` (in the manifest's order) and `γ` is the [`challenge`]: a hash of the package
//!    id, the deal's digest and the check's session id, so fixed only once the deal is.
//! 3. [`Opening::finish`]: the n values `v` are decoded ([`crate::decode`], with at most k − 1
//!    wrong): on one polynomial of degree k − 1, [`Verdict::Consistent`]; otherwise
//!    [`Verdict::Inconsistent`], naming the custodians whose values are off when the decoder can
//!    tell (n ≥ k + 2 for one), and nobody otherwise.
//!
//! **Why it convinces.** If the shares of some secret are not on one polynomial of degree
//! k − 1, then projecting the share vectors onto `Fⁿ / (the polynomials of degree < k)`, the
//! combination's image `Σ_s γ^(s+1)·π(share_s)` is a non-zero polynomial in `γ` of degree at
//! most S (the number of secrets), zero for at most S values of `γ` out of p = 2¹²⁷ − 1. The
//! mask adds a sharing of degree k − 1, which changes no image. A publisher that wanted its
//! error to pass would have to find a deal whose hash lands on one of those S values.
//!
//! **Why it reveals nothing.** What is opened is the polynomial
//! `V = Σ_s γ^(s+1)·S_s + R`, where `R = Σ_j r_j`. Any k − 1 custodians know their own points
//! of every `S_s` and of `R`, and their own `r_j` entirely; an honest custodian's `r_j` is a
//! uniform polynomial of degree k − 1 of which they know k − 1 points, so its value at 0 (and
//! with it `R`'s) is uniform given all they know. `V` therefore shows them a uniform value in
//! place of `Σ_s γ^(s+1)·s`, and the points they did not know are fixed by those they did and
//! that uniform value: nothing about any secret. A fresh mask is dealt for every check.
//!
//! **Limits.** Security with abort against deviating custodians, not more: a custodian that
//! deals an inconsistent `r_j`, sends different peers different `v_i`, or stays silent makes
//! the check fail or not complete (the version does not serve; nothing wrong is accepted). A
//! custodian colluding with a malicious publisher knows `γ` and the error the publisher made,
//! and can deal an `r_j` whose error cancels it, so that a bad deal passes: defending against
//! that needs verifiable sharing of the masks and belongs with the handling of malicious
//! custodians. A custodian named here sent a value off the polynomial the others agree on:
//! its share as dealt is off, or it deviated.

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::decode::open_unanimous;
use crate::field::Fp;
use crate::rounds::{Dealer, Inbox, MessageError, Outgoing, Parties, PartyError};

/// Separates the challenge's hash from every other use of SHA-256.
const CHALLENGE_DOMAIN: &[u8] = b"quorumvm share check challenge v1\0";

/// The challenge `γ` of a check: SHA-256 over the package id, the digest of the deal and the
/// check's session id (each of fixed length, or length-prefixed), its first 16 bytes read as a
/// little-endian integer and reduced mod p (a bias of at most 2⁻¹²⁶).
pub fn challenge(package_id: &[u8; 32], deal_digest: &[u8; 32], session: &str) -> Fp {
    let mut h = Sha256::new();
    h.update(CHALLENGE_DOMAIN);
    h.update(package_id);
    h.update(deal_digest);
    h.update((session.len() as u64).to_be_bytes());
    h.update(session.as_bytes());
    let digest = h.finalize();
    let mut low = [0u8; 16];
    low.copy_from_slice(&digest[..16]);
    Fp::from_u128(u128::from_le_bytes(low))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareCheckError {
    #[error(transparent)]
    Party(#[from] PartyError),
    #[error(transparent)]
    Messages(#[from] MessageError),
}

/// What the check found. A refusal is an outcome, not an error: every custodian that completes
/// the check sees the same values from the honest ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every secret's shares lie on one polynomial of degree k − 1.
    Consistent,
    /// They do not. `culprits` are the custodians whose values are off the one polynomial the
    /// others agree on, when that can be told (empty otherwise), in increasing order.
    Inconsistent { culprits: Vec<u32> },
}

/// What one custodian brings to a check.
pub struct Setup<'a> {
    pub me: u32,
    pub n: usize,
    pub k: usize,
    /// The [`challenge`] of this check.
    pub challenge: Fp,
    /// This custodian's shares of the version's secrets, in the manifest's order.
    pub shares: &'a [Fp],
}

/// Layer 1 done: this custodian's mask is dealt; awaiting the others'. Holds this custodian's
/// part of `v` so far (secret: its combined shares plus its own mask), wiped when dropped.
pub struct Masking {
    parties: Parties,
    k: usize,
    partial: Zeroizing<Fp>,
}

impl Masking {
    /// Combines this custodian's shares under the challenge and deals its random mask.
    pub fn begin(
        setup: Setup<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Masking, Outgoing), ShareCheckError> {
        let Setup {
            me,
            n,
            k,
            challenge,
            shares,
        } = setup;
        let (parties, t) = Parties::join(me, n, k)?;
        let mut dealer = Dealer::new(t.degree(), n);
        let mut masks = dealer.outputs(1);
        dealer.deal(Fp::random(rng), rng, &mut masks);
        let (own, out) = parties.split(masks);
        let mut partial = Zeroizing::new(own[0]);
        let mut power = Fp::ONE;
        for &share in shares {
            power *= challenge;
            *partial += power * share;
        }
        Ok((
            Masking {
                parties,
                k,
                partial,
            },
            out,
        ))
    }

    /// Takes every other custodian's mask share and sends them all this custodian's `v`.
    pub fn open(
        self,
        received: Vec<(u32, Vec<Fp>)>,
    ) -> Result<(Opening, Outgoing), ShareCheckError> {
        let Masking {
            parties,
            k,
            mut partial,
        } = self;
        let mut inbox = Inbox(received);
        parties.check(&mut inbox, 1)?;
        for (_, mask) in &inbox.0 {
            *partial += mask[0];
        }
        let mine = *partial;
        let out = parties.broadcast(&[mine]);
        Ok((Opening { parties, k, mine }, out))
    }
}

/// Layer 2 done: this custodian's `v` is out; awaiting the others'. Nothing here is secret.
pub struct Opening {
    parties: Parties,
    k: usize,
    mine: Fp,
}

impl Opening {
    /// Takes every other custodian's `v` and decides.
    pub fn finish(self, received: Vec<(u32, Vec<Fp>)>) -> Result<Verdict, ShareCheckError> {
        let mut inbox = Inbox(received);
        self.parties.check(&mut inbox, 1)?;
        let mut points: Vec<(u32, Fp)> = inbox.0.iter().map(|(x, v)| (*x, v[0])).collect();
        points.push((self.parties.me, self.mine));
        Ok(match open_unanimous(&points, self.k) {
            Ok(_) => Verdict::Consistent,
            Err(culprits) => Verdict::Inconsistent { culprits },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rounds::route;
    use crate::shamir::deal;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Runs the check among all n custodians: each one's verdict, and the values opened in
    /// layer 2 (each custodian's `v`).
    fn run(shares: &[Vec<Fp>], k: usize, session: &str, seed: u64) -> (Vec<Verdict>, Vec<Fp>) {
        let n = shares.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let gamma = challenge(&[7; 32], &[9; 32], session);
        let (maskings, outs): (Vec<_>, Vec<_>) = (1..=n as u32)
            .map(|me| {
                let setup = Setup {
                    me,
                    n,
                    k,
                    challenge: gamma,
                    shares: &shares[me as usize - 1],
                };
                Masking::begin(setup, &mut rng).unwrap()
            })
            .unzip();
        let (openings, outs): (Vec<_>, Vec<_>) = maskings
            .into_iter()
            .zip(route(&outs))
            .map(|(m, inbox)| m.open(inbox).unwrap())
            .unzip();
        let opened = outs
            .iter()
            .filter_map(|o| o.messages().first().map(|(_, v)| v[0]))
            .collect();
        let verdicts = openings
            .into_iter()
            .zip(route(&outs))
            .map(|(o, inbox)| o.finish(inbox).unwrap())
            .collect();
        (verdicts, opened)
    }

    fn secrets(count: usize, rng: &mut StdRng) -> Vec<Fp> {
        (0..count).map(|_| Fp::random(rng)).collect()
    }

    #[test]
    fn a_consistent_deal_passes_at_every_custodian() {
        let mut rng = StdRng::seed_from_u64(1);
        for (k, n, count) in [
            (1, 1, 1),
            (2, 3, 1),
            (2, 3, 3),
            (2, 4, 2),
            (3, 5, 4),
            (2, 5, 0),
        ] {
            let shares = deal(&secrets(count, &mut rng), k, n, &mut rng);
            let (verdicts, _) = run(&shares, k, "check-1", 2);
            assert!(
                verdicts.iter().all(|v| *v == Verdict::Consistent),
                "{k}-of-{n}, {count} secrets: {verdicts:?}"
            );
        }
    }

    #[test]
    fn a_share_off_is_refused_by_everyone_and_named_when_it_can_be() {
        let mut rng = StdRng::seed_from_u64(3);
        // (k, n, named): one wrong point is correctable among n values when n ≥ k + 2 and the
        // decoder may still refuse k − 1 wrong ones (see `decode::radius`).
        for (k, n, named) in [(2, 3, false), (2, 4, true), (2, 5, true), (3, 5, false)] {
            for bad in 1..=n as u32 {
                for secret in 0..3 {
                    let mut shares = deal(&secrets(3, &mut rng), k, n, &mut rng);
                    shares[bad as usize - 1][secret] += Fp::ONE;
                    let (verdicts, _) = run(&shares, k, "check-2", 4);
                    let culprits = if named { vec![bad] } else { vec![] };
                    for v in &verdicts {
                        assert_eq!(
                            *v,
                            Verdict::Inconsistent {
                                culprits: culprits.clone()
                            },
                            "{k}-of-{n}, custodian {bad}'s share of secret {secret} off"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn what_is_opened_is_masked() {
        // The same shares checked twice open unrelated values: the fresh masks hide the
        // combination (and a different session changes the challenge too).
        let mut rng = StdRng::seed_from_u64(5);
        let shares = deal(&secrets(2, &mut rng), 2, 3, &mut rng);
        let (_, first) = run(&shares, 2, "check-3", 6);
        let (_, again) = run(&shares, 2, "check-3", 7);
        assert!(first.iter().zip(&again).all(|(a, b)| a != b));
        assert_ne!(
            challenge(&[7; 32], &[9; 32], "check-3"),
            challenge(&[7; 32], &[9; 32], "check-4")
        );
        assert_ne!(
            challenge(&[7; 32], &[9; 32], "check-3"),
            challenge(&[7; 32], &[8; 32], "check-3")
        );
    }

    #[test]
    fn bad_parameters_and_messages_are_refused() {
        let mut rng = StdRng::seed_from_u64(8);
        let setup = |me, n, k| Setup {
            me,
            n,
            k,
            challenge: Fp::ONE,
            shares: &[],
        };
        assert_eq!(
            Masking::begin(setup(1, 2, 3), &mut rng).err(),
            Some(ShareCheckError::Party(PartyError::BadThreshold {
                k: 3,
                n: 2
            }))
        );
        assert_eq!(
            Masking::begin(setup(4, 3, 2), &mut rng).err(),
            Some(ShareCheckError::Party(PartyError::NotAParty {
                me: 4,
                n: 3
            }))
        );
        let (masking, out) = Masking::begin(setup(1, 3, 2), &mut rng).unwrap();
        assert_eq!(out.messages().len(), 2);
        assert_eq!(
            masking.open(vec![(2, vec![Fp::ONE])]).err(),
            Some(ShareCheckError::Messages(MessageError::WrongSenders {
                expected: vec![2, 3],
                got: vec![2]
            }))
        );
        let (masking, _) = Masking::begin(setup(1, 3, 2), &mut rng).unwrap();
        let (opening, out) = masking
            .open(vec![(2, vec![Fp::ONE]), (3, vec![Fp::ONE])])
            .unwrap();
        assert_eq!(out.to(2), out.to(3), "v goes to everyone");
        assert_eq!(
            opening
                .finish(vec![(2, vec![Fp::ONE, Fp::ONE]), (3, vec![Fp::ONE])])
                .err(),
            Some(ShareCheckError::Messages(MessageError::WrongLength {
                sender: 2,
                expected: 1,
                got: 2
            }))
        );
    }
}
