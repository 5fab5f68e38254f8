//! Information-theoretic MACs on Shamir shares: what makes an evaluation correct or an error,
//! whatever up to k − 1 custodians do.
//!
//! The scheme is SPDZ's (I. Damgård, V. Pastro, N. Smart, S. Zakarias, *Multiparty computation
//! from somewhat homomorphic encryption*, CRYPTO 2012) on Shamir shares, in the manner of the
//! "SPDZ-wise" honest-majority protocols (MP-SPDZ's `sy-shamir`) and of K. Chida, D. Genkin,
//! K. Hamada, D. Ikarashi, R. Kikuchi, Y. Lindell, A. Nof, *Fast large-scale honest-majority
//! MPC for malicious adversaries* (CRYPTO 2018), who compute on `x` and `r·x`: every shared
//! value `x` is held with a sharing of `r·x`, for a key `r` that is random, shared, and fresh
//! in every kit. Beaver triples rather than Chida et al.'s online degree reduction, because a
//! bare quorum of k members has a dishonest majority (k − 1 of k may lie), where only
//! preprocessed, authenticated triples keep an online product checkable. Linear gates act on both alike; a product
//! takes the MAC of its triple's `c`, `a` and `b` (made with the triple by
//! [`crate::preprocess`]), so the openings of an evaluation stay exactly what they were. The
//! check costs no round of its own: each member folds every value it opened into one check
//! share `σ = Σ χ^j·([r·o_j] − o_j·[r])` (zero when every opening was right), where the
//! challenge `χ` is the digest of everything opened (Fiat–Shamir: an error chosen before the
//! openings were fixed cannot be chosen to cancel), and returns, beside its output shares,
//! their MACs, its share of `r`, its `σ` and the digest.
//!
//! Whoever reconstructs the outputs (the coordinator, or the caller's client for sealed outputs)
//! checks that every member saw the same openings, that `σ` opens to zero, and that each output
//! `z` has `[r·z]` opening to `r·z`. A member that shifts any share it sends, or holds, by `e`
//! must shift a MAC by `r·e` to pass, and `r` is only ever opened to the receiver, after every
//! share was sent: it passes with probability 1/p (p = 2¹²⁷ − 1). The key is used for one
//! evaluation only, so opening it to the receiver costs nothing.
//!
//! The one thing the MACs cannot catch is a triple that was wrong when its MACs were made: that
//! is for preprocessing to check before a kit is stored ([`crate::preprocess`]).

use sha2::{Digest, Sha256};

use crate::field::Fp;

/// What a member's answer carries after its output shares and their MACs: its share of the
/// key, its check share, and the two halves of its transcript digest.
pub const TAIL: usize = 4;

/// The length of a member's answer for `outputs` outputs.
pub fn answer_len(outputs: usize) -> usize {
    2 * outputs + TAIL
}

/// Σ_j χ^(j+1)·v_j: a random linear combination of `values` by powers of a challenge. Two
/// different vectors of length L fold to the same value for at most L of the p challenges.
pub fn fold(chi: Fp, values: impl IntoIterator<Item = Fp>) -> Fp {
    let mut power = chi;
    let mut acc = Fp::ZERO;
    for v in values {
        acc += power * v;
        power *= chi;
    }
    acc
}

/// A running digest of a session's openings, bound to its quorum.
pub struct Transcript(Sha256);

impl Transcript {
    pub fn new(domain: &[u8], parties: &[u32]) -> Transcript {
        let mut h = Sha256::new();
        h.update((domain.len() as u32).to_le_bytes());
        h.update(domain);
        h.update((parties.len() as u32).to_le_bytes());
        for x in parties {
            h.update(x.to_le_bytes());
        }
        Transcript(h)
    }

    pub fn absorb(&mut self, values: &[Fp]) {
        self.0.update((values.len() as u64).to_le_bytes());
        for v in values {
            self.0.update(v.to_le_bytes());
        }
    }

    /// The digest as two field elements of 126 bits each.
    pub fn finish(self) -> [Fp; 2] {
        let bytes = self.0.finalize();
        let half = |b: &[u8]| {
            let word = u128::from_le_bytes(b.try_into().expect("16 bytes"));
            Fp::from_u128(word >> 2)
        };
        [half(&bytes[..16]), half(&bytes[16..])]
    }
}

/// The challenge a digest commits to.
pub fn challenge(digest: [Fp; 2]) -> Fp {
    digest[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_is_a_polynomial_in_the_challenge() {
        let chi = Fp::from(3);
        let v = [Fp::from(1), Fp::from(2), Fp::from(5)];
        assert_eq!(fold(chi, v), Fp::from(3 + 2 * 9 + 5 * 27));
        assert_eq!(fold(chi, []), Fp::ZERO);
    }

    #[test]
    fn transcripts_differ_with_what_they_saw() {
        let digest = |parties: &[u32], v: &[Fp]| {
            let mut t = Transcript::new(b"test", parties);
            t.absorb(v);
            t.finish()
        };
        let a = digest(&[1, 2], &[Fp::ONE]);
        assert_eq!(a, digest(&[1, 2], &[Fp::ONE]));
        assert_ne!(a, digest(&[1, 3], &[Fp::ONE]));
        assert_ne!(a, digest(&[1, 2], &[Fp::from(2)]));
    }
}
