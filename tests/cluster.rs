//! End-to-end tests of a real cluster: a coordinator and three custodians (k = 2) as separate
//! `quorumvm` processes on 127.0.0.1 (ports chosen by the OS), each with its own SQLite
//! database, driven through the CLI and the HTTP API as a user would.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumvm_core::eval::{decode_outputs, encode_values, eval_plain};
use quorumvm_wire::api::{EvalResponse, VersionInfo};
use quorumvm_wire::config::CoordinatorConfig;
use quorumvm_wire::signed::Signed;

use common::*;

const SQUARE: &str = "program square\nversion 1\npolicy budget 100000\npolicy rate 100000 per second\ninput x in -1000..1000\nadd t = x 7\nmul y = t t\noutput y\n";

/// Ten visible features against ten secret weights (a `dot` whose products each have a public
/// factor: local, no round), then a secret gain applied twice (two products of shared wires):
/// depth 2.
const MODEL: &str = "program model\nversion 1\npolicy budget 100000\npolicy rate 100000 per second\n\
input f1 in 0..1000\ninput f2 in 0..1000\ninput f3 in 0..1000\ninput f4 in 0..1000\ninput f5 in 0..1000\n\
input f6 in 0..1000\ninput f7 in 0..1000\ninput f8 in 0..1000\ninput f9 in 0..1000\ninput f10 in -1000..1000\n\
secret w1 in -10..10 scale 4\nsecret w2 in -10..10 scale 4\nsecret w3 in -10..10 scale 4\nsecret w4 in -10..10 scale 4\n\
secret w5 in -10..10 scale 4\nsecret w6 in -10..10 scale 4\nsecret w7 in -10..10 scale 4\nsecret w8 in -10..10 scale 4\n\
secret w9 in -10..10 scale 4\nsecret w10 in -10..10 scale 4\nsecret gain in -10..10 scale 4\n\
dot s = [w1 w2 w3 w4 w5 w6 w7 w8 w9 w10] [f1 f2 f3 f4 f5 f6 f7 f8 f9 f10]\nmul g = s gain\nmul y = g gain\noutput y\n";

/// A private salary times a secret rate: one round, the salary shared by the caller's client
/// and the answer sealed back to it.
const PRIVATE: &str = "program payroll\nversion 1\npolicy budget 100000\npolicy rate 100000 per second\n\
private salary in 0..100000000 scale 2\nsecret rate in 0..10 scale 4\nmul pay = salary rate\noutput pay\n";

/// Distinctive weights: any of these texts in a capture would be a leak.
const WEIGHTS: [&str; 11] = [
    "w1=3.1416",
    "w2=-2.7183",
    "w3=1.4142",
    "w4=-1.7321",
    "w5=0.5772",
    "w6=2.2361",
    "w7=-0.6931",
    "w8=1.6180",
    "w9=-4.6692",
    "w10=2.5029",
    "gain=0.0137",
];

fn model_inputs(seed: u64) -> Vec<(&'static str, String)> {
    const NAMES: [&str; 10] = ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10"];
    NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = (seed.wrapping_mul(2654435761).wrapping_add(i as u64 * 97)) % 1000;
            let v = if i == 9 { v as i64 - 500 } else { v as i64 };
            (*n, v.to_string())
        })
        .collect()
}

/// The model's value computed directly, in plain, from the same source and weights.
fn model_expected(inputs: &[(&str, String)]) -> String {
    let program = quorumvm_compiler::compile(MODEL, "model").expect("compiles");
    let m = &program.manifest;
    let given: Vec<(String, String)> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let secrets: Vec<(String, String)> = WEIGHTS
        .iter()
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let xs = encode_values("input", &m.inputs, &given).unwrap();
    let ss = encode_values("secret", &m.secrets, &secrets).unwrap();
    decode_outputs(m, &eval_plain(&program.circuit, &xs, &[], &ss))[0]
        .1
        .to_string()
}

fn install_model(c: &Cluster) -> String {
    let info = c.publish("model", MODEL, &WEIGHTS);
    for i in [1, 3] {
        ok(c.approve(&info.package_id, i));
    }
    info.package_id
}

#[test]
fn the_demo_runs_end_to_end() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .current_dir(repo())
        .args(["demo", "--work"])
        .arg(work.path())
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "f(3) = 100",
        "f(10) = 289",
        "f(0) = 49",
        "score = 453.276850",
        "score after the refresh: 453.276850 (the same)",
        "now at share epoch 1",
        "froze it there: the next evaluation ran on custodians [2, 3]",
        "nobody serves it",
        "approved the unfreeze: served again",
        "budget_exhausted",
        "rate_limited",
        "ACTIVE",
    ] {
        assert!(
            stdout.contains(line),
            "the demo does not show `{line}`:\n{stdout}"
        );
    }
}

#[test]
fn approvals_activate_at_k_and_versions_move_forward_only() {
    let c = Cluster::start();
    let key = c.identity("alice");
    let rt = runtime();
    let v1 = c.publish("square", SQUARE, &[]);
    assert_eq!(v1.state, quorumvm_wire::api::VersionState::Pending);

    // Operator keys are off the servers: whoever copies custodian 1's whole data directory
    // (keys, database, everything the server holds) approves nothing, whatever file is tried as
    // the key.
    let mut files = Vec::new();
    let mut dirs = vec![c.path("custodian-1")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    let pin = c.pin_args();
    for file in &files {
        let mut args = vec![
            "approve",
            &v1.package_id,
            "--key",
            file.to_str().unwrap(),
            "--coordinator",
            &c.coordinator_url,
        ];
        args.extend(pin.iter().map(String::as_str));
        let out = quorumvm(&args);
        assert!(!out.status.success(), "{} approved", file.display());
    }
    // Nor does the server start with an operator's key among its files.
    c.kill("custodian-1");
    let misplaced = c.path("custodian-1/signing.key");
    std::fs::copy(c.path("operators/custodian-1.key"), &misplaced).unwrap();
    let config = c.path("custodian-1.toml");
    let mut server = Command::new(common::BIN)
        .args(["custodian", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            server.kill().unwrap();
            panic!("the custodian runs with an operator key in its data directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success() && stderr.contains("operator's approval key"),
        "{stderr}"
    );
    std::fs::remove_file(&misplaced).unwrap();
    c.start_server("custodian-1");

    // Fewer than k approvals: pending, and evaluation says so (409). Each approval is made
    // with nothing but the operator's key and the coordinator's URL.
    ok(c.approve(&v1.package_id, 1));
    let (status, body) = rt.block_on(c.eval(&key, "square", &[("x", "3".into())]));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("pending")),
        "{body}"
    );

    // The same custodian again: refused, still pending.
    let dup = c.approve(&v1.package_id, 1);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("duplicate_approval"));

    // A forged approval (custodian 1's key in custodian 2's name) and an approval signed for
    // another package are refused with clear errors.
    let http = post_approval(
        &c,
        &v1.package_id,
        2,
        &sign_with(&c, 1, &v1.package_id, &v1.manifest),
    );
    assert_eq!(http.0, 400, "{}", http.1);
    assert!(
        http.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("forged")
    );
    let other = quorumvm_package::PackageId([7; 32]);
    let wrong = sign_with_id(&c, 2, &v1.package_id, other, &v1.manifest);
    let http = post_approval(&c, &v1.package_id, 2, &wrong);
    assert_eq!(http.0, 400, "{}", http.1);
    let (status, _) = rt.block_on(c.eval(&key, "square", &[("x", "3".into())]));
    assert_eq!(status, 409, "refused approvals must not count");

    // The second distinct approval activates it.
    let info: VersionInfo = serde_json::from_str(&ok(c.approve(&v1.package_id, 2))).unwrap();
    assert_eq!(info.state, quorumvm_wire::api::VersionState::Active);
    let answer = rt.block_on(c.eval_ready(&key, "square", &[("x", "3".into())]));
    // x is visible and the program has no secret: every custodian computes it locally.
    assert_eq!(
        (answer.outputs["y"].as_str(), answer.rounds, answer.version),
        ("100", 0, 1)
    );
    assert_eq!(answer.custodians, vec![1, 2, 3]);
    assert!(answer.inconsistent.is_empty());

    // Version 3 (a different function) takes the name once active ...
    let v3 = c.publish(
        "square3",
        &SQUARE
            .replace("version 1", "version 3")
            .replace("add t = x 7", "add t = x 8"),
        &[],
    );
    // ... and the same name and version with other bytes is refused.
    let clash = SQUARE.replace("add t = x 7", "add t = x 9");
    let src = c.path("clash.qvm");
    std::fs::write(&src, clash).unwrap();
    let w = c.path("clash.wasm");
    ok(quorumvm(&[
        "compile",
        src.to_str().unwrap(),
        "-o",
        w.to_str().unwrap(),
    ]));
    ok(quorumvm(&[
        "sign",
        w.to_str().unwrap(),
        "--key",
        c.path("publisher/publisher.key").to_str().unwrap(),
    ]));
    let publisher = c.path("publisher/publisher.key");
    let mut args = vec![
        "install",
        w.to_str().unwrap(),
        "--key",
        publisher.to_str().unwrap(),
        "--coordinator",
        &c.coordinator_url,
    ];
    let pin = c.pin_args();
    args.extend(pin.iter().map(String::as_str));
    let refused = quorumvm(&args);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("version_conflict"),
        "{refused:?}"
    );
    ok(c.approve(&v3.package_id, 2));
    // Until v3 is active, the name still serves v1.
    let a = rt.block_on(c.eval_ready(&key, "square", &[("x", "3".into())]));
    assert_eq!((a.outputs["y"].as_str(), a.version), ("100", 1));
    ok(c.approve(&v3.package_id, 3));
    let a = rt.block_on(c.eval_ready(&key, "square", &[("x", "3".into())]));
    assert_eq!((a.outputs["y"].as_str(), a.version), ("121", 3));
    // Version 3 retired version 1: it serves no more, not even by its package id.
    let (s, b) = rt.block_on(c.eval(&key, &v1.package_id, &[("x", "10".into())]));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (410, Some("retired")),
        "{b}"
    );
    // Version 2, approved later, never replaces version 3: it is retired at once.
    let v2 = c.publish("square2", &SQUARE.replace("version 1", "version 2"), &[]);
    ok(c.approve(&v2.package_id, 1));
    let info: VersionInfo = serde_json::from_str(&ok(c.approve(&v2.package_id, 3))).unwrap();
    assert_eq!(info.state, quorumvm_wire::api::VersionState::Retired);
    let a = rt.block_on(c.eval_ready(&key, "square", &[("x", "3".into())]));
    assert_eq!(a.version, 3);
    let (s, b) = rt.block_on(c.eval(&key, &v2.package_id, &[("x", "3".into())]));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (410, Some("retired")),
        "{b}"
    );

    // Errors are JSON with the right status.
    let (s, b) = rt.block_on(c.eval(&key, "nothing", &[("x", "1".into())]));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("unknown_program"))
    );
    let (s, b) = rt.block_on(c.eval(&key, "square", &[]));
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_input")));
    let (s, b) = rt.block_on(c.eval(&key, "square", &[("x", "5000".into())]));
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_input")));
    let (program, package) = rt.block_on(c.target("square"));
    let (s, b) = rt.block_on(c.send(
        "qvm_not_a_key",
        &key.sign(&program, &package, &[("x", "1".into())]),
    ));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    // `bearer` in any case is the Bearer scheme.
    let r = rt
        .block_on(
            c.http
                .post(format!("{}/v1/eval", c.coordinator_url))
                .header("authorization", format!("bEaReR {}", key.api_key))
                .json(&key.sign(&program, &package, &[("x", "1".into())]))
                .send(),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A JSON number with more digits than the input's scale is refused, never rounded.
    let body = key
        .sign(&program, &package, &[("x", "1".into())])
        .body
        .replace("\"x\":\"1\"", "\"x\":999.99999999999999999");
    assert!(body.contains("999.99999999999999999"), "{body}");
    let resigned = Signed {
        signature: hex::encode(
            key.key
                .sign_statement(quorumvm_package::Domain::Request, body.as_bytes()),
        ),
        body,
    };
    let (s, b) = rt.block_on(c.send(&key.api_key, &resigned));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_input")),
        "{b}"
    );
    // Errors of every route are JSON, 404 and 405 too.
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1/nothing", 404),
        (reqwest::Method::GET, "/v1/eval", 405),
        (reqwest::Method::GET, "/v1/packages/not-an-id", 404),
    ] {
        let r = rt
            .block_on(
                c.http
                    .request(method, format!("{}{path}", c.coordinator_url))
                    .send(),
            )
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: serde_json::Value = rt.block_on(r.json()).expect("a JSON error body");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }

    assert!(c.audit_verifies("coordinator/coordinator.db") > 10);
    for i in 1..=3 {
        c.audit_verifies(&format!("custodian-{i}/custodian.db"));
    }
}

/// Signs an approval of `package` with custodian `i`'s key.
fn sign_with(
    c: &Cluster,
    i: u32,
    package: &str,
    manifest: &quorumvm_core::circuit::Manifest,
) -> String {
    let id = quorumvm_package::PackageId(hex::decode(package).unwrap().try_into().unwrap());
    sign_with_id(c, i, package, id, manifest)
}

/// Custodian `i`'s approval of package `id` with `manifest` and the deal of `package`.
fn sign_with_id(
    c: &Cluster,
    i: u32,
    package: &str,
    id: quorumvm_package::PackageId,
    manifest: &quorumvm_core::circuit::Manifest,
) -> String {
    let text = std::fs::read_to_string(c.path(&format!("operators/custodian-{i}.key"))).unwrap();
    let key = quorumvm_package::SecretKey::from_file_text(&text).unwrap();
    let deal: Signed = runtime().block_on(c.get_json(&format!("/v1/packages/{package}/deal")));
    hex::encode(quorumvm_wire::approval::sign(
        &key,
        &quorumvm_wire::approval::Subject::Version {
            package: &id,
            manifest,
            deal: &deal.digest(),
        },
    ))
}

/// Posts an approval as `custodian` with `signature` (no CLI: a forger would not use it).
fn post_approval(
    c: &Cluster,
    package: &str,
    custodian: u32,
    signature: &str,
) -> (u16, serde_json::Value) {
    runtime().block_on(async {
        let r = c
            .http
            .post(format!(
                "{}/v1/packages/{package}/approvals",
                c.coordinator_url
            ))
            .json(&serde_json::json!({ "custodian": custodian, "signature": signature }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    })
}

/// `quorumvm dev` keeps its cluster up: a custodian killed with `kill -9` is reported, the
/// other servers keep running and serving, and it is started again (and serves again).
#[test]
fn quorumvm_dev_starts_a_killed_custodian_again() {
    let c = Cluster::init(|_, t| t);
    let out = c.path("dev.out");
    let mut dev = Command::new(BIN)
        .args(["dev", "--dir", c.dir.path().to_str().unwrap()])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let said = |text: &str| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(text)
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: {}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the cluster starts", &|| said("running; logs in"));
    // custodian 2's process, by its command line.
    let config = c.path("custodian-2.toml");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(config.to_str().unwrap()))
                .unwrap_or(false)
        })
        .expect("custodian 2 runs");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for("the death is reported", &|| said("custodian-2 exited"));
    assert!(said("the other servers keep running"));
    assert!(dev.try_wait().unwrap().is_none(), "quorumvm dev stopped");
    let health = |i: u32| {
        let rt = runtime();
        let (url, client) = c.custodian(i);
        rt.block_on(async {
            client
                .get(format!("{url}/v1/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    };
    assert!(health(1), "the others keep serving");
    wait_for("custodian 2 is started again", &|| {
        said("custodian-2 started again")
    });
    wait_for("custodian 2 answers again", &|| health(2));
    assert!(dev.try_wait().unwrap().is_none(), "quorumvm dev stopped");
    // Ctrl-C (SIGINT): everything stops.
    Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(said("cluster stopped (SIGINT)"));
}

/// A program whose policy watches for sweeps (freeze) and near-duplicate queries (throttle).
const WATCHED: &str = "program watched\nversion 1\npolicy budget 100000\npolicy rate 100000 per second\n\
policy watch sweep 8 freeze\npolicy watch near 50% throttle\n\
input x in 0..1000\ninput y in 0..1000\nadd s = x y\noutput s\n";

/// An extraction campaign, one identity sweeping `x` over its range while `y` stays fixed, trips
/// the sweep rule at the 8th query and is frozen (the coordinator, which sees every request,
/// fires first); another identity's ordinary queries of the same program trip nothing and stay
/// served; k operators unfreeze the campaigner.
#[test]
fn an_extraction_sweep_is_frozen_while_ordinary_traffic_is_served() {
    let c = Cluster::start();
    let alice = c.identity("alice");
    let mallory = c.identity("mallory");
    let rt = runtime();
    let v = c.publish("watched", WATCHED, &[]);
    for i in [1, 2] {
        ok(c.approve(&v.package_id, i));
    }
    let query = |who: &Caller, x: u32, y: u32| {
        let (status, body) = rt.block_on(c.eval(
            who,
            "watched",
            &[("x", x.to_string()), ("y", y.to_string())],
        ));
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        (status, code, body)
    };
    rt.block_on(c.eval_ready(&alice, "watched", &[("x", "1".into()), ("y", "2".into())]));
    // Ordinary traffic: scattered values, nothing repeated.
    let ordinary = |i: u32| ((i * 7919 + 13) % 1000, (i * 104_729 + 7) % 1000);
    for i in 0..40 {
        let (x, y) = ordinary(i);
        let (status, _, body) = query(&alice, x, y);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outputs"]["s"], format!("{}", x + y), "{body}");
    }
    // The campaign: x = 0, 25, 50, ... with y fixed.
    for step in 0..7 {
        let (status, _, body) = query(&mallory, step * 25, 500);
        assert_eq!(status, 200, "query {step}: {body}");
    }
    let (status, code, body) = query(&mallory, 7 * 25, 500);
    assert_eq!((status, code.as_str()), (403, "frozen"), "{body}");
    // Frozen as an identity: any query of hers is refused now, alice's are not.
    let (status, code, _) = query(&mallory, 3, 911);
    assert_eq!((status, code.as_str()), (403, "frozen"));
    let (x, y) = ordinary(41);
    assert_eq!(query(&alice, x, y).0, 200);
    // Audited, with the evidence, and counted.
    let fired = c.audit_entries("coordinator/coordinator.db", "anomaly.fired");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0]["identity"].as_str(), fired[0]["action"].as_str()),
        (Some("mallory"), Some("freeze"))
    );
    assert!(
        fired[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("`x` swept upward over 8 queries"),
        "{fired:?}"
    );
    let metrics = rt.block_on(async {
        c.http
            .get(format!("{}/metrics", c.coordinator_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("quorumvm_anomaly_firings_total 1"),
        "{metrics}"
    );
    // k operators lift it.
    let first: serde_json::Value =
        serde_json::from_str(&ok(c.as_operator(1, &["unfreeze", "--identity", "mallory"])))
            .unwrap();
    let at = first["unfreeze"]["time_ms"].to_string();
    ok(c.as_operator(2, &["unfreeze", "--identity", "mallory", "--at", &at]));
    assert_eq!(query(&mallory, 3, 911).0, 200);
}

/// `quorumvm freeze|unfreeze`, `quorumvm identity revoke` and `quorumvm retire`, run as their
/// parties would: a freeze takes effect at once at its party; only k operators unfreeze, revoke
/// or retire.
#[test]
fn freezes_revocation_and_retirement_through_the_cli() {
    let c = Cluster::start();
    let alice = c.identity("alice");
    let rt = runtime();
    let v1 = c.publish("square", SQUARE, &[]);
    for i in [1, 2] {
        ok(c.approve(&v1.package_id, i));
    }
    rt.block_on(c.eval_ready(&alice, "square", &[("x", "3".into())]));
    // As custodian i's operator (its key and the coordinator's URL).
    let governance = |args: &[&str], i: u32| -> serde_json::Value {
        serde_json::from_str(&ok(c.as_operator(i, args))).expect("json")
    };
    // A freeze at the coordinator, on its machine, with its config.
    let coordinator_freeze = |args: &[&str]| -> serde_json::Value {
        let config = c.path("coordinator.toml");
        let mut all = vec!["freeze"];
        all.extend(args);
        all.extend(["--json", "--config", config.to_str().unwrap()]);
        serde_json::from_str(&ok(quorumvm(&all))).expect("json")
    };
    // A freeze at custodian i, by its operator: signed with the operator's key, sent to it.
    let custodian_freeze = |args: &[&str], i: u32| -> serde_json::Value {
        let key = c.path(&format!("operators/custodian-{i}.key"));
        let (url, _) = c.custodian(i);
        let pin = c.custodian_pin(i).expect("a TLS cluster").to_hex();
        let mut all = vec!["freeze"];
        all.extend(args);
        all.extend([
            "--json",
            "--key",
            key.to_str().unwrap(),
            "--custodian",
            &url,
            "--pin",
            &pin,
        ]);
        serde_json::from_str(&ok(quorumvm(&all))).expect("json")
    };
    let eval = || rt.block_on(c.eval(&alice, "square", &[("x", "3".into())]));
    let code = |(status, body): (u16, serde_json::Value)| {
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    };
    // k operators' unfreeze: the first fixes the time, the second passes it with --at.
    let unfreeze = |target: &[&str], approvers: [u32; 2]| -> serde_json::Value {
        let first = governance(&[&["unfreeze"], target].concat(), approvers[0]);
        assert_eq!(first["lifted"], false, "{first}");
        let at = first["unfreeze"]["time_ms"].to_string();
        governance(
            &[&["unfreeze"], target, &["--at", &at]].concat(),
            approvers[1],
        )
    };

    // The coordinator's own freeze: refused at once; one operator cannot lift it, two do.
    let s = coordinator_freeze(&["--identity", "alice"]);
    assert_eq!(
        (s["at"].as_str(), s["frozen"].as_bool()),
        (Some("coordinator"), Some(true))
    );
    assert_eq!(code(eval()), (403, "frozen".into()));
    let first = governance(&["unfreeze", "--identity", "alice"], 1);
    assert_eq!(
        (first["approvals"].as_u64(), first["lifted"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(
        code(eval()),
        (403, "frozen".into()),
        "one operator lifts nothing"
    );
    let at = first["unfreeze"]["time_ms"].to_string();
    let lifted = governance(&["unfreeze", "--identity", "alice", "--at", &at], 3);
    assert_eq!(lifted["lifted"], true, "{lifted}");
    assert_eq!(lifted["taken_by"], serde_json::json!([1, 2, 3]));
    assert_eq!(eval().0, 200);

    // Custodian 1's operator freezes her at custodian 1, which refuses her sessions from the
    // next request on: the coordinator serves her without custodian 1.
    let s = custodian_freeze(&["--identity", "alice"], 1);
    assert_eq!(s["at"], serde_json::json!({ "custodian": 1 }));
    let (status, body) = eval();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["custodians"], serde_json::json!([2, 3]), "{body}");
    // Custodian 2's operator freezes the version: fewer than k custodians are willing, so
    // nobody serves her.
    custodian_freeze(&["--version", &v1.package_id], 2);
    assert_eq!(code(eval()), (403, "frozen".into()));
    unfreeze(&["--identity", "alice"], [2, 3]);
    let lifted = unfreeze(&["--version", &v1.package_id], [1, 3]);
    assert_eq!(lifted["taken_by"], serde_json::json!([1, 2, 3]), "{lifted}");
    let (status, body) = eval();
    assert_eq!(
        (status, &body["custodians"]),
        (200, &serde_json::json!([1, 2, 3]))
    );

    // One operator's revocation changes nothing; the second revokes her everywhere.
    let info = governance(&["identity", "revoke", "alice"], 1);
    assert_eq!(info["revoked"], false);
    assert_eq!(eval().0, 200);
    let info = governance(&["identity", "revoke", "alice"], 3);
    assert_eq!(
        (info["revoked"].as_bool(), &info["revocations"]),
        (Some(true), &serde_json::json!([1, 3]))
    );
    assert_eq!(code(eval()), (403, "identity_revoked".into()));

    // Retirement by k operators: the version is refused (410) by the coordinator.
    let bob = c.identity("bob");
    rt.block_on(c.eval_ready(&bob, "square", &[("x", "3".into())]));
    let info = governance(&["retire", &v1.package_id], 2);
    assert_eq!(info["state"], "active");
    let info = governance(&["retire", &v1.package_id], 3);
    assert_eq!(
        (info["state"].as_str(), &info["retirements"]),
        (Some("retired"), &serde_json::json!([2, 3]))
    );
    let (status, body) = rt.block_on(c.eval(&bob, &v1.package_id, &[("x", "3".into())]));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("retired")),
        "{body}"
    );
    // The custodians hold both decisions themselves.
    for i in 1..=3 {
        let (url, client) = c.custodian(i);
        let health: quorumvm_wire::api::CustodianHealth = rt
            .block_on(async {
                client
                    .get(format!("{url}/v1/health"))
                    .send()
                    .await?
                    .json()
                    .await
            })
            .expect("health");
        assert_eq!(
            (health.revocations, health.retirements),
            (1, 1),
            "custodian {i}"
        );
    }
    // A malformed package id is refused by the CLI with a clear error.
    let bad = c.as_operator(1, &["retire", "abc"]);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a package id"));
    c.audit_verifies("coordinator/coordinator.db");
}

#[test]
fn sixteen_clients_times_fifty_evaluations_are_all_correct() {
    let c = Cluster::start();
    let key = c.identity("load");
    let model = install_model(&c);
    let rt = runtime();
    let first = rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));
    assert_eq!(
        first.rounds, 2,
        "a local dot, then two multiplications on shares: depth 2"
    );
    let c = Arc::new(c);
    let wrong = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..16u64 {
            let (c, key, model) = (Arc::clone(&c), key.clone(), model.clone());
            tasks.spawn(async move {
                let mut wrong = Vec::new();
                for i in 0..50u64 {
                    let inputs = model_inputs(client * 1000 + i + 1);
                    let (status, body) = c.eval(&key, &model, &inputs).await;
                    let want = model_expected(&inputs);
                    if status != 200 || body["outputs"]["y"] != want.as_str() {
                        wrong.push(format!(
                            "client {client} call {i}: {status} {body} (want {want})"
                        ));
                    }
                }
                wrong
            });
        }
        let mut wrong = Vec::new();
        while let Some(r) = tasks.join_next().await {
            wrong.extend(r.unwrap());
        }
        wrong
    });
    assert!(
        wrong.is_empty(),
        "{} of 800 answers wrong or failed:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Where a recording proxy writes what it relays: the bytes towards its upstream server, and
/// the bytes back.
type Log = Arc<Mutex<Vec<u8>>>;

/// A TCP proxy to `upstream` that appends what flows towards it to `to_upstream` and what
/// flows back to `from_upstream`.
fn recording_proxy(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    to_upstream: Option<Log>,
    from_upstream: Option<Log>,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let (log_up, log_down) = (to_upstream.clone(), from_upstream.clone());
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = ir.read(&mut buf).await {
                        if n == 0 || ow.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if let Some(log) = &log_up {
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    }
                    let _ = ow.shutdown().await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = or.read(&mut buf).await {
                        if n == 0 || iw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if let Some(log) = &log_down {
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    }
                    let _ = iw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[test]
fn the_coordinator_receives_no_secret_and_no_triple_material() {
    let rt = runtime();
    let captured = Arc::new(Mutex::new(Vec::new()));
    // Everything sent to the coordinator (by callers, the publisher and the custodians) and
    // everything the custodians answer it goes through recording proxies.
    let front_door: Mutex<Option<SocketAddr>> = Mutex::default();
    // Plain HTTP, to read what the coordinator receives once TLS is off the wire.
    let mut c = Cluster::init_insecure(|dir, text| {
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, &text).unwrap();
        let mut config = CoordinatorConfig::load(&path).unwrap();
        // `load` resolved it against the directory; the file keeps it relative.
        config.data_dir = "coordinator".into();
        let real = config.listen;
        let front = recording_proxy(&rt, real, Some(Arc::clone(&captured)), None);
        for entry in &mut config.custodians {
            let addr: SocketAddr = entry.url.trim_start_matches("http://").parse().unwrap();
            let p = recording_proxy(&rt, addr, None, Some(Arc::clone(&captured)));
            entry.url = format!("http://{p}");
        }
        // Custodians reach the coordinator through the front proxy too.
        for i in 1..=3 {
            let path = dir.join(format!("custodian-{i}.toml"));
            let t = std::fs::read_to_string(&path).unwrap();
            let t = t.replace(
                &format!("coordinator_url = \"http://{real}\""),
                &format!("coordinator_url = \"http://{front}\""),
            );
            std::fs::write(&path, t).unwrap();
        }
        *front_door.lock().unwrap() = Some(front);
        config.to_toml()
    });
    let front = front_door.lock().unwrap().expect("the proxies are set up");
    c.start_all();
    c.coordinator_url = format!("http://{front}");
    let key = c.identity("observer");
    let model = install_model(&c);
    // Wait for the custodians to hold kits, snapshot every kit and every secret share they
    // hold, then evaluate.
    let first = rt.block_on(c.eval_ready(&key, &model, &model_inputs(1)));
    assert_eq!(first.outputs["y"], model_expected(&model_inputs(1)));
    let mut material: Vec<[u8; 16]> = Vec::new();
    for i in 1..=3 {
        material.extend(kit_material(&c, i));
        material.extend(secret_shares(&c, i, &model));
    }
    for n in 0..40 {
        let inputs = model_inputs(n + 100);
        let a = rt.block_on(c.eval_ready(&key, &model, &inputs));
        assert_eq!(a.outputs["y"], model_expected(&inputs));
    }
    // A private input, through `quorumvm eval` as a caller runs it: its client shares the
    // salary, seals a share to each custodian and opens the output shares sealed back to it.
    let payroll = c.publish("payroll", PRIVATE, &["rate=1.2345"]);
    for i in [2, 3] {
        ok(c.approve(&payroll.package_id, i));
    }
    let private_calls = [
        ("7654321.98", "9449260.484310"),
        ("1234987.65", "1524592.253925"),
    ];
    for (salary, pay) in private_calls {
        let answer = c.eval_cli(&key, "payroll", &[&format!("salary={salary}")]);
        assert_eq!(answer.outputs["pay"], pay, "{answer:?}");
        assert!(answer.sealed_outputs.len() >= 2, "{answer:?}");
    }
    let captured = captured.lock().unwrap().clone();
    assert!(
        captured.len() > 50_000,
        "the proxies saw the traffic ({} bytes)",
        captured.len()
    );
    let text = String::from_utf8_lossy(&captured).to_lowercase();
    // A control: the field elements the coordinator does receive, every custodian's answer
    // (its output share, the share's MAC, its key share, its check share, its digest), are in
    // the capture in the hex encoding searched for below, one per custodian per evaluation
    // (41 evaluations on 3 custodians).
    assert!(text.contains("/v1/eval"));
    let answer = quorumvm_core::mac::answer_len(1);
    let output_shares = text
        .split("\"plain\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|hex| quorumvm_wire::elements::from_hex(hex).is_ok_and(|v| v.len() == answer))
        .count();
    assert!(
        output_shares >= 41 * 3,
        "{output_shares} output shares captured"
    );
    for w in WEIGHTS {
        let (_, value) = w.split_once('=').unwrap();
        assert!(
            !text.contains(value),
            "the weight {value} reached the coordinator"
        );
    }
    // Neither the private inputs nor the outputs of their evaluations reached the coordinator,
    // in any spelling (decimal, raw integer at their scale).
    for (salary, pay) in private_calls {
        for needle in [salary, &salary.replace('.', ""), pay, &pay.replace('.', "")] {
            assert!(
                !text.contains(needle),
                "the private value {needle} reached the coordinator"
            );
        }
    }
    let mut checked = 0;
    for m in &material {
        let hex = hex::encode(m);
        assert!(
            !text.contains(&hex),
            "secret-share or triple material {hex} reached the coordinator"
        );
        assert!(
            !captured.windows(16).any(|w| w == m),
            "raw material reached the coordinator"
        );
        let decimal = u128::from_le_bytes(*m).to_string();
        assert!(decimal.len() < 20 || !text.contains(&decimal));
        checked += 1;
    }
    assert!(checked > 1000, "checked {checked} values");
}

/// Custodian `i`'s plaintext shares of the model's secrets (as dealt), opened here with its
/// key.
/// Every link of a cluster under load goes through a recording proxy: callers, the publisher
/// and the operators to the coordinator, the coordinator to each custodian, each custodian to
/// the coordinator and to its peers, both directions. What the wire carries is TLS records only:
/// no API key, no request, no secret, share or kit, no input or output value in clear.
#[test]
fn every_connection_is_tls_and_carries_nothing_in_clear() {
    let rt = runtime();
    let links: Arc<Mutex<BTreeMap<String, Log>>> = Arc::default();
    let front_door: Mutex<Option<SocketAddr>> = Mutex::default();
    let mut c = Cluster::init(|dir, text| {
        let tap = |name: String, upstream: SocketAddr| {
            let log = Log::default();
            links.lock().unwrap().insert(name, Arc::clone(&log));
            recording_proxy(&rt, upstream, Some(Arc::clone(&log)), Some(log))
        };
        let addr = |url: &str| -> SocketAddr { url.split_once("://").unwrap().1.parse().unwrap() };
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, &text).unwrap();
        let mut config = CoordinatorConfig::load(&path).unwrap();
        config.data_dir = "coordinator".into();
        let front = tap("to the coordinator".into(), config.listen);
        // One proxy per custodian, which everyone reaches it through.
        let proxies: Vec<String> = config
            .custodians
            .iter()
            .map(|e| {
                format!(
                    "https://{}",
                    tap(format!("to custodian {}", e.index), addr(&e.url))
                )
            })
            .collect();
        for (entry, proxy) in config.custodians.iter_mut().zip(&proxies) {
            entry.url = proxy.clone();
        }
        for i in 1..=3 {
            let path = dir.join(format!("custodian-{i}.toml"));
            let mut custodian = quorumvm_wire::config::CustodianConfig::load(&path).unwrap();
            custodian.data_dir = format!("custodian-{i}").into();
            custodian.coordinator_url = format!("https://{front}");
            custodian.custodians = config.custodians.clone();
            std::fs::write(&path, custodian.to_toml()).unwrap();
        }
        *front_door.lock().unwrap() = Some(front);
        config.to_toml()
    });
    c.start_all();
    let front = front_door.lock().unwrap().expect("the proxies are set up");
    c.coordinator_url = format!("https://{front}");
    let caller = c.identity("tls-observer-7781");
    let model = install_model(&c);
    let payroll = c.publish("payroll", PRIVATE, &["rate=1.2345"]);
    for i in [2, 3] {
        ok(c.approve(&payroll.package_id, i));
    }
    // Load: 8 clients at once, each 10 evaluations of the model with its secret weights.
    let first = rt.block_on(c.eval_ready(&caller, &model, &model_inputs(1)));
    let mut outputs = vec![first.outputs["y"].clone()];
    let c = Arc::new(c);
    // 8 clients × 10 evaluations at once, every answer checked; `round` varies the inputs.
    let load = |round: u64| {
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in 0..8u64 {
                let (c, caller, model) = (Arc::clone(&c), caller.clone(), model.clone());
                tasks.spawn(async move {
                    let mut answers = Vec::new();
                    for n in 0..10 {
                        let inputs = model_inputs(round * 1000 + client * 100 + n + 7);
                        let a = c.eval_ready(&caller, &model, &inputs).await;
                        assert_eq!(a.outputs["y"], model_expected(&inputs));
                        answers.push(a.outputs["y"].clone());
                    }
                    answers
                });
            }
            let mut outputs = Vec::new();
            while let Some(answers) = tasks.join_next().await {
                outputs.extend(answers.expect("a client"));
            }
            outputs
        })
    };
    // The handshakes all four servers accepted, read on connections kept open for it.
    let readers: Vec<(String, reqwest::Client)> =
        std::iter::once((c.coordinator_url.clone(), c.http.clone()))
            .chain((1..=3).map(|i| c.custodian(i)))
            .collect();
    let handshakes = || -> u64 {
        rt.block_on(async {
            let mut total = 0;
            for (url, client) in &readers {
                let text = client
                    .get(format!("{url}/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let line = text
                    .lines()
                    .find(|l| l.starts_with("quorumvm_tls_handshakes_total "))
                    .expect("the TLS counter");
                total += line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
            }
            total
        })
    };
    outputs.extend(load(1));
    // Once the pools hold a connection per concurrent call, the same load opens (almost) none:
    // the handshake is off the evaluation's path.
    let before = handshakes();
    outputs.extend(load(2));
    let opened = handshakes() - before;
    assert!(opened < 20, "{opened} TLS handshakes for 80 evaluations");
    // A private input through `quorumvm eval`, as a caller runs it.
    let (salary, pay) = ("7654321.98", "9449260.484310");
    let answer = c.eval_cli(&caller, "payroll", &[&format!("salary={salary}")]);
    assert_eq!(answer.outputs["pay"], pay);
    let mut material: std::collections::HashSet<Vec<u8>> = Default::default();
    for i in 1..=3 {
        let values = kit_material(&c, i)
            .into_iter()
            .chain(secret_shares(&c, i, &model));
        material.extend(values.map(|m| m.to_vec()));
    }
    let material_hex: std::collections::HashSet<String> =
        material.iter().map(hex::encode).collect();

    let links = links.lock().unwrap();
    let mut needles: Vec<String> = vec![
        caller.api_key.clone(),
        caller.name.clone(),
        "HTTP/1.1".into(),
        "/v1/".into(),
        "\"inputs\"".into(),
        salary.into(),
        salary.replace('.', ""),
        pay.into(),
        pay.replace('.', ""),
        "1.2345".into(),
    ];
    needles.extend(
        WEIGHTS
            .iter()
            .map(|w| w.split_once('=').unwrap().1.to_string()),
    );
    needles.extend(outputs.iter().filter(|o| o.len() >= 6).cloned());
    for (link, log) in links.iter() {
        let bytes = log.lock().unwrap().clone();
        assert!(
            bytes.len() > 2_000,
            "{link}: only {} bytes seen",
            bytes.len()
        );
        let text = String::from_utf8_lossy(&bytes);
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{link}: `{needle}` in clear"
            );
        }
        // Every 16-byte window against the set, and every run of 32 hex digits against the
        // set's hex: one pass each, as the capture holds megabytes of preprocessing.
        assert!(
            !bytes.windows(16).any(|w| material.contains(w)),
            "{link}: share or kit material in clear"
        );
        let hex_digits: Vec<char> = text.chars().collect();
        for run in hex_digits.split(|c| !c.is_ascii_hexdigit()) {
            for window in run.windows(32) {
                let window: String = window.iter().collect::<String>().to_lowercase();
                assert!(
                    !material_hex.contains(&window),
                    "{link}: share or kit material in hex"
                );
            }
        }
        // What the proxy relays is TLS: it opens with a handshake record (type 22, version 3.x).
        assert_eq!(bytes[..2], [0x16, 0x03], "{link}: not a TLS record");
    }
    assert_eq!(links.len(), 4, "a tap on every server");
}

/// The values of up to 120 of custodian `i`'s kits, but for each kit's last value, the share of
/// its MAC key: the receiver of the outputs (the coordinator) gets that with the answer to check
/// the outputs' MACs, once every share was sent; that key serves this one evaluation.
fn kit_material(c: &Cluster, i: u32) -> Vec<[u8; 16]> {
    let db = quorumvm_ledger::Ledger::open(c.path(&format!("custodian-{i}/custodian.db"))).unwrap();
    let mut stmt = db
        .connection()
        .prepare("SELECT material FROM kits")
        .unwrap();
    let kits: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!kits.is_empty(), "custodian {i} holds kits");
    let mut material = Vec::new();
    for kit in kits.iter().take(120) {
        let values: Vec<[u8; 16]> = kit
            .chunks_exact(16)
            .map(|c| <[u8; 16]>::try_from(c).unwrap())
            .collect();
        material.extend(&values[..values.len() - 1]);
    }
    material
}

fn secret_shares(c: &Cluster, i: u32, package: &str) -> Vec<[u8; 16]> {
    shares_at(c, i, package, 0)
}

/// Custodian `i`'s plaintext shares of the model's secrets at share epoch `epoch` (0: as dealt;
/// else as that refresh made them), in the order of the secrets' names, opened with its key.
fn shares_at(c: &Cluster, i: u32, package: &str, epoch: u64) -> Vec<[u8; 16]> {
    shares_of(c, (i, i), package, epoch)
}

/// [`shares_at`] of machine `custodian-machine`, whose shares are at point `i` (a rotation
/// may have moved it).
fn shares_of(c: &Cluster, (machine, i): (u32, u32), package: &str, epoch: u64) -> Vec<[u8; 16]> {
    let key_text =
        std::fs::read_to_string(c.path(&format!("custodian-{machine}/sealing.key"))).unwrap();
    let key = quorumvm_sealing::CustodianSecretKey::from_file_text(&key_text).unwrap();
    let db = quorumvm_ledger::Ledger::open(c.path(&format!("custodian-{machine}/custodian.db")))
        .unwrap();
    let query = if epoch == 0 {
        "SELECT secret, sealed FROM sealed_shares WHERE package_id = ?1 ORDER BY secret"
    } else {
        "SELECT secret, sealed FROM refreshed_shares WHERE package_id = ?1 ORDER BY secret"
    };
    let mut stmt = db.connection().prepare(query).unwrap();
    let rows: Vec<(String, Vec<u8>)> = stmt
        .query_map([package], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.len(),
        WEIGHTS.len(),
        "custodian {i}'s shares at epoch {epoch}"
    );
    let id = quorumvm_package::PackageId(hex::decode(package).unwrap().try_into().unwrap());
    rows.iter()
        .map(|(secret, sealed)| {
            let binding = quorumvm_sealing::ShareBinding {
                package: id,
                custodian: i,
                secret,
                epoch,
            };
            let share = quorumvm_sealing::open_share(
                &key,
                &binding,
                &quorumvm_sealing::SealedShare::from_bytes(sealed).unwrap(),
            )
            .unwrap();
            share.y.to_le_bytes()
        })
        .collect()
}

/// `clients` callers × `calls` evaluations of the model, checked against the plain value;
/// request ids of correct answers and descriptions of the rest.
async fn load(
    c: Arc<Cluster>,
    key: Caller,
    model: String,
    clients: u64,
    calls: u64,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (c, key, model) = (Arc::clone(&c), key.clone(), model.clone());
        tasks.spawn(async move {
            let (mut good, mut bad) = (Vec::new(), Vec::new());
            for i in 0..calls {
                let inputs = model_inputs(seed + client * 1000 + i);
                let (status, body) = c.eval(&key, &model, &inputs).await;
                if status == 200 && body["outputs"]["y"] == model_expected(&inputs).as_str() {
                    good.push(body["request_id"].as_str().unwrap().to_string());
                } else {
                    bad.push(format!("{status} {body}"));
                }
            }
            (good, bad)
        });
    }
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (g, b) = r.unwrap();
        good.extend(g);
        bad.extend(b);
    }
    (good, bad)
}

/// Asserts that evaluations were accepted both before and after the coordinator certified the
/// last refresh or rotation (`reshare.attested` in its audit): the load ran across the switch.
fn load_on_both_sides_of_the_switch(c: &Cluster) {
    let db = quorumvm_ledger::Ledger::open(c.path("coordinator/coordinator.db")).unwrap();
    let kinds: Vec<String> = db
        .audit_entries(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let switch = kinds.iter().rposition(|k| k == "reshare.attested").unwrap();
    let accepted = |range: &[String]| range.iter().filter(|k| *k == "eval.accepted").count();
    let (before, after) = (accepted(&kinds[..switch]), accepted(&kinds[switch..]));
    eprintln!("evaluations accepted before the switch: {before}, after: {after}");
    assert!(before > 1 && after > 0, "before {before}, after {after}");
}

#[test]
fn custodians_die_and_everything_restarts_intact() {
    let c = Arc::new(Cluster::start());
    let key = c.identity("survivor");
    let model = install_model(&c);
    let rt = runtime();
    rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));

    // SIGKILL custodian 3 while 4 clients are evaluating: every evaluation still succeeds
    // (the ones it was in are retried on the two left).
    let (mut good, bad) = rt.block_on(async {
        let running = tokio::spawn(load(
            Arc::clone(&c),
            key.clone(),
            model.clone(),
            4,
            60,
            10_000,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill("custodian-3");
        running.await.unwrap()
    });
    assert!(bad.is_empty(), "while custodian 3 died: {bad:?}");
    let t = Instant::now();
    let (more, bad) = rt.block_on(load(
        Arc::clone(&c),
        key.clone(),
        model.clone(),
        4,
        40,
        20_000,
    ));
    assert!(bad.is_empty(), "with k = 2 custodians left: {bad:?}");
    eprintln!(
        "160 evaluations with custodian 3 dead took {:?}",
        t.elapsed()
    );
    good.extend(more);
    assert_eq!(good.len(), 400);

    // Two dead: a clear 503, at once, and nothing charged.
    c.kill("custodian-2");
    std::thread::sleep(Duration::from_millis(600));
    let t = Instant::now();
    let (status, body) = rt.block_on(c.eval(&key, &model, &model_inputs(5)));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("too_few_custodians")),
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a dead quorum is reported quickly"
    );

    // kill -9 the coordinator too, then restart all three: the state is all there.
    c.kill("coordinator");
    c.start_server("custodian-2");
    c.start_server("custodian-3");
    c.start_server("coordinator");
    // The first request, sent the moment the coordinator accepts connections, waits for its
    // first health checks instead of finding no custodian live.
    let (status, body) = rt.block_on(c.eval(&key, &model, &model_inputs(6)));
    assert_ne!(
        body["error"]["code"].as_str(),
        Some("too_few_custodians"),
        "{status} {body}"
    );
    let after = if status == 200 {
        serde_json::from_value::<EvalResponse>(body).unwrap()
    } else {
        rt.block_on(c.eval_ready(&key, &model, &model_inputs(6)))
    };
    assert_eq!(after.outputs["y"], model_expected(&model_inputs(6)));
    // The budget counts every accepted evaluation: the first, the 400 under load, this one.
    assert_eq!(after.remaining_budget, 100_000 - (1 + 400 + 1));
    assert!(c.audit_verifies("coordinator/coordinator.db") > 400);
    for i in 1..=3 {
        assert!(c.audit_verifies(&format!("custodian-{i}/custodian.db")) > 0);
    }
    // Each custodian charged its own counter once per request, retries or not: custodian 1,
    // in every quorum, exactly as the coordinator did; the others no more.
    let spent = |db: &str| -> i64 {
        quorumvm_ledger::Ledger::open(c.path(db))
            .unwrap()
            .connection()
            .query_row(
                "SELECT spent FROM budget_spent WHERE identity = 'survivor' AND program = 'model'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let coordinator_spent = spent("coordinator/coordinator.db");
    assert_eq!(coordinator_spent, 1 + 400 + 1);
    assert_eq!(spent("custodian-1/custodian.db"), coordinator_spent);
    for i in [2, 3] {
        assert!(spent(&format!("custodian-{i}/custodian.db")) <= coordinator_spent);
    }
    // Every evaluation that returned 200 is in the coordinator's audit log.
    let db = quorumvm_ledger::Ledger::open(c.path("coordinator/coordinator.db")).unwrap();
    let mut logged = std::collections::HashSet::new();
    let mut after_seq = 0;
    loop {
        let batch = db.audit_entries(after_seq, 1000).unwrap();
        let Some(last) = batch.last() else { break };
        after_seq = last.seq;
        for e in batch.iter().filter(|e| e.kind == "eval.accepted") {
            let d: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            logged.insert(d["request"].as_str().unwrap().to_string());
        }
    }
    for id in &good {
        assert!(
            logged.contains(id),
            "request {id} returned 200 but is not in the audit log"
        );
    }
}

/// The attacker holds one custodian of the 2-of-3 cluster (k − 1 = 1), which lies on purpose
/// in every session ([`quorumvm_server::Lie`], taken from `QUORUMVM_LIE` by the test build):
/// under 8 clients, no answer is wrong; every one is the right value or a JSON error. Where the
/// checks prove the liar (its answers, or the quorums it sat in, fail their MACs while others
/// pass), the coordinator names it in its audit, leaves it out, and serves again.
#[test]
fn a_lying_custodian_never_makes_an_answer_wrong() {
    let rt = runtime();
    for (lie, evaluations) in [
        ("output-share", 1000),
        ("opening", 1000),
        ("triple-c", 200),
        ("replay", 200),
    ] {
        let c = Arc::new(Cluster::init(|_, t| t));
        c.start_server("coordinator");
        c.start_server("custodian-1");
        c.start_server("custodian-2");
        c.start_server_with("custodian-3", &[("QUORUMVM_LIE", lie)]);
        let key = c.identity("victim");
        let model = install_model(&c);
        // The first kits: every evaluation is refused with 503 until they are stored.
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.eval(&key, &model, &model_inputs(0)).await.0 == 503 {
                assert!(
                    Instant::now() < deadline,
                    "no kits:\n{}",
                    c.log("coordinator")
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let clients = 8;
        let (served, refused, wrong) = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in 0..clients {
                let (c, key, model) = (Arc::clone(&c), key.clone(), model.clone());
                tasks.spawn(async move {
                    let (mut served, mut refused, mut wrong) = (0, 0, Vec::new());
                    for i in 0..evaluations / clients {
                        let inputs = model_inputs(client * 10_000 + i + 1);
                        let (status, body) = c.eval(&key, &model, &inputs).await;
                        let want = model_expected(&inputs);
                        if status == 200 && body["outputs"]["y"] == want.as_str() {
                            served += 1;
                        } else if status != 200 && body["error"]["code"].is_string() {
                            if refused == 0 && std::env::var("QUORUMVM_TEST_VERBOSE").is_ok() {
                                eprintln!("{status} {body}");
                            }
                            refused += 1;
                        } else {
                            wrong.push(format!("{status} {body} (want {want})"));
                        }
                    }
                    (served, refused, wrong)
                });
            }
            let (mut served, mut refused, mut wrong) = (0, 0, Vec::new());
            while let Some(r) = tasks.join_next().await {
                let (s, r, w) = r.unwrap();
                served += s;
                refused += r;
                wrong.extend(w);
            }
            (served, refused, wrong)
        });
        assert!(
            wrong.is_empty(),
            "{lie}: {} wrong answers:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        assert_eq!(served + refused, evaluations, "{lie}");
        eprintln!("{lie}: {served} served, {refused} refused, 0 wrong");
        // Every one of these lies is proven, in the quorums of k the coordinator then tries:
        // the liar is named, left out, and the rest of the load is served by 1 and 2.
        let named = c.audit_entries("coordinator/coordinator.db", "custodian.suspected");
        assert_eq!(named.len(), 1, "{lie}: {named:?}");
        assert_eq!(named[0]["custodian"], 3, "{lie}: {}", named[0]);
        assert!(
            served >= evaluations * 9 / 10,
            "{lie}: only {served} of {evaluations} served once the liar was left out"
        );
        eprintln!("{lie}: {served} served, {refused} refused, 0 wrong; custodian 3 named");
        if lie == "output-share" {
            clear_the_suspect(&c, &rt);
        }
        c.audit_verifies("coordinator/coordinator.db");
    }
}

/// The coordinator's operator clears custodian 3: `/metrics` shows it suspect until then, a
/// clearance signed with another key is refused, the operator's own is audited and puts it
/// back, and clearing again changes nothing.
fn clear_the_suspect(c: &Cluster, rt: &tokio::runtime::Runtime) {
    let suspect = || {
        let text = rt.block_on(async {
            let url = format!("{}/metrics", c.coordinator_url);
            c.http.get(url).send().await.unwrap().text().await.unwrap()
        });
        text.contains("quorumvm_custodian_suspect{custodian=\"3\"} 1")
    };
    assert!(suspect());
    let forged = quorumvm_wire::clearance::Clearance {
        custodian: 3,
        time_ms: quorumvm_wire::now_ms(),
    }
    .sign(&quorumvm_package::SecretKey::generate());
    let (status, body) = rt.block_on(async {
        let url = format!("{}/v1/custodians/clearances", c.coordinator_url);
        let r = c.http.post(url).json(&forged).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 403, "{body}");
    assert!(suspect());
    let config = c.path("coordinator.toml");
    let clear = || {
        let out = ok(quorumvm(&[
            "clear-suspect",
            "3",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ]));
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["cleared"] == true
    };
    assert!(clear());
    assert!(!suspect());
    let cleared = c.audit_entries("coordinator/coordinator.db", "custodian.cleared");
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0]["custodian"], 3);
    assert!(!clear(), "nothing left to clear");
}

/// A custodian that shifts what it reshares in preprocessing (the offset the semi-honest
/// protocol could not see) makes every batch fail its check: no kit is stored, the coordinator
/// audits each refused batch, and evaluations are refused (503, no kits), never answered.
#[test]
fn a_custodian_lying_in_preprocessing_spoils_no_kit() {
    let c = Cluster::init(|_, t| t);
    c.start_server("coordinator");
    c.start_server("custodian-1");
    c.start_server("custodian-2");
    c.start_server_with("custodian-3", &[("QUORUMVM_LIE", "reshare")]);
    let key = c.identity("victim");
    let model = install_model(&c);
    let refused = || c.audit_entries("coordinator/coordinator.db", "preprocess.refused");
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused().is_empty() {
        assert!(Instant::now() < deadline, "{}", c.log("coordinator"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = refused()[0]["report"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(report.contains("the batch fails its check"), "{report}");
    // Each request waits for a kit (the pool is refilling, so one may come) before it is
    // refused: a few show it as well as many.
    let rt = runtime();
    for i in 0..3 {
        let (status, body) = rt.block_on(c.eval(&key, &model, &model_inputs(i)));
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "no_preprocessing", "{body}");
    }
}

/// Points of one secret, by custodian, from shares read with [`shares_at`].
fn points(shares: &[(u32, &Vec<[u8; 16]>)], secret: usize) -> Vec<quorumvm_core::shamir::Share> {
    shares
        .iter()
        .map(|(x, s)| quorumvm_core::shamir::Share {
            x: *x,
            y: quorumvm_core::field::Fp::from_le_bytes(s[secret]).unwrap(),
        })
        .collect()
}

/// `quorumvm reshare` while 8 clients evaluate: no evaluation is lost and every answer is
/// right; every custodian moves to epoch 1 with new shares of the same secrets; an old share
/// with a new one opens nothing (and for every candidate secret there is a refresh that
/// explains the pair); the publisher's ciphertexts are gone from every server.
#[test]
fn a_reshare_under_load_loses_no_evaluation_and_old_shares_are_useless_with_new() {
    use quorumvm_core::field::Fp;
    use quorumvm_core::shamir::{Threshold, complete_with_secret, eval_poly, reconstruct};

    let c = Arc::new(Cluster::start());
    let key = c.identity("steady");
    let model = install_model(&c);
    let rt = runtime();
    rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));
    let old: Vec<Vec<[u8; 16]>> = (1..=3).map(|i| secret_shares(&c, i, &model)).collect();

    let config = c.path("coordinator.toml");
    let (good, bad, reshared) = rt.block_on(async {
        let running = tokio::spawn(load(
            Arc::clone(&c),
            key.clone(),
            model.clone(),
            8,
            60,
            40_000,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reshared = tokio::task::spawn_blocking(move || {
            quorumvm(&["reshare", "--config", config.to_str().unwrap(), "--json"])
        })
        .await
        .unwrap();
        let (good, bad) = running.await.unwrap();
        (good, bad, reshared)
    });
    let report: quorumvm_wire::api::ReshareReport = serde_json::from_str(&ok(reshared)).unwrap();
    eprintln!(
        "reshare of {} secrets under 8 clients: {} ms",
        report.secrets, report.ms
    );
    assert_eq!(
        (report.epoch, &report.committed[..], report.secrets),
        (1, &[1u32, 2, 3][..], WEIGHTS.len() as u64)
    );
    assert!(bad.is_empty(), "during the reshare: {bad:?}");
    assert_eq!(good.len(), 480);
    // The load was running on both sides of the switch to the new epoch.
    load_on_both_sides_of_the_switch(&c);
    let after = rt.block_on(c.eval_ready(&key, &model, &model_inputs(7)));
    assert_eq!(after.outputs["y"], model_expected(&model_inputs(7)));

    let new: Vec<Vec<[u8; 16]>> = (1..=3).map(|i| shares_at(&c, i, &model, 1)).collect();
    let t = Threshold::new(2, 3).unwrap();
    for s in 0..WEIGHTS.len() {
        let secret = reconstruct(&points(&[(1, &old[0]), (2, &old[1])], s), t).unwrap();
        for x in 0..3 {
            assert_ne!(
                old[x][s],
                new[x][s],
                "custodian {}'s share unchanged",
                x + 1
            );
        }
        // Any k new shares open the same secret...
        for pair in [[1u32, 2], [2, 3], [1, 3]] {
            let (a, b) = (pair[0], pair[1]);
            let p = points(&[(a, &new[a as usize - 1]), (b, &new[b as usize - 1])], s);
            assert_eq!(reconstruct(&p, t).unwrap(), secret);
        }
        // ...while custodian 1's old share with custodian 2's new one opens something else,
        // and every candidate is as consistent with the pair as the secret.
        let mixed = points(&[(1, &old[0]), (2, &new[1])], s);
        assert_ne!(reconstruct(&mixed, t).unwrap(), secret);
        for candidate in [secret, Fp::ZERO, Fp::from(1_000_003u64)] {
            let f = complete_with_secret(&mixed[..1], candidate).unwrap();
            let g = complete_with_secret(&mixed[1..], candidate).unwrap();
            let refresh: Vec<Fp> = g.iter().zip(&f).map(|(a, b)| *a - *b).collect();
            assert_eq!(eval_poly(&refresh, Fp::ZERO), Fp::ZERO);
        }
    }
    let rows = |db: &str, table: &str| -> i64 {
        quorumvm_ledger::Ledger::open(c.path(db))
            .unwrap()
            .connection()
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE package_id = ?1"),
                [&model],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(rows("coordinator/coordinator.db", "sealed_shares"), 0);
    for i in 1..=3 {
        assert_eq!(
            rows(&format!("custodian-{i}/custodian.db"), "sealed_shares"),
            0
        );
        let refreshed = c.audit_entries(&format!("custodian-{i}/custodian.db"), "shares.refreshed");
        assert_eq!(refreshed.len(), 1);
        assert_eq!(refreshed[0]["epoch"], 1);
    }
    assert_eq!(
        c.audit_entries("coordinator/coordinator.db", "reshare.attested")
            .len(),
        1
    );
}

/// The dev cluster with custodian 3 lying whenever it deals in a refresh or a rotation
/// (`QUORUMVM_LIE=refresh`), serving the model to an approved caller.
fn serving_with_a_dealer_that_lies() -> (Cluster, Caller, String, tokio::runtime::Runtime) {
    let c = Cluster::init(|_, text| text);
    for name in ["coordinator", "custodian-1", "custodian-2"] {
        c.start_server(name);
    }
    c.start_server_with("custodian-3", &[("QUORUMVM_LIE", "refresh")]);
    let key = c.identity("careful");
    let model = install_model(&c);
    let rt = runtime();
    rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));
    (c, key, model, rt)
}

/// A custodian that lies in the refresh (it deals a sharing of one, not of zero, which would
/// change a secret) is caught by every other: the refresh fails with a clear error, every
/// custodian stays at epoch 0, and the cluster serves the right answers. With the liar down, a
/// refresh is refused saying which custodian is missing.
#[test]
fn a_custodian_lying_in_a_reshare_changes_nothing() {
    let (c, key, model, rt) = serving_with_a_dealer_that_lies();
    let out = quorumvm(&[
        "reshare",
        "--config",
        c.path("coordinator.toml").to_str().unwrap(),
        "--json",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reshare_failed") && stderr.contains("stays at epoch 0"),
        "{stderr}"
    );
    for i in 1..=3 {
        let db = format!("custodian-{i}/custodian.db");
        assert!(c.audit_entries(&db, "shares.refreshed").is_empty());
    }
    assert_eq!(
        c.audit_entries("coordinator/coordinator.db", "reshare.failed")
            .len(),
        1
    );
    for seed in 1..=20 {
        let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
    // With a custodian down, a refresh is refused saying which.
    c.kill("custodian-3");
    std::thread::sleep(Duration::from_millis(700));
    let out = quorumvm(&[
        "reshare",
        "--config",
        c.path("coordinator.toml").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("too_few_custodians") && stderr.contains("custodian 3 is not answering"),
        "{stderr}"
    );
}

/// `reshare_interval_s` in the coordinator's config refreshes the shares on its own: the epoch
/// moves while the answers stay right.
#[test]
fn scheduled_reshares_move_the_epoch() {
    let c = Cluster::init(|_, text| format!("reshare_interval_s = 1\n{text}"));
    c.start_all();
    let key = c.identity("patient");
    let model = install_model(&c);
    let rt = runtime();
    rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .audit_entries("coordinator/coordinator.db", "reshare.attested")
        .len()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no two scheduled refreshes in 60 s:\n{}",
            c.log("coordinator")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for seed in 1..=5 {
        let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
}

/// An impostor at custodian 3's address (its data and config, a TLS key nobody else pins) is
/// refused by every other party: the coordinator does not count it live and evaluations run on
/// custodians 1 and 2; its certificate, presented as a client, is refused by the coordinator and
/// by custodians 1 and 2, which admit the genuine key. A custodian whose own key is not the one
/// its config pins does not start.
#[test]
fn a_server_with_an_unpinned_key_is_refused_by_every_other() {
    use quorumvm_server::tls::Identity;
    let c = Cluster::start();
    let alice = c.identity("alice");
    let v1 = c.publish("square", SQUARE, &[]);
    for i in [1, 2] {
        ok(c.approve(&v1.package_id, i));
    }
    let rt = runtime();
    let x = [("x", "3".to_string())];
    assert_eq!(
        rt.block_on(c.eval_ready(&alice, "square", &x)).outputs["y"],
        "100"
    );

    // The genuine key, kept aside; custodian 3's data directory gets a new one.
    c.kill("custodian-3");
    let genuine = c.path("genuine");
    std::fs::create_dir_all(&genuine).unwrap();
    std::fs::rename(c.path("custodian-3/tls.key"), genuine.join("tls.key")).unwrap();
    let impostor_pin = Identity::init(&c.path("custodian-3")).unwrap();
    // Its own config still pins the genuine key: it refuses to start.
    let refused = Command::new(common::BIN)
        .args(["custodian", "--config"])
        .arg(c.path("custodian-3.toml"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("but the config pins"),
        "{refused:?}"
    );
    // The impostor's own config pins its key; everyone else's still pins the genuine one.
    let path = c.path("custodian-3.toml");
    let mut own = c.custodian_config(3);
    own.data_dir = "custodian-3".into();
    for entry in own.custodians.iter_mut().filter(|e| e.index == 3) {
        entry.tls_fingerprint = Some(impostor_pin);
    }
    std::fs::write(&path, own.to_toml()).unwrap();
    c.start_server("custodian-3");
    std::thread::sleep(Duration::from_secs(2));

    // As a server: the coordinator reaches it, refuses its certificate, and serves without it.
    let cluster: quorumvm_wire::api::ClusterInfo = rt.block_on(async {
        let url = format!("{}/v1/cluster", c.coordinator_url);
        c.http.get(url).send().await.unwrap().json().await.unwrap()
    });
    let live: Vec<(u32, bool)> = cluster
        .custodians
        .iter()
        .map(|m| (m.index, m.live))
        .collect();
    assert_eq!(live, [(1, true), (2, true), (3, false)]);
    assert!(
        c.log("custodian-3").contains("TLS handshake refused"),
        "the coordinator hung up on it:\n{}",
        c.log("custodian-3")
    );
    let a = rt.block_on(c.eval_ready(&alice, "square", &x));
    assert_eq!((a.outputs["y"].as_str(), a.custodians), ("100", vec![1, 2]));

    // As a client: each other party refuses the impostor's certificate, admits the genuine one.
    let impostor = Identity::load(&c.path("custodian-3"), "impostor").unwrap();
    let genuine = Identity::load(&genuine, "quorumvm-custodian-3").unwrap();
    let coordinator_pin = c.coordinator_pin.expect("a TLS cluster");
    let mut others = vec![(
        "coordinator".to_string(),
        c.coordinator_url.clone(),
        coordinator_pin,
    )];
    for i in [1, 2] {
        let (url, _) = c.custodian(i);
        let pin = c.custodian_pin(i).expect("a TLS cluster");
        others.push((format!("custodian {i}"), url, pin));
    }
    let health = |identity: &Identity, url: &str, pin| {
        let dial = quorumvm_server::tls::TlsDial::new(identity, [(url, pin)]).unwrap();
        let http = quorumvm_server::Env::system()
            .with_dial(Arc::new(dial))
            .http();
        rt.block_on(http.get(format!("{url}/v1/health")).send())
            .map(|reply| reply.status.as_u16())
    };
    for (name, url, pin) in &others {
        assert_eq!(
            health(&genuine, url, *pin).ok(),
            Some(200),
            "{name} admits the genuine key"
        );
        let refused = health(&impostor, url, *pin);
        assert!(
            refused.is_err(),
            "{name} admitted the impostor: {refused:?}"
        );
    }
    // Without a certificate, a client reaches a custodian's public routes but not the parties'.
    let (url, anonymous) = c.custodian(1);
    rt.block_on(async {
        let health = anonymous
            .get(format!("{url}/v1/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        for route in ["/v1/orders", "/v1/sessions", "/v1/rounds"] {
            let r = anonymous
                .post(format!("{url}{route}"))
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (403, Some("not_a_party")),
                "{route}"
            );
        }
    });
}

/// One evaluation of `program` (package `package`) at the coordinator replica at `url`; `None`
/// when the replica does not answer at all (killed).
async fn eval_at(
    c: &Cluster,
    url: &str,
    caller: &Caller,
    (program, package): (&str, &str),
    inputs: &[(&str, String)],
) -> Option<(String, u16, serde_json::Value)> {
    let request = caller.sign(program, package, inputs);
    let id =
        serde_json::from_str::<serde_json::Value>(&request.body).expect("a request")["request_id"]
            .as_str()
            .expect("an id")
            .to_string();
    let r = c
        .http
        .post(format!("{url}/v1/eval"))
        .bearer_auth(&caller.api_key)
        .json(&request)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((id, status, r.json().await.ok()?))
}

/// Two replicas of the coordinator ("a", the one the custodians call, and "b") share one
/// PostgreSQL database, a real server this test starts. 16 clients × 50 evaluations of the
/// model are spread over both, and replica b is killed with SIGKILL mid-load (its clients go on
/// at a). The identity's budget is 700 evaluations, fewer than are asked for.
///
/// Every answer is correct; every answered evaluation is on record (`eval.accepted`, in the
/// shared database); exactly 700 are admitted and 700 units spent, however the two replicas
/// interleaved; no kit is handed out twice; the audit log is one chain that verifies; b
/// restarted serves again and finds the budget spent.
#[test]
fn two_coordinator_replicas_on_one_postgres_serve_one_cluster() {
    let pg = quorumvm_ledger::postgres::testing::Server::start();
    let db = pg.url();
    let c =
        Cluster::init(|_, text| format!("{text}\n[database]\nurl = \"{db}\"\nreplica = \"a\"\n"));
    let mut b = CoordinatorConfig::load(&c.path("coordinator.toml")).expect("config");
    b.listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    // b is named at start (`--replica b`), a by its config. b looks at the shared log only
    // once a minute: what it must know of a's changes in this test, it learns when a request
    // names what it does not know yet.
    let database = b.database.as_mut().expect("a database");
    database.replica = None;
    database.poll_ms = Some(60_000);
    std::fs::write(c.path("coordinator-b.toml"), b.to_toml()).expect("b's config");
    c.start_all();
    c.start_replica("coordinator-b", "b");
    let urls = [c.coordinator_url.clone(), format!("https://{}", b.listen)];

    let key = c.identity("replicated");
    let source = MODEL.replace("policy budget 100000", "policy budget 700");
    let info = c.publish("model", &source, &WEIGHTS);
    // One operator approves at a, the other at b at once (b learns of the version from the
    // database before answering): the version activates at k, counted across both.
    ok(c.approve(&info.package_id, 1));
    let at_b = |i: u32| {
        let mut args = vec![
            "approve".to_string(),
            info.package_id.clone(),
            "--json".into(),
        ];
        args.extend(c.operator(i));
        let at = args
            .iter()
            .position(|a| a == "--coordinator")
            .expect("a URL")
            + 1;
        args[at] = urls[1].clone();
        quorumvm(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let approved: VersionInfo = serde_json::from_str(&ok(at_b(3))).expect("version info");
    assert_eq!(approved.state, quorumvm_wire::api::VersionState::Active);
    let target = ("model".to_string(), info.package_id.clone());
    let rt = runtime();
    let c = Arc::new(c);
    // Replica b learns of the version and the identity from the database, and orders kits of
    // its own: both serve.
    let mut answered = Vec::new();
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let inputs = model_inputs(answered.len() as u64);
            let (id, status, body) = rt
                .block_on(eval_at(&c, url, &key, (&target.0, &target.1), &inputs))
                .expect("both replicas answer");
            if status == 200 {
                assert_eq!(body["outputs"]["y"], model_expected(&inputs).as_str());
                answered.push(id);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} does not serve: {status} {body}\n{}",
                c.log("coordinator-b")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (results, wrong) = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..16u64 {
            let (c, key, target, urls, done) = (
                Arc::clone(&c),
                key.clone(),
                target.clone(),
                urls.clone(),
                Arc::clone(&done),
            );
            tasks.spawn(async move {
                let (mut results, mut wrong) = (Vec::new(), Vec::new());
                let mut at = (client % 2) as usize;
                for i in 0..50u64 {
                    let inputs = model_inputs(client * 1000 + i + 7);
                    let target = (target.0.as_str(), target.1.as_str());
                    let answer = match eval_at(&c, &urls[at], &key, target, &inputs).await {
                        Some(answer) => answer,
                        // Replica b is gone: its clients go on at a, as behind a load
                        // balancer, with a new request.
                        None => {
                            at = 0;
                            eval_at(&c, &urls[0], &key, target, &inputs)
                                .await
                                .expect("replica a answers")
                        }
                    };
                    let (id, status, body) = answer;
                    let want = model_expected(&inputs);
                    let fine = match status {
                        200 => body["outputs"]["y"] == want.as_str(),
                        // Refused by the coordinator's budget, or by a custodian's own: the
                        // custodians also count the evaluations replica b had started and not
                        // yet committed when it was killed, so theirs can run out a few
                        // evaluations before the shared one does.
                        429 => {
                            body["error"]["code"] == "budget_exhausted"
                                || body["error"]["code"] == "custodian_budget_exhausted"
                        }
                        _ => false,
                    };
                    if !fine {
                        wrong.push(format!("client {client} call {i} at {at}: {status} {body}"));
                    }
                    results.push((id, status, at));
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (results, wrong)
            });
        }
        let killer = {
            let (c, done) = (Arc::clone(&c), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(std::sync::atomic::Ordering::Relaxed) < 250 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                c.kill("coordinator-b");
            })
        };
        let (mut results, mut wrong) = (Vec::new(), Vec::new());
        while let Some(r) = tasks.join_next().await {
            let (r, w) = r.unwrap();
            results.extend(r);
            wrong.extend(w);
        }
        killer.await.unwrap();
        (results, wrong)
    });
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let by = |at| {
        results
            .iter()
            .filter(|(_, s, a)| *s == 200 && *a == at)
            .count()
    };
    assert!(
        by(0) > 0 && by(1) > 0,
        "both replicas served: a {} b {}",
        by(0),
        by(1)
    );
    answered.extend(
        results
            .iter()
            .filter(|(_, s, _)| *s == 200)
            .map(|(id, ..)| id.clone()),
    );

    let pg_conn = quorumvm_ledger::Postgres::connect(&db).expect("the database");
    use quorumvm_ledger::Sql as _;
    let accepted: Vec<serde_json::Value> = pg_conn
        .query(
            "SELECT details FROM audit_log WHERE kind = 'eval.accepted' ORDER BY seq",
            &[],
        )
        .expect("the log")
        .iter()
        .map(|r| serde_json::from_str(&r.text(0).unwrap()).unwrap())
        .collect();
    let on_record: std::collections::HashSet<&str> = accepted
        .iter()
        .map(|d| d["request"].as_str().expect("a request id"))
        .collect();
    let lost: Vec<_> = answered
        .iter()
        .filter(|id| !on_record.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "answered but not on record: {lost:?}");
    assert_eq!(accepted.len(), 700, "exactly the budget is admitted");
    let spent = pg_conn
        .query(
            "SELECT spent FROM budget_spent WHERE identity = ?1",
            quorumvm_ledger::sql_params!["replicated"],
        )
        .expect("the budget");
    assert_eq!(spent[0].int(0).unwrap(), 700);
    let kits: std::collections::HashSet<u64> = accepted
        .iter()
        .map(|d| d["kit"].as_u64().expect("a kit id"))
        .collect();
    assert_eq!(kits.len(), accepted.len(), "a kit handed out twice");
    let chain = quorumvm_ledger::audit::verify_chain(&pg_conn).expect("one chain that verifies");
    assert!(chain.entries > 700);

    // Restarted, replica b serves again, under the budget both spent.
    c.start_replica("coordinator-b", "b");
    let inputs = model_inputs(99);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = rt.block_on(eval_at(&c, &urls[1], &key, (&target.0, &target.1), &inputs));
        // Not up yet, or no kits of its own yet (it orders them first).
        let waiting = answer.as_ref().is_none_or(|(_, status, _)| *status == 503);
        if !waiting {
            let (_, status, body) = answer.expect("an answer");
            assert_eq!(
                (status, &body["error"]["code"]),
                (429, &"budget_exhausted".into())
            );
            break;
        }
        assert!(Instant::now() < deadline, "b did not come back: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `quorumvm custodian remove 2 --threshold 1 --json` as custodian `operator`'s operator.
fn remove_custodian_2(c: &Cluster, operator: u32) -> std::process::Output {
    remove_custodian(c, 2, 1, operator)
}

/// `quorumvm custodian remove INDEX --threshold K --json` as machine `operator`'s operator,
/// the statement built from its own custodian's membership.
fn remove_custodian(c: &Cluster, index: u32, k: usize, operator: u32) -> std::process::Output {
    change_membership(c, operator, &["remove", &index.to_string()], k)
}

/// `quorumvm custodian add --url … --json` of `machine` (made by [`Cluster::new_machine`]) at
/// threshold `k`, as machine `operator`'s operator; its answer.
fn add_custodian(
    c: &Cluster,
    machine: &quorumvm_wire::config::CustodianEntry,
    k: usize,
    operator: u32,
) -> quorumvm_wire::api::MembershipState {
    let mut args = vec!["add".to_string()];
    args.extend(machine_args(machine));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok_state(change_membership(c, operator, &args, k))
}

/// `quorumvm custodian replace INDEX --url … --json`: the next step of replacing custodian
/// `index` by `machine`, as machine `operator`'s operator.
fn replace_custodian(
    c: &Cluster,
    index: u32,
    machine: &quorumvm_wire::config::CustodianEntry,
    operator: u32,
) -> std::process::Output {
    let mut args = vec!["replace".to_string(), index.to_string()];
    args.extend(machine_args(machine));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    change_membership(c, operator, &args, 2)
}

/// How operators name a new machine to the CLI.
fn machine_args(machine: &quorumvm_wire::config::CustodianEntry) -> Vec<String> {
    let mut args = vec![
        "--url".to_string(),
        machine.url.clone(),
        "--operator-key".into(),
        machine.operator_key.clone(),
        "--sealing-key".into(),
        machine.sealing_key.clone(),
    ];
    if let Some(pin) = machine.tls_fingerprint {
        args.extend(["--tls-fingerprint".to_string(), pin.to_hex()]);
    }
    args
}

/// `quorumvm custodian CHANGE… --threshold K --json` as machine `operator`'s operator, with its
/// own custodian's URL and pin.
fn change_membership(
    c: &Cluster,
    operator: u32,
    change: &[&str],
    k: usize,
) -> std::process::Output {
    let (url, _) = c.custodian(operator);
    let mut args = vec!["custodian".to_string()];
    args.extend(change.iter().map(|a| a.to_string()));
    args.extend([
        "--threshold".into(),
        k.to_string(),
        "--custodian".into(),
        url,
    ]);
    if let Some(pin) = c.custodian_pin(operator) {
        args.extend(["--custodian-pin".to_string(), pin.to_hex()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.as_operator(operator, &args)
}

/// Every evaluation of the model with these seeds' inputs answers the plain value.
fn answers_stay(c: &Cluster, key: &Caller, model: &str, seeds: std::ops::RangeInclusive<u64>) {
    let rt = runtime();
    for seed in seeds {
        let answer = rt.block_on(c.eval_ready(key, model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
}

/// Two new machines join a 2-of-3 cluster, one at a time (`quorumvm custodian add`), the second
/// at k = 3 and after the first rotation (it checks the chain of rotations from its configured
/// cluster); then the cluster shrinks back to 2-of-3. The answers are right throughout, and
/// with two of the original machines down the three others (two of them new) answer.
#[test]
fn operators_grow_a_2_of_3_cluster_to_3_of_5_and_shrink_it_back() {
    let c = Cluster::start();
    let key = c.identity("steady");
    let model = install_model(&c);
    answers_stay(&c, &key, &model, 0..=1);

    // 2-of-3 to 2-of-4: machine 4 joins, approved by two operators.
    let four = c.new_machine(4);
    c.start_server("custodian-4");
    assert!(add_custodian(&c, &four, 2, 1).rotation.is_none());
    let report = add_custodian(&c, &four, 2, 2)
        .rotation
        .expect("the second approval rotates");
    assert_eq!(
        (report.generation, report.threshold, &report.members[..]),
        (1, 2, &[1, 2, 3, 4][..])
    );
    assert_eq!(report.committed, [1, 2, 3, 4]);
    answers_stay(&c, &key, &model, 2..=3);

    // 2-of-4 to 3-of-5: machine 5 joins; machine 4's operator approves it.
    let five = c.new_machine(5);
    c.start_server("custodian-5");
    assert!(add_custodian(&c, &five, 3, 4).rotation.is_none());
    let report = add_custodian(&c, &five, 3, 3)
        .rotation
        .expect("the second approval rotates");
    assert_eq!(
        (report.generation, report.threshold, &report.members[..]),
        (2, 3, &[1, 2, 3, 4, 5][..])
    );
    // The coordinator counts an identity's approvals against k now: at k = 3 it admits the
    // caller once a third operator approved it (the custodians keep it as they recorded it).
    ok(c.as_operator(3, &["identity", "approve", "steady"]));
    answers_stay(&c, &key, &model, 4..=5);
    // Each new machine recorded its joining once, and every rotation since.
    for (i, rotations) in [(4, 2), (5, 1)] {
        let db = format!("custodian-{i}/custodian.db");
        assert_eq!(c.audit_entries(&db, "membership.joining").len(), 1);
        assert_eq!(c.audit_entries(&db, "membership.changed").len(), rotations);
    }

    // The new machines hold working shares: with custodians 1 and 2 down, 3, 4 and 5 answer.
    c.kill("custodian-1");
    c.kill("custodian-2");
    answers_stay(&c, &key, &model, 6..=7);
    c.start_server("custodian-1");
    c.start_server("custodian-2");
    // A joined machine restarts from its own ledger, the chain checked again.
    c.kill("custodian-5");
    c.start_server("custodian-5");
    answers_stay(&c, &key, &model, 8..=9);
    runtime().block_on(c.all_live());

    // Back to 2-of-3: 5 leaves (three operators of the 3-of-5), then 4 (two of the 2-of-4).
    for operator in [1, 2] {
        assert!(
            ok_state(remove_custodian(&c, 5, 2, operator))
                .rotation
                .is_none()
        );
    }
    let report = ok_state(remove_custodian(&c, 5, 2, 4))
        .rotation
        .expect("rotates");
    assert_eq!(
        (report.threshold, &report.members[..]),
        (2, &[1, 2, 3, 4][..])
    );
    answers_stay(&c, &key, &model, 10..=11);
    assert!(ok_state(remove_custodian(&c, 4, 2, 1)).rotation.is_none());
    let report = ok_state(remove_custodian(&c, 4, 2, 3))
        .rotation
        .expect("rotates");
    assert_eq!((report.threshold, &report.members[..]), (2, &[1, 2, 3][..]));
    answers_stay(&c, &key, &model, 12..=13);
}

fn ok_state(out: std::process::Output) -> quorumvm_wire::api::MembershipState {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Custodian 3 is replaced (`quorumvm custodian replace 3`): a new machine (new keys, new data
/// directory) joins as custodian 4, then custodian 3 is removed and the new machine takes index
/// 3; the old machine's data directory is destroyed. The cluster serves the right answers, and the old machine's shares
/// (had they been stolen before) open nothing with a current custodian's: every candidate
/// secret is as consistent with the pair as the real one.
#[test]
fn operators_replace_custodian_3_and_its_old_shares_open_nothing() {
    use quorumvm_core::field::Fp;
    use quorumvm_core::shamir::{Threshold, complete_with_secret, eval_poly, reconstruct};

    let c = Cluster::start();
    let key = c.identity("steady");
    let model = install_model(&c);
    answers_stay(&c, &key, &model, 0..=1);
    let old: Vec<Vec<[u8; 16]>> = (1..=3).map(|i| secret_shares(&c, i, &model)).collect();

    // `quorumvm custodian replace 3` approves the new machine's addition first, then (run
    // again once it has joined) custodian 3's removal.
    let new_three = c.new_machine(4);
    c.start_server("custodian-4");
    let replace = |operator| ok_state(replace_custodian(&c, 3, &new_three, operator));
    assert!(replace(1).rotation.is_none());
    let joined = replace(3).rotation.expect("the second approval rotates");
    assert_eq!(joined.members, [1, 2, 3, 4]);
    assert!(replace(1).rotation.is_none());
    // The new machine's operator, at index 4 until this rotation, approves it.
    let report = replace(4).rotation.expect("the second approval rotates");
    assert_eq!(
        (report.generation, report.epoch, &report.members[..]),
        (2, 2, &[1, 2, 3][..])
    );
    let done = replace_custodian(&c, 3, &new_three, 1);
    assert!(
        !done.status.success()
            && String::from_utf8_lossy(&done.stderr).contains("the replacement is done"),
        "{done:?}"
    );
    c.kill("custodian-3");
    std::fs::remove_dir_all(c.path("custodian-3")).unwrap();
    let cluster: quorumvm_wire::api::ClusterInfo = runtime().block_on(c.get_json("/v1/cluster"));
    assert_eq!(cluster.custodians[2].url, new_three.url);
    answers_stay(&c, &key, &model, 2..=4);

    let new = [
        shares_of(&c, (1, 1), &model, 2),
        shares_of(&c, (2, 2), &model, 2),
        shares_of(&c, (4, 3), &model, 2),
    ];
    let t = Threshold::new(2, 3).unwrap();
    for s in 0..WEIGHTS.len() {
        let secret = reconstruct(&points(&[(1, &old[0]), (2, &old[1])], s), t).unwrap();
        // The new machine's share opens the secret with either of the others...
        for other in [1u32, 2] {
            let p = points(&[(other, &new[other as usize - 1]), (3, &new[2])], s);
            assert_eq!(reconstruct(&p, t).unwrap(), secret);
        }
        // ...while the old machine's with a current one opens something else, and every
        // candidate is as consistent with the pair as the secret: each is explained by a
        // sharing of the candidate before and another after.
        let mixed = points(&[(3, &old[2]), (1, &new[0])], s);
        assert_ne!(reconstruct(&mixed, t).unwrap(), secret);
        for candidate in [secret, Fp::ZERO, Fp::from(1_000_003u64)] {
            let before = complete_with_secret(&mixed[..1], candidate).unwrap();
            let after = complete_with_secret(&mixed[1..], candidate).unwrap();
            assert_eq!(eval_poly(&before, Fp::from(3u64)), mixed[0].y);
            assert_eq!(eval_poly(&after, Fp::ONE), mixed[1].y);
            assert_eq!(eval_poly(&before, Fp::ZERO), eval_poly(&after, Fp::ZERO));
        }
    }
}

/// A custodian that lies in a rotation (it re-deals its share plus one, which would change
/// every secret) is caught by every new member: the rotation fails with a clear error, nobody
/// moves (every custodian at epoch 0, generation 0), and the cluster serves the right answers.
#[test]
fn a_custodian_lying_in_a_rotation_changes_nothing() {
    let (c, key, model, rt) = serving_with_a_dealer_that_lies();
    ok(remove_custodian_2(&c, 1));
    let out = remove_custodian_2(&c, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("rotation_failed")
            && stderr.contains("stays at epoch 0"),
        "{stderr}"
    );
    for i in 1..=3 {
        let db = format!("custodian-{i}/custodian.db");
        assert!(c.audit_entries(&db, "membership.changed").is_empty());
        let (url, client) = c.custodian(i);
        let health: quorumvm_wire::api::CustodianHealth = rt.block_on(async {
            client
                .get(format!("{url}/v1/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        assert_eq!((health.epoch, health.generation), (0, 0), "custodian {i}");
    }
    let cluster: quorumvm_wire::api::ClusterInfo = rt.block_on(c.get_json("/v1/cluster"));
    assert_eq!((cluster.threshold, cluster.custodians.len()), (2, 3));
    for seed in 1..=10 {
        let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
}

/// `quorumvm custodian remove` by two operators: the coordinator runs the rotation at the
/// second approval. Custodian 2 leaves (its shares deleted; started again, it refuses), the
/// machine that was custodian 3 serves at index 2, and the answers stay the same, across a
/// restart of the coordinator too. (The dev cluster is 2-of-3, so the only smaller cluster is
/// 1-of-2: a test of the mechanics, not a threshold anyone should run.)
#[test]
fn operators_remove_a_custodian_and_the_cluster_serves_the_same_answers() {
    let c = Arc::new(Cluster::start());
    let key = c.identity("steady");
    let model = install_model(&c);
    let rt = runtime();
    rt.block_on(c.eval_ready(&key, &model, &model_inputs(0)));
    let remove = |operator: u32| {
        let out = ok(remove_custodian_2(&c, operator));
        serde_json::from_str::<quorumvm_wire::api::MembershipState>(&out).unwrap()
    };

    // One operator's approval changes nothing yet.
    let first = remove(1);
    assert_eq!((&first.approvals[..], first.needed), (&[1u32][..], 2));
    assert!(first.rotation.is_none());
    let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(1)));
    assert_eq!(answer.outputs["y"], model_expected(&model_inputs(1)));

    // The second runs the rotation, under 8 clients' load: no evaluation is lost or wrong
    // (those across the switch are retried on the new membership).
    let (good, bad, second) = rt.block_on(async {
        let running = tokio::spawn(load(
            Arc::clone(&c),
            key.clone(),
            model.clone(),
            8,
            40,
            60_000,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = Arc::clone(&c);
        let second = tokio::task::spawn_blocking(move || {
            serde_json::from_str::<quorumvm_wire::api::MembershipState>(&ok(remove_custodian_2(
                &c, 3,
            )))
            .unwrap()
        })
        .await
        .unwrap();
        let (good, bad) = running.await.unwrap();
        (good, bad, second)
    });
    assert!(bad.is_empty(), "during the rotation: {bad:?}");
    assert_eq!(good.len(), 320);
    let report = second.rotation.expect("the k-th approval rotates");
    eprintln!(
        "rotation of {} version(s) under 8 clients: {} ms",
        report.packages.len(),
        report.ms
    );
    // The load ran on both sides of the switch.
    load_on_both_sides_of_the_switch(&c);
    assert_eq!(
        (report.generation, report.epoch, report.threshold),
        (1, 1, 1)
    );
    assert_eq!(report.members, [1, 2]);
    assert_eq!(report.committed, [1, 2, 3]);
    for i in 1..=3 {
        let db = format!("custodian-{i}/custodian.db");
        assert_eq!(c.audit_entries(&db, "membership.changed").len(), 1);
    }
    for seed in 2..=6 {
        let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
    let cluster: quorumvm_wire::api::ClusterInfo = rt.block_on(c.get_json("/v1/cluster"));
    let at_two = &cluster.custodians[1];
    let (three, _) = c.custodian(3);
    assert_eq!((cluster.threshold, cluster.custodians.len()), (1, 2));
    assert_eq!((at_two.index, &at_two.url), (2, &three));

    // Custodian 2 left: nothing of the secrets stays with it, and it will not start again.
    let rows = |table: &str| -> i64 {
        quorumvm_ledger::Ledger::open(c.path("custodian-2/custodian.db"))
            .unwrap()
            .connection()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((rows("sealed_shares"), rows("refreshed_shares")), (0, 0));
    c.kill("custodian-2");
    let out = Command::new(BIN)
        .args(["custodian", "--config"])
        .arg(c.path("custodian-2.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("left the cluster in rotation 1"),
        "{stderr}"
    );

    // The coordinator keeps the membership across a restart.
    c.kill("coordinator");
    c.start_server("coordinator");
    for seed in 7..=9 {
        let answer = rt.block_on(c.eval_ready(&key, &model, &model_inputs(seed)));
        assert_eq!(answer.outputs["y"], model_expected(&model_inputs(seed)));
    }
    assert_eq!(
        c.audit_entries("coordinator/coordinator.db", "membership.approved")
            .len(),
        2
    );

    // A version published now is dealt to the new membership (pinned by what custodian 1
    // holds: the configs still name the first one), and k = 1 operator of it activates it: the one of the machine that was custodian 3,
    // which approves as custodian 2 now.
    let source = MODEL.replace("version 1", "version 2");
    let (url, _) = c.custodian(1);
    let mut pinned = vec!["--custodian".to_string(), url];
    if let Some(pin) = c.custodian_pin(1) {
        pinned.extend(["--custodian-pin".to_string(), pin.to_hex()]);
    }
    let info = c.publish_pinned("model-2", &source, &WEIGHTS, &pinned);
    let approved: VersionInfo = serde_json::from_str(&ok(c.approve(&info.package_id, 3))).unwrap();
    assert_eq!(approved.approvals, [2]);
    for seed in 10..=12 {
        let answer = rt.block_on(c.eval_ready(&key, "model", &model_inputs(seed)));
        assert_eq!(
            (answer.version, &answer.outputs["y"]),
            (2, &model_expected(&model_inputs(seed)))
        );
    }
}

/// A 3-of-5 cluster shrinks to 2-of-3 in two rotations, each approved by k operators of the
/// cluster it starts from: custodian 5 leaves (2-of-4), then custodian 2 (the machines that
/// were 3 and 4 move to 2 and 3). The answers stay the same throughout.
#[test]
fn a_3_of_5_cluster_shrinks_to_2_of_3_with_the_same_answers() {
    let c = Cluster::init_sized(5, 3);
    c.start_all();
    let key = c.identity("steady");
    let info = c.publish("model", MODEL, &WEIGHTS);
    for i in 1..=3 {
        ok(c.approve(&info.package_id, i));
    }
    let model = info.package_id;
    let answers_stay = |seeds| answers_stay(&c, &key, &model, seeds);
    answers_stay(0..=2);
    let remove = |index, k, operator| ok_state(remove_custodian(&c, index, k, operator));

    // 3-of-5 to 2-of-4: three operators of the 3-of-5 cluster.
    for operator in [1, 2] {
        assert!(remove(5, 2, operator).rotation.is_none());
    }
    let report = remove(5, 2, 3)
        .rotation
        .expect("the third approval rotates");
    assert_eq!(
        (report.threshold, &report.members[..]),
        (2, &[1, 2, 3, 4][..])
    );
    answers_stay(3..=5);

    // 2-of-4 to 2-of-3: two operators of the 2-of-4 cluster (4 among them).
    assert!(remove(2, 2, 4).rotation.is_none());
    let report = remove(2, 2, 1)
        .rotation
        .expect("the second approval rotates");
    assert_eq!((report.threshold, &report.members[..]), (2, &[1, 2, 3][..]));
    assert_eq!(report.epoch, 2);
    answers_stay(6..=10);
    let cluster: quorumvm_wire::api::ClusterInfo = runtime().block_on(c.get_json("/v1/cluster"));
    let urls: Vec<String> = cluster.custodians.iter().map(|m| m.url.clone()).collect();
    let was: Vec<String> = [1, 3, 4].iter().map(|&i| c.custodian(i).0).collect();
    assert_eq!((cluster.threshold, urls), (2, was));
}
