//! A trusted dealer of Beaver triples, **for tests and benchmarks only** (behind the
//! `test-dealer` feature). It sees every triple in the clear, which is exactly what the
//! deployed system must never do: there, custodians generate triples among themselves.

use rand_core::{CryptoRng, RngCore};

use crate::circuit::{Circuit, Publicity};
use crate::field::Fp;
use crate::session::Triple;
use crate::shamir::{Threshold, share};

/// Deals one triple per gate of `circuit` that needs one, shaped by
/// [`Publicity::triple_terms`]; returns each custodian's triples (index `i` is custodian `i + 1`).
pub fn deal_triples(
    circuit: &Circuit,
    t: Threshold,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<Vec<Triple>> {
    let publicity = Publicity::of(circuit);
    let mut per_party: Vec<Vec<Triple>> = vec![Vec::new(); t.n()];
    for gate in &circuit.gates {
        let terms = publicity.triple_terms(gate);
        if terms == 0 {
            continue;
        }
        let a: Vec<Fp> = (0..terms).map(|_| Fp::random(rng)).collect();
        let b: Vec<Fp> = (0..terms).map(|_| Fp::random(rng)).collect();
        let c: Fp = a.iter().zip(&b).map(|(&x, &y)| x * y).sum();
        let a_shares: Vec<_> = a.iter().map(|&v| share(v, t, rng)).collect();
        let b_shares: Vec<_> = b.iter().map(|&v| share(v, t, rng)).collect();
        let c_shares = share(c, t, rng);
        for (p, triples) in per_party.iter_mut().enumerate() {
            triples.push(Triple {
                a: a_shares.iter().map(|s| s[p].y).collect(),
                b: b_shares.iter().map(|s| s[p].y).collect(),
                c: c_shares[p].y,
            });
        }
    }
    per_party
}

/// Shares each value K-of-N; returns each custodian's shares (index `i` is custodian `i + 1`).
pub fn share_values(
    values: &[Fp],
    t: Threshold,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<Vec<Fp>> {
    let mut per_party = vec![Vec::with_capacity(values.len()); t.n()];
    for &v in values {
        for (p, s) in share(v, t, rng).iter().enumerate() {
            per_party[p].push(s.y);
        }
    }
    per_party
}
