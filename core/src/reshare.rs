//! Proactive resharing: the custodians refresh their shares of every secret, so that shares
//! from before a refresh are useless together with shares from after it, while the secrets stay
//! the same and nobody learns one. The math, without I/O.
//!
//! **Which refresh.** Each custodian adds a random sharing of zero to every secret (Herzberg,
//! Jarecki, Krawczyk and Yung, "Proactive secret sharing, or how to cope with perpetual
//! leakage", CRYPTO 1995): the new sharing of `s` is `f + Σ_j z_j`, where custodian `j` dealt
//! `z_j`, of degree k − 1 with `z_j(0) = 0`. Re-dealing each share (Desmedt and Jajodia, 1997)
//! would serve a change of the custodian set as well, but costs a second degree check per
//! dealer and a Lagrange combination at every recipient; a refresh among the same n custodians
//! needs neither, so this module does the refresh alone and a change of membership stays a
//! separate protocol.
//!
//! **Checked, not trusted.** Herzberg et al. check each dealing against Feldman commitments.
//! Here the custodians already share authenticated channels and want security with abort, so
//! the check is the batch test of [`crate::share_check`], applied to the sum of the dealings:
//! every `Δ_s = Σ_j z_{j,s}` must be a sharing of degree k − 1 **of zero**. Its challenge `γ` is
//! drawn jointly *after* the dealings are fixed (a random sharing each custodian dealt in the
//! same layer, opened in the next), because a Fiat–Shamir hash cannot cover values no one
//! sees whole:
//!
//! 1. [`Dealt`]: custodian j deals to every i, in one message, its zero-sharings
//!    `z_{j,1..S}(i)`, a zero-sharing `m_j(i)` (the mask of step 3) and a share `c_j(i)` of a
//!    random value (its part of the challenge).
//! 2. [`Challenging`]: i sums what it received into `Δ_s(i)`, `M(i)` and `C(i)`, and opens
//!    `C(i)` to everyone; `γ = C(0)`, decoded from all n points.
//! 3. [`Checking`]: i opens `v(i) = Σ_s γ^(s+1)·Δ_s(i) + M(i)` to everyone, and
//!    [`Checking::finish`] accepts only when the n values lie on one polynomial of degree k − 1
//!    whose value at 0 is zero: then the new shares are `share_s(i) + Δ_s(i)`.
//!
//! **Why it convinces.** A dealing of some `z_{j,s}` with a non-zero constant or a degree above
//! k − 1 makes `Σ_s γ^(s+1)·Δ_s` leave the space of zero-constant polynomials of degree < k for
//! all but S values of `γ`; the mask `M` is fixed before `γ` is known (it was dealt in step 1),
//! so it cancels the error with probability at most (S + 1)/p. `C(0)` holds an honest
//! custodian's uniform `c_j(0)`, of which the others knew k − 1 points only: `γ` is uniform and
//! unknown when the dealings are fixed. A custodian that opens a wrong `C(i)` or `v(i)` makes
//! the decoding fail or name it: the refresh is refused, and nothing changes.
//!
//! **Why it reveals nothing.** `C(0)` is a fresh random value. `v` is masked by `M`, uniform
//! among the zero-constant polynomials of degree < k for anyone who did not see an honest
//! custodian's `m_j` at k − 1 points or more, so it shows nothing about the `Δ_s` to an
//! adversary that was not inside the refresh. One that was inside (up to k − 1 custodians
//! during the refresh) counts, as in Herzberg et al., against both epochs: it learns the
//! `Δ_s` (k − 1 points and the zero constant fix each one) and nothing else.
//!
//! **Old with new.** k − 1 shares of the old epoch and k − 1 of the new one, from different
//! custodians, are consistent with every candidate secret: for each candidate, the completion
//! of the old ones and of the new ones ([`crate::shamir::complete_with_secret`]) differ by a
//! polynomial of degree < k that is zero at 0, a refresh the custodians might have drawn. The
//! tests below build that completion.
//!
//! **Limits.** Security with abort: a deviating custodian can make a refresh fail (the cluster
//! stays on the old epoch), never make it change a secret unnoticed. Agreeing that every
//! custodian accepted, before any of them moves to the new epoch, is the host's job.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::field::Fp;
use crate::rounds::{Dealer, Inbox, MessageError, Outgoing, Parties, PartyError, open_broadcast};

/// How many layers of round messages a refresh takes: the dealings, the challenge's opening,
/// the check's opening.
pub const LAYERS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReshareError {
    #[error(transparent)]
    Party(#[from] PartyError),
    #[error(transparent)]
    Messages(#[from] MessageError),
    /// The opened values do not check: a custodian dealt or opened something wrong. Nobody
    /// moves to the new shares. `culprits` are those whose opened values were proven off.
    #[error("the refresh's {step} does not check{}", named(culprits))]
    Refused {
        step: &'static str,
        culprits: Vec<u32>,
    },
}

fn named(culprits: &[u32]) -> String {
    match culprits {
        [] => String::new(),
        many => format!(" (custodians {many:?} opened values off the polynomial)"),
    }
}

/// What one custodian brings to a refresh.
pub struct Setup<'a> {
    pub me: u32,
    pub n: usize,
    pub k: usize,
    /// This custodian's current shares of the secrets to refresh, in an order every custodian
    /// agrees on.
    pub shares: &'a [Fp],
}

/// Layer 1 done: this custodian's dealings are out; awaiting the others'.
pub struct Dealt {
    parties: Parties,
    k: usize,
    /// Current shares, then this custodian's own points of its zero-sharings, mask and
    /// challenge share, in that order.
    shares: Zeroizing<Vec<Fp>>,
    own: Zeroizing<Vec<Fp>>,
}

/// Deals this custodian's zero-sharings, mask and challenge share (layer 1).
pub fn begin(
    setup: Setup<'_>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Dealt, Outgoing), ReshareError> {
    let Setup { me, n, k, shares } = setup;
    let (parties, t) = Parties::join(me, n, k)?;
    let mut dealer = Dealer::new(t.degree(), n);
    let len = shares.len() + 2;
    let mut out = dealer.outputs(len);
    for _ in 0..=shares.len() {
        // One zero-sharing per secret, then the mask.
        dealer.deal(Fp::ZERO, rng, &mut out);
    }
    dealer.deal(Fp::random(rng), rng, &mut out);
    let (own, out) = parties.split(out);
    Ok((
        Dealt {
            parties,
            k,
            shares: Zeroizing::new(shares.to_vec()),
            own,
        },
        out,
    ))
}

impl Dealt {
    /// Takes every other custodian's dealings and opens this custodian's share of the
    /// challenge (layer 2).
    pub fn challenge(
        self,
        received: Vec<(u32, Vec<Fp>)>,
    ) -> Result<(Challenging, Outgoing), ReshareError> {
        let Dealt {
            parties,
            k,
            shares,
            mut own,
        } = self;
        let mut inbox = Inbox(received);
        parties.check(&mut inbox, own.len())?;
        for (_, values) in &inbox.0 {
            for (sum, v) in own.iter_mut().zip(values) {
                *sum += *v;
            }
        }
        let challenge = own.pop().expect("the challenge share is dealt last");
        let out = parties.broadcast(&[challenge]);
        Ok((
            Challenging {
                parties,
                k,
                shares,
                sums: own,
                challenge,
            },
            out,
        ))
    }
}

/// Layer 2 done: the challenge's share is out. Holds the sums `Δ_s(i)` and `M(i)`.
pub struct Challenging {
    parties: Parties,
    k: usize,
    shares: Zeroizing<Vec<Fp>>,
    /// `Δ_1(i) .. Δ_S(i)`, then `M(i)`.
    sums: Zeroizing<Vec<Fp>>,
    challenge: Fp,
}

impl Challenging {
    /// Opens the challenge from every custodian's share, then opens this custodian's masked
    /// combination of its refresh values (layer 3).
    pub fn check(
        self,
        received: Vec<(u32, Vec<Fp>)>,
    ) -> Result<(Checking, Outgoing), ReshareError> {
        let Challenging {
            parties,
            k,
            shares,
            sums,
            challenge,
        } = self;
        let gamma = open_all(parties, k, received, challenge, "challenge")?;
        let (deltas, mask) = sums.split_at(sums.len() - 1);
        let mut v = mask[0];
        let mut power = Fp::ONE;
        for &d in deltas {
            power *= gamma;
            v += power * d;
        }
        let out = parties.broadcast(&[v]);
        Ok((
            Checking {
                parties,
                k,
                shares,
                sums,
                v,
            },
            out,
        ))
    }
}

/// Layer 3 done: the check's value is out; awaiting the others'.
pub struct Checking {
    parties: Parties,
    k: usize,
    shares: Zeroizing<Vec<Fp>>,
    sums: Zeroizing<Vec<Fp>>,
    v: Fp,
}

impl Checking {
    /// Takes every other custodian's check value and decides: this custodian's new shares, in
    /// the order of [`Setup::shares`], or [`ReshareError::Refused`].
    pub fn finish(self, received: Vec<(u32, Vec<Fp>)>) -> Result<Zeroizing<Vec<Fp>>, ReshareError> {
        let zero = open_all(self.parties, self.k, received, self.v, "check")?;
        if zero != Fp::ZERO {
            return Err(ReshareError::Refused {
                step: "check (the refresh would change a secret)",
                culprits: Vec::new(),
            });
        }
        let mut fresh = Zeroizing::new(self.shares.to_vec());
        for (share, delta) in fresh.iter_mut().zip(self.sums.iter()) {
            *share += *delta;
        }
        Ok(fresh)
    }
}

/// Opens a broadcast value from all n points, refusing unless every one lies on one polynomial
/// of degree < k: a refresh goes ahead only when nobody deviated.
fn open_all(
    parties: Parties,
    k: usize,
    received: Vec<(u32, Vec<Fp>)>,
    mine: Fp,
    step: &'static str,
) -> Result<Fp, ReshareError> {
    open_broadcast(received, parties.others(), parties.me, mine, k)?
        .map_err(|culprits| ReshareError::Refused { step, culprits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::rounds::route;
    use crate::shamir::{Share, Threshold, complete_with_secret, deal, eval_poly, reconstruct};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// What a deviating custodian does to its messages of a layer.
    type Tamper<'a> = &'a mut dyn FnMut(u32, u32, &mut Outgoing);

    /// Runs a refresh among all n custodians: each one's outcome.
    fn run(
        shares: &[Vec<Fp>],
        k: usize,
        seed: u64,
        tamper: Tamper<'_>,
    ) -> Vec<Result<Zeroizing<Vec<Fp>>, ReshareError>> {
        let n = shares.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let (dealt, mut outs): (Vec<_>, Vec<_>) = (1..=n as u32)
            .map(|me| {
                let setup = Setup {
                    me,
                    n,
                    k,
                    shares: &shares[me as usize - 1],
                };
                begin(setup, &mut rng).unwrap()
            })
            .unzip();
        for (me, out) in (1..).zip(&mut outs) {
            tamper(1, me, out);
        }
        let (challenging, mut outs): (Vec<_>, Vec<_>) = dealt
            .into_iter()
            .zip(route(&outs))
            .map(|(d, inbox)| d.challenge(inbox).unwrap())
            .unzip();
        for (me, out) in (1..).zip(&mut outs) {
            tamper(2, me, out);
        }
        let mut refused = vec![None; n];
        let mut checking = Vec::new();
        let mut next = Vec::new();
        for (i, (c, inbox)) in challenging.into_iter().zip(route(&outs)).enumerate() {
            match c.check(inbox) {
                Ok((c, out)) => {
                    checking.push(Some(c));
                    next.push(out);
                }
                Err(e) => {
                    refused[i] = Some(e);
                    checking.push(None);
                    // A custodian that refused sends nothing more; the others stall.
                    next.push(
                        Parties {
                            me: i as u32 + 1,
                            n,
                        }
                        .broadcast(&[Fp::ZERO]),
                    );
                }
            }
        }
        for (me, out) in (1..).zip(&mut next) {
            tamper(3, me, out);
        }
        checking
            .into_iter()
            .zip(route(&next))
            .zip(refused)
            .map(|((c, inbox), refused)| match (c, refused) {
                (Some(c), _) => c.finish(inbox),
                (None, Some(e)) => Err(e),
                (None, None) => unreachable!(),
            })
            .collect()
    }

    fn honest(_: u32, _: u32, _: &mut Outgoing) {}

    fn fresh(outcomes: Vec<Result<Zeroizing<Vec<Fp>>, ReshareError>>) -> Vec<Vec<Fp>> {
        outcomes
            .into_iter()
            .map(|o| o.expect("an honest refresh passes").to_vec())
            .collect()
    }

    fn secret_of(shares: &[Vec<Fp>], which: usize, xs: &[u32], k: usize) -> Fp {
        let points: Vec<Share> = xs
            .iter()
            .map(|&x| Share {
                x,
                y: shares[x as usize - 1][which],
            })
            .collect();
        reconstruct(&points, Threshold::new(k, shares.len()).unwrap()).unwrap()
    }

    #[test]
    fn a_refresh_keeps_every_secret_and_changes_every_share() {
        let mut rng = StdRng::seed_from_u64(1);
        for (k, n, count) in [(1, 1, 2), (2, 3, 1), (2, 3, 5), (3, 5, 4), (2, 4, 0)] {
            let secrets: Vec<Fp> = (0..count).map(|_| Fp::random(&mut rng)).collect();
            let old = deal(&secrets, k, n, &mut rng);
            let new = fresh(run(&old, k, 2, &mut honest));
            let everyone: Vec<u32> = (1..=n as u32).collect();
            for (s, &secret) in secrets.iter().enumerate() {
                // Any k of the new shares give the secret, and so does all of them.
                assert_eq!(secret_of(&new, s, &everyone[..k], k), secret);
                assert_eq!(secret_of(&new, s, &everyone[n - k..], k), secret);
                if k > 1 {
                    for x in 0..n {
                        assert_ne!(old[x][s], new[x][s], "{k}-of-{n}: share {x} unchanged");
                    }
                }
            }
        }
    }

    #[test]
    fn old_shares_with_new_ones_are_consistent_with_every_secret() {
        // The mobile adversary of Herzberg et al.: k − 1 custodians' shares before the
        // refresh, k − 1 others' after it. Together they are 2k − 2 >= k points, yet for every
        // candidate secret there is an old sharing and a refresh that explain them.
        let mut rng = StdRng::seed_from_u64(3);
        let (k, n) = (3, 5);
        let secret = Fp::from(42u64);
        let old = deal(&[secret], k, n, &mut rng);
        let new = fresh(run(&old, k, 4, &mut honest));
        let before: Vec<Share> = [1u32, 2]
            .iter()
            .map(|&x| Share {
                x,
                y: old[x as usize - 1][0],
            })
            .collect();
        let after: Vec<Share> = [4u32, 5]
            .iter()
            .map(|&x| Share {
                x,
                y: new[x as usize - 1][0],
            })
            .collect();
        for candidate in [secret, Fp::ZERO, Fp::from(7u64), Fp::random(&mut rng)] {
            let f = complete_with_secret(&before, candidate).unwrap();
            let g = complete_with_secret(&after, candidate).unwrap();
            for s in &before {
                assert_eq!(eval_poly(&f, Fp::from(s.x as u64)), s.y);
            }
            for s in &after {
                assert_eq!(eval_poly(&g, Fp::from(s.x as u64)), s.y);
            }
            // The refresh that would take f to g: degree < k, zero at 0.
            let refresh: Vec<Fp> = g.iter().zip(&f).map(|(a, b)| *a - *b).collect();
            assert_eq!(refresh.len(), k);
            assert_eq!(eval_poly(&refresh, Fp::ZERO), Fp::ZERO);
        }
        // Without the refresh the same points give the secret away: any k of them open it.
        let stale = [
            Share { x: 1, y: old[0][0] },
            Share { x: 2, y: old[1][0] },
            Share { x: 4, y: old[3][0] },
        ];
        let t = Threshold::new(k, n).unwrap();
        assert_eq!(reconstruct(&stale, t).unwrap(), secret);
        // With it, they open something else.
        let mixed = [stale[0].clone(), stale[1].clone(), after[0].clone()];
        assert_ne!(reconstruct(&mixed, t).unwrap(), secret);
    }

    #[test]
    fn a_dealing_that_would_change_a_secret_is_refused_by_everyone() {
        let mut rng = StdRng::seed_from_u64(5);
        for (k, n) in [(2, 3), (3, 5)] {
            let old = deal(&[Fp::from(9u64), Fp::from(10u64)], k, n, &mut rng);
            for liar in 1..=n as u32 {
                // The liar deals a sharing of 1, not of 0, for the first secret, and opens
                // its check value as if its own point were on that sharing too: every value
                // opened lies on one polynomial of degree k − 1, which a degree check alone
                // would pass. Only its value at 0 (γ, not 0) tells.
                let mut challenge = Vec::new();
                let mut tamper = |layer: u32, me: u32, out: &mut Outgoing| match layer {
                    1 if me == liar => out.shift_first(Fp::ONE),
                    2 => challenge.push((me, out.messages()[0].1[0])),
                    3 if me == liar => {
                        let gamma = decode(&challenge, k, 0).unwrap().value;
                        out.shift_first(gamma);
                    }
                    _ => {}
                };
                let outcomes = run(&old, k, 6, &mut tamper);
                for (x, o) in (1..).zip(&outcomes).filter(|(x, _)| *x != liar) {
                    assert!(
                        matches!(o, Err(ReshareError::Refused { step, .. }) if step.starts_with("check (")),
                        "{k}-of-{n}, liar {liar}: custodian {x} got {o:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_inconsistent_dealing_is_refused_by_everyone() {
        let mut rng = StdRng::seed_from_u64(5);
        for (k, n) in [(2, 3), (3, 5)] {
            let old = deal(&[Fp::from(9u64), Fp::from(10u64)], k, n, &mut rng);
            for liar in 1..=n as u32 {
                // The liar shifts what it deals to the others, not its own point.
                let mut tamper = |layer: u32, me: u32, out: &mut Outgoing| {
                    if layer == 1 && me == liar {
                        out.shift_first(Fp::ONE);
                    }
                };
                let outcomes = run(&old, k, 6, &mut tamper);
                for (x, o) in (1..).zip(&outcomes) {
                    if x == liar {
                        continue;
                    }
                    assert!(
                        matches!(o, Err(ReshareError::Refused { .. })),
                        "{k}-of-{n}, liar {liar}: custodian {x} accepted {o:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_opening_is_refused_and_named_when_it_can_be() {
        let mut rng = StdRng::seed_from_u64(7);
        // (k, n, named): one wrong point is correctable among n when n >= k + 2.
        for (k, n, named) in [(2, 3, false), (2, 4, true), (3, 5, false)] {
            let old = deal(&[Fp::from(1u64)], k, n, &mut rng);
            for layer in [2, 3] {
                let mut tamper = |l: u32, me: u32, out: &mut Outgoing| {
                    if l == layer && me == 1 {
                        out.shift_first(Fp::ONE);
                    }
                };
                let outcomes = run(&old, k, 8, &mut tamper);
                for o in &outcomes[1..] {
                    match o {
                        Err(ReshareError::Refused { culprits, .. }) => {
                            assert_eq!(culprits.is_empty(), !named, "{k}-of-{n}, layer {layer}");
                            if named {
                                assert_eq!(culprits, &vec![1]);
                            }
                        }
                        other => panic!("{k}-of-{n}, layer {layer}: accepted {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn what_is_opened_is_masked_and_fresh() {
        // The same shares refreshed twice open unrelated check values.
        let mut rng = StdRng::seed_from_u64(9);
        let old = deal(&[Fp::from(5u64)], 2, 3, &mut rng);
        let mut seen = Vec::new();
        for seed in [10, 11] {
            let mut record = |layer: u32, me: u32, out: &mut Outgoing| {
                if layer == 3 && me == 1 {
                    seen.push(out.messages()[0].1[0]);
                }
            };
            fresh(run(&old, 2, seed, &mut record));
        }
        assert_ne!(seen[0], seen[1]);
    }

    #[test]
    fn bad_parameters_and_messages_are_refused() {
        let mut rng = StdRng::seed_from_u64(12);
        let setup = |me, n, k| Setup {
            me,
            n,
            k,
            shares: &[],
        };
        assert_eq!(
            begin(setup(1, 2, 3), &mut rng).err().map(|e| e.to_string()),
            Some(ReshareError::Party(PartyError::BadThreshold { k: 3, n: 2 }).to_string())
        );
        assert!(matches!(
            begin(setup(4, 3, 2), &mut rng),
            Err(ReshareError::Party(PartyError::NotAParty { me: 4, n: 3 }))
        ));
        let (dealt, out) = begin(setup(1, 3, 2), &mut rng).unwrap();
        assert_eq!(
            out.messages()[0].1.len(),
            2,
            "the mask and the challenge share"
        );
        assert!(matches!(
            dealt.challenge(vec![(2, vec![Fp::ONE; 2])]),
            Err(ReshareError::Messages(MessageError::WrongSenders { .. }))
        ));
    }
}
