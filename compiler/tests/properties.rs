//! Property tests of the compiler: random programs agree with a direct interpretation of the
//! source, and no input, however malformed, makes the compiler panic.

use proptest::prelude::*;
use quorumvm_compiler::compile;
use quorumvm_core::Decimal;
use quorumvm_core::eval::{decode_outputs, eval_plain};

/// An exact value of the oracle: `raw · 10^-scale`.
#[derive(Clone, Copy, Debug)]
struct Exact {
    raw: i128,
    scale: u32,
}

/// The oracle's arithmetic is checked: a value beyond `i128` is beyond p/2 too, so the compiler
/// must refuse any program where the oracle overflows (`None`).
impl Exact {
    fn at(self, scale: u32) -> Option<i128> {
        self.raw
            .checked_mul(10i128.checked_pow(scale - self.scale)?)
    }
    fn add(self, o: Exact) -> Option<Exact> {
        let s = self.scale.max(o.scale);
        Some(Exact {
            raw: self.at(s)?.checked_add(o.at(s)?)?,
            scale: s,
        })
    }
    fn neg(self) -> Exact {
        Exact {
            raw: -self.raw,
            scale: self.scale,
        }
    }
    fn mul(self, o: Exact) -> Option<Exact> {
        Some(Exact {
            raw: self.raw.checked_mul(o.raw)?,
            scale: self.scale + o.scale,
        })
    }
    fn same_value(self, d: Decimal) -> bool {
        let s = self.scale.max(d.scale as u32);
        let theirs = Exact {
            raw: d.raw,
            scale: d.scale as u32,
        };
        self.at(s).is_some() && self.at(s) == theirs.at(s)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    Neg(usize),
    Mux(usize, usize),
    Dot(Vec<(usize, usize)>),
    Poly(usize, Vec<usize>),
    Lit(i32, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..64;
    prop_oneof![
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Add(a, b)),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Sub(a, b)),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Mul(a, b)),
        i.clone().prop_map(Op::Neg),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Mux(a, b)),
        prop::collection::vec((i.clone(), i.clone()), 1..5).prop_map(Op::Dot),
        (i.clone(), prop::collection::vec(i.clone(), 1..4)).prop_map(|(x, c)| Op::Poly(x, c)),
        (-500i32..500, 0u32..3).prop_map(|(v, s)| Op::Lit(v, s)),
    ]
}

/// Inputs: (value, scale, is_secret); the program is built from ops over earlier names.
fn program() -> impl Strategy<Value = (Vec<(i32, u32, bool)>, Vec<Op>)> {
    (
        prop::collection::vec((-50i32..50, 0u32..3, any::<bool>()), 1..4),
        prop::collection::vec(op(), 1..10),
    )
}

fn render(value: i32, scale: u32) -> String {
    Decimal {
        raw: value as i128,
        scale: scale as u8,
    }
    .to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_circuits_agree_with_the_source((decls, ops) in program()) {
        let mut src = String::from("input sel in 0..1\n");
        let mut names = vec!["sel".to_string()];
        let mut vals = vec![Some(Exact { raw: 1, scale: 0 })];
        let (mut inputs, mut secrets) = (vec![("sel".to_string(), "1".to_string())], vec![]);
        for (i, &(v, s, secret)) in decls.iter().enumerate() {
            let name = format!("v{i}");
            let kind = if secret { "secret" } else { "input" };
            let bound = render(99 * 10i32.pow(s), s);
            src += &format!("{kind} {name} in -{bound}..{bound}\n");
            let text = render(v, s);
            if secret { secrets.push((name.clone(), text)) } else { inputs.push((name.clone(), text)) }
            // Values are given at the declared scale (the bound's digits).
            names.push(name);
            vals.push(Some(Exact { raw: v as i128, scale: s }));
        }
        let pick = |k: usize, n: &Vec<String>| k % n.len();
        let pair = |vals: &Vec<Option<Exact>>, a: usize, b: usize| vals[a].zip(vals[b]);
        for (j, op) in ops.iter().enumerate() {
            let name = format!("t{j}");
            // Every other `dot` and `polyeval` is written flat, as the reference DSL writes them.
            let flat = j % 2 == 1;
            let (line, val) = match op {
                Op::Add(a, b) => { let (a, b) = (pick(*a, &names), pick(*b, &names));
                    (format!("add {name} = {} {}", names[a], names[b]), pair(&vals, a, b).and_then(|(x, y)| x.add(y))) }
                Op::Sub(a, b) => { let (a, b) = (pick(*a, &names), pick(*b, &names));
                    (format!("sub {name} = {} {}", names[a], names[b]), pair(&vals, a, b).and_then(|(x, y)| x.add(y.neg()))) }
                Op::Mul(a, b) => { let (a, b) = (pick(*a, &names), pick(*b, &names));
                    (format!("mul {name} = {} {}", names[a], names[b]), pair(&vals, a, b).and_then(|(x, y)| x.mul(y))) }
                Op::Neg(a) => { let a = pick(*a, &names);
                    (format!("neg {name} = {}", names[a]), vals[a].map(Exact::neg)) }
                Op::Mux(a, b) => { let (a, b) = (pick(*a, &names), pick(*b, &names));
                    // sel is 1: the result is `a`, at the scale of the aligned pair.
                    let v = pair(&vals, a, b).and_then(|(x, y)| {
                        let s = x.scale.max(y.scale);
                        Some(Exact { raw: x.at(s)?, scale: s })
                    });
                    (format!("mux {name} = sel {} {}", names[a], names[b]), v) }
                Op::Dot(terms) => {
                    let ts: Vec<(usize, usize)> = terms.iter().map(|&(a, b)| (pick(a, &names), pick(b, &names))).collect();
                    let l: Vec<&str> = ts.iter().map(|t| names[t.0].as_str()).collect();
                    let r: Vec<&str> = ts.iter().map(|t| names[t.1].as_str()).collect();
                    let pairs: Vec<&str> = ts.iter().flat_map(|t| [names[t.0].as_str(), names[t.1].as_str()]).collect();
                    let v = ts.iter().try_fold(None::<Exact>, |acc, &(a, b)| {
                        let p = pair(&vals, a, b).and_then(|(x, y)| x.mul(y))?;
                        Some(Some(match acc { None => p, Some(acc) => acc.add(p)? }))
                    }).flatten();
                    let line = if flat { format!("dot {name} = {}", pairs.join(" ")) }
                        else { format!("dot {name} = [{}] [{}]", l.join(" "), r.join(" ")) };
                    (line, v) }
                Op::Poly(x, cs) => {
                    let x = pick(*x, &names);
                    let cs: Vec<usize> = cs.iter().map(|&c| pick(c, &names)).collect();
                    let v = (|| {
                        let (xv, mut v) = (vals[x]?, vals[cs[0]]?);
                        let mut power = Exact { raw: 1, scale: 0 };
                        for &c in &cs[1..] {
                            power = power.mul(xv)?;
                            v = v.add(vals[c]?.mul(power)?)?;
                        }
                        Some(v)
                    })();
                    let list: Vec<&str> = cs.iter().map(|&c| names[c].as_str()).collect();
                    let line = if flat { format!("polyeval {name} = {} {}", names[x], list.join(" ")) }
                        else { format!("polyeval {name} = {} [{}]", names[x], list.join(" ")) };
                    (line, v) }
                Op::Lit(v, s) => (format!("const {name} = {}", render(*v, *s)), Some(Exact { raw: *v as i128, scale: *s })),
            };
            src += &line;
            src.push('\n');
            names.push(name);
            vals.push(val);
        }
        let last = names.len() - 1;
        src += &format!("output {}\noutput {}\n", names[last], names[last / 2]);
        let program = match compile(&src, "prop") {
            Ok(p) => p,
            Err(e) => {
                // Only range or scale overflow may refuse a well-formed program.
                prop_assert!(e.message.contains("overflow"), "{src}\n{e}");
                return Ok(());
            }
        };
        // A value beyond 128 bits is beyond p/2: the compiler must not have accepted it.
        prop_assert!(vals.iter().all(Option::is_some), "accepted a program whose values overflow:\n{src}");
        let vals: Vec<Exact> = vals.into_iter().map(Option::unwrap).collect();
        let xs = quorumvm_core::eval::encode_values("input", &program.manifest.inputs, &inputs).unwrap();
        let ss = quorumvm_core::eval::encode_values("secret", &program.manifest.secrets, &secrets).unwrap();
        let out = decode_outputs(&program.manifest, &eval_plain(&program.circuit, &xs, &[], &ss));
        prop_assert!(vals[last].same_value(out[0].1), "{src}\nwant {:?} got {}", vals[last], out[0].1);
        prop_assert!(vals[last / 2].same_value(out[1].1), "{src}\nwant {:?} got {}", vals[last / 2], out[1].1);
        // The depth claim is the circuit's.
        prop_assert_eq!(program.manifest.depth, program.circuit.depth());
    }

    #[test]
    fn random_text_never_panics(src in "[ -~\n\t]{0,200}") {
        let _ = compile(&src, "fuzz");
    }

    #[test]
    fn mutated_examples_never_panic(
        which in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let examples = [
            include_str!("../../packages/square.qvm"),
            include_str!("../../packages/credit_score.qvm"),
            include_str!("../../packages/pricing.qvm"),
            include_str!("../../packages/risk.qvm"),
            include_str!("../../packages/fees.qvm"),
            // The flat forms of `dot` and `polyeval`.
            "input x in -10..10\nsecret a in -5..5\nsecret b in -5..5\ndot s = a x b x\n\
             polyeval y = x a b 3\nadd z = s y\noutput z\n",
        ];
        let mut bytes = examples[which].as_bytes().to_vec();
        for (at, byte, kind) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        let src = String::from_utf8_lossy(&bytes);
        if let Ok(p) = compile(&src, "fuzz") {
            // Whatever compiles must also encode.
            quorumvm_compiler::package::encode(&p.manifest, &p.circuit).unwrap();
        }
    }
}

#[test]
fn exact_decimal_credit_score() {
    let p = compile(
        "const w = -0.35\ninput income in 0..250000 scale 2\nmul s = w income\noutput s\n",
        "c",
    )
    .unwrap();
    let xs = quorumvm_core::eval::encode_values(
        "input",
        &p.manifest.inputs,
        &[("income".into(), "1200".into())],
    )
    .unwrap();
    let out = decode_outputs(&p.manifest, &eval_plain(&p.circuit, &xs, &[], &[]));
    assert_eq!(out[0].1.to_string(), "-420.0000");
}

#[test]
fn a_dot_product_of_a_hundred_terms_is_one_layer() {
    let mut src = String::new();
    let (mut a, mut b) = (vec![], vec![]);
    for i in 0..100 {
        // Private features: every product is of two shared wires, and still one layer.
        src += &format!("private x{i} in -10..10\nsecret w{i} in -10..10\n");
        a.push(format!("w{i}"));
        b.push(format!("x{i}"));
    }
    src += &format!("dot s = [{}] [{}]\noutput s\n", a.join(" "), b.join(" "));
    let p = compile(&src, "dot").unwrap();
    assert_eq!((p.manifest.depth, p.stats.multiplications), (1, 1));
}

#[test]
fn cse_and_pruning_shrink_the_circuit() {
    let src = "private x\ninput unused\nadd a = x 1\nadd b = 1 x\nmul c = a b\nmul d = b a\nadd e = c d\nmul dead = e e\noutput e\n";
    let p = compile(src, "cse").unwrap();
    // a and b are one node, c and d are one node, `dead` and `unused` are pruned.
    assert_eq!(p.stats.multiplications, 1);
    assert!(p.stats.gates < p.stats.nodes_built);
    assert_eq!(
        p.manifest.inputs.len() + p.manifest.private_inputs.len(),
        2,
        "declared inputs stay in the manifest"
    );
}
