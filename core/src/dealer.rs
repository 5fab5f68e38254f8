//! A trusted dealer of kits (Beaver triples, masks and their MACs), **for tests and benchmarks
//! only** (behind the `test-dealer` feature). It sees every kit in the clear, which is exactly
//! what the deployed system must never do: there, custodians generate kits among themselves.

use rand_core::{CryptoRng, RngCore};

use crate::circuit::{Circuit, Publicity};
use crate::field::Fp;
use crate::session::{Kit, Mask, Triple};
use crate::shamir::{Threshold, share};

/// Deals one kit per custodian for one evaluation of `circuit` on `secrets` (their values, in
/// the manifest's order): a random MAC key, one triple per gate that needs one (shaped by
/// [`Publicity::triple_terms`]) and one mask per private input, each with its MAC, and a MAC
/// of each secret read; returns each custodian's kit (index `i` is custodian `i + 1`).
pub fn deal_kits(
    circuit: &Circuit,
    secrets: &[Fp],
    t: Threshold,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<Kit> {
    let publicity = Publicity::of(circuit);
    let key = Fp::random(rng);
    // Each custodian's share of `v` and of `key·v`.
    fn deal(
        v: Fp,
        key: Fp,
        t: Threshold,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Vec<Fp>, Vec<Fp>) {
        let value = share(v, t, rng).iter().map(|s| s.y).collect();
        let mac = share(key * v, t, rng).iter().map(|s| s.y).collect();
        (value, mac)
    }
    let mut kits: Vec<Kit> = (0..t.n())
        .map(|_| Kit {
            triples: Vec::new(),
            masks: Vec::new(),
            secret_macs: Vec::new(),
            key: Fp::ZERO,
        })
        .collect();
    for gate in &circuit.gates {
        let terms = publicity.triple_terms(gate);
        if terms == 0 {
            continue;
        }
        let a: Vec<Fp> = (0..terms).map(|_| Fp::random(rng)).collect();
        let b: Vec<Fp> = (0..terms).map(|_| Fp::random(rng)).collect();
        let c: Fp = a.iter().zip(&b).map(|(&x, &y)| x * y).sum();
        let a: Vec<_> = a.into_iter().map(|v| deal(v, key, t, rng)).collect();
        let b: Vec<_> = b.into_iter().map(|v| deal(v, key, t, rng)).collect();
        let c = deal(c, key, t, rng);
        for (p, kit) in kits.iter_mut().enumerate() {
            kit.triples.push(Triple {
                a: a.iter().map(|s| s.0[p]).collect(),
                a_mac: a.iter().map(|s| s.1[p]).collect(),
                b: b.iter().map(|s| s.0[p]).collect(),
                b_mac: b.iter().map(|s| s.1[p]).collect(),
                c: c.0[p],
                c_mac: c.1[p],
            });
        }
    }
    for _ in circuit
        .gates
        .iter()
        .filter(|g| matches!(g, crate::circuit::Gate::PrivateInput(_)))
    {
        let mask = Fp::random(rng);
        let (value, mac) = deal(mask, key, t, rng);
        for (p, kit) in kits.iter_mut().enumerate() {
            kit.masks.push(Mask {
                value: value[p],
                mac: mac[p],
            });
        }
    }
    for &secret in &secrets[..circuit.secrets_read()] {
        for (kit, s) in kits.iter_mut().zip(share(key * secret, t, rng)) {
            kit.secret_macs.push(s.y);
        }
    }
    for (kit, s) in kits.iter_mut().zip(share(key, t, rng)) {
        kit.key = s.y;
    }
    kits
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
