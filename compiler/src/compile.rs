//! From statements to a checked circuit and its manifest.

use std::collections::HashMap;

use quorumvm_core::circuit::{Circuit, Manifest, Policy, ValueDecl};
use quorumvm_core::fixed::{Decimal, MAX_SCALE};

use crate::error::{CompileError, Span};
use crate::ir::{Graph, IrError, Value};
use crate::syntax::{BinaryOp, Declared, Name, Operand, Stmt, parse};

/// The range an `input` or `secret` gets when the source declares none: ±10^9 at its scale.
pub const DEFAULT_BOUND: i128 = 1_000_000_000;

/// A compiled program: what goes into a package, plus figures for `inspect`.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub manifest: Manifest,
    pub circuit: Circuit,
    pub stats: Stats,
}

/// What the optimizer did, for `inspect` and the web page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Nodes in the graph after folding and CSE, before pruning.
    pub nodes_built: usize,
    /// Gates in the package after pruning.
    pub gates: usize,
    pub multiplications: usize,
    pub depth: u32,
}

struct Binding {
    value: Value,
    span: Span,
}

struct Compiler<'s> {
    src: &'s str,
    graph: Graph,
    names: HashMap<String, Binding>,
    program_name: Option<(String, Span)>,
    version: Option<(u32, Span)>,
    policy: Policy,
    policy_seen: [Option<Span>; 3],
    outputs: Vec<(Name, Value)>,
}

/// Compiles DSL source. `default_name` names the program when the source has no `program` line.
pub fn compile(src: &str, default_name: &str) -> Result<Program, CompileError> {
    let stmts = parse(src)?;
    let mut c = Compiler {
        src,
        graph: Graph::default(),
        names: HashMap::new(),
        program_name: None,
        version: None,
        policy: Policy::default(),
        policy_seen: [None; 3],
        outputs: Vec::new(),
    };
    for stmt in &stmts {
        c.statement(stmt)?;
    }
    c.finish(default_name)
}

impl<'s> Compiler<'s> {
    fn err(&self, span: Span, msg: impl Into<String>) -> CompileError {
        CompileError::new(span, msg, self.src)
    }

    fn ir<T>(&self, span: Span, r: Result<T, IrError>) -> Result<T, CompileError> {
        r.map_err(|e| self.err(span, e.to_string()))
    }

    fn define(&mut self, name: &Name, value: Value) -> Result<(), CompileError> {
        if let Some(prev) = self.names.get(&name.text) {
            return Err(self.err(
                name.span,
                format!(
                    "`{}` is already defined at line {}, column {}",
                    name.text, prev.span.line, prev.span.col
                ),
            ));
        }
        self.names.insert(
            name.text.clone(),
            Binding {
                value,
                span: name.span,
            },
        );
        Ok(())
    }

    fn lookup(&self, name: &Name) -> Result<Value, CompileError> {
        self.names
            .get(&name.text)
            .map(|b| b.value)
            .ok_or_else(|| self.err(name.span, format!("undefined name `{}`", name.text)))
    }

    fn operand(&mut self, op: &Operand) -> Result<Value, CompileError> {
        match op {
            Operand::Name(n) => self.lookup(n),
            Operand::Number(d, span) => {
                let r = self.graph.constant(d.raw, d.scale);
                self.ir(*span, r)
            }
        }
    }

    /// Refuses a second `program`, `version` or `policy X` line.
    fn once(&mut self, slot: usize, what: &str, span: Span) -> Result<(), CompileError> {
        if let Some(prev) = self.policy_seen[slot].replace(span) {
            return Err(self.err(span, format!("{what} is already set at line {}", prev.line)));
        }
        Ok(())
    }

    fn declared(&self, d: &Declared) -> Result<ValueDecl, CompileError> {
        let scale = match (d.scale, d.range) {
            (Some((s, span)), _) if s > MAX_SCALE => {
                return Err(self.err(span, format!("scale {s} is above the maximum {MAX_SCALE}")));
            }
            (Some((s, _)), _) => s,
            (None, Some((lo, hi, _))) => lo.scale.max(hi.scale),
            (None, None) => 0,
        };
        let (min, max) = match d.range {
            None => {
                let bound = Decimal {
                    raw: DEFAULT_BOUND,
                    scale: 0,
                };
                let raw = bound.rescale(scale).map(|b| b.raw);
                let raw = raw.ok_or_else(|| self.err(d.name.span, "scale too large"))?;
                (-raw, raw)
            }
            Some((lo, hi, span)) => {
                let at = |v: Decimal| {
                    if v.scale > scale {
                        return Err(self.err(
                            span,
                            format!("the bound {v} has more digits than scale {scale} allows"),
                        ));
                    }
                    v.rescale(scale)
                        .map(|v| v.raw)
                        .ok_or_else(|| self.err(span, "range overflow: the bound is too large"))
                };
                let (min, max) = (at(lo)?, at(hi)?);
                if min > max {
                    return Err(self.err(
                        span,
                        "the range is empty: the lower bound is above the upper",
                    ));
                }
                let range = quorumvm_core::circuit::Range { min, max };
                if !range.fits_field() {
                    return Err(self.err(span, "range overflow: the bounds wrap around p/2"));
                }
                (min, max)
            }
        };
        Ok(ValueDecl {
            name: d.name.text.clone(),
            scale,
            min,
            max,
        })
    }

    fn statement(&mut self, stmt: &Stmt) -> Result<(), CompileError> {
        match stmt {
            Stmt::Program(name) => {
                if let Some((_, prev)) = &self.program_name {
                    return Err(self.err(
                        name.span,
                        format!("the program's name is already set at line {}", prev.line),
                    ));
                }
                self.program_name = Some((name.text.clone(), name.span));
            }
            Stmt::Version(v, span) => {
                if let Some((_, prev)) = self.version {
                    return Err(self.err(
                        *span,
                        format!("the version is already set at line {}", prev.line),
                    ));
                }
                self.version = Some((*v, *span));
            }
            Stmt::PolicyCost(v, span) => {
                self.once(0, "`policy cost`", *span)?;
                self.policy.cost_per_eval = *v;
            }
            Stmt::PolicyBudget(v, span) => {
                self.once(1, "`policy budget`", *span)?;
                self.policy.budget_per_identity = *v;
            }
            Stmt::PolicyRate {
                count,
                window_secs,
                span,
            } => {
                self.once(2, "`policy rate`", *span)?;
                self.policy.rate_limit = *count;
                self.policy.rate_window_secs = *window_secs;
            }
            Stmt::PolicyWatch(watch) => self.policy.watch.push(*watch),
            Stmt::Input(d) | Stmt::Private(d) | Stmt::Secret(d) => {
                let decl = self.declared(d)?;
                let r = match stmt {
                    Stmt::Input(_) => self.graph.input(decl),
                    Stmt::Private(_) => self.graph.private_input(decl),
                    _ => self.graph.secret(decl),
                };
                let value = self.ir(d.name.span, r)?;
                self.define(&d.name, value)?;
            }
            Stmt::Const { name, value, span } => {
                let r = self.graph.constant(value.raw, value.scale);
                let v = self.ir(*span, r)?;
                self.define(name, v)?;
            }
            Stmt::Binary { op, name, a, b } => {
                let (va, vb) = (self.operand(a)?, self.operand(b)?);
                let r = match op {
                    BinaryOp::Add => self.graph.add(va, vb),
                    BinaryOp::Sub => self.graph.sub(va, vb),
                    BinaryOp::Mul => self.graph.mul(va, vb),
                };
                let v = self.ir(name.span, r)?;
                self.define(name, v)?;
            }
            Stmt::Neg { name, a } => {
                let va = self.operand(a)?;
                let r = self.graph.neg(va);
                let v = self.ir(name.span, r)?;
                self.define(name, v)?;
            }
            Stmt::Mux { name, cond, a, b } => {
                let vc = self.operand(cond)?;
                let range = self.graph.range(vc.node);
                if vc.scale != 0 || range.min < 0 || range.max > 1 {
                    return Err(self.err(
                        cond.span(),
                        "a mux selector must be 0 or 1: declare it `in 0..1` at scale 0",
                    ));
                }
                let (va, vb) = (self.operand(a)?, self.operand(b)?);
                let r = self.graph.mux(vc, va, vb);
                let v = self.ir(name.span, r)?;
                self.define(name, v)?;
            }
            Stmt::Dot { name, a, b, span } => {
                let mut terms = Vec::with_capacity(a.len());
                for (x, y) in a.iter().zip(b) {
                    terms.push((self.operand(x)?, self.operand(y)?));
                }
                let r = self.graph.dot(&terms);
                let v = self.ir(*span, r)?;
                self.define(name, v)?;
            }
            Stmt::Polyeval {
                name,
                x,
                coeffs,
                span,
            } => {
                let vx = self.operand(x)?;
                let mut cs = Vec::with_capacity(coeffs.len());
                for c in coeffs {
                    cs.push(self.operand(c)?);
                }
                let r = self.graph.polyeval(vx, &cs);
                let v = self.ir(*span, r)?;
                self.define(name, v)?;
            }
            Stmt::Output(name) => {
                let v = self.lookup(name)?;
                if let Some((prev, _)) = self.outputs.iter().find(|(n, _)| n.text == name.text) {
                    return Err(self.err(
                        name.span,
                        format!(
                            "`{}` is already an output (line {})",
                            name.text, prev.span.line
                        ),
                    ));
                }
                self.outputs.push((name.clone(), v));
            }
        }
        Ok(())
    }

    fn finish(self, default_name: &str) -> Result<Program, CompileError> {
        if self.outputs.is_empty() {
            let end = Span {
                line: self.src.lines().count().max(1),
                col: 1,
                len: 1,
            };
            return Err(self.err(end, "the program has no `output`"));
        }
        let roots: Vec<u32> = self.outputs.iter().map(|(_, v)| v.node).collect();
        let (gates, renumber) = self.graph.prune(&roots);
        let circuit = Circuit {
            outputs: roots.iter().map(|r| renumber[r]).collect(),
            gates,
        };
        let outputs = self
            .outputs
            .iter()
            .map(|(name, v)| {
                let r = self.graph.range(v.node);
                ValueDecl {
                    name: name.text.clone(),
                    scale: v.scale,
                    min: r.min,
                    max: r.max,
                }
            })
            .collect();
        let name = match &self.program_name {
            Some((n, _)) => n.clone(),
            None => default_name.to_string(),
        };
        let manifest = Manifest {
            name,
            version: self.version.map_or(1, |(v, _)| v),
            inputs: self.graph.inputs.clone(),
            private_inputs: self.graph.private_inputs.clone(),
            secrets: self.graph.secrets.clone(),
            outputs,
            policy: self.policy.clone(),
            depth: circuit.depth(),
        };
        // The compiler's own output must pass the check every host applies; a failure here is
        // a compiler bug, reported rather than shipped.
        if let Err(e) = circuit.check(&manifest) {
            let span = self.program_name.as_ref().map_or(
                Span {
                    line: 1,
                    col: 1,
                    len: 1,
                },
                |(_, s)| *s,
            );
            return Err(self.err(
                span,
                format!("internal error, the circuit fails its check: {e}"),
            ));
        }
        let stats = Stats {
            nodes_built: self.graph.len(),
            gates: circuit.gates.len(),
            multiplications: circuit.multiplications(),
            depth: manifest.depth,
        };
        Ok(Program {
            manifest,
            circuit,
            stats,
        })
    }
}

/// Counts the gates of each kind, in a fixed order, for `inspect` and the web page.
pub fn gate_counts(circuit: &Circuit) -> Vec<(&'static str, usize)> {
    let kinds = [
        "input", "private", "secret", "const", "add", "sub", "neg", "scale", "mul", "dot",
    ];
    kinds
        .iter()
        .map(|&k| (k, circuit.gates.iter().filter(|g| g.kind() == k).count()))
        .collect()
}
