//! The `quorumvm` binary, run as a user would: every example package's documented results,
//! exit codes, signatures and refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quorumvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumvm"))
        .args(args)
        .output()
        .expect("run quorumvm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh scratch directory under the target dir, unique to the test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(src: &Path, out: &Path) {
    let o = quorumvm(&[
        "compile",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "compile {}: {}",
        src.display(),
        stderr(&o)
    );
}

fn write_source(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_example_gives_its_documented_results() {
    let dir = scratch("examples");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(repo().join("packages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "qvm"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 5, "the five example packages");
    for src in entries {
        let pkg = dir.join(src.file_stem().unwrap()).with_extension("wasm");
        compile(&src, &pkg);
        let text = std::fs::read_to_string(&src).unwrap();
        for line in text.lines().filter_map(|l| l.strip_prefix("# example: ")) {
            let (args, expected) = line.split_once(" => ").expect("`args => outputs`");
            let mut argv = vec!["eval-plain", pkg.to_str().unwrap()];
            let (inputs, secrets) = args.split_once(" --secret ").unwrap_or((args, ""));
            argv.extend(inputs.split_whitespace());
            for s in secrets.split_whitespace() {
                argv.extend(["--secret", s]);
            }
            let o = quorumvm(&argv);
            assert!(o.status.success(), "{line}: {}", stderr(&o));
            let want: Vec<String> = expected
                .split_whitespace()
                .map(|kv| kv.replacen('=', " = ", 1))
                .collect();
            let got: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
            assert_eq!(got, want, "{}: {line}", src.display());
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} examples checked");
}

#[test]
fn square_package_is_a_valid_component() {
    let dir = scratch("square");
    let pkg = dir.join("sq.wasm");
    compile(&repo().join("packages/square.qvm"), &pkg);
    let bytes = std::fs::read(&pkg).unwrap();
    // The component-layer preamble: magic, version 0x0d, layer 1.
    assert_eq!(
        &bytes[..8],
        &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
    );
    assert!(wasmparser::Parser::is_component(&bytes));
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&bytes)
        .expect("validates as a component");
    for (x, y) in [("3", "100"), ("10", "289"), ("0", "49")] {
        let o = quorumvm(&["eval-plain", pkg.to_str().unwrap(), &format!("x={x}")]);
        assert_eq!(stdout(&o), format!("y = {y}\n"));
    }
}

#[test]
fn negative_results_decode_as_negatives() {
    let dir = scratch("negative");
    let src = write_source(&dir, "d.qvm", "input a\ninput b\nsub d = a b\noutput d\n");
    let pkg = dir.join("d.wasm");
    compile(&src, &pkg);
    let o = quorumvm(&["eval-plain", pkg.to_str().unwrap(), "a=3", "b=10", "--json"]);
    assert_eq!(stdout(&o).trim(), r#"{"d":"-7"}"#);
}

#[test]
fn sign_verify_and_tamper() {
    let dir = scratch("sign");
    let pkg = dir.join("sq.wasm");
    compile(&repo().join("packages/square.qvm"), &pkg);
    let prefix = dir.join("publisher");
    assert!(
        quorumvm(&["keygen", "-o", prefix.to_str().unwrap()])
            .status
            .success()
    );
    let (key, pubkey) = (dir.join("publisher.key"), dir.join("publisher.pub"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    let signed = dir.join("sq.signed.wasm");
    let o = quorumvm(&[
        "sign",
        pkg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ok = quorumvm(&[
        "verify",
        signed.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bytes = std::fs::read(&signed).unwrap();
    let id = sha256_hex(&bytes);
    assert!(stdout(&ok).contains(&format!("package id {id}")));
    // A signed package still evaluates.
    let o = quorumvm(&["eval-plain", signed.to_str().unwrap(), "x=3"]);
    assert_eq!(stdout(&o), "y = 100\n");
    // The unsigned package, and any flipped byte (a sample here; the library test flips all).
    let o = quorumvm(&[
        "verify",
        pkg.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not signed"), "{}", stderr(&o));
    let tampered = dir.join("tampered.wasm");
    for i in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x80;
        std::fs::write(&tampered, &bad).unwrap();
        let o = quorumvm(&[
            "verify",
            tampered.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "byte {i}: {}", stdout(&o));
    }
}

/// SHA-256 by the coreutils tool, independent of the code under test.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn compile_errors_point_at_line_and_column() {
    let dir = scratch("errors");
    let cases = [
        (
            "input x\nadd y = x zz\noutput y\n",
            "line 2, column 11: undefined name `zz`",
        ),
        (
            "input x\ninput x\n",
            "line 2, column 7: `x` is already defined at line 1, column 7",
        ),
        (
            "input x\nmul y = x\noutput y\n",
            "line 2, column 10: expected an operand",
        ),
        (
            "input x in 0..1000000000000\nmul a = x x\nmul b = a a\nmul c = b b\noutput c\n",
            "line 3, column 5: range overflow",
        ),
    ];
    for (i, (src, needle)) in cases.iter().enumerate() {
        let path = write_source(&dir, &format!("e{i}.qvm"), src);
        let out = dir.join(format!("e{i}.wasm"));
        let o = quorumvm(&[
            "compile",
            path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(65), "{src}");
        assert!(stderr(&o).contains(needle), "{src}: {}", stderr(&o));
        assert!(stderr(&o).contains('^'), "a caret excerpt");
        assert!(!out.exists(), "nothing is written on error");
    }
}

#[test]
fn refused_values_and_files() {
    let dir = scratch("refused");
    let pkg = dir.join("sq.wasm");
    compile(&repo().join("packages/balance.qvm"), &pkg);
    let p = pkg.to_str().unwrap();
    for (args, needle) in [
        (vec!["credit=3"], "missing input `debit`"),
        (
            vec!["credit=3", "debit=1", "bonus=2"],
            "unknown input `bonus`",
        ),
        (vec!["credit=3", "debit=-1"], "outside its declared range"),
        (vec!["credit=3", "debit=0.001"], "digits after the point"),
        (vec!["credit", "debit=1"], "not NAME=VALUE"),
    ] {
        let mut argv = vec!["eval-plain", p];
        argv.extend(args);
        let o = quorumvm(&argv);
        assert_eq!(o.status.code(), Some(65));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }
    let o = quorumvm(&["inspect", dir.join("missing.wasm").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(66));
    let junk = write_source(&dir, "junk.wasm", "not a component");
    let o = quorumvm(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("not a WebAssembly component"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_reports_depth_and_counts() {
    let dir = scratch("inspect");
    let pkg = dir.join("risk.wasm");
    compile(&repo().join("packages/risk.qvm"), &pkg);
    let o = quorumvm(&["inspect", pkg.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // Both inputs are visible (public values): the powers of v, the dot with the secret
    // coefficients and the product with exposure are all local on shares.
    assert_eq!(v["depth"], 0);
    assert_eq!(v["multiplications"], 0);
    assert_eq!(v["name"], "risk_model");
    assert_eq!(v["secrets"].as_array().unwrap().len(), 4);
    assert_eq!(v["gate_counts"]["dot"], 1);
    assert_eq!(v["claimed_signer"], serde_json::Value::Null);
    // With a private volatility: v^2 (1), v^3 (2), the dot with the secret coefficients (3);
    // times the visible exposure stays local.
    let src = std::fs::read_to_string(repo().join("packages/risk.qvm")).unwrap();
    let private = write_source(
        &dir,
        "private_risk.qvm",
        &src.replace("input volatility", "private volatility"),
    );
    let pkg = dir.join("private_risk.wasm");
    compile(&private, &pkg);
    let o = quorumvm(&["inspect", pkg.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["depth"].clone(), v["multiplications"].clone()),
        (3.into(), 3.into())
    );
    assert_eq!(v["private_inputs"][0]["name"], "volatility");
    // `inspect` says plainly who checks a private input's range.
    let text = stdout(&quorumvm(&["inspect", pkg.to_str().unwrap()]));
    assert!(text.contains("NOT checked by the custodians"), "{text}");
}

/// `server-keys` makes a server's own keys once, on its machine, and prints the public halves a
/// config lists; run again, it keeps them.
#[test]
fn server_keys_are_made_once_and_printed_for_the_configs() {
    let dir = scratch("server-keys");
    for (role, fields) in [
        ("custodian", &["sealing_key", "tls_fingerprint"][..]),
        (
            "coordinator",
            &[
                "coordinator_key",
                "coordinator_exchange_key",
                "coordinator_tls_fingerprint",
            ][..],
        ),
    ] {
        let data = dir.join(role);
        let run = || {
            let o = quorumvm(&[
                "server-keys",
                role,
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
        };
        let first = run();
        for field in fields {
            assert_eq!(
                first[field].as_str().map(str::len),
                Some(64),
                "{role}: {first}"
            );
        }
        assert_eq!(run(), first, "{role}: present keys are kept");
    }
    // The custodian's data directory holds its own keys only: no operator key.
    let mut names: Vec<_> = std::fs::read_dir(dir.join("custodian"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sealing.key", "tls.key"]);
}

#[test]
fn a_coordinator_on_postgres_needs_a_replica_name_from_its_config_or_its_command() {
    let dir = scratch("replica-name");
    let o = quorumvm(&[
        "dev",
        "--init-only",
        "--port",
        "0",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = dir.join("coordinator.toml");
    let plain = std::fs::read_to_string(&config).unwrap();
    let start = |extra: &[&str]| {
        let mut args = vec!["coordinator", "--config", config.to_str().unwrap()];
        args.extend(extra);
        quorumvm(&args)
    };
    // SQLite: there are no replicas to name.
    let o = start(&["--replica", "a"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("this config has no [database]"),
        "{}",
        stderr(&o)
    );
    // A database that nothing listens on (port 1): the name is asked for before it is reached.
    std::fs::write(
        &config,
        format!("{plain}\n[database]\nurl = \"postgresql://quorumvm@127.0.0.1:1/quorumvm\"\n"),
    )
    .unwrap();
    let o = start(&[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("needs its replica's name"),
        "{}",
        stderr(&o)
    );
    // Named at start, it goes on to the database.
    let o = start(&["--replica", "coordinator-0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the coordinator's database"),
        "{}",
        stderr(&o)
    );
}
