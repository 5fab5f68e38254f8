//! Opening a Shamir sharing from every point received, when some may be wrong: Reed–Solomon
//! decoding by Berlekamp–Welch (L. R. Welch and E. R. Berlekamp, *Error correction for
//! algebraic block codes*, US patent 4,633,470, 1986; as presented by P. Gemmell and M. Sudan,
//! *Highly resilient correctors for polynomials*, IPL 43(4), 1992).
//!
//! The `m` points of a sharing of threshold `k` are a codeword of a Reed–Solomon code of
//! dimension `k`: any two polynomials of degree below `k` differ on at least `m − k + 1` of the
//! points. A decoder that corrects up to `e` wrong points and refuses beyond that detects every
//! error pattern of up to `d` points only when `e + d ≤ m − k`: correcting more makes some
//! larger patterns decode, silently, to another polynomial. So how much may be corrected depends
//! on how many points may be wrong, which is the caller's threat model, not the code's: callers
//! pass `faulty`, the most points that may be wrong (k − 1 for custodians, of whom an attacker
//! controls at most k − 1), and [`radius`] corrects
//!
//! `e = min(⌊(m − k)/2⌋, m − k − faulty)`
//!
//! so that every pattern of up to `max(faulty, e)` wrong points (and at most `m − k`) is either
//! corrected to the true value, the wrong points named exactly, or refused with
//! [`DecodeError::Inconsistent`], which names nobody. A point is named only when it is off the
//! one polynomial that the bound leaves possible: an honest sender is never blamed, as long as
//! at most `faulty` points are wrong.
//!
//! What no decoder can do: with more than `m − k` wrong points (fewer than `k` right ones) the
//! wrong points can lie on a polynomial of their own, which is then all there is to see.
//!
//! Berlekamp–Welch: with `E` the monic polynomial of degree `e` that vanishes at the wrong
//! points (padded with arbitrary roots) and `P` the sharing polynomial, `Q = P·E` has degree
//! below `k + e` and `Q(xᵢ) = yᵢ·E(xᵢ)` at every point. Those `m ≥ k + 2e` equations are linear
//! in the `k + 2e` unknown coefficients of `Q` and `E`, and when at most `e` points are wrong
//! every solution has `Q/E = P`. A solution whose quotient is not exact, or that disagrees with
//! more than `e` points, means more than `e` points are wrong: refused. The values opened here
//! are public (openings, outputs), so nothing is constant-time.

use crate::field::Fp;
use crate::shamir::{ShamirError, check_points, eval_poly, lagrange_coefficients};

/// An opened value (or vector of values) and the senders of the points found wrong, in
/// increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    pub value: T,
    pub liars: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a sharing of threshold {k} opens from at least {k} points; there are {got}")]
    TooFewPoints { k: usize, got: usize },
    #[error("a threshold is at least 1")]
    ZeroThreshold,
    #[error(transparent)]
    BadPoints(#[from] ShamirError),
    #[error("the vectors to open differ in length ({0} and {1} values)")]
    Ragged(usize, usize),
    /// More points are wrong than can be corrected: which ones cannot be told.
    #[error(
        "the {points} points do not lie on one polynomial of degree below {k}, and which are \
         wrong cannot be told"
    )]
    Inconsistent { points: usize, k: usize },
}

/// How many wrong points, among `m` of a sharing of threshold `k`, are corrected when at most
/// `faulty` may be wrong (see the module documentation).
pub fn radius(m: usize, k: usize, faulty: usize) -> usize {
    let spare = m.saturating_sub(k);
    (spare / 2).min(spare.saturating_sub(faulty))
}

/// Opens the value at 0 of a sharing of threshold `k` from `points` `(x, y)`, at most `faulty`
/// of which may be wrong.
pub fn decode(points: &[(u32, Fp)], k: usize, faulty: usize) -> Result<Decoded<Fp>, DecodeError> {
    let xs: Vec<u32> = points.iter().map(|&(x, _)| x).collect();
    let ys: Vec<Fp> = points.iter().map(|&(_, y)| y).collect();
    let (value, mut liars) = Opening::new(&xs, k, faulty)?.open(&ys)?;
    liars.sort_unstable();
    Ok(Decoded { value, liars })
}

/// Opens the value at 0 of a sharing of threshold `k` from every custodian's point, accepting
/// only when all of them lie on one polynomial (at most k − 1 of them may be wrong): the
/// protocols among all n (the joint check of shares, a refresh) go ahead only when nobody
/// deviated. Otherwise, the senders of the points proven wrong (none when that cannot be told).
pub fn open_unanimous(points: &[(u32, Fp)], k: usize) -> Result<Fp, Vec<u32>> {
    match decode(points, k, k - 1) {
        Ok(d) if d.liars.is_empty() => Ok(d.value),
        Ok(d) => Err(d.liars),
        Err(DecodeError::Inconsistent { .. }) => Err(Vec::new()),
        Err(e) => unreachable!("the points 1..=n of a valid threshold decode: {e}"),
    }
}

/// Opens many sharings sent by the same senders at once: `vectors` holds each sender's `x` and
/// its points of every sharing, in the same order. Every sharing must open; the liars are the
/// senders found wrong in any of them.
pub fn decode_vectors<V: AsRef<[Fp]>>(
    vectors: &[(u32, V)],
    k: usize,
    faulty: usize,
) -> Result<Decoded<Vec<Fp>>, DecodeError> {
    let xs: Vec<u32> = vectors.iter().map(|(x, _)| *x).collect();
    let opening = Opening::new(&xs, k, faulty)?;
    let len = vectors.first().map_or(0, |(_, v)| v.as_ref().len());
    if let Some((_, v)) = vectors.iter().find(|(_, v)| v.as_ref().len() != len) {
        return Err(DecodeError::Ragged(len, v.as_ref().len()));
    }
    let mut values = Vec::with_capacity(len);
    let mut liars = Vec::new();
    let mut ys = Vec::with_capacity(xs.len());
    for i in 0..len {
        ys.clear();
        ys.extend(vectors.iter().map(|(_, v)| v.as_ref()[i]));
        let (value, wrong) = opening.open(&ys)?;
        values.push(value);
        liars.extend(wrong);
    }
    liars.sort_unstable();
    liars.dedup();
    Ok(Decoded {
        value: values,
        liars,
    })
}

/// What decoding at a fixed set of x-coordinates precomputes: the Lagrange rows that take the
/// first `k` points to the value at 0 and to each other point (so that the common case, every
/// point right, costs one check per point and no elimination).
struct Opening<'a> {
    xs: &'a [u32],
    k: usize,
    e: usize,
    /// Weights on the first `k` points giving the value at 0.
    at_zero: Vec<Fp>,
    /// For each point after the first `k`, the weights giving its value.
    at_rest: Vec<Vec<Fp>>,
}

impl<'a> Opening<'a> {
    fn new(xs: &'a [u32], k: usize, faulty: usize) -> Result<Opening<'a>, DecodeError> {
        if k == 0 {
            return Err(DecodeError::ZeroThreshold);
        }
        if xs.len() < k {
            return Err(DecodeError::TooFewPoints { k, got: xs.len() });
        }
        check_points(xs)?;
        let first = &xs[..k];
        let at_zero = lagrange_coefficients(first, Fp::ZERO)?;
        let at_rest = xs[k..]
            .iter()
            .map(|&x| lagrange_coefficients(first, Fp::from(x as u64)))
            .collect::<Result<_, _>>()?;
        Ok(Opening {
            xs,
            k,
            e: radius(xs.len(), k, faulty),
            at_zero,
            at_rest,
        })
    }

    /// The value at 0 and the x of every wrong point (unsorted).
    fn open(&self, ys: &[Fp]) -> Result<(Fp, Vec<u32>), DecodeError> {
        let (first, rest) = ys.split_at(self.k);
        let through_first =
            |weights: &[Fp]| -> Fp { weights.iter().zip(first).map(|(&w, &y)| w * y).sum() };
        if self
            .at_rest
            .iter()
            .zip(rest)
            .all(|(w, &y)| through_first(w) == y)
        {
            return Ok((through_first(&self.at_zero), Vec::new()));
        }
        let inconsistent = || DecodeError::Inconsistent {
            points: ys.len(),
            k: self.k,
        };
        if self.e == 0 {
            return Err(inconsistent());
        }
        let p = berlekamp_welch(self.xs, ys, self.k, self.e).ok_or_else(inconsistent)?;
        let liars: Vec<u32> = self
            .xs
            .iter()
            .zip(ys)
            .filter(|&(&x, &y)| eval_poly(&p, Fp::from(x as u64)) != y)
            .map(|(&x, _)| x)
            .collect();
        if liars.len() > self.e {
            return Err(inconsistent());
        }
        Ok((p[0], liars))
    }
}

/// The polynomial of degree below `k` that the points lie on except for at most `e` of them,
/// if the key equation has a solution whose quotient is exact; `None` otherwise.
fn berlekamp_welch(xs: &[u32], ys: &[Fp], k: usize, e: usize) -> Option<Vec<Fp>> {
    // Unknowns: q_0 .. q_{k+e−1}, then e_0 .. e_{e−1} (E = x^e + Σ e_j x^j). Row i:
    // Σ q_j xᵢ^j − yᵢ Σ e_j xᵢ^j = yᵢ xᵢ^e.
    let unknowns = k + 2 * e;
    let mut rows: Vec<Vec<Fp>> = xs
        .iter()
        .zip(ys)
        .map(|(&x, &y)| {
            let x = Fp::from(x as u64);
            let powers: Vec<Fp> = core::iter::successors(Some(Fp::ONE), |&p| Some(p * x))
                .take(k + e + 1)
                .collect();
            let mut row = Vec::with_capacity(unknowns + 1);
            row.extend_from_slice(&powers[..k + e]);
            row.extend(powers[..e].iter().map(|&p| -(y * p)));
            row.push(y * powers[e]);
            row
        })
        .collect();
    let solution = solve(&mut rows, unknowns)?;
    let (q, low) = solution.split_at(k + e);
    let mut locator = low.to_vec();
    locator.push(Fp::ONE);
    divide_exactly(q, &locator)
}

/// One solution of the linear system whose augmented rows are `rows` (`unknowns` columns, then
/// the right-hand side), free unknowns set to 0; `None` if it has none.
fn solve(rows: &mut [Vec<Fp>], unknowns: usize) -> Option<Vec<Fp>> {
    let mut pivots = Vec::new();
    let mut next = 0;
    for col in 0..unknowns {
        let Some(found) = (next..rows.len()).find(|&r| rows[r][col] != Fp::ZERO) else {
            continue;
        };
        rows.swap(next, found);
        let inverse = rows[next][col].invert().expect("a non-zero pivot");
        for v in &mut rows[next][col..] {
            *v *= inverse;
        }
        let pivot = rows[next].clone();
        for (r, row) in rows.iter_mut().enumerate() {
            let factor = row[col];
            if r != next && factor != Fp::ZERO {
                for (v, &p) in row[col..].iter_mut().zip(&pivot[col..]) {
                    *v -= factor * p;
                }
            }
        }
        pivots.push(col);
        next += 1;
    }
    // A remaining row reads 0 = its right-hand side.
    if rows[next..].iter().any(|row| row[unknowns] != Fp::ZERO) {
        return None;
    }
    let mut solution = vec![Fp::ZERO; unknowns];
    for (row, &col) in rows.iter().zip(&pivots) {
        solution[col] = row[unknowns];
    }
    Some(solution)
}

/// `num / den` for a monic `den`, if the remainder is zero (coefficients lowest first).
fn divide_exactly(num: &[Fp], den: &[Fp]) -> Option<Vec<Fp>> {
    let d = den.len() - 1;
    let mut rem = num.to_vec();
    let mut quotient = vec![Fp::ZERO; num.len() - d];
    for i in (0..quotient.len()).rev() {
        let c = rem[i + d];
        quotient[i] = c;
        for (r, &dj) in rem[i..=i + d].iter_mut().zip(den) {
            *r -= c * dj;
        }
    }
    rem.iter().all(|&r| r == Fp::ZERO).then_some(quotient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// A sharing of a random polynomial of degree `k − 1` at x = 1..=m, shuffled: the
    /// polynomial and the points.
    fn sharing(k: usize, m: usize, rng: &mut StdRng) -> (Vec<Fp>, Vec<(u32, Fp)>) {
        let poly: Vec<Fp> = (0..k).map(|_| Fp::random(rng)).collect();
        let mut points: Vec<(u32, Fp)> = (1..=m as u32)
            .map(|x| (x, eval_poly(&poly, Fp::from(x as u64))))
            .collect();
        points.shuffle(rng);
        (poly, points)
    }

    /// Makes the first `t` points wrong and returns their x, sorted. Adversarial: the liars
    /// agree on another polynomial of degree below `k` that passes through `k − 1` right points
    /// (as close to the truth as any can be, with another value at 0); otherwise each liar adds
    /// a random non-zero error.
    fn corrupt(
        points: &mut [(u32, Fp)],
        poly: &[Fp],
        t: usize,
        adversarial: bool,
        rng: &mut StdRng,
    ) -> Vec<u32> {
        let k = poly.len();
        let honest: Vec<Fp> = points[t..]
            .iter()
            .take(k - 1)
            .map(|&(x, _)| Fp::from(x as u64))
            .collect();
        let shift = loop {
            let c = Fp::random(rng);
            if c != Fp::ZERO {
                break c;
            }
        };
        for (x, y) in &mut points[..t] {
            let at = Fp::from(*x as u64);
            *y += if adversarial {
                // P' = P + c·Π (x − h) over the k − 1 right points h.
                shift * honest.iter().map(|&h| at - h).product::<Fp>()
            } else {
                Fp::from(rng.gen_range(1..u64::MAX))
            };
        }
        let mut liars: Vec<u32> = points[..t].iter().map(|&(x, _)| x).collect();
        liars.sort_unstable();
        liars
    }

    /// (k, m, faulty) with 1 <= k <= m <= 9 and faulty <= m.
    fn shape() -> impl Strategy<Value = (usize, usize, usize)> {
        (1usize..=9, 0usize..9, 0usize..=9).prop_map(|(m, k, f)| (k % m + 1, m, f % (m + 1)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn up_to_the_radius_wrong_points_are_corrected_and_exactly_their_senders_named(
            (k, m, faulty) in shape(), t in 0usize..9, adversarial in any::<bool>(), seed in any::<u64>()
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let (poly, mut points) = sharing(k, m, &mut rng);
            let t = t % (radius(m, k, faulty) + 1);
            let liars = corrupt(&mut points, &poly, t, adversarial, &mut rng);
            let got = decode(&points, k, faulty).unwrap();
            prop_assert_eq!(got, Decoded { value: poly[0], liars });
        }

        #[test]
        fn within_the_bound_a_wrong_value_is_never_accepted(
            (k, m, faulty) in shape(), t in 1usize..9, adversarial in any::<bool>(), seed in any::<u64>()
        ) {
            let e = radius(m, k, faulty);
            let detected = m - k - e;
            prop_assert!(detected >= e && detected >= faulty.min(m - k));
            prop_assume!(detected > 0);
            let t = (t - 1) % detected + 1;
            let mut rng = StdRng::seed_from_u64(seed);
            let (poly, mut points) = sharing(k, m, &mut rng);
            let liars = corrupt(&mut points, &poly, t, adversarial, &mut rng);
            match decode(&points, k, faulty) {
                Ok(got) => prop_assert_eq!(got, Decoded { value: poly[0], liars }),
                Err(e) => prop_assert_eq!(e, DecodeError::Inconsistent { points: m, k }),
            }
        }

        #[test]
        fn vectors_open_each_value_and_name_every_liar(
            (k, m, faulty) in shape(), len in 0usize..5, seed in any::<u64>()
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let e = radius(m, k, faulty);
            let mut senders: Vec<(u32, Vec<Fp>)> = (1..=m as u32).map(|x| (x, Vec::new())).collect();
            let mut want = Vec::new();
            let mut liars = Vec::new();
            for _ in 0..len {
                let (poly, mut points) = sharing(k, m, &mut rng);
                let t = rng.gen_range(0..=e);
                liars.extend(corrupt(&mut points, &poly, t, false, &mut rng));
                for (x, y) in points {
                    senders[x as usize - 1].1.push(y);
                }
                want.push(poly[0]);
            }
            liars.sort_unstable();
            liars.dedup();
            let got = decode_vectors(&senders, k, faulty).unwrap();
            prop_assert_eq!(got, Decoded { value: want, liars });
        }
    }

    #[test]
    fn two_of_three_with_a_liar_refuses_and_names_nobody() {
        let mut rng = StdRng::seed_from_u64(1);
        for liar in 0..3 {
            let (poly, mut points) = sharing(2, 3, &mut rng);
            points.sort_unstable_by_key(|&(x, _)| x);
            points[liar].1 += Fp::ONE;
            assert_eq!(
                decode(&points, 2, 1),
                Err(DecodeError::Inconsistent { points: 3, k: 2 })
            );
            // The two right points alone open the right value: nothing to see.
            points.remove(liar);
            assert_eq!(decode(&points, 2, 1).unwrap().value, poly[0]);
        }
    }

    #[test]
    fn a_bound_below_the_truth_lets_colluders_through() {
        // 2-of-4, two liars on a line through one right point: trusting that at most one point
        // is wrong corrects one, and so accepts their line and blames the other right point.
        // Told that two may be wrong, the decoder refuses instead.
        let mut rng = StdRng::seed_from_u64(2);
        let (poly, mut points) = sharing(2, 4, &mut rng);
        let liars = corrupt(&mut points, &poly, 2, true, &mut rng);
        let fooled = decode(&points, 2, 1).unwrap();
        assert_ne!(fooled.value, poly[0]);
        assert!(fooled.liars.iter().all(|x| !liars.contains(x)));
        assert_eq!(
            decode(&points, 2, 2),
            Err(DecodeError::Inconsistent { points: 4, k: 2 })
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let one = Fp::ONE;
        assert_eq!(
            decode(&[(1, one)], 2, 1),
            Err(DecodeError::TooFewPoints { k: 2, got: 1 })
        );
        assert_eq!(decode(&[(1, one)], 0, 0), Err(DecodeError::ZeroThreshold));
        assert_eq!(
            decode(&[(1, one), (1, one)], 1, 0),
            Err(DecodeError::BadPoints(ShamirError::DuplicateX(1)))
        );
        assert_eq!(
            decode(&[(0, one)], 1, 0),
            Err(DecodeError::BadPoints(ShamirError::ZeroX))
        );
        let ragged = [(1, vec![one]), (2, vec![one, one])];
        assert_eq!(
            decode_vectors(&ragged, 1, 0),
            Err(DecodeError::Ragged(1, 2))
        );
        assert_eq!(radius(3, 2, 1), 0);
        assert_eq!(radius(4, 2, 1), 1);
        assert_eq!(radius(5, 3, 2), 0);
        assert_eq!(radius(9, 3, 2), 3);
        assert_eq!(radius(2, 3, 0), 0);
    }
}
