//! Shamir K-of-N secret sharing over F_p, and Lagrange interpolation.
//!
//! A secret `s` is the constant term of a random polynomial `f` of degree `K − 1`; custodian `i`
//! (numbered from 1) holds `f(i)`. Any `K` points determine `f` and so `s`; any `K − 1` points are
//! consistent with every possible secret (see [`complete_with_secret`]), so they reveal nothing.
//! The polynomial's coefficients and every share are wiped from memory when dropped.

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::field::Fp;

/// One custodian's point `(x, f(x))` of a sharing polynomial. `x` is public (the custodian's
/// index, never 0); `y` is secret material and is zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    pub x: u32,
    pub y: Fp,
}

impl core::fmt::Debug for Share {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The y-coordinate is secret: it never reaches a log line through Debug.
        write!(f, "Share {{ x: {}, y: <redacted> }}", self.x)
    }
}

/// The threshold parameters: `k` of `n` shares reconstruct, `1 <= k <= n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    k: usize,
    n: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("threshold {k}-of-{n} is invalid: need 1 <= k <= n")]
    BadThreshold { k: usize, n: usize },
    #[error("need at least {need} shares, got {got}")]
    TooFewShares { need: usize, got: usize },
    #[error("share x-coordinate {0} is repeated")]
    DuplicateX(u32),
    #[error("share x-coordinate 0 is reserved for the secret")]
    ZeroX,
}

impl Threshold {
    pub fn new(k: usize, n: usize) -> Result<Threshold, ShamirError> {
        if k == 0 || k > n || n >= u32::MAX as usize {
            return Err(ShamirError::BadThreshold { k, n });
        }
        Ok(Threshold { k, n })
    }
    pub fn k(self) -> usize {
        self.k
    }
    pub fn n(self) -> usize {
        self.n
    }
    /// The degree of the sharing polynomials.
    pub fn degree(self) -> usize {
        self.k - 1
    }
}

/// Shares `secret` among custodians `1..=n`, any `k` of whom can reconstruct it.
pub fn share(secret: Fp, t: Threshold, rng: &mut (impl RngCore + CryptoRng)) -> Vec<Share> {
    let mut coeffs = Zeroizing::new(Vec::with_capacity(t.k));
    coeffs.push(secret);
    for _ in 1..t.k {
        coeffs.push(Fp::random(rng));
    }
    (1..=t.n as u32)
        .map(|x| Share {
            x,
            y: eval_poly(&coeffs, Fp::from(x as u64)),
        })
        .collect()
}

/// Horner evaluation of `coeffs[0] + coeffs[1]·x + …`.
pub fn eval_poly(coeffs: &[Fp], x: Fp) -> Fp {
    coeffs.iter().rev().fold(Fp::ZERO, |acc, &c| acc * x + c)
}

/// Checks that the x-coordinates are distinct and non-zero.
pub fn check_points(xs: &[u32]) -> Result<(), ShamirError> {
    for (i, &x) in xs.iter().enumerate() {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if xs[..i].contains(&x) {
            return Err(ShamirError::DuplicateX(x));
        }
    }
    Ok(())
}

/// The Lagrange coefficients `λ_j` with `Σ λ_j · f(x_j) = f(at)` for every polynomial of degree
/// below `xs.len()`. The x-coordinates are public, so these are public too; callers that apply
/// the same set many times (a custodian quorum) compute them once.
pub fn lagrange_coefficients(xs: &[u32], at: Fp) -> Result<Vec<Fp>, ShamirError> {
    check_points(xs)?;
    let xs: Vec<Fp> = xs.iter().map(|&x| Fp::from(x as u64)).collect();
    let mut nums = Vec::with_capacity(xs.len());
    let mut dens = Vec::with_capacity(xs.len());
    for (j, &xj) in xs.iter().enumerate() {
        let mut num = Fp::ONE;
        let mut den = Fp::ONE;
        for (m, &xm) in xs.iter().enumerate() {
            if m != j {
                num *= at - xm;
                den *= xj - xm;
            }
        }
        nums.push(num);
        dens.push(den);
    }
    // One inversion for all denominators (Montgomery's trick): an inversion is a 127-bit
    // exponentiation, and every session and every reconstruction computes these.
    let mut prefix = Vec::with_capacity(dens.len());
    let mut product = Fp::ONE;
    for &d in &dens {
        prefix.push(product);
        product *= d;
    }
    // Distinct x-coordinates make every denominator, so their product, non-zero.
    let mut inverse = product.invert().expect("distinct points");
    let mut out = vec![Fp::ZERO; xs.len()];
    for j in (0..xs.len()).rev() {
        out[j] = nums[j] * inverse * prefix[j];
        inverse *= dens[j];
    }
    Ok(out)
}

/// The value at `at` of the polynomial of degree `< points.len()` through `points`.
pub fn interpolate_at(points: &[Share], at: Fp) -> Result<Fp, ShamirError> {
    let xs: Vec<u32> = points.iter().map(|s| s.x).collect();
    let lambdas = lagrange_coefficients(&xs, at)?;
    Ok(points.iter().zip(&lambdas).map(|(s, &l)| s.y * l).sum())
}

/// Reconstructs the secret from at least `t.k()` shares (only the first `k` are used; to use
/// every share and find an inconsistent one, see [`crate::decode`]).
pub fn reconstruct(shares: &[Share], t: Threshold) -> Result<Fp, ShamirError> {
    if shares.len() < t.k {
        return Err(ShamirError::TooFewShares {
            need: t.k,
            got: shares.len(),
        });
    }
    interpolate_at(&shares[..t.k], Fp::ZERO)
}

/// Shows constructively that `K − 1` shares say nothing about the secret: for any `candidate`,
/// returns the coefficients of a polynomial of degree `K − 1` whose constant term is `candidate`
/// and which passes through every given share. Such a polynomial always exists, so every
/// candidate secret is equally consistent with what `K − 1` custodians hold.
pub fn complete_with_secret(shares: &[Share], candidate: Fp) -> Result<Vec<Fp>, ShamirError> {
    let mut points: Vec<Share> = shares.to_vec();
    points.push(Share { x: 0, y: candidate });
    // Interpolate through (0, candidate) and the shares: solve for coefficients by building the
    // Lagrange basis polynomials explicitly (x = 0 is allowed here, as the completion point).
    let xs: Vec<Fp> = points.iter().map(|p| Fp::from(p.x as u64)).collect();
    for (i, a) in xs.iter().enumerate() {
        if xs[..i].contains(a) {
            return Err(ShamirError::DuplicateX(points[i].x));
        }
    }
    let mut coeffs = vec![Fp::ZERO; points.len()];
    for (j, pj) in points.iter().enumerate() {
        // basis_j(x) = Π_{m≠j} (x − x_m) / (x_j − x_m)
        let mut basis = vec![Fp::ONE];
        let mut den = Fp::ONE;
        for (m, &xm) in xs.iter().enumerate() {
            if m == j {
                continue;
            }
            let mut next = vec![Fp::ZERO; basis.len() + 1];
            for (d, &c) in basis.iter().enumerate() {
                next[d + 1] += c;
                next[d] -= c * xm;
            }
            basis = next;
            den *= xs[j] - xm;
        }
        let scale = pj.y * den.invert().expect("distinct points");
        for (c, b) in coeffs.iter_mut().zip(basis) {
            *c += b * scale;
        }
    }
    Ok(coeffs)
}

/// Shares of `secrets` among custodians 1..=n at threshold k: a vector per custodian, in secret
/// order (the step machines' tests start from these).
#[cfg(test)]
pub(crate) fn deal(
    secrets: &[Fp],
    k: usize,
    n: usize,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<Vec<Fp>> {
    let t = Threshold::new(k, n).unwrap();
    let mut by_custodian = vec![Vec::new(); n];
    for &s in secrets {
        for Share { x, y } in share(s, t, rng) {
            by_custodian[x as usize - 1].push(y);
        }
    }
    by_custodian
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;

    fn fp() -> impl Strategy<Value = Fp> {
        any::<u128>().prop_map(Fp::from_u128)
    }

    proptest! {
        #[test]
        fn any_k_of_n_reconstruct(secret in fp(), n in 1usize..9, kk in 0usize..9, seed in any::<u64>()) {
            let k = kk % n + 1;
            let t = Threshold::new(k, n).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut shares = share(secret, t, &mut rng);
            shares.shuffle(&mut rng);
            prop_assert_eq!(reconstruct(&shares[..k], t).unwrap(), secret);
            // Every subset of size k agrees too, checked through a random sample of orderings.
            for _ in 0..4 {
                shares.shuffle(&mut rng);
                prop_assert_eq!(reconstruct(&shares, t).unwrap(), secret);
            }
        }

        #[test]
        fn k_minus_one_shares_are_consistent_with_every_secret(
            secret in fp(), candidate in fp(), n in 2usize..8, kk in 0usize..8, seed in any::<u64>()
        ) {
            let k = kk % (n - 1) + 2; // 2..=n
            let t = Threshold::new(k, n).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let shares = share(secret, t, &mut rng);
            let seen = &shares[..k - 1];
            let poly = complete_with_secret(seen, candidate).unwrap();
            prop_assert_eq!(poly.len(), k, "a polynomial of degree k - 1");
            prop_assert_eq!(poly[0], candidate);
            for s in seen {
                prop_assert_eq!(eval_poly(&poly, Fp::from(s.x as u64)), s.y);
            }
        }

        #[test]
        fn interpolation_at_any_point(secret in fp(), at in fp(), seed in any::<u64>()) {
            let t = Threshold::new(3, 5).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let shares = share(secret, t, &mut rng);
            let a = interpolate_at(&shares[..3], at).unwrap();
            let b = interpolate_at(&shares[2..], at).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Threshold::new(0, 3).is_err());
        assert!(Threshold::new(4, 3).is_err());
        let t = Threshold::new(2, 3).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let shares = share(Fp::ONE, t, &mut rng);
        assert_eq!(
            reconstruct(&shares[..1], t),
            Err(ShamirError::TooFewShares { need: 2, got: 1 })
        );
        let dup = vec![shares[0].clone(), shares[0].clone()];
        assert_eq!(reconstruct(&dup, t), Err(ShamirError::DuplicateX(1)));
    }

    #[test]
    fn share_debug_hides_the_secret() {
        let s = Share {
            x: 1,
            y: Fp::from(424242),
        };
        assert!(!format!("{s:?}").contains("424242"));
    }
}
