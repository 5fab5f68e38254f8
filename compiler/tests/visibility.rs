//! Depth and multiplication counts follow each operand's visibility: a product with a visible
//! input (a public value) is local on shares; only a product of two shared wires (secrets,
//! private inputs and what depends on them) costs a triple and a round.

use quorumvm_compiler::compile;
use quorumvm_core::eval::{decode_outputs, encode_inputs, eval_plain};

fn stats(src: &str) -> (u32, usize) {
    let p = compile(src, "p").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.manifest.depth, p.stats.depth);
    (p.stats.depth, p.stats.multiplications)
}

#[test]
fn a_linear_score_of_visible_inputs_takes_no_round() {
    let credit = include_str!("../../packages/credit_score.qvm");
    assert_eq!(stats(credit), (0, 0));
    // The same score over private inputs: one dot of shared products, one round.
    let private = credit.replace("\ninput ", "\nprivate ");
    assert_eq!(stats(&private), (1, 1));
}

#[test]
fn visibility_decides_each_product() {
    let base = "secret w in -10..10\nsecret v in -10..10\n";
    // visible × secret: local.
    assert_eq!(
        stats(&format!("input x in 0..9\n{base}mul y = x w\noutput y\n")),
        (0, 0)
    );
    // private × secret: one round.
    assert_eq!(
        stats(&format!("private x in 0..9\n{base}mul y = x w\noutput y\n")),
        (1, 1)
    );
    // visible × visible, then × secret: local throughout.
    assert_eq!(
        stats(&format!(
            "input x in 0..9\n{base}mul s = x x\nmul y = s w\noutput y\n"
        )),
        (0, 0)
    );
    // secret × secret, then × visible: the first product alone costs a round.
    assert_eq!(
        stats(&format!(
            "input x in 0..9\n{base}mul s = w v\nmul y = s x\noutput y\n"
        )),
        (1, 1)
    );
    // A polynomial in a visible x with secret coefficients: powers and dot all local.
    assert_eq!(
        stats(&format!(
            "input x in 0..9\n{base}polyeval y = x [w v w v]\noutput y\n"
        )),
        (0, 0)
    );
    // The same in a private x: powers at logarithmic depth, then the dot: 2 + 1 rounds.
    assert_eq!(
        stats(&format!(
            "private x in 0..9\n{base}polyeval y = x [w v w v]\noutput y\n"
        )),
        (3, 3)
    );
}

#[test]
fn private_inputs_evaluate_in_the_clear_like_visible_ones() {
    let src = "private a in 0..100 scale 1\ninput b in 0..100\nmul y = a b\noutput y\n";
    let p = compile(src, "p").unwrap();
    assert_eq!(p.manifest.private_inputs.len(), 1);
    assert_eq!(p.manifest.inputs.len(), 1);
    let given = vec![
        ("a".to_string(), "2.5".to_string()),
        ("b".into(), "4".into()),
    ];
    let xs = encode_inputs(&p.manifest, &given).unwrap();
    let out = decode_outputs(
        &p.manifest,
        &eval_plain(&p.circuit, &xs.visible, &xs.private, &[]),
    );
    assert_eq!(out[0].1.to_string(), "10.0");
    // A private input is checked against its range on the caller's side.
    let e = encode_inputs(
        &p.manifest,
        &[("a".into(), "101".into()), ("b".into(), "4".into())],
    );
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("outside its declared range")
    );
}
