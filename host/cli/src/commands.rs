//! The package commands: compile, inspect, eval-plain, keygen, sign, verify.

use std::path::Path;

use quorumvm_core::circuit::{Circuit, Manifest, ValueDecl};
use quorumvm_core::eval::{decode_outputs, encode_inputs, encode_values, eval_plain as evaluate};
use quorumvm_core::fixed::Decimal;
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sandbox::Sandbox;
use serde_json::json;

use crate::exit::{Code, Failure, Result, read, read_text, write};

fn sandbox() -> Result<Sandbox> {
    Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("cannot start wasmtime: {e:#}")))
}

/// Reads a package (signed or not) through the sandbox, with the manifest/circuit check.
fn load(path: &Path) -> Result<(Vec<u8>, Manifest, Circuit)> {
    let bytes = read(path)?;
    let (manifest, circuit) = sandbox()?
        .read_package(&bytes, quorumvm_sandbox::package_limits())
        .map_err(|e| Failure::data(format!("{}: {e}", path.display())))?;
    Ok((bytes, manifest, circuit))
}

pub fn compile(source: &Path, output: &Path, json: bool) -> Result<()> {
    let src = read_text(source)?;
    let default_name = source
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        })
        .filter(|s| quorumvm_core::circuit::is_identifier(s))
        .unwrap_or_else(|| "program".into());
    let program = quorumvm_compiler::compile(&src, &default_name)
        .map_err(|e| Failure::data(format!("{}: {e}", source.display())))?;
    let bytes = quorumvm_compiler::package::encode(&program.manifest, &program.circuit)
        .map_err(Failure::data)?;
    write(output, &bytes, false)?;
    let s = &program.stats;
    if json {
        println!(
            "{}",
            json!({
                "name": program.manifest.name,
                "version": program.manifest.version,
                "output": output,
                "bytes": bytes.len(),
                "nodes_built": s.nodes_built,
                "gates": s.gates,
                "multiplications": s.multiplications,
                "depth": s.depth,
            })
        );
    } else {
        println!(
            "compiled {} v{}: {} gates ({} before pruning), {} multiplications, depth {} -> {} ({} bytes, unsigned)",
            program.manifest.name,
            program.manifest.version,
            s.gates,
            s.nodes_built,
            s.multiplications,
            s.depth,
            output.display(),
            bytes.len()
        );
    }
    Ok(())
}

fn range_text(d: &ValueDecl) -> String {
    let at = |raw| Decimal {
        raw,
        scale: d.scale,
    };
    format!("{}..{}", at(d.min), at(d.max))
}

fn decls_json(decls: &[ValueDecl]) -> serde_json::Value {
    decls
        .iter()
        .map(|d| json!({"name": d.name, "scale": d.scale, "range": range_text(d)}))
        .collect()
}

pub fn inspect(path: &Path, as_json: bool) -> Result<()> {
    let (bytes, m, circuit) = load(path)?;
    let id = quorumvm_package::package_id(&bytes);
    let signer = quorumvm_package::claimed_signer(&bytes).map(hex::encode);
    let counts = quorumvm_compiler::gate_counts(&circuit);
    if as_json {
        let gates: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "id": id.to_string(),
                "bytes": bytes.len(),
                "claimed_signer": signer,
                "name": m.name,
                "version": m.version,
                "inputs": decls_json(&m.inputs),
                "private_inputs": decls_json(&m.private_inputs),
                // Said plainly: no custodian can check a private input's range on shares yet.
                "private_input_ranges_checked": "by the caller's client only",
                "secrets": decls_json(&m.secrets),
                "outputs": decls_json(&m.outputs),
                "policy": {
                    "cost_per_eval": m.policy.cost_per_eval,
                    "budget_per_identity": m.policy.budget_per_identity,
                    "rate_limit": m.policy.rate_limit,
                    "rate_window_secs": m.policy.rate_window_secs,
                },
                "gates": circuit.gates.len(),
                "gate_counts": gates,
                "multiplications": circuit.multiplications(),
                "depth": m.depth,
            }))
            .expect("JSON of plain values")
        );
        return Ok(());
    }
    let list = |decls: &[ValueDecl]| {
        if decls.is_empty() {
            return "(none)".to_string();
        }
        decls
            .iter()
            .map(|d| format!("{} in {}", d.name, range_text(d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("package   {} v{}", m.name, m.version);
    println!("id        {id}");
    println!("size      {} bytes", bytes.len());
    match signer {
        Some(k) => println!("signer    {k} (claimed; `quorumvm verify` checks it)"),
        None => println!("signer    unsigned"),
    }
    println!(
        "inputs    {} (visible: every custodian checks the range)",
        list(&m.inputs)
    );
    if !m.private_inputs.is_empty() {
        println!(
            "private   {} (shared by the caller's client; their ranges are NOT checked by the custodians, which see only shares)",
            list(&m.private_inputs)
        );
    }
    println!("secrets   {}", list(&m.secrets));
    println!("outputs   {}", list(&m.outputs));
    println!(
        "policy    cost {} per eval, budget {} per identity, rate {} per {} s",
        m.policy.cost_per_eval,
        m.policy.budget_per_identity,
        m.policy.rate_limit,
        m.policy.rate_window_secs
    );
    let nonzero: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "circuit   {} gates ({}), {} multiplications, depth {} (communication rounds)",
        circuit.gates.len(),
        nonzero.join(", "),
        circuit.multiplications(),
        m.depth
    );
    Ok(())
}

/// Splits `NAME=VALUE` arguments.
pub fn pairs(kind: &str, args: &[String]) -> Result<Vec<(String, String)>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Failure::data(format!("{kind} `{a}` is not NAME=VALUE")))
        })
        .collect()
}

pub fn eval_plain(path: &Path, inputs: &[String], secrets: &[String], json: bool) -> Result<()> {
    let (_, manifest, circuit) = load(path)?;
    let xs = encode_inputs(&manifest, &pairs("input", inputs)?).map_err(Failure::data)?;
    let ss = encode_values("secret", &manifest.secrets, &pairs("secret", secrets)?)
        .map_err(Failure::data)?;
    let outputs = decode_outputs(
        &manifest,
        &evaluate(&circuit, &xs.visible, &xs.private, &ss),
    );
    if json {
        let map: serde_json::Map<String, serde_json::Value> = outputs
            .iter()
            .map(|(n, v)| (n.clone(), json!(v.to_string())))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        for (name, value) in outputs {
            println!("{name} = {value}");
        }
    }
    Ok(())
}

pub fn keygen(prefix: &Path) -> Result<()> {
    let key = SecretKey::generate();
    let secret_path = prefix.with_extension("key");
    let public_path = prefix.with_extension("pub");
    if secret_path.exists() {
        return Err(Failure::new(
            Code::IoErr,
            format!(
                "{} exists; refusing to overwrite a key",
                secret_path.display()
            ),
        ));
    }
    write(&secret_path, key.to_file_text().as_bytes(), true)?;
    write(&public_path, key.public().to_file_text().as_bytes(), false)?;
    println!(
        "wrote {} (secret, mode 0600) and {}\npublic key {}",
        secret_path.display(),
        public_path.display(),
        key.public().to_hex()
    );
    Ok(())
}

pub fn sign(path: &Path, key_path: &Path, output: Option<&Path>) -> Result<()> {
    let key = SecretKey::from_file_text(&read_text(key_path)?)
        .map_err(|e| Failure::data(format!("{}: {e}", key_path.display())))?;
    // Only a package the sandbox accepts is worth a signature.
    let (bytes, manifest, _) = load(path)?;
    let signed = quorumvm_package::sign(&bytes, &key)
        .map_err(|e| Failure::data(format!("{}: {e}", path.display())))?;
    let out = output.unwrap_or(path);
    write(out, &signed, false)?;
    println!(
        "signed {} v{} -> {}\npackage id {}",
        manifest.name,
        manifest.version,
        out.display(),
        quorumvm_package::package_id(&signed)
    );
    Ok(())
}

pub fn verify(path: &Path, pubkey_path: &Path, json: bool) -> Result<()> {
    let key = PublicKey::from_file_text(&read_text(pubkey_path)?)
        .map_err(|e| Failure::data(format!("{}: {e}", pubkey_path.display())))?;
    let bytes = read(path)?;
    match quorumvm_package::verify(&bytes, &key) {
        Ok(id) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": true, "id": id.to_string(), "signer": key.to_hex()})
                );
            } else {
                println!("valid signature by {}\npackage id {id}", key.to_hex());
            }
            Ok(())
        }
        Err(e) => {
            if json {
                println!("{}", json!({"valid": false, "error": e.to_string()}));
            }
            Err(Failure::new(
                Code::Rejected,
                format!("{}: {e}", path.display()),
            ))
        }
    }
}
