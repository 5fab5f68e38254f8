//! The circuit a program package carries, and the manifest that describes it.
//!
//! A circuit is a list of gates in topological order: gate `i` may only read wires `< i`, so a
//! list is a DAG by construction. Values are raw fixed-point integers (see [`crate::fixed`]);
//! the manifest says at which scale each input, secret and output is carried.
//!
//! Gates are split by cost in the threshold protocol: `Add`, `Sub`, `Neg`, `Scale` (by a public
//! integer) and `Const` are local on shares. So is a product with a **public** factor: a wire
//! is public when it is a constant, a visible input (every custodian reads its value from the
//! caller's signed request) or computed from public wires only ([`Publicity`]); every custodian
//! holds a public wire's value itself, and a share times a public value is a share of the
//! product. Only a product of two shared wires (secrets, private inputs and what depends on
//! them) needs a Beaver triple and a degree reduction, and all such products at the same
//! multiplicative depth share one communication round. A `Dot` of any length is a single
//! reduction (the sum of its shared products is reduced once). So a linear score of visible
//! inputs with secret weights takes no round at all.
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
    /// The `i`-th declared visible input: a public value every custodian checks.
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
    /// The `i`-th declared private input: shared by the caller, never seen in the clear.
    PrivateInput(u32),
}

impl Gate {
    /// The wires this gate reads.
    pub fn operands(&self) -> Vec<WireId> {
        match self {
            Gate::Input(_) | Gate::PrivateInput(_) | Gate::Secret(_) | Gate::Const(_) => vec![],
            Gate::Neg(a) | Gate::Scale(a, _) => vec![*a],
            Gate::Add(a, b) | Gate::Sub(a, b) | Gate::Mul(a, b) => vec![*a, *b],
            Gate::Dot(terms) => terms.iter().flat_map(|&(a, b)| [a, b]).collect(),
        }
    }

    /// The products the gate sums: one for `Mul`, one per term for `Dot`, none otherwise.
    pub fn products(&self) -> impl Iterator<Item = (WireId, WireId)> + '_ {
        let none: &[(WireId, WireId)] = &[];
        let (one, many) = match self {
            Gate::Mul(a, b) => (Some((*a, *b)), none),
            Gate::Dot(terms) => (None, terms.as_slice()),
            _ => (None, none),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// The range of the gate's value given its operands' ranges; `None` if a bound overflows
    /// `i128` (far beyond p/2 anyway). Indices must have been checked.
    pub fn range(&self, decls: &Declared<'_>, wire: impl Fn(WireId) -> Range) -> Option<Range> {
        let product = |a: WireId, b: WireId| {
            if a == b {
                wire(a).checked_square()
            } else {
                wire(a).checked_mul(wire(b))
            }
        };
        match self {
            Gate::Input(k) => Some(decls.inputs[*k as usize].range()),
            Gate::PrivateInput(k) => Some(decls.private_inputs[*k as usize].range()),
            Gate::Secret(k) => Some(decls.secrets[*k as usize].range()),
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
            Gate::PrivateInput(_) => "private",
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

/// The declarations the leaves of a circuit read, in the manifest's order.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    pub inputs: &'a [ValueDecl],
    pub private_inputs: &'a [ValueDecl],
    pub secrets: &'a [ValueDecl],
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
    /// Anomaly rules over each identity's queries, in the source's order. Omitted when empty,
    /// so a manifest without them serializes exactly as before the rules existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<Watch>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            cost_per_eval: 1,
            budget_per_identity: 1000,
            rate_limit: 60,
            rate_window_secs: 60,
            watch: Vec::new(),
        }
    }
}

impl Policy {
    /// What a host checks of an untrusted manifest's policy: a usable rate limit and rules whose
    /// parameters are in range.
    pub fn check(&self) -> Result<(), CircuitError> {
        if self.rate_limit == 0 || self.rate_window_secs == 0 {
            return Err(CircuitError::BadPolicy);
        }
        for watch in &self.watch {
            watch.check()?;
        }
        Ok(())
    }
}

/// How many recent queries of one identity on one program the window rules look at: enough for
/// a percentage to mean something, small enough to keep per identity.
pub const WINDOW: usize = 32;
/// The fewest queries in a minute that can count as a burst: below it, a quiet identity's
/// second query of the day would be "ten times its average".
pub const MIN_BURST: u32 = 10;
/// How much history an identity needs before [`Rule::Rate`] judges it: an average over less
/// means little, and a new identity is held by the rate limit alone.
pub const WARMUP_MS: u64 = 60 * 60 * 1000;
/// "Near" a value, and "at an edge" of a range: within this percentage of the range's width.
pub const TOLERANCE_PERCENT: i128 = 1;
/// The smallest [`Rule::Rate`] factor: at 1x every identity is always at its own average.
pub const MIN_FACTOR: u32 = 2;
/// The shortest [`Rule::Sweep`]: three monotone values happen by chance all the time.
pub const MIN_SWEEP: u32 = 4;

/// An anomaly rule and what to do when it fires: the publisher's say on how extraction of
/// their model is to be noticed, since what is normal traffic depends on the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Watch {
    pub rule: Rule,
    pub action: Action,
}

impl Watch {
    /// Whether the rule's parameter is in range: a host runs this on an untrusted manifest.
    pub fn check(&self) -> Result<(), WatchError> {
        match self.rule {
            Rule::Rate { factor } if factor < MIN_FACTOR => Err(WatchError::Factor(factor)),
            Rule::Edges { percent } | Rule::NearDuplicates { percent }
                if !(1..=100).contains(&percent) =>
            {
                Err(WatchError::Percent(percent))
            }
            Rule::Sweep { length } if !(MIN_SWEEP..=WINDOW as u32).contains(&length) => {
                Err(WatchError::Length(length))
            }
            _ => Ok(()),
        }
    }
}

/// The shapes extraction attacks take, each measured over one identity's queries of one program
/// (its visible inputs only: nothing else is seen in the clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    /// The identity's count of this program's queries over the last minute is at least
    /// `factor` times its own average per minute so far, and at least [`MIN_BURST`]; only once
    /// the identity has [`WARMUP_MS`] of history here. Extraction needs many queries, so a
    /// harvest shows as a sudden burst against the identity's own habit.
    Rate { factor: u32 },
    /// At least `percent` % of the visible input values of the last [`WINDOW`] queries lie at an
    /// edge of their declared range (within [`TOLERANCE_PERCENT`] of the range's width of min
    /// or max). Probing the extremes maps a model's saturation and clamping; real values rarely
    /// sit there. An input with no interior (a 0/1 flag) is always at an edge and is not
    /// counted. Needs a full window.
    Edges { percent: u32 },
    /// At least `percent` % of the last [`WINDOW`] queries are near-duplicates: every visible
    /// input within [`TOLERANCE_PERCENT`] of its range's width of the same input of an earlier
    /// query in the window. Finite differences (a query and a tiny perturbation of it) read a
    /// model's gradient. Needs a full window.
    NearDuplicates { percent: u32 },
    /// The last `length` queries vary exactly one input, strictly monotonically (all up or all
    /// down), while every other visible input stays exactly the same: a sweep, which traces the
    /// model's response to that input. (For a one-input program: `length` strictly monotone
    /// values.)
    Sweep { length: u32 },
}

/// What a firing rule asks the host to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the firing in the audit log only: for rules still being tuned.
    Audit,
    /// Slow the identity down on this program for a while: cheap to undo if it was innocent.
    Throttle,
    /// Stop the identity until an operator looks: for shapes no honest caller makes.
    Freeze,
}

/// A [`Watch`] whose parameter is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("a rate factor must be at least {MIN_FACTOR}x, not {0}x")]
    Factor(u32),
    #[error("a percentage must be between 1% and 100%, not {0}%")]
    Percent(u32),
    #[error("a sweep length must be between {MIN_SWEEP} and {WINDOW} queries, not {0}")]
    Length(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: u32,
    /// Visible inputs: the caller's signed request carries their values to every custodian,
    /// which checks each against its declaration; in the protocol they are public values.
    pub inputs: Vec<ValueDecl>,
    /// Private inputs: the caller's client shares each and seals a share to each custodian, so
    /// the coordinator never sees them. Their ranges cannot be checked on shares (yet): a
    /// caller may give any value. An evaluation with a private input answers with output
    /// shares sealed to the caller.
    pub private_inputs: Vec<ValueDecl>,
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
    #[error(
        "gate {gate} reads private input #{index}, but the manifest declares {declared} private inputs"
    )]
    UnknownPrivateInput {
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
    #[error("policy watch: {0}")]
    BadWatch(#[from] WatchError),
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

/// Which wires of a circuit hold public values: constants, visible inputs, and whatever is
/// computed from public wires only. Every custodian holds a public wire's value itself (the
/// constant polynomial is its sharing), so a product with a public factor is a local product
/// of a share and a value. Only a product of two shared wires needs a Beaver triple and a
/// round. This one type decides it for the compiler's depth, a circuit's check, the shape of
/// preprocessed kits and the session, so none of them can disagree with another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publicity {
    public: Vec<bool>,
}

impl Publicity {
    /// Assumes operands were checked to read earlier wires.
    pub fn of(circuit: &Circuit) -> Publicity {
        let mut public: Vec<bool> = Vec::with_capacity(circuit.gates.len());
        for gate in &circuit.gates {
            let p = match gate {
                Gate::Input(_) | Gate::Const(_) => true,
                Gate::PrivateInput(_) | Gate::Secret(_) => false,
                other => other.operands().iter().all(|&w| public[w as usize]),
            };
            public.push(p);
        }
        Publicity { public }
    }

    pub fn is_public(&self, wire: WireId) -> bool {
        self.public[wire as usize]
    }

    /// Whether the product `a·b` needs a triple: both factors are shared.
    pub fn needs_triple(&self, (a, b): (WireId, WireId)) -> bool {
        !self.is_public(a) && !self.is_public(b)
    }

    /// How many of `gate`'s products multiply two shared wires: the length of its triple. A
    /// gate with none is local (no triple, no round).
    pub fn triple_terms(&self, gate: &Gate) -> usize {
        gate.products().filter(|&t| self.needs_triple(t)).count()
    }
}

impl Circuit {
    /// The multiplicative depth of each wire: a gate with a product of two shared wires is one
    /// more than its deepest operand, anything else as deep as its deepest operand. Assumes
    /// operands were checked to read earlier wires.
    pub fn depths(&self) -> Vec<u32> {
        let publicity = Publicity::of(self);
        let mut depth: Vec<u32> = Vec::with_capacity(self.gates.len());
        for gate in &self.gates {
            let deepest = gate
                .operands()
                .iter()
                .map(|&w| depth[w as usize])
                .max()
                .unwrap_or(0);
            depth.push(deepest + (publicity.triple_terms(gate) > 0) as u32);
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

    /// How many secrets the gates read: one more than the largest index of a `Secret` gate
    /// (a kit carries a MAC of each; [`crate::mac`]).
    pub fn secrets_read(&self) -> usize {
        self.gates
            .iter()
            .filter_map(|g| match g {
                Gate::Secret(j) => Some(*j as usize + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// How many gates need a triple and a degree reduction: the `Mul` and `Dot` gates with a
    /// product of two shared wires.
    pub fn multiplications(&self) -> usize {
        let publicity = Publicity::of(self);
        self.gates
            .iter()
            .filter(|g| publicity.triple_terms(g) > 0)
            .count()
    }

    /// The range of every wire, given the declared ranges of the inputs and secrets; an error
    /// names the first gate that could wrap around p/2. Assumes indices were checked.
    pub fn ranges(&self, manifest: &Manifest) -> Result<Vec<Range>, CircuitError> {
        let mut ranges: Vec<Range> = Vec::with_capacity(self.gates.len());
        for (i, gate) in self.gates.iter().enumerate() {
            let range = gate.range(&manifest.declared(), |w| ranges[w as usize]);
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
                Gate::PrivateInput(k) if *k as usize >= manifest.private_inputs.len() => {
                    return Err(CircuitError::UnknownPrivateInput {
                        gate: i,
                        index: *k,
                        declared: manifest.private_inputs.len(),
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
    /// The declarations a circuit's leaves read.
    pub fn declared(&self) -> Declared<'_> {
        Declared {
            inputs: &self.inputs,
            private_inputs: &self.private_inputs,
            secrets: &self.secrets,
        }
    }

    /// Checks names, scales, declared ranges and the policy.
    pub fn check(&self) -> Result<(), CircuitError> {
        if !is_identifier(&self.name) {
            return Err(CircuitError::BadName(self.name.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let leaves = || {
            self.inputs
                .iter()
                .chain(&self.private_inputs)
                .chain(&self.secrets)
        };
        for decl in leaves().chain(&self.outputs) {
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
        // Inputs (visible and private) and secrets share one namespace (an evaluation request
        // names inputs, an install names secrets; a name in both would be ambiguous). Outputs
        // may repeat an input's name only if they are that input, so they are checked among
        // themselves.
        for decl in leaves() {
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
        self.policy.check()
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

    /// (x + 7)^2 for a private x in 0..10.
    fn square() -> (Circuit, Manifest) {
        let circuit = Circuit {
            gates: vec![
                Gate::PrivateInput(0),
                Gate::Const(7),
                Gate::Add(0, 1),
                Gate::Mul(2, 2),
            ],
            outputs: vec![3],
        };
        let manifest = Manifest {
            name: "square".into(),
            version: 1,
            inputs: vec![],
            private_inputs: vec![decl("x", 0, 10)],
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
        bad.private_inputs.clear();
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::UnknownPrivateInput { .. })
        ));
        // The same x, declared visible: the gate reads a private input the manifest lacks.
        let mut bad = m.clone();
        bad.inputs = std::mem::take(&mut bad.private_inputs);
        bad.depth = 0;
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::UnknownPrivateInput { .. })
        ));
        let mut bad = c.clone();
        bad.outputs.push(0);
        assert!(matches!(
            bad.check(&m),
            Err(CircuitError::OutputCount { .. })
        ));
        let mut bad = m.clone();
        bad.private_inputs[0].max = i128::MAX;
        assert!(matches!(
            c.check(&bad),
            Err(CircuitError::BadDeclaredRange { .. })
        ));
    }

    #[test]
    fn products_with_a_public_factor_are_local() {
        // A linear score: secret weights times visible inputs, plus a secret bias.
        let score = Circuit {
            gates: vec![
                Gate::Input(0),
                Gate::Input(1),
                Gate::Secret(0),
                Gate::Secret(1),
                Gate::Dot(vec![(2, 0), (3, 1)]),
                Gate::Mul(0, 1),
                Gate::Mul(4, 5),
            ],
            outputs: vec![6],
        };
        let p = Publicity::of(&score);
        assert_eq!(
            (0..7).map(|w| p.is_public(w)).collect::<Vec<_>>(),
            [true, true, false, false, false, true, false]
        );
        assert_eq!(score.depth(), 0);
        assert_eq!(score.multiplications(), 0);
        // A product of two shared wires is not.
        let mut squared = score.clone();
        squared.gates.push(Gate::Mul(6, 4));
        squared.outputs = vec![7];
        assert_eq!(squared.depth(), 1);
        assert_eq!(squared.multiplications(), 1);
        assert_eq!(Publicity::of(&squared).triple_terms(&squared.gates[7]), 1);
    }

    #[test]
    fn wrap_around_is_refused() {
        let (mut c, mut m) = square();
        m.private_inputs[0] = decl("x", 0, 1i128 << 40);
        c.gates.push(Gate::Mul(3, 3));
        c.outputs = vec![4];
        assert!(matches!(
            c.check(&m),
            Err(CircuitError::RangeOverflow { gate: 4, .. })
        ));
    }

    /// A manifest without rules serializes as it did before they existed (so its hash does
    /// not move); rules serialize tagged, in snake case.
    #[test]
    fn watch_rules_serialize_only_when_present() {
        let (_, mut m) = square();
        let plain = serde_json::to_string(&m.policy).unwrap();
        assert_eq!(
            plain,
            r#"{"cost_per_eval":1,"budget_per_identity":1000,"rate_limit":60,"rate_window_secs":60}"#
        );
        assert_eq!(serde_json::from_str::<Policy>(&plain).unwrap(), m.policy);
        m.policy.watch = vec![
            Watch {
                rule: Rule::Sweep { length: 12 },
                action: Action::Freeze,
            },
            Watch {
                rule: Rule::NearDuplicates { percent: 50 },
                action: Action::Audit,
            },
        ];
        let json = serde_json::to_string(&m.policy.watch).unwrap();
        assert_eq!(
            json,
            r#"[{"rule":{"rule":"sweep","length":12},"action":"freeze"},{"rule":{"rule":"near_duplicates","percent":50},"action":"audit"}]"#
        );
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn watch_parameters_are_checked() {
        let check = |rule| {
            let (_, mut m) = square();
            m.policy.watch.push(Watch {
                rule,
                action: Action::Audit,
            });
            m.check()
        };
        let ok = [
            Rule::Rate { factor: 2 },
            Rule::Edges { percent: 1 },
            Rule::NearDuplicates { percent: 100 },
            Rule::Sweep { length: 4 },
            Rule::Sweep { length: 32 },
        ];
        for rule in ok {
            assert_eq!(check(rule), Ok(()), "{rule:?}");
        }
        let bad = [
            (Rule::Rate { factor: 1 }, WatchError::Factor(1)),
            (Rule::Edges { percent: 0 }, WatchError::Percent(0)),
            (
                Rule::NearDuplicates { percent: 101 },
                WatchError::Percent(101),
            ),
            (Rule::Sweep { length: 3 }, WatchError::Length(3)),
            (Rule::Sweep { length: 33 }, WatchError::Length(33)),
        ];
        for (rule, e) in bad {
            assert_eq!(check(rule), Err(CircuitError::BadWatch(e)), "{rule:?}");
        }
    }
}
