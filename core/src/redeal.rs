//! Re-dealing every secret from one set of custodians to another (other members, another k or
//! n), so that custodians can be replaced, added and removed: the math, without I/O.
//!
//! **Which protocol.** The redistribution of Desmedt and Jajodia ("Redistributing secret shares
//! to new access structures and its applications", George Mason University, ISSE-TR-97-01,
//! 1997): every old custodian `j` re-shares its share `s_j` of each secret with a fresh
//! polynomial `g_j` of degree k′ − 1, `g_j(0) = s_j`, and sends `g_j(i)` to each new custodian
//! `i`; the new share is `s′_i = Σ_j r_j·g_j(i)`, where `r` recombines old shares into the secret
//! (`Σ_j r_j·s_j = s`; here the Lagrange coefficients at 0 of the first k old points). The new
//! shares lie on `Σ_j r_j·g_j`, of degree k′ − 1 with constant `s`, which is independent of the
//! old polynomial: old shares are useless with new ones. Nobody reconstructs anything. The
//! proactive refresh ([`crate::reshare`]) is the special case of the same members, which is
//! cheaper done by adding zero-sharings; this module serves every change of membership.
//!
//! **Checked, not trusted.** A dealer that re-shares `s_j + e` instead of `s_j` would move the
//! secret by `r_j·e`, and the new custodians cannot see `g_j(0)`. Wong, Wang and Wing
//! ("Verifiable secret redistribution for archive systems", IEEE SISW 2002) check it against
//! Feldman commitments to the old shares. Here every old custodian deals, and there are at
//! least 2k − 1 of them (the cluster's rule n ≥ 2k − 1), so the old shares themselves are
//! redundant: `(s_j)_j` is a codeword of the Reed–Solomon code of dimension k on the old points,
//! whose dual is spanned by `(u_j·x_j^e)_j` for `e < n − k`, with `u_j = 1/Π_{l≠j}(x_j − x_l)`
//! (the coefficient of `x^(n−1)` in Lagrange's formula: `Σ_j u_j·p(x_j) = 0` for every `p` of
//! degree below n − 1). So every `D_e = Σ_j u_j·x_j^e·g_j` must be a polynomial of degree below
//! k′ **with constant zero**, and the new custodians hold its points. They test all of them, for
//! all S secrets, at once, as the refresh does: a random combination, masked, opened among the
//! new custodians, with a challenge `γ` drawn jointly after the dealings are fixed:
//!
//! 1. [`deal`]: old custodian j sends each new custodian i, in one message, `g_{j,1..S}(i)`, a
//!    point `m_j(i)` of a zero-sharing (the mask) and a point `c_j(i)` of a sharing of a random
//!    value (its part of the challenge), all of degree k′ − 1.
//! 2. [`receive`]: new custodian i computes its new shares `s′_s(i)`, the check terms
//!    `D_{s,e}(i)`, `M(i) = Σ_j m_j(i)`, `C(i) = Σ_j c_j(i)`, and opens `C(i)` to the other new
//!    custodians; `γ = C(0)`, decoded from all n′ points.
//! 3. [`Challenging::check`]: i opens `v(i) = Σ_{s,e} γ^(1+s·(n−k)+e)·D_{s,e}(i) + M(i)`, and
//!    [`Checking::finish`] accepts only when the n′ values lie on one polynomial of degree below
//!    k′ whose value at 0 is zero: then `s′(i)` are its new shares.
//!
//! **Why it convinces.** Say at most k − 1 old and k′ − 1 new custodians deviate (Desmedt and
//! Jajodia's model), so the honest new custodians H′ are at least n′ − k′ + 1 ≥ k′ and determine
//! every opened polynomial. If the check passes for a `γ` the dealers could not foresee, then
//! (but with probability at most (S·(n − k) + 1)/p) every `D_{s,e}`, restricted to H′, is a
//! zero-constant polynomial of degree below k′: `v` is a polynomial in `γ` with those as
//! coefficients, and the mask was fixed before `γ`. Honest dealers' `g_h` are polynomials of
//! degree below k′ with constant `s_h`. For the deviating dealers B, `Σ_{b∈B} u_b·x_b^e·g_b` is
//! then a polynomial of degree below k′ on H′ for each `e < n − k`, and since
//! |B| ≤ k − 1 ≤ n − k those n − k combinations (a scaled Vandermonde matrix of full column
//! rank) determine each `g_b`: it is a polynomial of degree below k′ too. Its constant `c_b`
//! then satisfies every parity check together with the honest `s_h`, so `(c_j)_j` is a codeword;
//! the honest dealers are at least n − k + 1 ≥ k and fix it: `c_b = s_b`. The new shares of H′
//! are therefore on a polynomial of degree below k′ with constant `s`.
//!
//! **Why it reveals nothing.** A new custodian sees, from each honest dealer, one point of a
//! polynomial of degree k′ − 1 whose only fixed coefficient is the constant: k′ − 1 of them see
//! uniform values. `γ` is a fresh random value. `v` is a zero-constant polynomial of degree below
//! k′ whose points at the deviating new custodians they hold already; the honest dealers' masks
//! make the rest uniform among such polynomials. So the old custodians learn nothing, and k − 1
//! old shares with k′ − 1 new shares are consistent with every candidate secret (shown in the
//! tests, as [`crate::shamir::complete_with_secret`] builds it).
//!
//! **Limits.** Security with abort, as the refresh: a deviating custodian (old or new) can make a
//! re-dealing fail, never make it change a secret unnoticed. Every old custodian must deal, and
//! there must be at least 2k − 1 of them: a custodian that is gone for good (a lost disk) can be
//! left out only while the others still number 2k − 1 (a 3-of-5 cluster that lost one: the four
//! others re-deal); from 2-of-3, the two that remain cannot check each other's dealing, and a
//! replacement would need commitments to the old shares (Feldman's), which the cluster does not
//! keep. Agreeing that every new custodian accepted before anyone switches is the host's job.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::field::Fp;
use crate::rounds::{Dealer, Inbox, MessageError, Outgoing, open_broadcast};
use crate::shamir::lagrange_coefficients;

/// How many layers of round messages a re-dealing takes: the dealings (old to new), the
/// challenge's opening and the check's opening (new to new).
pub const LAYERS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedealError {
    #[error(transparent)]
    Members(#[from] MembersError),
    #[error(transparent)]
    Messages(#[from] MessageError),
    /// Custodian `me` is not among the members this step is for.
    #[error("custodian {me} is not one of the {role} custodians {members:?}")]
    NotAMember {
        me: u32,
        role: &'static str,
        members: Vec<u32>,
    },
    /// The opened values do not check: a custodian dealt or opened something wrong. Nobody
    /// moves to the new shares. `culprits` are the new custodians whose opened values were
    /// proven off.
    #[error("the re-dealing's {step} does not check{}", named(culprits))]
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

/// A set of custodians cannot hold a sharing that survives k − 1 deviating members.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("threshold {k}-of-{n} is invalid: need 1 <= k and n >= 2k - 1")]
    BadThreshold { k: usize, n: usize },
    #[error("custodian points must be distinct and non-zero; {0} is not")]
    BadPoint(u32),
}

/// The custodians that hold (or are to hold) the shares: their points and the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    xs: Vec<u32>,
    k: usize,
}

impl Members {
    /// The custodians at the points `xs` (in any order) at threshold `k`, with `n ≥ 2k − 1`: the
    /// cluster's rule, which is also what lets the old shares check the dealers here.
    pub fn new(mut xs: Vec<u32>, k: usize) -> Result<Members, MembersError> {
        let n = xs.len();
        if k == 0 || n < 2 * k - 1 {
            return Err(MembersError::BadThreshold { k, n });
        }
        xs.sort_unstable();
        if let Some(bad) = xs.first().filter(|&&x| x == 0) {
            return Err(MembersError::BadPoint(*bad));
        }
        if let Some(w) = xs.windows(2).find(|w| w[0] == w[1]) {
            return Err(MembersError::BadPoint(w[0]));
        }
        Ok(Members { xs, k })
    }

    pub fn xs(&self) -> &[u32] {
        &self.xs
    }

    pub fn k(&self) -> usize {
        self.k
    }

    fn require(&self, me: u32, role: &'static str) -> Result<(), RedealError> {
        if self.xs.contains(&me) {
            Ok(())
        } else {
            Err(RedealError::NotAMember {
                me,
                role,
                members: self.xs.clone(),
            })
        }
    }

    /// Every member but `me`, in increasing order.
    fn others(&self, me: u32) -> Vec<u32> {
        self.xs.iter().copied().filter(|&x| x != me).collect()
    }
}

/// A change of membership: who holds the shares now and who is to hold them. The two sets may
/// share points (a custodian that stays; or a new machine taking a removed one's point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub old: Members,
    pub new: Members,
}

impl Transition {
    /// How many values each old custodian sends each new one for `secrets` secrets.
    pub fn dealing_len(&self, secrets: usize) -> usize {
        secrets + 2
    }

    /// How many parity checks bind the old shares: n − k.
    fn checks(&self) -> usize {
        self.old.xs.len() - self.old.k
    }
}

/// Layer 1, at old custodian `me`: re-shares each of its `shares` (in an order every custodian
/// agrees on) to the new custodians, with its mask and its part of the challenge. An old
/// custodian keeps no state: what it sends is all it contributes.
pub fn deal(
    transition: &Transition,
    me: u32,
    shares: &[Fp],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Outgoing, RedealError> {
    transition.old.require(me, "old")?;
    let new = &transition.new;
    let mut dealer = Dealer::at(new.k - 1, &new.xs);
    let mut out = dealer.outputs(transition.dealing_len(shares.len()));
    for &share in shares {
        dealer.deal(share, rng, &mut out);
    }
    dealer.deal(Fp::ZERO, rng, &mut out);
    dealer.deal(Fp::random(rng), rng, &mut out);
    Ok(Outgoing::new(new.xs.iter().copied().zip(out).collect()))
}

/// Layer 2, at new custodian `me`: takes every old custodian's dealing (each of
/// [`Transition::dealing_len`] values for `secrets` secrets), computes this custodian's new
/// shares and check terms, and opens its share of the challenge to the other new custodians.
pub fn receive(
    transition: Transition,
    me: u32,
    secrets: usize,
    received: Vec<(u32, Vec<Fp>)>,
) -> Result<(Challenging, Outgoing), RedealError> {
    transition.new.require(me, "new")?;
    let mut inbox = Inbox(received);
    inbox.check(transition.old.xs.clone(), transition.dealing_len(secrets))?;
    let old = &transition.old;
    // r: the first k old points recombine into the secret.
    let recombine = lagrange_coefficients(&old.xs[..old.k], Fp::ZERO)
        .expect("members' points are distinct and non-zero");
    // The parity checks' weights u_j·x_j^e, e < n − k, for every old point j.
    let checks = transition.checks();
    let parity: Vec<Vec<Fp>> = old
        .xs
        .iter()
        .map(|&xj| {
            let x = Fp::from(xj as u64);
            let u = old
                .xs
                .iter()
                .filter(|&&xl| xl != xj)
                .map(|&xl| x - Fp::from(xl as u64))
                .product::<Fp>()
                .invert()
                .expect("members' points are distinct");
            core::iter::successors(Some(u), |w| Some(*w * x))
                .take(checks)
                .collect()
        })
        .collect();
    let mut fresh = Zeroizing::new(vec![Fp::ZERO; secrets]);
    // D_{s,e}(i), at index s·(n − k) + e.
    let mut terms = Zeroizing::new(vec![Fp::ZERO; secrets * checks]);
    let (mut mask, mut challenge) = (Fp::ZERO, Fp::ZERO);
    for (j, (_, values)) in inbox.0.iter().enumerate() {
        let (dealt, rest) = values.split_at(secrets);
        for (s, &g) in dealt.iter().enumerate() {
            if let Some(&r) = recombine.get(j) {
                fresh[s] += r * g;
            }
            for (e, &w) in parity[j].iter().enumerate() {
                terms[s * checks + e] += w * g;
            }
        }
        mask += rest[0];
        challenge += rest[1];
    }
    let out = Outgoing::new(
        transition
            .new
            .others(me)
            .into_iter()
            .map(|x| (x, vec![challenge]))
            .collect(),
    );
    Ok((
        Challenging {
            transition,
            me,
            fresh,
            terms,
            mask,
            challenge,
        },
        out,
    ))
}

/// Layer 2 done at a new custodian: its share of the challenge is out.
pub struct Challenging {
    transition: Transition,
    me: u32,
    /// This custodian's new shares, in the order of the secrets.
    fresh: Zeroizing<Vec<Fp>>,
    /// `D_{s,e}(i)` at index `s·(n − k) + e`.
    terms: Zeroizing<Vec<Fp>>,
    mask: Fp,
    challenge: Fp,
}

impl Challenging {
    /// Opens the challenge from every new custodian's share, then opens this custodian's masked
    /// combination of its check terms (layer 3).
    pub fn check(self, received: Vec<(u32, Vec<Fp>)>) -> Result<(Checking, Outgoing), RedealError> {
        let Challenging {
            transition,
            me,
            fresh,
            terms,
            mask,
            challenge,
        } = self;
        let gamma = open_all(&transition.new, me, received, challenge, "challenge")?;
        let mut v = mask;
        let mut power = Fp::ONE;
        for &d in terms.iter() {
            power *= gamma;
            v += power * d;
        }
        let out = Outgoing::new(
            transition
                .new
                .others(me)
                .into_iter()
                .map(|x| (x, vec![v]))
                .collect(),
        );
        Ok((
            Checking {
                new: transition.new,
                me,
                fresh,
                v,
            },
            out,
        ))
    }
}

/// Layer 3 done at a new custodian: the check's value is out; awaiting the others'.
pub struct Checking {
    new: Members,
    me: u32,
    fresh: Zeroizing<Vec<Fp>>,
    v: Fp,
}

impl Checking {
    /// Takes every other new custodian's check value and decides: this custodian's new shares,
    /// in the order of the secrets, or [`RedealError::Refused`].
    pub fn finish(self, received: Vec<(u32, Vec<Fp>)>) -> Result<Zeroizing<Vec<Fp>>, RedealError> {
        let zero = open_all(&self.new, self.me, received, self.v, "check")?;
        if zero != Fp::ZERO {
            return Err(RedealError::Refused {
                step: "check (a dealer re-shared something other than its share)",
                culprits: Vec::new(),
            });
        }
        Ok(self.fresh)
    }
}

/// Opens a value broadcast among the new custodians from all n′ points, refusing unless every
/// one lies on one polynomial of degree below k′.
fn open_all(
    members: &Members,
    me: u32,
    received: Vec<(u32, Vec<Fp>)>,
    mine: Fp,
    step: &'static str,
) -> Result<Fp, RedealError> {
    open_broadcast(received, members.others(me), me, mine, members.k)?
        .map_err(|culprits| RedealError::Refused { step, culprits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::shamir::Threshold;
    use crate::shamir::{Share, complete_with_secret, eval_poly, interpolate_at, share};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::BTreeMap;

    /// What a deviating custodian does to its messages of a layer: `(layer, sender, out)`.
    type Tamper<'a> = &'a mut dyn FnMut(u32, u32, &mut Outgoing);

    /// Each old custodian's shares (by point), in the order of the secrets.
    type Holdings = BTreeMap<u32, Vec<Fp>>;

    fn members(xs: &[u32], k: usize) -> Members {
        Members::new(xs.to_vec(), k).unwrap()
    }

    /// Shares of `secrets` among the points `xs` at threshold k.
    fn holdings(secrets: &[Fp], xs: &[u32], k: usize, rng: &mut StdRng) -> Holdings {
        let mut held: Holdings = xs.iter().map(|&x| (x, Vec::new())).collect();
        for &secret in secrets {
            // A sharing among 1..=max, read at the points wanted.
            let max = *xs.iter().max().unwrap() as usize;
            let all = share(secret, Threshold::new(k, max).unwrap(), rng);
            for s in all.into_iter().filter(|s| xs.contains(&s.x)) {
                held.get_mut(&s.x).unwrap().push(s.y);
            }
        }
        held
    }

    /// Delivers messages: what each recipient got, from whom.
    fn route(outs: &[(u32, Outgoing)]) -> BTreeMap<u32, Vec<(u32, Vec<Fp>)>> {
        let mut inboxes: BTreeMap<u32, Vec<(u32, Vec<Fp>)>> = BTreeMap::new();
        for (sender, out) in outs {
            for (to, values) in out.messages() {
                inboxes
                    .entry(*to)
                    .or_default()
                    .push((*sender, values.clone()));
            }
        }
        inboxes
    }

    /// Runs a re-dealing: each new custodian's outcome, by point.
    fn run(
        transition: &Transition,
        old: &Holdings,
        seed: u64,
        tamper: Tamper<'_>,
    ) -> BTreeMap<u32, Result<Zeroizing<Vec<Fp>>, RedealError>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let secrets = old.values().next().unwrap().len();
        let mut dealings: Vec<(u32, Outgoing)> = old
            .iter()
            .map(|(&x, shares)| (x, deal(transition, x, shares, &mut rng).unwrap()))
            .collect();
        for (x, out) in &mut dealings {
            tamper(1, *x, out);
        }
        let mut inboxes = route(&dealings);
        let mut outcomes = BTreeMap::new();
        let mut challenging = Vec::new();
        let mut outs = Vec::new();
        for &me in transition.new.xs() {
            let received = inboxes.remove(&me).unwrap();
            let (c, mut out) = receive(transition.clone(), me, secrets, received).unwrap();
            tamper(2, me, &mut out);
            challenging.push((me, c));
            outs.push((me, out));
        }
        let mut inboxes = route(&outs);
        let mut checking = Vec::new();
        let mut outs = Vec::new();
        for (me, c) in challenging {
            let received = inboxes.remove(&me).unwrap_or_default();
            match c.check(received) {
                Ok((c, mut out)) => {
                    tamper(3, me, &mut out);
                    checking.push((me, c));
                    outs.push((me, out));
                }
                Err(e) => {
                    // A custodian that refused sends nothing more; the others stall.
                    outcomes.insert(me, Err(e));
                    let others = transition.new.others(me);
                    outs.push((
                        me,
                        Outgoing::new(others.into_iter().map(|x| (x, vec![Fp::ZERO])).collect()),
                    ));
                }
            }
        }
        let mut inboxes = route(&outs);
        for (me, c) in checking {
            outcomes.insert(me, c.finish(inboxes.remove(&me).unwrap_or_default()));
        }
        outcomes
    }

    fn honest(_: u32, _: u32, _: &mut Outgoing) {}

    fn fresh(outcomes: BTreeMap<u32, Result<Zeroizing<Vec<Fp>>, RedealError>>) -> Holdings {
        outcomes
            .into_iter()
            .map(|(x, o)| (x, o.expect("an honest re-dealing passes").to_vec()))
            .collect()
    }

    fn secret_of(held: &Holdings, which: usize, xs: &[u32]) -> Fp {
        let points: Vec<Share> = xs
            .iter()
            .map(|&x| Share {
                x,
                y: held[&x][which],
            })
            .collect();
        interpolate_at(&points, Fp::ZERO).unwrap()
    }

    /// Every set of k points among `xs` (for the small sets of these tests).
    fn subsets(xs: &[u32], k: usize) -> Vec<Vec<u32>> {
        if k == 0 {
            return vec![Vec::new()];
        }
        (0..xs.len())
            .flat_map(|i| {
                subsets(&xs[i + 1..], k - 1)
                    .into_iter()
                    .map(move |mut rest| {
                        rest.insert(0, xs[i]);
                        rest
                    })
            })
            .collect()
    }

    #[test]
    fn every_change_of_membership_keeps_every_secret() {
        let mut rng = StdRng::seed_from_u64(1);
        // (old points, k, new points, k′): grow, shrink, replace at a new point, replace at the
        // same point (a new machine), remove one, renumber.
        let cases: [(&[u32], usize, &[u32], usize); 7] = [
            (&[1, 2, 3], 2, &[1, 2, 3, 4, 5], 3),
            (&[1, 2, 3, 4, 5], 3, &[1, 2, 3], 2),
            (&[1, 2, 3], 2, &[1, 2, 4], 2),
            (&[1, 2, 3], 2, &[1, 2, 3], 2),
            (&[1, 2, 3, 4], 2, &[1, 3, 4], 2),
            (&[2, 5, 9], 2, &[1, 2, 3], 2),
            (&[1], 1, &[1, 2, 3], 2),
        ];
        for (old_xs, k, new_xs, k2) in cases {
            let secrets: Vec<Fp> = (0..3).map(|_| Fp::random(&mut rng)).collect();
            let old = holdings(&secrets, old_xs, k, &mut rng);
            let transition = Transition {
                old: members(old_xs, k),
                new: members(new_xs, k2),
            };
            let new = fresh(run(&transition, &old, 2, &mut honest));
            assert_eq!(new.keys().copied().collect::<Vec<_>>(), new_xs);
            for (s, &secret) in secrets.iter().enumerate() {
                for set in subsets(new_xs, k2) {
                    assert_eq!(
                        secret_of(&new, s, &set),
                        secret,
                        "{old_xs:?} -> {new_xs:?} via {set:?}"
                    );
                }
                // All n′ shares lie on one polynomial of degree below k′.
                let points: Vec<(u32, Fp)> = new.iter().map(|(&x, v)| (x, v[s])).collect();
                assert_eq!(decode(&points, k2, 0).unwrap().liars, Vec::<u32>::new());
                for x in new_xs.iter().filter(|x| old.contains_key(x)) {
                    if k2 > 1 {
                        assert_ne!(
                            old[x][s], new[x][s],
                            "{old_xs:?} -> {new_xs:?}: {x} kept its share"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_removed_custodians_old_shares_with_new_ones_are_consistent_with_every_secret() {
        // Custodian 3 of 2-of-3 is replaced by custodian 4. Its old share and the k′ − 1 = 1
        // new share of custodian 1 are two points, as many as the threshold, yet for every
        // candidate secret there is an old sharing and a new one that explain them.
        let mut rng = StdRng::seed_from_u64(3);
        let secret = Fp::from(42u64);
        let old = holdings(&[secret], &[1, 2, 3], 2, &mut rng);
        let transition = Transition {
            old: members(&[1, 2, 3], 2),
            new: members(&[1, 2, 4], 2),
        };
        let new = fresh(run(&transition, &old, 4, &mut honest));
        let before = [Share {
            x: 3,
            y: old[&3][0],
        }];
        let after = [Share {
            x: 1,
            y: new[&1][0],
        }];
        for candidate in [secret, Fp::ZERO, Fp::from(7u64), Fp::random(&mut rng)] {
            let f = complete_with_secret(&before, candidate).unwrap();
            let g = complete_with_secret(&after, candidate).unwrap();
            assert_eq!(eval_poly(&f, Fp::from(3u64)), before[0].y);
            assert_eq!(eval_poly(&g, Fp::from(1u64)), after[0].y);
            assert_eq!((f.len(), g.len()), (2, 2), "degree k − 1 on both sides");
        }
        // Without the re-dealing, the same two custodians' shares give the secret away.
        let stale = [
            Share {
                x: 1,
                y: old[&1][0],
            },
            before[0].clone(),
        ];
        assert_eq!(interpolate_at(&stale, Fp::ZERO).unwrap(), secret);
        // With it, the removed custodian's share opens something else with a current one.
        let mixed = [after[0].clone(), before[0].clone()];
        assert_ne!(interpolate_at(&mixed, Fp::ZERO).unwrap(), secret);
    }

    #[test]
    fn a_dealer_that_reshares_something_else_is_refused_by_every_new_custodian() {
        let mut rng = StdRng::seed_from_u64(5);
        let cases: [(&[u32], usize, &[u32], usize); 3] = [
            (&[1, 2, 3], 2, &[1, 2, 3, 4, 5], 3),
            (&[1, 2, 3, 4, 5], 3, &[1, 2, 3], 2),
            (&[1, 2, 3], 2, &[1, 2, 4], 2),
        ];
        for (old_xs, k, new_xs, k2) in cases {
            let old = holdings(&[Fp::from(9u64), Fp::from(10u64)], old_xs, k, &mut rng);
            let transition = Transition {
                old: members(old_xs, k),
                new: members(new_xs, k2),
            };
            for &liar in old_xs {
                // The liar re-shares its share of the first secret plus 1, on a polynomial of
                // the right degree: every new custodian's points are consistent, and a degree
                // check alone would pass. Only the old shares' redundancy tells.
                let mut tamper = |layer: u32, me: u32, out: &mut Outgoing| {
                    if layer == 1 && me == liar {
                        out.shift_first(Fp::ONE);
                    }
                };
                for (x, o) in run(&transition, &old, 6, &mut tamper) {
                    assert!(
                        matches!(&o, Err(RedealError::Refused { step, .. }) if step.starts_with("check (")),
                        "{old_xs:?} -> {new_xs:?}, liar {liar}: new custodian {x} got {o:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_dealing_off_the_degree_is_refused_by_every_new_custodian() {
        let mut rng = StdRng::seed_from_u64(7);
        let old = holdings(&[Fp::from(1u64), Fp::from(2u64)], &[1, 2, 3], 2, &mut rng);
        let transition = Transition {
            old: members(&[1, 2, 3], 2),
            new: members(&[1, 2, 3, 4, 5], 3),
        };
        for liar in 1..=3 {
            for victim in 1..=5 {
                // The liar moves one new custodian's point of its re-sharing.
                let mut tamper = |layer: u32, me: u32, out: &mut Outgoing| {
                    if layer == 1 && me == liar {
                        let mut messages = out.messages().to_vec();
                        messages[victim - 1].1[1] += Fp::ONE;
                        *out = Outgoing::new(messages);
                    }
                };
                for (x, o) in run(&transition, &old, 8, &mut tamper) {
                    assert!(
                        matches!(o, Err(RedealError::Refused { .. })),
                        "liar {liar}, victim {victim}: new custodian {x} accepted {o:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_opening_is_refused_and_named_when_it_can_be() {
        let mut rng = StdRng::seed_from_u64(9);
        // (new points, k′, named): one wrong point is named among n′ when n′ >= k′ + 2.
        let cases: [(&[u32], usize, bool); 3] = [
            (&[1, 2, 4], 2, false),
            (&[1, 2, 3, 4], 2, true),
            (&[1, 2, 3, 4, 5], 3, false),
        ];
        let old = holdings(&[Fp::from(1u64)], &[1, 2, 3], 2, &mut rng);
        for (new_xs, k2, named) in cases {
            let transition = Transition {
                old: members(&[1, 2, 3], 2),
                new: members(new_xs, k2),
            };
            for layer in [2, 3] {
                let mut tamper = |l: u32, me: u32, out: &mut Outgoing| {
                    if l == layer && me == 1 {
                        out.shift_first(Fp::ONE);
                    }
                };
                for (x, o) in run(&transition, &old, 10, &mut tamper).into_iter().skip(1) {
                    match o {
                        Err(RedealError::Refused { culprits, .. }) => {
                            let want = if named { vec![1] } else { Vec::new() };
                            assert_eq!(culprits, want, "{new_xs:?}, layer {layer}, custodian {x}");
                        }
                        other => panic!("{new_xs:?}, layer {layer}: {x} accepted {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn what_is_opened_is_masked_and_fresh() {
        let mut rng = StdRng::seed_from_u64(11);
        let old = holdings(&[Fp::from(5u64)], &[1, 2, 3], 2, &mut rng);
        let transition = Transition {
            old: members(&[1, 2, 3], 2),
            new: members(&[1, 2, 4], 2),
        };
        let mut seen = Vec::new();
        for seed in [12, 13] {
            let mut record = |layer: u32, me: u32, out: &mut Outgoing| {
                if layer == 3 && me == 1 {
                    seen.push(out.messages()[0].1[0]);
                }
            };
            fresh(run(&transition, &old, seed, &mut record));
        }
        assert_ne!(seen[0], seen[1]);
    }

    #[test]
    fn bad_members_and_messages_are_refused() {
        assert_eq!(
            Members::new(vec![1, 2, 3], 3),
            Err(MembersError::BadThreshold { k: 3, n: 3 }),
            "n >= 2k − 1"
        );
        assert_eq!(
            Members::new(vec![], 0),
            Err(MembersError::BadThreshold { k: 0, n: 0 })
        );
        assert_eq!(
            Members::new(vec![0, 1, 2], 2),
            Err(MembersError::BadPoint(0))
        );
        assert_eq!(
            Members::new(vec![3, 1, 3], 2),
            Err(MembersError::BadPoint(3))
        );
        let transition = Transition {
            old: members(&[1, 2, 3], 2),
            new: members(&[1, 2, 4], 2),
        };
        let mut rng = StdRng::seed_from_u64(14);
        assert!(matches!(
            deal(&transition, 4, &[Fp::ONE], &mut rng),
            Err(RedealError::NotAMember {
                me: 4,
                role: "old",
                ..
            })
        ));
        assert!(matches!(
            receive(transition.clone(), 3, 1, Vec::new()),
            Err(RedealError::NotAMember {
                me: 3,
                role: "new",
                ..
            })
        ));
        let out = deal(&transition, 1, &[Fp::ONE], &mut rng).unwrap();
        let to: Vec<u32> = out.messages().iter().map(|(x, _)| *x).collect();
        assert_eq!(to, vec![1, 2, 4], "every new custodian, itself included");
        assert_eq!(out.to(4).unwrap().len(), transition.dealing_len(1));
        // Dealings from two of the three old custodians: not enough to check anything.
        let partial = vec![
            (1, out.to(4).unwrap().to_vec()),
            (2, out.to(4).unwrap().to_vec()),
        ];
        assert!(matches!(
            receive(transition, 4, 1, partial),
            Err(RedealError::Messages(MessageError::WrongSenders { .. }))
        ));
    }
}
