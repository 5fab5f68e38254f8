//! `quorumvm demo`: a guided tour of what works today, for a newcomer. It compiles the example
//! packages, makes a publisher key, signs and verifies, shows that tampering is caught, and
//! evaluates in plain, printing each step.

use std::path::{Path, PathBuf};

use quorumvm_core::eval::{decode_outputs, encode_values, eval_plain};
use quorumvm_package::SecretKey;
use quorumvm_sandbox::Sandbox;

use crate::exit::{Code, Failure, Result, read_text, write};

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

fn pairs(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn run(packages: &Path, work: &Path) -> Result<()> {
    std::fs::create_dir_all(work).map_err(|e| {
        Failure::new(
            Code::IoErr,
            format!("cannot create {}: {e}", work.display()),
        )
    })?;
    let sandbox = Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?;

    step(
        1,
        "Compile f(x) = (x + 7)^2 from packages/square.qvm into a package component",
    );
    let src = read_text(&packages.join("square.qvm"))?;
    let (program, unsigned) =
        quorumvm_compiler::compile_to_package(&src, "square").map_err(Failure::data)?;
    println!(
        "    {} gates, {} multiplication(s), depth {} = communication rounds; {} bytes",
        program.stats.gates,
        program.stats.multiplications,
        program.stats.depth,
        unsigned.len()
    );

    step(
        2,
        "Make a publisher key and sign the package (ed25519, in a custom section)",
    );
    let key = SecretKey::generate();
    let signed = quorumvm_package::sign(&unsigned, &key).map_err(Failure::data)?;
    let path: PathBuf = work.join("square.wasm");
    write(&path, &signed, false)?;
    println!("    publisher {}", key.public().to_hex());
    println!("    wrote {} ({} bytes)", path.display(), signed.len());

    step(
        3,
        "Verify it: the package id is the SHA-256 of the signed bytes",
    );
    let id = quorumvm_package::verify(&signed, &key.public()).map_err(Failure::data)?;
    println!("    valid; package id {id}");
    let mut tampered = signed.clone();
    tampered[signed.len() / 2] ^= 1;
    let refused = quorumvm_package::verify(&tampered, &key.public())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "NOT DETECTED".into());
    println!("    one flipped byte in the middle: {refused}");

    step(
        4,
        "Read it back in the wasmtime sandbox (fuel and memory limits) and evaluate in plain",
    );
    let (manifest, circuit) = sandbox
        .read_package(&signed, quorumvm_sandbox::package_limits())
        .map_err(Failure::data)?;
    for x in ["3", "10", "0"] {
        let xs = encode_values("input", &manifest.inputs, &pairs(&format!("x={x}")))
            .map_err(Failure::data)?;
        let out = decode_outputs(&manifest, &eval_plain(&circuit, &xs, &[]));
        println!("    f({x}) = {}", out[0].1);
    }

    step(
        5,
        "A credit score with secret decimal weights (supplied at evaluation, never in the package)",
    );
    let src = read_text(&packages.join("credit_score.qvm"))?;
    let example = src
        .lines()
        .find_map(|l| l.strip_prefix("# example: "))
        .ok_or_else(|| Failure::data("credit_score.qvm has no example line"))?;
    let (args, expected) = example.split_once(" => ").unwrap_or((example, ""));
    let (inputs, secrets) = args.split_once(" --secret ").unwrap_or((args, ""));
    let (program, _) =
        quorumvm_compiler::compile_to_package(&src, "credit_score").map_err(Failure::data)?;
    let m = &program.manifest;
    let xs = encode_values("input", &m.inputs, &pairs(inputs)).map_err(Failure::data)?;
    let ss = encode_values("secret", &m.secrets, &pairs(secrets)).map_err(Failure::data)?;
    let out = decode_outputs(m, &eval_plain(&program.circuit, &xs, &ss));
    println!(
        "    {} features, {} secret weights, depth {}: score = {} (expected {})",
        m.inputs.len(),
        m.secrets.len(),
        m.depth,
        out[0].1,
        expected.trim_start_matches("score=")
    );

    println!(
        "\nNot yet here: the threshold cluster (custodians holding Shamir shares, K-of-N approval,\n\
         budgets, audit). Until it lands, evaluation is plain and local; see README.md."
    );
    Ok(())
}
