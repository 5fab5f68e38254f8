//! The two ends of a session: a caller's private inputs shared among the custodians, and the
//! outputs reconstructed from the shares the custodians return.
//!
//! The caller's client shares its private inputs (so no single machine sees them) and, when it
//! gets output shares back sealed to it, reconstructs them here; the coordinator reconstructs
//! here the outputs of an evaluation without private inputs. Reconstruction uses every share
//! received, decoded as a Reed–Solomon codeword ([`crate::decode`]) under the bound that at
//! most k − 1 custodians deviate: a custodian is named only when that bound leaves a single
//! polynomial possible, and otherwise the answers are refused, naming nobody.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::decode::{Decoded, decode_vectors};
use crate::field::Fp;
use crate::mac::answer_len;
use crate::shamir::{Threshold, share};

/// Shares each of `values` k-of-n: element `i` is custodian `i + 1`'s shares, in `values`'
/// order, wiped when dropped.
pub fn share_inputs(
    values: &[Fp],
    t: Threshold,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<Zeroizing<Vec<Fp>>> {
    let mut per_custodian: Vec<Zeroizing<Vec<Fp>>> = (0..t.n())
        .map(|_| Zeroizing::new(Vec::with_capacity(values.len())))
        .collect();
    for &v in values {
        for (shares, s) in per_custodian.iter_mut().zip(share(v, t, rng)) {
            shares.push(s.y);
        }
    }
    per_custodian
}

/// Outputs opened from every custodian's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconstructed {
    pub values: Vec<Fp>,
    /// Custodians whose shares are proven off the polynomial, sorted.
    pub inconsistent: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconstructError {
    #[error("{got} custodians answered; {need} are needed")]
    TooFew { got: usize, need: usize },
    #[error(
        "custodian {custodian} sent {got} values for {outputs} outputs; an answer has {expected}"
    )]
    WrongLength {
        custodian: u32,
        got: usize,
        outputs: usize,
        expected: usize,
    },
    #[error("custodian {0} answered twice, or is not a valid index")]
    BadCustodian(u32),
    #[error(
        "the output shares of custodians {custodians:?} do not agree, and too few agree to tell who is wrong"
    )]
    Inconsistent { custodians: Vec<u32> },
    #[error(
        "custodians {custodians:?} did not see the same values opened during the evaluation: a \
         deviating member sent different messages to different peers"
    )]
    Diverged { custodians: Vec<u32> },
    #[error(
        "the outputs of custodians {custodians:?} fail their MAC check: some member deviated \
         from the protocol, and which cannot be told"
    )]
    Forged { custodians: Vec<u32> },
}

/// Opens `outputs` values from `(custodian, its answer)` pairs of a k-of-n evaluation
/// ([`Step::Done`]), at most k − 1 of them from deviating custodians: the value of each output
/// or an error, never a wrong value (but with probability O(L/p) for L values opened).
///
/// Every sharing in the answers (outputs, their MACs, the key, the check) is decoded from all
/// the shares received ([`crate::decode::radius`]: how many wrong ones are then corrected and
/// named); then the members must agree on the digest of what they opened, the check must open
/// to zero and every output `z` must have its MAC open to `r·z` ([`crate::mac`]).
///
/// [`Step::Done`]: crate::session::Step::Done
pub fn open_outputs(
    answers: &[(u32, Vec<Fp>)],
    k: usize,
    outputs: usize,
) -> Result<Reconstructed, ReconstructError> {
    if answers.len() < k {
        return Err(ReconstructError::TooFew {
            got: answers.len(),
            need: k,
        });
    }
    let expected = answer_len(outputs);
    for (i, (x, values)) in answers.iter().enumerate() {
        if *x == 0 || answers[..i].iter().any(|(y, _)| y == x) {
            return Err(ReconstructError::BadCustodian(*x));
        }
        if values.len() != expected {
            return Err(ReconstructError::WrongLength {
                custodian: *x,
                got: values.len(),
                outputs,
                expected,
            });
        }
    }
    let everyone = || answers.iter().map(|(x, _)| *x).collect::<Vec<_>>();
    let digest = |v: &[Fp]| [v[expected - 2], v[expected - 1]];
    if answers
        .iter()
        .any(|(_, v)| digest(v) != digest(&answers[0].1))
    {
        return Err(ReconstructError::Diverged {
            custodians: everyone(),
        });
    }
    let shared: Vec<(u32, &[Fp])> = answers
        .iter()
        .map(|(x, v)| (*x, &v[..expected - 2]))
        .collect();
    let Decoded { value, liars } =
        decode_vectors(&shared, k, k - 1).map_err(|_| ReconstructError::Inconsistent {
            custodians: everyone(),
        })?;
    let (values, rest) = value.split_at(outputs);
    let (macs, rest) = rest.split_at(outputs);
    let (key, check) = (rest[0], rest[1]);
    let authentic = check == Fp::ZERO && values.iter().zip(macs).all(|(&z, &m)| m == key * z);
    if !authentic {
        return Err(ReconstructError::Forged {
            custodians: everyone(),
        });
    }
    Ok(Reconstructed {
        values: values.to_vec(),
        inconsistent: liars,
    })
}

/// The custodians that failed checks prove deviated, when at most `bound` custodians deviate:
/// each of `failing` is a set of custodians known to hold at least one deviating member (a
/// quorum whose honest members would have agreed, but did not), and a custodian is proven a
/// liar when every set of at most `bound` custodians that meets all of them holds it. With one
/// liar in a 2-of-3 cluster, `{1, 3}` and `{2, 3}` failing prove custodian 3. When no such set
/// exists the bound itself is broken, and nobody is named. Sorted.
pub fn proven_liars(failing: &[Vec<u32>], bound: usize) -> Vec<u32> {
    let mut candidates: Vec<u32> = failing.iter().flatten().copied().collect();
    candidates.sort_unstable();
    candidates.dedup();
    // Whether some set of at most `bound` of `pool` meets every failing set.
    fn hits(failing: &[Vec<u32>], pool: &[u32], bound: usize, chosen: &mut Vec<u32>) -> bool {
        let Some(open) = failing
            .iter()
            .find(|set| !set.iter().any(|x| chosen.contains(x)))
        else {
            return true;
        };
        if chosen.len() == bound {
            return false;
        }
        // Some member of the first set not yet met must be chosen.
        for &x in open.iter().filter(|x| pool.contains(x)) {
            chosen.push(x);
            let found = hits(failing, pool, bound, chosen);
            chosen.pop();
            if found {
                return true;
            }
        }
        false
    }
    if !hits(failing, &candidates, bound, &mut Vec::new()) {
        return Vec::new();
    }
    candidates
        .iter()
        .copied()
        .filter(|&x| {
            let without: Vec<u32> = candidates.iter().copied().filter(|&y| y != x).collect();
            !hits(failing, &without, bound, &mut Vec::new())
        })
        .collect()
}

/// The output values of answers, interpolated from the first `k` of them with no check at all:
/// what opening was before the MACs, kept for the tests that show the check is what catches a
/// lie.
#[cfg(test)]
pub(crate) fn open_unchecked(answers: &[(u32, Vec<Fp>)], k: usize, outputs: usize) -> Vec<Fp> {
    let xs: Vec<u32> = answers[..k].iter().map(|(x, _)| *x).collect();
    let lambdas = crate::shamir::lagrange_coefficients(&xs, Fp::ZERO).expect("distinct");
    (0..outputs)
        .map(|o| {
            answers[..k]
                .iter()
                .zip(&lambdas)
                .map(|((_, v), &l)| v[o] * l)
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Honest answers opening to `values`: shares of each value, of its MAC under a random
    /// key, of the key, of a zero check, and one digest.
    fn answers(values: &[Fp], t: Threshold, seed: u64) -> Vec<(u32, Vec<Fp>)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let key = Fp::random(&mut rng);
        let digest = [Fp::random(&mut rng), Fp::random(&mut rng)];
        let mut shared: Vec<Fp> = values.to_vec();
        shared.extend(values.iter().map(|&v| key * v));
        shared.extend([key, Fp::ZERO]);
        share_inputs(&shared, t, &mut rng)
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let mut answer = v.to_vec();
                answer.extend(digest);
                (i as u32 + 1, answer)
            })
            .collect()
    }

    #[test]
    fn answers_open_from_any_k() {
        let t = Threshold::new(2, 3).unwrap();
        let values = vec![Fp::from(42), Fp::from_i128(-5)];
        let all = answers(&values, t, 1);
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let some: Vec<_> = pair.iter().map(|&i| all[i].clone()).collect();
            let r = open_outputs(&some, 2, 2).unwrap();
            assert_eq!(r.values, values);
            assert!(r.inconsistent.is_empty());
        }
    }

    #[test]
    fn a_liar_is_named_only_when_provably_wrong() {
        let values = vec![Fp::from(100)];
        // 2-of-5: four honest shares outvote one liar.
        let mut five = answers(&values, Threshold::new(2, 5).unwrap(), 2);
        five[3].1[0] += Fp::from(5);
        let r = open_outputs(&five, 2, 1).unwrap();
        assert_eq!((r.values, r.inconsistent), (values.clone(), vec![4]));
        // 2-of-3: a lie is seen, but nobody can be told from three shares: refused.
        let mut three = answers(&values, Threshold::new(2, 3).unwrap(), 3);
        three[0].1[0] += Fp::from(5);
        assert!(matches!(
            open_outputs(&three, 2, 1),
            Err(ReconstructError::Inconsistent { .. })
        ));
    }

    #[test]
    fn a_lie_on_a_bare_quorum_fails_the_mac_check() {
        let values = vec![Fp::from(100)];
        let t = Threshold::new(2, 3).unwrap();
        for i in 0..answer_len(1) - 2 {
            let mut two = answers(&values, t, 4)[..2].to_vec();
            two[1].1[i] += Fp::from(5);
            assert!(
                matches!(
                    open_outputs(&two, 2, 1),
                    Err(ReconstructError::Forged { .. })
                ),
                "a lie in value {i}"
            );
            // Without the check, a lie in the output share is taken for the answer.
            if i == 0 {
                assert_ne!(open_unchecked(&two, 2, 1), values);
            }
        }
        let mut two = answers(&values, t, 4)[..2].to_vec();
        two[0].1[answer_len(1) - 1] += Fp::ONE;
        assert!(matches!(
            open_outputs(&two, 2, 1),
            Err(ReconstructError::Diverged { .. })
        ));
    }

    #[test]
    fn failed_checks_prove_a_liar_only_when_the_bound_leaves_no_one_else() {
        // One liar at most (2-of-3): two failing pairs prove their common member.
        assert_eq!(proven_liars(&[vec![1, 3], vec![2, 3]], 1), vec![3]);
        assert_eq!(
            proven_liars(&[vec![1, 2, 3], vec![2, 3], vec![1, 3]], 1),
            vec![3]
        );
        // One failing pair: either may be the liar.
        assert_eq!(proven_liars(&[vec![1, 3]], 1), Vec::<u32>::new());
        assert_eq!(proven_liars(&[vec![1, 2, 3]], 1), Vec::<u32>::new());
        // Two liars at most (3-of-5): {1, 2} and {1, 3} failing could be 2 and 3.
        assert_eq!(
            proven_liars(&[vec![1, 2], vec![1, 3]], 2),
            Vec::<u32>::new()
        );
        // ... but with {1, 4} too, 1 is in every pair of liars that explains them.
        assert_eq!(
            proven_liars(&[vec![1, 2], vec![1, 3], vec![1, 4]], 2),
            vec![1]
        );
        // Disjoint failures beyond the bound: the bound is broken, nobody is named.
        assert_eq!(proven_liars(&[vec![1], vec![2]], 1), Vec::<u32>::new());
        assert_eq!(proven_liars(&[], 1), Vec::<u32>::new());
    }

    #[test]
    fn malformed_answers_are_refused() {
        let t = Threshold::new(2, 3).unwrap();
        let all = answers(&[Fp::ONE], t, 4);
        assert!(matches!(
            open_outputs(&all[..1], 2, 1),
            Err(ReconstructError::TooFew { got: 1, need: 2 })
        ));
        assert!(matches!(
            open_outputs(&all, 2, 2),
            Err(ReconstructError::WrongLength { .. })
        ));
        let twice = vec![all[0].clone(), all[0].clone()];
        assert_eq!(
            open_outputs(&twice, 2, 1),
            Err(ReconstructError::BadCustodian(1))
        );
    }
}
