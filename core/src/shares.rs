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

/// Outputs reconstructed from every custodian's shares.
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
    #[error("custodian {custodian} sent {got} output shares for {expected} outputs")]
    WrongLength {
        custodian: u32,
        got: usize,
        expected: usize,
    },
    #[error("custodian {0} answered twice, or is not a valid index")]
    BadCustodian(u32),
    #[error(
        "the output shares of custodians {custodians:?} do not agree, and too few agree to tell who is wrong"
    )]
    Inconsistent { custodians: Vec<u32> },
}

/// Reconstructs `outputs` values from `(custodian, its output shares)` answers of a k-of-n
/// sharing, at most k − 1 of them from deviating custodians (see [`crate::decode::radius`] for
/// how many are then corrected and named).
pub fn reconstruct_outputs(
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
    for (i, (x, values)) in answers.iter().enumerate() {
        if *x == 0 || answers[..i].iter().any(|(y, _)| y == x) {
            return Err(ReconstructError::BadCustodian(*x));
        }
        if values.len() != outputs {
            return Err(ReconstructError::WrongLength {
                custodian: *x,
                got: values.len(),
                expected: outputs,
            });
        }
    }
    let Decoded { value, liars } =
        decode_vectors(answers, k, k - 1).map_err(|_| ReconstructError::Inconsistent {
            custodians: answers.iter().map(|(x, _)| *x).collect(),
        })?;
    Ok(Reconstructed {
        values: value,
        inconsistent: liars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn answers(values: &[Fp], t: Threshold, seed: u64) -> Vec<(u32, Vec<Fp>)> {
        share_inputs(values, t, &mut StdRng::seed_from_u64(seed))
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u32 + 1, v.to_vec()))
            .collect()
    }

    #[test]
    fn shared_inputs_reconstruct_from_any_k() {
        let t = Threshold::new(2, 3).unwrap();
        let values = vec![Fp::from(42), Fp::from_i128(-5)];
        let all = answers(&values, t, 1);
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let some: Vec<_> = pair.iter().map(|&i| all[i].clone()).collect();
            let r = reconstruct_outputs(&some, 2, 2).unwrap();
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
        let r = reconstruct_outputs(&five, 2, 1).unwrap();
        assert_eq!((r.values, r.inconsistent), (values.clone(), vec![4]));
        // 2-of-3: a lie is seen, but nobody can be told from three shares: refused.
        let mut three = answers(&values, Threshold::new(2, 3).unwrap(), 3);
        three[0].1[0] += Fp::from(5);
        assert!(matches!(
            reconstruct_outputs(&three, 2, 1),
            Err(ReconstructError::Inconsistent { .. })
        ));
    }

    #[test]
    fn malformed_answers_are_refused() {
        let t = Threshold::new(2, 3).unwrap();
        let all = answers(&[Fp::ONE], t, 4);
        assert!(matches!(
            reconstruct_outputs(&all[..1], 2, 1),
            Err(ReconstructError::TooFew { got: 1, need: 2 })
        ));
        assert!(matches!(
            reconstruct_outputs(&all, 2, 2),
            Err(ReconstructError::WrongLength { .. })
        ));
        let twice = vec![all[0].clone(), all[0].clone()];
        assert_eq!(
            reconstruct_outputs(&twice, 2, 1),
            Err(ReconstructError::BadCustodian(1))
        );
    }
}
