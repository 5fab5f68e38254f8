//! The IR: a DAG of raw-integer gates, built with constant folding and common-subexpression
//! elimination as it goes, then pruned to what the outputs need.
//!
//! Nodes are hash-consed on their gate (commutative operands ordered), so a sub-expression
//! written twice is one node. A node whose operands are all constants is never created: it is
//! folded into a constant. Multiplication by a constant becomes a local `Scale`. Every node's
//! raw value range is known when it is created, so a range that could wrap around p/2 is
//! reported at the statement that causes it.
//!
//! Scales belong to *values* (a node seen at a scale), not to nodes: the raw computation
//! `35 · x` is the same gate whether the constant meant `35` or `0.35`.

use std::collections::HashMap;

use quorumvm_core::circuit::{Declared, Gate, Range, ValueDecl, WireId};
use quorumvm_core::fixed::{MAX_SCALE, pow10};

/// A node of the graph; its index is its id.
pub type NodeId = WireId;

/// A node seen at a fixed-point scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value {
    pub node: NodeId,
    pub scale: u8,
}

/// Why an operation could not be added to the graph; the caller attaches the source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrError {
    /// The value range could wrap around p/2 (or overflow 128 bits).
    Range(String),
    /// Aligning or multiplying scales exceeds [`MAX_SCALE`].
    Scale(u16),
}

impl std::fmt::Display for IrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IrError::Range(bound) => write!(
                f,
                "range overflow: this value may reach {bound}, which wraps around p/2 \
                 (narrow the declared ranges or scales of its operands)"
            ),
            IrError::Scale(s) => write!(
                f,
                "scale overflow: this value would need {s} digits after the point; at most \
                 {MAX_SCALE} are possible"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<Gate>,
    ranges: Vec<Range>,
    cse: HashMap<Gate, NodeId>,
    pub inputs: Vec<ValueDecl>,
    pub private_inputs: Vec<ValueDecl>,
    pub secrets: Vec<ValueDecl>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn gate(&self, id: NodeId) -> &Gate {
        &self.nodes[id as usize]
    }

    pub fn range(&self, id: NodeId) -> Range {
        self.ranges[id as usize]
    }

    fn constant_of(&self, v: Value) -> Option<i128> {
        match self.nodes[v.node as usize] {
            Gate::Const(c) => Some(c),
            _ => None,
        }
    }

    /// Adds a gate (or finds its twin), checking its range.
    fn intern(&mut self, gate: Gate) -> Result<NodeId, IrError> {
        let gate = match gate {
            Gate::Add(a, b) if b < a => Gate::Add(b, a),
            Gate::Mul(a, b) if b < a => Gate::Mul(b, a),
            Gate::Dot(mut terms) => {
                for t in &mut terms {
                    if t.1 < t.0 {
                        *t = (t.1, t.0);
                    }
                }
                terms.sort_unstable();
                Gate::Dot(terms)
            }
            g => g,
        };
        if let Some(&id) = self.cse.get(&gate) {
            return Ok(id);
        }
        let range = gate
            .range(
                &Declared {
                    inputs: &self.inputs,
                    private_inputs: &self.private_inputs,
                    secrets: &self.secrets,
                },
                |w| self.ranges[w as usize],
            )
            .ok_or_else(|| IrError::Range("beyond 2^127".into()))?;
        if !range.fits_field() {
            let worst = if range.max.unsigned_abs() >= range.min.unsigned_abs() {
                range.max
            } else {
                range.min
            };
            return Err(IrError::Range(worst.to_string()));
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(gate.clone());
        self.ranges.push(range);
        self.cse.insert(gate, id);
        Ok(id)
    }

    pub fn constant(&mut self, raw: i128, scale: u8) -> Result<Value, IrError> {
        Ok(Value {
            node: self.intern(Gate::Const(raw))?,
            scale,
        })
    }

    pub fn input(&mut self, decl: ValueDecl) -> Result<Value, IrError> {
        let scale = decl.scale;
        self.inputs.push(decl);
        let node = self.intern(Gate::Input(self.inputs.len() as u32 - 1))?;
        Ok(Value { node, scale })
    }

    pub fn private_input(&mut self, decl: ValueDecl) -> Result<Value, IrError> {
        let scale = decl.scale;
        self.private_inputs.push(decl);
        let node = self.intern(Gate::PrivateInput(self.private_inputs.len() as u32 - 1))?;
        Ok(Value { node, scale })
    }

    pub fn secret(&mut self, decl: ValueDecl) -> Result<Value, IrError> {
        let scale = decl.scale;
        self.secrets.push(decl);
        let node = self.intern(Gate::Secret(self.secrets.len() as u32 - 1))?;
        Ok(Value { node, scale })
    }

    /// `v` expressed at the finer scale `scale` (multiplied by a power of ten).
    pub fn rescale(&mut self, v: Value, scale: u8) -> Result<Value, IrError> {
        debug_assert!(scale >= v.scale);
        let factor = pow10(scale - v.scale).ok_or(IrError::Scale(scale as u16))?;
        Ok(Value {
            node: self.scale_node(v.node, factor)?,
            scale,
        })
    }

    /// Brings two values to the finer of their scales.
    fn align(&mut self, a: Value, b: Value) -> Result<(Value, Value), IrError> {
        let s = a.scale.max(b.scale);
        Ok((self.rescale(a, s)?, self.rescale(b, s)?))
    }

    /// `node · k` for a public integer `k`, folded and simplified.
    fn scale_node(&mut self, node: NodeId, k: i128) -> Result<NodeId, IrError> {
        let overflow = || IrError::Range("beyond 2^127".into());
        match (self.nodes[node as usize].clone(), k) {
            (_, 1) => Ok(node),
            (_, 0) => self.intern(Gate::Const(0)),
            (_, -1) => self.neg_node(node),
            (Gate::Const(c), k) => self.intern(Gate::Const(c.checked_mul(k).ok_or_else(overflow)?)),
            (Gate::Scale(inner, j), k) => {
                let jk = j.checked_mul(k).ok_or_else(overflow)?;
                self.scale_node(inner, jk)
            }
            (Gate::Neg(inner), k) => {
                let nk = k.checked_neg().ok_or_else(overflow)?;
                self.scale_node(inner, nk)
            }
            (_, k) => self.intern(Gate::Scale(node, k)),
        }
    }

    fn neg_node(&mut self, node: NodeId) -> Result<NodeId, IrError> {
        match self.nodes[node as usize] {
            Gate::Const(c) => self.intern(Gate::Const(
                c.checked_neg()
                    .ok_or_else(|| IrError::Range("beyond 2^127".into()))?,
            )),
            Gate::Neg(inner) => Ok(inner),
            Gate::Scale(inner, k) if k != i128::MIN => self.scale_node(inner, -k),
            _ => self.intern(Gate::Neg(node)),
        }
    }

    pub fn neg(&mut self, a: Value) -> Result<Value, IrError> {
        Ok(Value {
            node: self.neg_node(a.node)?,
            scale: a.scale,
        })
    }

    pub fn add(&mut self, a: Value, b: Value) -> Result<Value, IrError> {
        let (a, b) = self.align(a, b)?;
        let node = match (self.constant_of(a), self.constant_of(b)) {
            (Some(x), Some(y)) => self.intern(Gate::Const(
                x.checked_add(y)
                    .ok_or_else(|| IrError::Range("beyond 2^127".into()))?,
            ))?,
            (Some(0), None) => b.node,
            (None, Some(0)) => a.node,
            _ => self.intern(Gate::Add(a.node, b.node))?,
        };
        Ok(Value {
            node,
            scale: a.scale,
        })
    }

    pub fn sub(&mut self, a: Value, b: Value) -> Result<Value, IrError> {
        let (a, b) = self.align(a, b)?;
        let node = match (self.constant_of(a), self.constant_of(b)) {
            (Some(x), Some(y)) => self.intern(Gate::Const(
                x.checked_sub(y)
                    .ok_or_else(|| IrError::Range("beyond 2^127".into()))?,
            ))?,
            (None, Some(0)) => a.node,
            (Some(0), None) => self.neg_node(b.node)?,
            _ if a.node == b.node => self.intern(Gate::Const(0))?,
            _ => self.intern(Gate::Sub(a.node, b.node))?,
        };
        Ok(Value {
            node,
            scale: a.scale,
        })
    }

    fn product_scale(a: Value, b: Value) -> Result<u8, IrError> {
        let s = a.scale as u16 + b.scale as u16;
        if s > MAX_SCALE as u16 {
            return Err(IrError::Scale(s));
        }
        Ok(s as u8)
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value, IrError> {
        let scale = Graph::product_scale(a, b)?;
        let node = match (self.constant_of(a), self.constant_of(b)) {
            (Some(k), _) => self.scale_node(b.node, k)?,
            (None, Some(k)) => self.scale_node(a.node, k)?,
            (None, None) => self.intern(Gate::Mul(a.node, b.node))?,
        };
        Ok(Value { node, scale })
    }

    /// `Σ a_j · b_j` as one multiplication layer: terms with a public factor become local
    /// scalings; the rest form a single `Dot` (or `Mul`, if only one is left). Each term is
    /// brought to the finest scale among the products by rescaling its left factor first.
    pub fn dot(&mut self, terms: &[(Value, Value)]) -> Result<Value, IrError> {
        let scales: Vec<u8> = terms
            .iter()
            .map(|&(a, b)| Graph::product_scale(a, b))
            .collect::<Result<_, _>>()?;
        let scale = scales.iter().copied().max().unwrap_or(0);
        let mut local: Option<Value> = None;
        let mut shared: Vec<(NodeId, NodeId)> = Vec::new();
        for (&(a, b), &s) in terms.iter().zip(&scales) {
            let a = self.rescale(a, a.scale + (scale - s))?;
            if self.constant_of(a).is_some() || self.constant_of(b).is_some() {
                let p = self.mul(a, b)?;
                local = Some(match local {
                    None => p,
                    Some(acc) => self.add(acc, p)?,
                });
            } else {
                shared.push((a.node, b.node));
            }
        }
        let shared = match shared.len() {
            0 => None,
            1 => Some(self.intern(Gate::Mul(shared[0].0, shared[0].1))?),
            _ => Some(self.intern(Gate::Dot(shared))?),
        };
        match (shared, local) {
            (Some(node), Some(l)) => self.add(Value { node, scale }, l),
            (Some(node), None) => Ok(Value { node, scale }),
            (None, Some(l)) => Ok(l),
            (None, None) => self.constant(0, scale),
        }
    }

    /// `x^k` for `k >= 1`, by splitting `k` at its highest power of two so that the depth is
    /// `ceil(log2 k)`; every power is hash-consed, so `x^2` is computed once for all terms.
    pub fn power(&mut self, x: Value, k: u32) -> Result<Value, IrError> {
        if k == 1 {
            return Ok(x);
        }
        let high = 1u32 << (31 - (k - 1).leading_zeros()); // largest power of two below k
        let (p, q) = if high == k {
            (k / 2, k / 2)
        } else {
            (high, k - high)
        };
        let a = self.power(x, p)?;
        let b = self.power(x, q)?;
        self.mul(a, b)
    }

    /// `c_0 + c_1·x + … + c_d·x^d`: powers of `x` at logarithmic depth, then one dot product
    /// with the coefficients (free where they are public).
    pub fn polyeval(&mut self, x: Value, coeffs: &[Value]) -> Result<Value, IrError> {
        let mut terms = Vec::with_capacity(coeffs.len().saturating_sub(1));
        for (k, &c) in coeffs.iter().enumerate().skip(1) {
            let xk = self.power(x, k as u32)?;
            terms.push((c, xk));
        }
        let sum = self.dot(&terms)?;
        self.add(sum, coeffs[0])
    }

    /// `c ? a : b` for `c` in {0, 1}: `b + c·(a − b)`.
    pub fn mux(&mut self, c: Value, a: Value, b: Value) -> Result<Value, IrError> {
        let d = self.sub(a, b)?;
        let picked = self.mul(c, d)?;
        self.add(b, picked)
    }

    /// The nodes reachable from `roots`, in their (topological) order, and the new wire id of
    /// each kept node. This is the dead-node pruning pass.
    pub fn prune(&self, roots: &[NodeId]) -> (Vec<Gate>, HashMap<NodeId, WireId>) {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut live[n as usize], true) {
                stack.extend(self.nodes[n as usize].operands());
            }
        }
        let mut renumber = HashMap::new();
        let mut gates = Vec::new();
        for (id, gate) in self.nodes.iter().enumerate() {
            if !live[id] {
                continue;
            }
            let map = |w: &WireId| renumber[w];
            let g = match gate {
                Gate::Add(a, b) => Gate::Add(map(a), map(b)),
                Gate::Sub(a, b) => Gate::Sub(map(a), map(b)),
                Gate::Mul(a, b) => Gate::Mul(map(a), map(b)),
                Gate::Neg(a) => Gate::Neg(map(a)),
                Gate::Scale(a, k) => Gate::Scale(map(a), *k),
                Gate::Dot(t) => Gate::Dot(t.iter().map(|(a, b)| (map(a), map(b))).collect()),
                leaf => leaf.clone(),
            };
            renumber.insert(id as NodeId, gates.len() as WireId);
            gates.push(g);
        }
        (gates, renumber)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, scale: u8, min: i128, max: i128) -> ValueDecl {
        ValueDecl {
            name: name.into(),
            scale,
            min,
            max,
        }
    }

    #[test]
    fn folding_and_cse() {
        let mut g = Graph::default();
        let x = g.input(decl("x", 0, 0, 10)).unwrap();
        let three = g.constant(3, 0).unwrap();
        let four = g.constant(4, 0).unwrap();
        let seven = g.add(three, four).unwrap();
        assert_eq!(g.gate(seven.node), &Gate::Const(7));
        let a = g.add(x, seven).unwrap();
        let b = g.add(seven, x).unwrap();
        assert_eq!(a, b, "commutative twins are one node");
        let sq = g.mul(a, b).unwrap();
        assert_eq!(g.gate(sq.node), &Gate::Mul(a.node, a.node));
        assert_eq!(g.range(sq.node), Range { min: 49, max: 289 });
        let k = g.mul(x, three).unwrap();
        assert_eq!(g.gate(k.node), &Gate::Scale(x.node, 3));
    }

    #[test]
    fn scales_align_and_multiply() {
        let mut g = Graph::default();
        let w = g.constant(35, 2).unwrap(); // 0.35
        let x = g.input(decl("income", 0, 0, 250000)).unwrap();
        let p = g.mul(w, x).unwrap();
        assert_eq!(p.scale, 2);
        let one = g.constant(1, 0).unwrap();
        let s = g.add(p, one).unwrap(); // 0.35x + 1.00
        assert_eq!(s.scale, 2);
        let Gate::Add(_, c) = g.gate(s.node).clone() else {
            panic!()
        };
        assert_eq!(g.gate(c), &Gate::Const(100));
    }

    #[test]
    fn powers_have_logarithmic_depth() {
        // A private x: its powers are products of shared wires (a visible x's are local).
        let mut g = Graph::default();
        let x = g.private_input(decl("x", 0, -2, 2)).unwrap();
        let x8 = g.power(x, 8).unwrap();
        let (gates, map) = g.prune(&[x8.node]);
        let circuit = quorumvm_core::Circuit {
            gates,
            outputs: vec![map[&x8.node]],
        };
        assert_eq!(circuit.depth(), 3);
        assert_eq!(circuit.multiplications(), 3);
    }

    #[test]
    fn wrap_around_is_an_error() {
        let mut g = Graph::default();
        let x = g.input(decl("x", 0, 0, 1 << 62)).unwrap();
        let x2 = g.mul(x, x).unwrap();
        assert!(matches!(g.mul(x2, x2), Err(IrError::Range(_))));
    }
}
