//! The prime field F_p with p = 2^127 − 1 (a Mersenne prime).
//!
//! Elements are kept canonical (`0 <= v < p`) in a `u128`. Reduction uses the Mersenne identity
//! `2^127 ≡ 1 (mod p)`, so a reduction is two shifts, a mask and one conditional subtraction done
//! with a mask instead of a branch: no operation branches on, or indexes memory by, an element's
//! value. That is 2–3× faster than a generic big-integer Montgomery field for this modulus, and
//! the field sits on every hot path (sharing, Lagrange, every gate of every evaluation), which is
//! why it is hand-written; `crypto-bigint` is the oracle it is tested against.

use core::fmt;
use core::iter::{Product, Sum};
use core::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use serde::{Deserialize, Serialize};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// The modulus p = 2^127 − 1.
pub const P: u128 = (1u128 << 127) - 1;

/// `(p − 1) / 2`: the largest value that decodes as a non-negative signed integer.
pub const HALF: u128 = P >> 1;

/// An element of F_p, always canonical.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Zeroize, Serialize, Deserialize)]
#[serde(try_from = "u128", into = "u128")]
pub struct Fp(u128);

/// All ones when `bit` is 1, all zeros when it is 0, without a branch.
#[inline(always)]
fn mask(bit: bool) -> u128 {
    0u128.wrapping_sub(bit as u128)
}

/// Reduces `x < 2^128` to `[0, p)`.
#[inline(always)]
fn reduce(x: u128) -> u128 {
    // x = hi·2^127 + lo ≡ hi + lo, which is at most 2^127: one conditional subtraction remains.
    let folded = (x & P) + (x >> 127);
    let (minus_p, borrow) = folded.overflowing_sub(P);
    (minus_p & !mask(borrow)) | (folded & mask(borrow))
}

impl Fp {
    pub const ZERO: Fp = Fp(0);
    pub const ONE: Fp = Fp(1);

    /// The element `x mod p` for any `u128`.
    #[inline]
    pub fn from_u128(x: u128) -> Fp {
        Fp(reduce(x))
    }

    /// The element a signed integer maps to: negative `x` becomes `p − |x|`.
    /// Any `i128` is accepted (values beyond ±p wrap, as integers mod p do).
    #[inline]
    pub fn from_i128(x: i128) -> Fp {
        let negative = x < 0;
        let magnitude = Fp::from_u128(x.unsigned_abs());
        Fp::conditional_select(&magnitude, &-magnitude, Choice::from(negative as u8))
    }

    /// The canonical value `0 <= v < p`.
    #[inline]
    pub fn to_u128(self) -> u128 {
        self.0
    }

    /// The symmetric (signed) representative in `(−p/2, p/2]`: `p − 7` decodes to `−7`.
    #[inline]
    pub fn to_i128(self) -> i128 {
        let is_negative = self.0 > HALF;
        let negated = (P - self.0) as i128;
        let positive = self.0 as i128;
        ((-negated) & mask(is_negative) as i128) | (positive & !mask(is_negative) as i128)
    }

    /// Parses a canonical element; `None` for `v >= p` (non-canonical encodings are refused, so
    /// every element has exactly one encoding).
    pub fn from_canonical(v: u128) -> Option<Fp> {
        (v < P).then_some(Fp(v))
    }

    pub fn to_le_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    pub fn from_le_bytes(bytes: [u8; 16]) -> Option<Fp> {
        Fp::from_canonical(u128::from_le_bytes(bytes))
    }

    /// Elements as flat little-endian `(lo, hi)` u64 pairs: the layout that crosses the
    /// component boundary as one copy (see `wit/evaluator.wit`).
    pub fn to_u64_pairs(values: &[Fp]) -> Vec<u64> {
        values
            .iter()
            .flat_map(|v| [v.0 as u64, (v.0 >> 64) as u64])
            .collect()
    }

    /// The inverse of [`Fp::to_u64_pairs`]; `None` for an odd length or a non-canonical element.
    pub fn from_u64_pairs(words: &[u64]) -> Option<Vec<Fp>> {
        if !words.len().is_multiple_of(2) {
            return None;
        }
        words
            .chunks_exact(2)
            .map(|w| Fp::from_canonical(w[0] as u128 | (w[1] as u128) << 64))
            .collect()
    }

    /// `self^e` by square-and-multiply over the bits of the public exponent `e`.
    pub fn pow(self, mut e: u128) -> Fp {
        let mut base = self;
        let mut acc = Fp::ONE;
        while e != 0 {
            if e & 1 == 1 {
                acc *= base;
            }
            base *= base;
            e >>= 1;
        }
        acc
    }

    /// The multiplicative inverse, `None` for zero. Computed as `self^(p−2)` (Fermat), whose
    /// running time does not depend on `self`.
    pub fn invert(self) -> Option<Fp> {
        let inv = self.pow(P - 2);
        (!bool::from(self.ct_eq(&Fp::ZERO))).then_some(inv)
    }

    /// A uniformly random element: rejection sampling on 127 random bits (the rejected value,
    /// `p` itself, has probability 2^-127).
    pub fn random(rng: &mut impl rand_core::RngCore) -> Fp {
        loop {
            let mut bytes = [0u8; 16];
            rng.fill_bytes(&mut bytes);
            let v = u128::from_le_bytes(bytes) & P;
            bytes.zeroize();
            if let Some(x) = Fp::from_canonical(v) {
                return x;
            }
        }
    }
}

impl fmt::Debug for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fp({})", self.0)
    }
}

impl fmt::Display for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for Fp {
    fn from(x: u64) -> Fp {
        Fp(x as u128)
    }
}

impl From<Fp> for u128 {
    fn from(x: Fp) -> u128 {
        x.0
    }
}

impl TryFrom<u128> for Fp {
    type Error = NonCanonical;
    fn try_from(v: u128) -> Result<Fp, NonCanonical> {
        Fp::from_canonical(v).ok_or(NonCanonical)
    }
}

/// A value `>= p` was offered as a field element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("value is not a canonical element of F_p (must be below 2^127 - 1)")]
pub struct NonCanonical;

impl ConstantTimeEq for Fp {
    fn ct_eq(&self, other: &Fp) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl ConditionallySelectable for Fp {
    fn conditional_select(a: &Fp, b: &Fp, choice: Choice) -> Fp {
        let m = mask(bool::from(choice));
        Fp((a.0 & !m) | (b.0 & m))
    }
}

impl Add for Fp {
    type Output = Fp;
    #[inline]
    fn add(self, rhs: Fp) -> Fp {
        // Both operands are below 2^127, so the sum fits in a u128.
        Fp(reduce(self.0 + rhs.0))
    }
}

impl Sub for Fp {
    type Output = Fp;
    #[inline]
    // Adding p back is selected by a mask rather than a branch, hence the `&`.
    #[allow(clippy::suspicious_arithmetic_impl)]
    fn sub(self, rhs: Fp) -> Fp {
        let (d, borrow) = self.0.overflowing_sub(rhs.0);
        Fp(d.wrapping_add(P & mask(borrow)))
    }
}

impl Neg for Fp {
    type Output = Fp;
    #[inline]
    fn neg(self) -> Fp {
        Fp::ZERO - self
    }
}

#[cfg(target_family = "wasm")]
use wide_mul_32 as wide_mul;
/// The 256-bit product of two elements as `(hi, lo)` halves.
///
/// On 64-bit hosts a `u128` multiply of 64-bit halves is one machine instruction, so the product
/// is four of them. WebAssembly has no 64×64→128 multiply: each such `u128` product would be a
/// call to a software routine, which made field multiplication the plugin's bottleneck. There,
/// the product is schoolbook on 32-bit limbs, sixteen `i64.mul`s with no call and no branch.
#[cfg(not(target_family = "wasm"))]
use wide_mul_64 as wide_mul;

#[cfg(any(test, not(target_family = "wasm")))]
#[inline(always)]
fn wide_mul_64(a: u128, b: u128) -> (u128, u128) {
    const LO: u128 = u64::MAX as u128;
    let (a0, a1) = (a & LO, a >> 64);
    let (b0, b1) = (b & LO, b >> 64);
    // a1, b1 < 2^63, so no partial product overflows.
    let low = a0 * b0;
    let mid = a0 * b1 + a1 * b0; // < 2^128
    let high = a1 * b1; // < 2^126
    let (lo, carry) = low.overflowing_add(mid << 64);
    (high + (mid >> 64) + carry as u128, lo)
}

#[cfg(any(test, target_family = "wasm"))]
#[inline(always)]
fn wide_mul_32(a: u128, b: u128) -> (u128, u128) {
    const M: u64 = u32::MAX as u64;
    let al = [
        a as u64 & M,
        (a >> 32) as u64 & M,
        (a >> 64) as u64 & M,
        (a >> 96) as u64,
    ];
    let bl = [
        b as u64 & M,
        (b >> 32) as u64 & M,
        (b >> 64) as u64 & M,
        (b >> 96) as u64,
    ];
    let mut r = [0u64; 8];
    for i in 0..4 {
        let mut carry = 0u64;
        for j in 0..4 {
            // (2^32−1)² + 2·(2^32−1) = 2^64 − 1: the sum never overflows.
            let t = al[i] * bl[j] + r[i + j] + carry;
            r[i + j] = t & M;
            carry = t >> 32;
        }
        r[i + 4] = carry;
    }
    let join = |l: &[u64]| {
        l[0] as u128 | (l[1] as u128) << 32 | (l[2] as u128) << 64 | (l[3] as u128) << 96
    };
    (join(&r[4..]), join(&r[..4]))
}

impl Mul for Fp {
    type Output = Fp;
    #[inline]
    fn mul(self, rhs: Fp) -> Fp {
        // The product is below p² < 2^254, so `hi` < 2^126.
        let (hi, lo) = wide_mul(self.0, rhs.0);
        // hi·2^128 + lo ≡ 2·hi + lo (mod p), because 2^128 = 2·2^127 ≡ 2.
        let folded = (lo & P) + (lo >> 127) + (hi << 1);
        Fp(reduce(folded))
    }
}

macro_rules! assign_ops {
    ($($trait:ident $method:ident $op:tt),*) => {$(
        impl $trait for Fp {
            #[inline]
            fn $method(&mut self, rhs: Fp) {
                *self = *self $op rhs;
            }
        }
    )*};
}
assign_ops!(AddAssign add_assign +, SubAssign sub_assign -, MulAssign mul_assign *);

impl Sum for Fp {
    fn sum<I: Iterator<Item = Fp>>(iter: I) -> Fp {
        iter.fold(Fp::ZERO, Add::add)
    }
}

impl Product for Fp {
    fn product<I: Iterator<Item = Fp>>(iter: I) -> Fp {
        iter.fold(Fp::ONE, Mul::mul)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::{NonZero, U256};
    use proptest::prelude::*;

    /// The oracle: the same operation on 256-bit integers, reduced by generic division.
    fn modulus() -> NonZero<U256> {
        NonZero::new(U256::from_u128(P)).unwrap()
    }
    fn big(x: Fp) -> U256 {
        U256::from_u128(x.to_u128())
    }
    fn back(x: U256) -> u128 {
        let r = x.rem(&modulus());
        let words = r.to_words();
        (words[0] as u128) | ((words[1] as u128) << 64)
    }

    fn any_fp() -> impl Strategy<Value = Fp> {
        prop_oneof![
            (0u128..P).prop_map(Fp),
            Just(Fp(0)),
            Just(Fp(1)),
            Just(Fp(P - 1)),
            Just(Fp(HALF)),
            Just(Fp(HALF + 1)),
            (0u128..1000).prop_map(|d| Fp(P - 1 - d)),
        ]
    }

    proptest! {
        #[test]
        fn add_matches_oracle(a in any_fp(), b in any_fp()) {
            prop_assert_eq!((a + b).to_u128(), back(big(a).wrapping_add(&big(b))));
        }

        #[test]
        fn sub_matches_oracle(a in any_fp(), b in any_fp()) {
            let expect = back(big(a).wrapping_add(&U256::from_u128(P)).wrapping_sub(&big(b)));
            prop_assert_eq!((a - b).to_u128(), expect);
        }

        #[test]
        fn mul_matches_oracle(a in any_fp(), b in any_fp()) {
            prop_assert_eq!((a * b).to_u128(), back(big(a).wrapping_mul(&big(b))));
        }

        #[test]
        fn both_wide_products_agree(a in any_fp(), b in any_fp()) {
            prop_assert_eq!(wide_mul_32(a.0, b.0), wide_mul_64(a.0, b.0));
        }

        #[test]
        fn reduction_of_any_u128_matches_oracle(x in any::<u128>()) {
            prop_assert_eq!(Fp::from_u128(x).to_u128(), back(U256::from_u128(x)));
        }

        #[test]
        fn field_laws(a in any_fp(), b in any_fp(), c in any_fp()) {
            prop_assert_eq!(a + b, b + a);
            prop_assert_eq!(a * b, b * a);
            prop_assert_eq!((a + b) + c, a + (b + c));
            prop_assert_eq!((a * b) * c, a * (b * c));
            prop_assert_eq!(a * (b + c), a * b + a * c);
            prop_assert_eq!(a + Fp::ZERO, a);
            prop_assert_eq!(a * Fp::ONE, a);
            prop_assert_eq!(a + (-a), Fp::ZERO);
            prop_assert_eq!(a - b, a + (-b));
        }

        #[test]
        fn inverse(a in any_fp()) {
            match a.invert() {
                None => prop_assert_eq!(a, Fp::ZERO),
                Some(inv) => prop_assert_eq!(a * inv, Fp::ONE),
            }
        }

        #[test]
        fn signed_round_trip(x in -(HALF as i128)..=(HALF as i128)) {
            prop_assert_eq!(Fp::from_i128(x).to_i128(), x);
        }

        #[test]
        fn u64_pairs_round_trip(v in prop::collection::vec(any_fp(), 0..8)) {
            prop_assert_eq!(Fp::from_u64_pairs(&Fp::to_u64_pairs(&v)), Some(v));
        }

        #[test]
        fn bytes_round_trip(a in any_fp()) {
            prop_assert_eq!(Fp::from_le_bytes(a.to_le_bytes()), Some(a));
        }
    }

    #[test]
    fn signed_decoding_of_small_negatives() {
        assert_eq!((Fp::from(3) - Fp::from(10)).to_i128(), -7);
        assert_eq!(Fp::from_i128(-7).to_u128(), P - 7);
        assert_eq!(Fp(HALF).to_i128(), HALF as i128);
        assert_eq!(Fp(HALF + 1).to_i128(), -(HALF as i128));
    }

    #[test]
    fn non_canonical_values_are_refused() {
        assert_eq!(Fp::from_canonical(P), None);
        assert_eq!(Fp::from_canonical(u128::MAX), None);
        assert!(Fp::try_from(P).is_err());
        assert_eq!(Fp::ZERO.invert(), None);
        assert_eq!(Fp::from_u64_pairs(&[1, 2, 3]), None);
        assert_eq!(Fp::from_u64_pairs(&[u64::MAX, u64::MAX]), None);
    }
}
