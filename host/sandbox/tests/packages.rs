//! Program packages read back through wasmtime: what the compiler wrote is what the host reads,
//! and a package whose circuit contradicts its manifest is refused with a clear message.

use quorumvm_compiler::{compile, package::encode};
use quorumvm_core::circuit::Gate;
use quorumvm_sandbox::{Limits, Sandbox, SandboxError, package_limits};

const EXAMPLES: [&str; 6] = [
    include_str!("../../../packages/square.qvm"),
    include_str!("../../../packages/balance.qvm"),
    include_str!("../../../packages/credit_score.qvm"),
    include_str!("../../../packages/pricing.qvm"),
    include_str!("../../../packages/risk.qvm"),
    include_str!("../../../packages/fees.qvm"),
];

#[test]
fn examples_round_trip_through_the_component() {
    let sandbox = Sandbox::new().unwrap();
    for src in EXAMPLES {
        let p = compile(src, "example").unwrap();
        let bytes = encode(&p.manifest, &p.circuit).unwrap();
        let (manifest, circuit) = sandbox.read_package(&bytes, package_limits()).unwrap();
        assert_eq!(manifest, p.manifest);
        assert_eq!(circuit, p.circuit);
    }
}

#[test]
fn every_gate_kind_and_extreme_constant_round_trips() {
    // Constants at the edges of the int128 encoding (negative, above 2^64) exercise both halves.
    let src = "input x in -1..1\nsecret s in -1..1\nconst big = -123456789012345678901234\nmul a = x big\n\
               neg b = x\nsub c = a b\nmul d = x s\ndot e = [x s] [s x]\nadd f = c d\nadd g = f e\nadd h = g 18446744073709551617\noutput h\n";
    let p = compile(src, "edges").unwrap();
    let kinds: Vec<&str> = p.circuit.gates.iter().map(Gate::kind).collect();
    for k in [
        "input", "secret", "const", "add", "sub", "neg", "scale", "mul", "dot",
    ] {
        assert!(kinds.contains(&k), "no `{k}` gate in {kinds:?}");
    }
    let bytes = encode(&p.manifest, &p.circuit).unwrap();
    let (manifest, circuit) = Sandbox::new()
        .unwrap()
        .read_package(&bytes, package_limits())
        .unwrap();
    assert_eq!((manifest, circuit), (p.manifest, p.circuit));
}

fn refused(src: &str, lie: impl FnOnce(&mut quorumvm_compiler::Program)) -> SandboxError {
    let mut p = compile(src, "liar").unwrap();
    lie(&mut p);
    let bytes = encode(&p.manifest, &p.circuit).unwrap();
    Sandbox::new()
        .unwrap()
        .read_package(&bytes, package_limits())
        .unwrap_err()
}

#[test]
fn packages_that_contradict_their_manifest_are_refused() {
    let sq = EXAMPLES[0];
    let cases: Vec<(SandboxError, &str)> = vec![
        (
            refused(sq, |p| p.manifest.depth = 1),
            "declares depth 1, the circuit has depth 0",
        ),
        (
            refused(sq, |p| p.circuit.gates[0] = Gate::PrivateInput(0)),
            "reads private input #0, but the manifest declares 0 private inputs",
        ),
        (
            refused(sq, |p| p.manifest.outputs[0].max = 5),
            "output `y` is declared in",
        ),
        (
            refused(sq, |p| p.manifest.inputs.clear()),
            "reads input #0, but the manifest declares 0",
        ),
        (
            refused(sq, |p| p.circuit.gates[2] = Gate::Add(0, 3)),
            "not an earlier gate",
        ),
        (
            refused(sq, |p| p.circuit.outputs.push(0)),
            "the circuit has 2 outputs",
        ),
        (
            refused(sq, |p| p.manifest.inputs[0].max = i128::MAX),
            "wraps around p/2",
        ),
        (
            refused(sq, |p| p.manifest.name = "no spaces allowed".into()),
            "not a valid name",
        ),
    ];
    for (err, needle) in cases {
        let text = err.to_string();
        assert!(matches!(err, SandboxError::Mismatch(_)), "{text}");
        assert!(text.contains("does not match its manifest"), "{text}");
        assert!(text.contains(needle), "{text}");
    }
}

#[test]
fn a_package_larger_than_the_memory_cap_is_refused() {
    let mut src = String::from("input x in 0..1\n");
    for i in 0..3000 {
        src += &format!("add a{i} = x {i}\noutput a{i}\n");
    }
    let p = compile(&src, "big").unwrap();
    let bytes = encode(&p.manifest, &p.circuit).unwrap();
    let tight = Limits {
        memory_bytes: 64 << 10,
        ..package_limits()
    };
    let err = Sandbox::new()
        .unwrap()
        .read_package(&bytes, tight)
        .unwrap_err();
    assert!(matches!(err, SandboxError::Trapped(_)), "{err}");
    // The same package within the default limits reads fine.
    Sandbox::new()
        .unwrap()
        .read_package(&bytes, package_limits())
        .unwrap();
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let sandbox = Sandbox::new().unwrap();
    for junk in [&b""[..], b"\0asm\x01\0\0\0", b"hello world"] {
        let err = sandbox.read_package(junk, package_limits()).unwrap_err();
        assert!(matches!(err, SandboxError::NotAComponent(_)), "{err}");
    }
}
