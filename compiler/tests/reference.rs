//! Programs written for the original (Python) QuorumVM DSL compile unchanged and compute what
//! they mean there: the example from its README, and its flat `dot` and `polyeval` forms.

use quorumvm_compiler::compile;
use quorumvm_core::eval::{decode_outputs, encode_values, eval_plain};

/// The README's example program of the original QuorumVM, verbatim.
const SCORING_MODEL: &str = "\
# Scoring model: score = 3*x1 + 5*x2 + 7
input x1
input x2
const w1 = 3
const w2 = 5
const bias = 7
mul t1 = w1 x1
mul t2 = w2 x2
add s = t1 t2
add score = s bias
output score
";

/// Compiles `src` and evaluates it on the given inputs; the outputs as printed.
fn eval(src: &str, inputs: &[(&str, &str)]) -> Vec<String> {
    let p = compile(src, "reference").unwrap_or_else(|e| panic!("{e}"));
    let given: Vec<(String, String)> = inputs
        .iter()
        .map(|&(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let xs = encode_values("input", &p.manifest.inputs, &given).unwrap();
    let out = decode_outputs(&p.manifest, &eval_plain(&p.circuit, &xs, &[], &[]));
    out.iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>()
}

#[test]
fn the_reference_readme_example_compiles_and_scores() {
    // 3·2 + 5·4 + 7 and 3·(−7) + 5·11 + 7.
    assert_eq!(eval(SCORING_MODEL, &[("x1", "2"), ("x2", "4")]), ["33"]);
    assert_eq!(eval(SCORING_MODEL, &[("x1", "-7"), ("x2", "11")]), ["41"]);
}

#[test]
fn the_scoring_model_as_a_flat_dot_scores_the_same() {
    let src = SCORING_MODEL.replace(
        "mul t1 = w1 x1\nmul t2 = w2 x2\nadd s = t1 t2\n",
        "dot s = w1 x1 w2 x2\n",
    );
    assert!(src.contains("dot s"), "the replacement must apply");
    assert_eq!(eval(&src, &[("x1", "2"), ("x2", "4")]), ["33"]);
    assert_eq!(eval(&src, &[("x1", "-7"), ("x2", "11")]), ["41"]);
}

#[test]
fn a_flat_dot_sums_its_pairs() {
    let src = "input h1\ninput h2\ninput h3\nconst k1 = 4\nconst k2 = -3\n\
               dot total = k1 h1 k2 h2 h3 2\noutput total\n";
    // 4·5 + (−3)·7 + (−1)·2
    assert_eq!(eval(src, &[("h1", "5"), ("h2", "7"), ("h3", "-1")]), ["-3"]);
}

#[test]
fn a_flat_polyeval_takes_x_then_the_coefficients_from_c0() {
    let src = "input t\nconst p0 = 5\nconst p1 = -2\nconst p3 = 1\n\
               polyeval f = t p0 p1 0 p3\noutput f\n";
    // 5 − 2t + 0·t² + t³ at t = 3 and t = −2.
    assert_eq!(eval(src, &[("t", "3")]), ["26"]);
    assert_eq!(eval(src, &[("t", "-2")]), ["1"]);
}
