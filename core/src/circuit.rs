//! The circuit a program package carries, and the manifest that describes it.
//!
//! A circuit is a list of gates in topological order: gate `i` may only read wires `< i`, so a
//! list is a DAG by construction. Values are raw fixed-point integers (see [`crate::fixed`]);
//! the manifest says at which scale each input, secret and output is carried.
//!
//! Gates are split by cost in the threshold protocol: `Add`, `Sub`, `Neg`, `Scale` (by a public
//! integer) and `Const` are local on shares; `Mul` and `Dot` each need one degree reduction, and
//! all of them at the same multiplicative depth share one communication round. A `Dot` of any
//! length is a single reduction (the sum of products is reduced once).
//!
//! [`Circuit::check`] is what a host runs on a circuit read from an untrusted package: structure,
//! indices, value ranges (no wire may wrap around p/2) and the declared depth.

use serde::{Deserialize, Serialize};

use crate::field::HALF;
use crate::fixed::MAX_SCALE;

/// Index of a gate's output wire.
pub type WireId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// The `i`-th declared input.
    Input(u32),
    /// The `i`-th declared secret.
    Secret(u32),
    /// A public raw integer.
    Const(i128),
    Add(WireId, WireId),
    Sub(WireId, WireId),
    Neg(WireId),
    /// Multiplication by a public raw integer: local on shares.
    Scale(WireId, i128),
    /// Multiplication of two wires: one degree reduction.
    Mul(WireId, WireId),
    /// `Σ a_j · b_j`: one degree reduction however many terms.
    Dot(Vec<(WireId, WireId)>),
}

impl Gate {
    /// The wires this gate reads.
    pub fn operands(&self) -> Vec<WireId> {
        match self {
            Gate::Input(_) | Gate::Secret(_) | Gate::Const(_) => vec![],
            Gate::Neg(a) | Gate::Scale(a, _) => vec![*a],
            Gate::Add(a, b) | Gate::Sub(a, b) | Gate::Mul(a, b) => vec![*a, *b],
            Gate::Dot(terms) => terms.iter().flat_map(|&(a, b)| [a, b]).collect(),
        }
    }

    /// Whether the gate needs a communication round in the threshold protocol.
    pub fn is_multiplication(&self) -> bool {
        matches!(self, Gate::Mul(..) | Gate::Dot(_))
    }

    /// The range of the gate's value given its operands' ranges; `None` if a bound overflows
    /// `i128` (far beyond p/2 anyway). Indices must have been checked.
    pub fn range(
        &self,
        inputs: &[ValueDecl],
        secrets: &[ValueDecl],
        wire: impl Fn(WireId) -> Range,
    ) -> Option<Range> {
        let product = |a: WireId, b: WireId| {
            if a == b {
                wire(a).checked_square()
            } else {
                wire(a).checked_mul(wire(b))
            }
        };
        match self {
            Gate::Input(k) => Some(inputs[*k as usize].range()),
            Gate::Secret(k) => Some(secrets[*k as usize].range()),
            Gate::Const(c) => Some(Range::point(*c)),
            Gate::Add(a, b) => wire(*a).checked_add(wire(*b)),
            Gate::Sub(a, b) => wire(*a).checked_sub(wire(*b)),
            Gate::Neg(a) => wire(*a).checked_neg(),
            Gate::Scale(a, k) => wire(*a).checked_mul(Range::point(*k)),
            Gate::Mul(a, b) => product(*a, *b),
            Gate::Dot(terms) => terms.iter().try_fold(Range::point(0), |acc, &(a, b)| {
                acc.checked_add(product(a, b)?)
            }),
        }
    }

    /// A short lower-case name of the gate's kind, as `inspect` and the web page show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Gate::Input(_) => "input",
            Gate::Secret(_) => "secret",
            Gate::Const(_) => "const",
            Gate::Add(..) => "add",
            Gate::Sub(..) => "sub",
            Gate::Neg(_) => "neg",
            Gate::Scale(..) => "scale",
            Gate::Mul(..) => "mul",
            Gate::Dot(_) => "dot",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Circuit {
    pub gates: Vec<Gate>,
    /// The wire of each output, in the manifest's order.
    pub outputs: Vec<WireId>,
}

/// A declared input or secret: its name, scale and the raw range its values must lie in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueDecl {
    pub name: String,
    pub scale: u8,
    pub min: i128,
    pub max: i128,
}

/// How to decode an output: its scale, and the raw range the compiler proved it lies in.
pub type OutputDecl = ValueDecl;

/// The evaluation policy the publisher asks for; the coordinator enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Budget units one evaluation costs.
    pub cost_per_eval: u64,
    /// Budget units each identity may spend on this program version.
    pub budget_per_identity: u64,
    /// Token bucket: at most `rate_limit` evaluations per `rate_window_secs` (and as a burst).
    pub rate_limit: u32,
    pub rate_window_secs: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            cost_per_eval: 1,
            budget_per_identity: 1000,
            rate_limit: 60,
            rate_window_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: u32,
    pub inputs: Vec<ValueDecl>,
    pub secrets: Vec<ValueDecl>,
    pub outputs: Vec<OutputDecl>,
    pub policy: Policy,
    /// Multiplicative depth: the number of communication rounds of one evaluation.
    pub depth: u32,
}

/// The most gates a circuit may have: a bound on what a host allocates for an untrusted package.
pub const MAX_GATES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError {
    #[error("gate {gate} reads wire {wire}, which is not an earlier gate")]
    ForwardReference { gate: usize, wire: WireId },
    #[error("gate {gate} reads input #{index}, but the manifest declares {declared} inputs")]
    UnknownInput {
        gate: usize,
        index: u32,
        declared: usize,
    },
    #[error("gate {gate} reads secret #{index}, but the manifest declares {declared} secrets")]
    UnknownSecret {
        gate: usize,
        index: u32,
        declared: usize,
    },
    #[error("gate {gate} is an empty dot product")]
    EmptyDot { gate: usize },
    #[error("the circuit has {got} outputs, the manifest declares {declared}")]
    OutputCount { got: usize, declared: usize },
    #[error("output `{name}` reads wire {wire}, which does not exist")]
    UnknownOutput { name: String, wire: WireId },
    #[error(
        "gate {gate} may reach {bound}, which wraps around p/2: the range of its operands is too wide"
    )]
    RangeOverflow { gate: usize, bound: String },
    #[error("declared range of `{name}` ({min}..{max}) is empty or wraps around p/2")]
    BadDeclaredRange { name: String, min: i128, max: i128 },
    #[error("`{name}` has scale {scale}; at most {MAX_SCALE} is allowed")]
    BadScale { name: String, scale: u8 },
    #[error(
        "output `{name}` is declared in {declared_min}..{declared_max}, but the circuit gives {min}..{max}"
    )]
    OutputRangeMismatch {
        name: String,
        declared_min: i128,
        declared_max: i128,
        min: i128,
        max: i128,
    },
    #[error("the manifest declares depth {declared}, the circuit has depth {actual}")]
    DepthMismatch { declared: u32, actual: u32 },
    #[error("the circuit has {0} gates; at most {MAX_GATES} are allowed")]
    TooLarge(usize),
    #[error("the name `{0}` is declared twice")]
    DuplicateName(String),
    #[error("`{0}` is not a valid name")]
    BadName(String),
    #[error("the rate limit needs a positive count and window")]
    BadPolicy,
}

/// A closed interval of raw values a wire is known to lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub min: i128,
    pub max: i128,
}

impl Range {
    pub fn point(v: i128) -> Range {
        Range { min: v, max: v }
    }

    /// Whether every value of the range decodes to itself (no wrap around p/2).
    pub fn fits_field(self) -> bool {
        let half = HALF as i128;
        self.min >= -half && self.max <= half && self.min <= self.max
    }

    pub fn checked_add(self, o: Range) -> Option<Range> {
        Some(Range {
            min: self.min.checked_add(o.min)?,
            max: self.max.checked_add(o.max)?,
        })
    }

    pub fn checked_neg(self) -> Option<Range> {
        Some(Range {
            min: self.max.checked_neg()?,
            max: self.min.checked_neg()?,
        })
    }

    pub fn checked_sub(self, o: Range) -> Option<Range> {
        self.checked_add(o.checked_neg()?)
    }

    pub fn checked_mul(self, o: Range) -> Option<Range> {
        let c = [
            self.min.checked_mul(o.min)?,
            self.min.checked_mul(o.max)?,
            self.max.checked_mul(o.min)?,
            self.max.checked_mul(o.max)?,
        ];
        Some(Range {
            min: *c.iter().min()?,
            max: *c.iter().max()?,
        })
    }

    /// The range of `x·x` for `x` in this range: never negative, tighter than `checked_mul(self)`.
    pub fn checked_square(self) -> Option<Range> {
        let lo = self.min.checked_mul(self.min)?;
        let hi = self.max.checked_mul(self.max)?;
        Some(if self.min >= 0 {
            Range { min: lo, max: hi }
        } else if self.max <= 0 {
            Range { min: hi, max: lo }
        } else {
            Range {
                min: 0,
                max: lo.max(hi),
            }
        })
    }

    /// The range of `bound`'s worst endpoint, for error messages.
    fn worst(self) -> i128 {
        if self.max.unsigned_abs() >= self.min.unsigned_abs() {
            self.max
        } else {
            self.min
        }
    }
}

impl ValueDecl {
    pub fn range(&self) -> Range {
        Range {
            min: self.min,
            max: self.max,
        }
    }
}

/// Whether `name` is an identifier: a letter or `_`, then letters, digits or `_`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Circuit {
    /// The multiplicative depth of each wire: a multiplication is one more than its deepest
    /// operand, anything else as deep as its deepest operand. Assumes a checked circuit.
    pub fn depths(&self) -> Vec<u32> {
        let mut depth: Vec<u32> = Vec::with_capacity(self.gates.len());
        for gate in &self.gates {
            let deepest = gate
                .operands()
                .iter()
                .map(|&w| depth[w as usize])
                .max()
                .unwrap_or(0);
            depth.push(deepest + gate.is_multiplication() as u32);
        }
        depth
    }

    /// The depth of the whole circuit: the number of communication rounds of an evaluation.
    pub fn depth(&self) -> u32 {
        let depths = self.depths();
        self.outputs
            .iter()
            .map(|&w| depths[w as usize])
            .max()
            .unwrap_or(0)
    }

    /// How many multiplication gates (`Mul` and `Dot`) the circuit has.
    pub fn multiplications(&self) -> usize {
        self.gates.iter().filter(|g| g.is_multiplication()).count()
    }

    /// The range of every wire, given the declared ranges of the inputs and secrets; an error
    /// names the first gate that could wrap around p/2. Assumes indices were checked.
    pub fn ranges(&self, manifest: &Manifest) -> Result<Vec<Range>, CircuitError> {
        let mut ranges: Vec<Range> = Vec::with_capacity(self.gates.len());
        for (i, gate) in self.gates.iter().enumerate() {
            let range = gate.range(&manifest.inputs, &manifest.secrets, |w| ranges[w as usize]);
            match range {
                Some(range) if range.fits_field() => ranges.push(range),
                Some(range) => {
                    return Err(CircuitError::RangeOverflow {
                        gate: i,
                        bound: range.worst().to_string(),
                    });
                }
                None => {
                    return Err(CircuitError::RangeOverflow {
                        gate: i,
                        bound: "beyond 2^127".into(),
                    });
                }
            }
        }
        Ok(ranges)
    }

    /// Checks a circuit read from an untrusted package against its manifest: every structural
    /// invariant the evaluators rely on, and every claim the manifest makes about the circuit.
    pub fn check(&self, manifest: &Manifest) -> Result<(), CircuitError> {
        if self.gates.len() > MAX_GATES {
            return Err(CircuitError::TooLarge(self.gates.len()));
        }
        manifest.check()?;
        for (i, gate) in self.gates.iter().enumerate() {
            for w in gate.operands() {
                if w as usize >= i {
                    return Err(CircuitError::ForwardReference { gate: i, wire: w });
                }
            }
            match gate {
                Gate::Input(k) if *k as usize >= manifest.inputs.len() => {
                    return Err(CircuitError::UnknownInput {
                        gate: i,
                        index: *k,
                        declared: manifest.inputs.len(),
                    });
                }
                Gate::Secret(k) if *k as usize >= manifest.secrets.len() => {
                    return Err(CircuitError::UnknownSecret {
                        gate: i,
                        index: *k,
                        declared: manifest.secrets.len(),
                    });
                }
                Gate::Dot(terms) if terms.is_empty() => {
                    return Err(CircuitError::EmptyDot { gate: i });
                }
                _ => {}
            }
        }
        if self.outputs.len() != manifest.outputs.len() {
            return Err(CircuitError::OutputCount {
                got: self.outputs.len(),
                declared: manifest.outputs.len(),
            });
        }
        for (&w, decl) in self.outputs.iter().zip(&manifest.outputs) {
            if w as usize >= self.gates.len() {
                return Err(CircuitError::UnknownOutput {
                    name: decl.name.clone(),
                    wire: w,
                });
            }
        }
        let ranges = self.ranges(manifest)?;
        for (&w, decl) in self.outputs.iter().zip(&manifest.outputs) {
            let r = ranges[w as usize];
            if r != decl.range() {
                return Err(CircuitError::OutputRangeMismatch {
                    name: decl.name.clone(),
                    declared_min: decl.min,
                    declared_max: decl.max,
                    min: r.min,
                    max: r.max,
                });
            }
        }
        let actual = self.depth();
        if actual != manifest.depth {
            return Err(CircuitError::DepthMismatch {
                declared: manifest.depth,
                actual,
            });
        }
        Ok(())
    }
}

impl Manifest {
    /// Checks names, scales, declared ranges and the policy.
    pub fn check(&self) -> Result<(), CircuitError> {
        if !is_identifier(&self.name) {
            return Err(CircuitError::BadName(self.name.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for decl in self.inputs.iter().chain(&self.secrets).chain(&self.outputs) {
            if !is_identifier(&decl.name) {
                return Err(CircuitError::BadName(decl.name.clone()));
            }
            if decl.scale > MAX_SCALE {
                return Err(CircuitError::BadScale {
                    name: decl.name.clone(),
                    scale: decl.scale,
                });
            }
            if !decl.range().fits_field() {
                return Err(CircuitError::BadDeclaredRange {
                    name: decl.name.clone(),
                    min: decl.min,
                    max: decl.max,
                });
            }
        }
        // Inputs and secrets share one namespace (an evaluation request names inputs, an
        // install names secrets; a name in both would be ambiguous). Outputs may repeat an
        // input's name only if they are that input, so they are checked among themselves.
        for decl in self.inputs.iter().chain(&self.secrets) {
            if !seen.insert(decl.name.as_str()) {
                return Err(CircuitError::DuplicateName(decl.name.clone()));
            }
        }
        let mut outs = std::collections::BTreeSet::new();
        for decl in &self.outputs {
            if !outs.insert(decl.name.as_str()) {
                return Err(CircuitError::DuplicateName(decl.name.clone()));
            }
        }
        if self.policy.rate_limit == 0 || self.policy.rate_window_secs == 0 {
            return Err(CircuitError::BadPolicy);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, min: i128, max: i128) -> ValueDecl {
        ValueDecl {
            name: name.into(),
            scale: 0,
            min,
            max,
        }
    }

    /// (x + 7)^2 for x in 0..10.
    fn square() -> (Circuit, Manifest) {
        let circuit = Circuit {
            gates: vec![
                Gate::Input(0),
                Gate::Const(7),
                Gate::Add(0, 1),
                Gate::Mul(2, 2),
            ],
            outputs: vec![3],
        };
        let manifest = Manifest {
            name: "square".into(),
            version: 1,
            inputs: vec![decl("x", 0, 10)],
            secrets: vec![],
            outputs: vec![decl("y", 49, 289)],
            policy: Policy::default(),
            depth: 1,
        };
        (circuit, manifest)
    }

    #[test]
    fn a_good_circuit_checks() {
        let (c, m) = square();
        c.check(&m).unwrap();
        assert_eq!(c.depth(), 1);
        assert_eq!(c.multiplications(), 1);
    }

    #[test]
    fn each_lie_is_caught() {
        let (c, m) = square();
        let mut bad = c.clone();
        bad.gates[2] = Gate::Add(0, 3);
        assert!(matches!(
            bad.check(&m),
            Err(CircuitError::ForwardReference { .. })
        ));
        let mut bad = m.clone();
        bad.depth = 2;
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::DepthMismatch { .. })
        ));
        let mut bad = m.clone();
        bad.outputs[0].max = 1000;
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::OutputRangeMismatch { .. })
        ));
        let mut bad = m.clone();
        bad.inputs.clear();
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::UnknownInput { .. })
        ));
        let mut bad = c.clone();
        bad.outputs.push(0);
        assert!(matches!(
            bad.check(&m),
            Err(CircuitError::OutputCount { .. })
        ));
        let mut bad = m.clone();
        bad.inputs[0].max = i128::MAX;
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::BadDeclaredRange { .. })
        ));
    }

    #[test]
    fn wrap_around_is_refused() {
        let (mut c, mut m) = square();
        m.inputs[0] = decl("x", 0, 1i128 << 40);
        c.gates.push(Gate::Mul(3, 3));
        c.outputs = vec![4];
        assert!(matches!(
            c.check(&m),
            Err(CircuitError::RangeOverflow { gate: 4, .. })
        ));
    }
}
