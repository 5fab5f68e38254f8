//! Plain evaluation of a circuit: the reference every threshold evaluation must agree with.

use crate::circuit::{Circuit, Gate};
use crate::field::Fp;

/// Evaluates a checked circuit on field elements, returning the output wires' values.
/// `inputs` and `secrets` are in the manifest's order.
pub fn eval_plain(circuit: &Circuit, inputs: &[Fp], secrets: &[Fp]) -> Vec<Fp> {
    let mut wires: Vec<Fp> = Vec::with_capacity(circuit.gates.len());
    for gate in &circuit.gates {
        let w = |i: &u32| wires[*i as usize];
        let value = match gate {
            Gate::Input(k) => inputs[*k as usize],
            Gate::Secret(k) => secrets[*k as usize],
            Gate::Const(c) => Fp::from_i128(*c),
            Gate::Add(a, b) => w(a) + w(b),
            Gate::Sub(a, b) => w(a) - w(b),
            Gate::Neg(a) => -w(a),
            Gate::Scale(a, k) => w(a) * Fp::from_i128(*k),
            Gate::Mul(a, b) => w(a) * w(b),
            Gate::Dot(terms) => terms.iter().map(|(a, b)| w(a) * w(b)).sum(),
        };
        wires.push(value);
    }
    circuit
        .outputs
        .iter()
        .map(|&o| wires[o as usize])
        .collect()
}
