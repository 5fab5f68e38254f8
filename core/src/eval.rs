//! Plain evaluation of a circuit: the reference every threshold evaluation must agree with.

use crate::circuit::{Circuit, Gate};
use crate::field::Fp;

/// Evaluates a checked circuit on field elements, returning the output wires' values.
/// `inputs` (visible), `private_inputs` and `secrets` are each in the manifest's order.
pub fn eval_plain(
    circuit: &Circuit,
    inputs: &[Fp],
    private_inputs: &[Fp],
    secrets: &[Fp],
) -> Vec<Fp> {
    let mut wires: Vec<Fp> = Vec::with_capacity(circuit.gates.len());
    for gate in &circuit.gates {
        let w = |i: &u32| wires[*i as usize];
        let value = match gate {
            Gate::Input(k) => inputs[*k as usize],
            Gate::PrivateInput(k) => private_inputs[*k as usize],
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
    circuit.outputs.iter().map(|&o| wires[o as usize]).collect()
}

/// Why a named value offered for an evaluation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("missing {kind} `{name}`")]
    Missing { kind: &'static str, name: String },
    #[error("unknown {kind} `{name}` (the program declares: {declared})")]
    Unknown {
        kind: &'static str,
        name: String,
        declared: String,
    },
    #[error("{kind} `{name}` is given twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("{kind} `{name}`: {reason}")]
    Malformed {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("{kind} `{name}` = {value} is outside its declared range {min}..{max}")]
    OutOfRange {
        kind: &'static str,
        name: String,
        value: String,
        min: String,
        max: String,
    },
}

/// Encodes named decimal values (`income` = `1200.50`) for the declarations `decls`, in their
/// order, at each declaration's scale; refuses missing, unknown, repeated, too precise and
/// out-of-range values. `kind` names what they are in messages ("input", "secret").
pub fn encode_values(
    kind: &'static str,
    decls: &[crate::circuit::ValueDecl],
    given: &[(String, String)],
) -> Result<Vec<Fp>, ValueError> {
    for (i, (name, _)) in given.iter().enumerate() {
        if !decls.iter().any(|d| &d.name == name) {
            return Err(ValueError::Unknown {
                kind,
                name: name.clone(),
                declared: decls
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(ValueError::Duplicate {
                kind,
                name: name.clone(),
            });
        }
    }
    decls
        .iter()
        .map(|d| {
            let (_, text) =
                given
                    .iter()
                    .find(|(n, _)| n == &d.name)
                    .ok_or_else(|| ValueError::Missing {
                        kind,
                        name: d.name.clone(),
                    })?;
            let value = crate::Decimal::parse_at(text.trim(), d.scale).map_err(|e| {
                ValueError::Malformed {
                    kind,
                    name: d.name.clone(),
                    reason: e.to_string(),
                }
            })?;
            if value.raw < d.min || value.raw > d.max {
                let at = |raw| {
                    crate::Decimal {
                        raw,
                        scale: d.scale,
                    }
                    .to_string()
                };
                return Err(ValueError::OutOfRange {
                    kind,
                    name: d.name.clone(),
                    value: text.trim().to_string(),
                    min: at(d.min),
                    max: at(d.max),
                });
            }
            Ok(value.to_field())
        })
        .collect()
}

/// A caller's inputs, encoded: the visible ones' values and the private ones' values (which
/// only the caller's client ever holds whole), each in the manifest's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub visible: Vec<Fp>,
    pub private: zeroize::Zeroizing<Vec<Fp>>,
}

/// Encodes a caller's named inputs, visible and private alike, as [`encode_values`] does:
/// every declared input exactly once, each in its range at its scale. The caller's client
/// checks a private input's range here; no custodian can check it on shares.
pub fn encode_inputs(
    manifest: &crate::circuit::Manifest,
    given: &[(String, String)],
) -> Result<Inputs, ValueError> {
    let is_private = |name: &str| manifest.private_inputs.iter().any(|d| d.name == name);
    let (private, visible): (Vec<_>, Vec<_>) =
        given.iter().cloned().partition(|(n, _)| is_private(n));
    let visible = encode_values("input", &manifest.inputs, &visible).map_err(|e| match e {
        // An unknown name is unknown among all inputs: list them all.
        ValueError::Unknown { kind, name, .. } => ValueError::Unknown {
            kind,
            name,
            declared: manifest
                .inputs
                .iter()
                .chain(&manifest.private_inputs)
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        },
        other => other,
    })?;
    let private = encode_values("private input", &manifest.private_inputs, &private)?;
    Ok(Inputs {
        visible,
        private: zeroize::Zeroizing::new(private),
    })
}

/// Decodes output values by the manifest: signed, at each output's scale.
pub fn decode_outputs(
    manifest: &crate::circuit::Manifest,
    values: &[Fp],
) -> Vec<(String, crate::Decimal)> {
    manifest
        .outputs
        .iter()
        .zip(values)
        .map(|(d, &v)| (d.name.clone(), crate::Decimal::from_field(v, d.scale)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::ValueDecl;

    fn decls() -> Vec<ValueDecl> {
        vec![
            ValueDecl {
                name: "income".into(),
                scale: 2,
                min: 0,
                max: 25_000_000,
            },
            ValueDecl {
                name: "age".into(),
                scale: 0,
                min: 18,
                max: 100,
            },
        ]
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn values_encode_at_their_scale() {
        let v = encode_values(
            "input",
            &decls(),
            &given(&[("age", "40"), ("income", "1200.5")]),
        )
        .unwrap();
        assert_eq!(v, vec![Fp::from(120050), Fp::from(40)]);
    }

    #[test]
    fn bad_values_are_refused() {
        let d = decls();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("age", "40")], "missing input `income`"),
            (
                &[("age", "40"), ("income", "1"), ("zip", "1")],
                "unknown input `zip`",
            ),
            (
                &[("age", "40"), ("age", "41"), ("income", "1")],
                "given twice",
            ),
            (
                &[("age", "17"), ("income", "1")],
                "outside its declared range 18..100",
            ),
            (
                &[("age", "40"), ("income", "1.234")],
                "digits after the point",
            ),
            (&[("age", "forty"), ("income", "1")], "not a decimal"),
        ];
        for (pairs, needle) in cases {
            let e = encode_values("input", &d, &given(pairs))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
