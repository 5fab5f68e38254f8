//! A local cluster of real `quorumvm` processes (a coordinator and three custodians, k = 2, on
//! 127.0.0.1 with ports chosen by the OS, each with its own SQLite database) that a test starts,
//! kills and restarts one by one, and drives through the CLI and the HTTP API as a user would.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumvm_wire::api::{EvalResponse, VersionInfo};
use quorumvm_wire::config::{CoordinatorConfig, CustodianConfig, CustodianEntry, Fingerprint};
use quorumvm_wire::request::{CallerRequest, Decimal};
use quorumvm_wire::signed::Signed;

pub const BIN: &str = env!("CARGO_BIN_EXE_quorumvm");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn quorumvm(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("quorumvm runs")
}

pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "quorumvm failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A local cluster whose four processes the test starts, kills and restarts one by one.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator_url: String,
    /// The coordinator's TLS key pin (`None`: an `--insecure-loopback` cluster).
    pub coordinator_pin: Option<Fingerprint>,
    children: Mutex<BTreeMap<String, Child>>,
    /// A client of the coordinator, trusting only its pinned key.
    pub http: reqwest::Client,
}

/// A reqwest client that trusts only the server whose TLS key is `pin` (plain HTTP: `None`).
pub fn pinned_client(pin: Option<Fingerprint>) -> reqwest::Client {
    quorumvm_server::tls::install_default_provider();
    let builder = reqwest::Client::builder();
    let builder = match pin {
        Some(pin) => builder.use_preconfigured_tls(
            quorumvm_server::tls::Trust::Pinned(pin)
                .client_config()
                .expect("a TLS client config"),
        ),
        None => builder,
    };
    builder.build().expect("a client")
}

/// A kit pool small enough to fill in a moment, large enough for every test's load.
pub fn small_pool(toml: &str) -> String {
    toml.replace("low_water = 20000", "low_water = 1500")
        .replace("batch = 2000", "batch = 1000")
        .replace("target = 40000", "target = 3000")
}

impl Cluster {
    /// Keys and configs (`quorumvm dev --init-only`), with `edit` applied to the coordinator's
    /// config text.
    pub fn init(edit: impl FnOnce(&Path, String) -> String) -> Cluster {
        Cluster::init_with(&[], edit)
    }

    /// [`Cluster::init`] of a `k`-of-`n` cluster (`quorumvm dev --custodians N --threshold K`).
    pub fn init_sized(n: u32, k: usize) -> Cluster {
        let (n, k) = (n.to_string(), k.to_string());
        Cluster::init_with(&["--custodians", &n, "--threshold", &k], |_, t| t)
    }

    /// [`Cluster::init`] of a cluster that speaks plain HTTP on the loopback, for a test that
    /// reads what the coordinator receives.
    pub fn init_insecure(edit: impl FnOnce(&Path, String) -> String) -> Cluster {
        Cluster::init_with(&["--insecure-loopback"], edit)
    }

    fn init_with(flags: &[&str], edit: impl FnOnce(&Path, String) -> String) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8 path");
        let mut args = vec!["dev", "--init-only", "--port", "0", "--dir", d];
        args.extend(flags);
        ok(quorumvm(&args));
        let path = dir.path().join("coordinator.toml");
        let text = std::fs::read_to_string(&path).expect("coordinator config");
        std::fs::write(&path, edit(dir.path(), small_pool(&text))).expect("write config");
        let custodian =
            CustodianConfig::load(&dir.path().join("custodian-1.toml")).expect("config");
        let coordinator_pin = custodian.coordinator_tls_fingerprint;
        let scheme = if coordinator_pin.is_some() {
            "https"
        } else {
            "http"
        };
        let coordinator_url = format!(
            "{scheme}://{}",
            CoordinatorConfig::load(&path).expect("config").listen
        );
        Cluster {
            dir,
            coordinator_url,
            coordinator_pin,
            children: Mutex::default(),
            http: pinned_client(coordinator_pin),
        }
    }

    /// `--pin` and the coordinator's pin, for a command that calls the coordinator (none in an
    /// insecure cluster).
    pub fn pin_args(&self) -> Vec<String> {
        self.coordinator_pin
            .map(|pin| vec!["--pin".to_string(), pin.to_hex()])
            .unwrap_or_default()
    }

    /// Machine `custodian-i`'s URL, as the configs list it (or as [`Cluster::new_machine`]
    /// made it), and a client trusting only its key.
    pub fn custodian(&self, i: u32) -> (String, reqwest::Client) {
        let entry = self.entry(i);
        (entry.url.clone(), pinned_client(entry.tls_fingerprint))
    }

    /// Machine `custodian-i`'s TLS key pin (`None`: an insecure cluster).
    pub fn custodian_pin(&self, i: u32) -> Option<Fingerprint> {
        self.entry(i).tls_fingerprint
    }

    /// Machine `custodian-i` as the configured cluster lists it, or as [`Cluster::new_machine`]
    /// made it.
    pub fn entry(&self, i: u32) -> CustodianEntry {
        let made = self.path(&format!("custodian-{i}.entry.json"));
        if let Ok(text) = std::fs::read_to_string(&made) {
            return serde_json::from_str(&text).expect("an entry");
        }
        self.custodian_config(i)
            .custodians
            .into_iter()
            .find(|e| e.index == i)
            .expect("a configured custodian")
    }

    /// A new machine `custodian-i` as its operator sets one up to join the cluster: an
    /// operator key (`quorumvm keygen`), server keys in an empty data directory (`quorumvm
    /// server-keys custodian`), a port, and a config naming the configured cluster (its trust
    /// root) with `index` `i`. Returns its entry, as the operators approve it.
    pub fn new_machine(&self, i: u32) -> CustodianEntry {
        let name = format!("custodian-{i}");
        let operator = self.path(&format!("operators/{name}"));
        ok(quorumvm(&["keygen", "-o", operator.to_str().unwrap()]));
        let public = std::fs::read_to_string(operator.with_extension("pub")).expect("a key");
        let operator_key = quorumvm_package::PublicKey::from_file_text(&public)
            .expect("a public key")
            .to_hex();
        let data_dir = self.path(&name);
        let keys: serde_json::Value = serde_json::from_str(&ok(quorumvm(&[
            "server-keys",
            "custodian",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--json",
        ])))
        .expect("json");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let first = self.custodian_config(1);
        let tls = first.coordinator_tls_fingerprint.is_some();
        let scheme = if tls { "https" } else { "http" };
        let entry = CustodianEntry {
            index: i,
            url: format!("{scheme}://127.0.0.1:{port}"),
            operator_key,
            sealing_key: keys["sealing_key"].as_str().expect("a key").to_string(),
            tls_fingerprint: tls.then(|| {
                keys["tls_fingerprint"]
                    .as_str()
                    .expect("a pin")
                    .parse()
                    .expect("a pin")
            }),
        };
        let text = std::fs::read_to_string(self.path("custodian-1.toml")).expect("config");
        let text = text
            .replacen("index = 1\n", &format!("index = {i}\njoins = true\n"), 1)
            .replacen(
                &format!("listen = \"{}\"", first.listen),
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            )
            .replacen(
                "data_dir = \"custodian-1\"",
                &format!("data_dir = \"{name}\""),
                1,
            );
        std::fs::write(self.path(&format!("{name}.toml")), text).expect("config");
        std::fs::write(
            self.path(&format!("{name}.entry.json")),
            serde_json::to_string(&entry).expect("json"),
        )
        .expect("entry");
        entry
    }

    pub fn start() -> Cluster {
        let c = Cluster::init(|_, t| t);
        c.start_all();
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// How custodian `i`'s operator reaches the cluster: its key (under `operators/`, not in
    /// the custodian's data directory) and the coordinator's URL.
    pub fn operator(&self, i: u32) -> Vec<String> {
        let key = self.path(&format!("operators/custodian-{i}.key"));
        let mut args = vec![
            "--key".into(),
            key.to_str().expect("utf-8 path").into(),
            "--coordinator".into(),
            self.coordinator_url.clone(),
        ];
        args.extend(self.pin_args());
        args
    }

    /// Runs `quorumvm ARGS... --json` as custodian `i`'s operator.
    pub fn as_operator(&self, i: u32, args: &[&str]) -> Output {
        let operator = self.operator(i);
        let mut all = args.to_vec();
        all.push("--json");
        all.extend(operator.iter().map(String::as_str));
        quorumvm(&all)
    }

    pub fn custodian_config(&self, i: u32) -> CustodianConfig {
        CustodianConfig::load(&self.path(&format!("custodian-{i}.toml"))).expect("config")
    }

    pub fn start_all(&self) {
        self.start_server("coordinator");
        let n = CoordinatorConfig::load(&self.path("coordinator.toml"))
            .expect("config")
            .custodians
            .len() as u32;
        for i in 1..=n {
            self.start_server(&format!("custodian-{i}"));
        }
    }

    /// Starts `coordinator` or `custodian-i` and waits for its health check.
    pub fn start_server(&self, name: &str) {
        self.start_server_with(name, &[]);
    }

    /// [`Cluster::start_server`] with these environment variables (e.g. `QUORUMVM_LIE`, which
    /// the test build's custodian reads to deviate on purpose).
    pub fn start_server_with(&self, name: &str, vars: &[(&str, &str)]) {
        self.spawn(name, vars, &[]);
    }

    /// Starts another replica of the coordinator, `name` with a config `name.toml` of its own
    /// that leaves the replica's name to its command line (`--replica replica`), as a
    /// Kubernetes StatefulSet's pods are named.
    pub fn start_replica(&self, name: &str, replica: &str) {
        self.spawn(name, &[], &["--replica", replica]);
    }

    fn spawn(&self, name: &str, vars: &[(&str, &str)], args: &[&str]) {
        // `coordinator`, or another replica of it (`coordinator-b`, with a config of its own).
        let role = if name.starts_with("coordinator") {
            "coordinator"
        } else {
            "custodian"
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log");
        let child = Command::new(BIN)
            .args([role, "--config"])
            .arg(self.path(&format!("{name}.toml")))
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn server");
        self.children
            .lock()
            .unwrap()
            .insert(name.to_string(), child);
        let addr = if role == "coordinator" {
            CoordinatorConfig::load(&self.path(&format!("{name}.toml")))
                .expect("config")
                .listen
        } else {
            let i: u32 = name
                .trim_start_matches("custodian-")
                .parse()
                .expect("index");
            self.custodian_config(i).listen
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&self, name: &str) {
        let mut child = self.children.lock().unwrap().remove(name).expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }

    /// A caller as a user makes one: `keygen` on the caller's machine, `identity add` with its
    /// public key on the coordinator's, `identity approve` by the operators of custodians 1
    /// and 2.
    pub fn identity(&self, name: &str) -> Caller {
        let prefix = self.path(name);
        ok(quorumvm(&["keygen", "-o", prefix.to_str().unwrap()]));
        let public = prefix.with_extension("pub");
        let out = ok(quorumvm(&[
            "identity",
            "add",
            name,
            "--json",
            "--pubkey",
            public.to_str().unwrap(),
            "--config",
            self.path("coordinator.toml").to_str().unwrap(),
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let k = CoordinatorConfig::load(&self.path("coordinator.toml"))
            .expect("config")
            .threshold as u32;
        for i in 1..=k {
            ok(self.as_operator(i, &["identity", "approve", name]));
        }
        let key = std::fs::read_to_string(prefix.with_extension("key")).expect("caller key");
        Caller {
            name: name.to_string(),
            api_key: v["api_key"].as_str().expect("key").to_string(),
            key: Arc::new(quorumvm_package::SecretKey::from_file_text(&key).expect("caller key")),
        }
    }

    /// `GET path` at the coordinator, read as JSON.
    /// Waits until the coordinator has seen every custodian of the membership live (after a
    /// restart: before an operation that needs them all, such as a rotation).
    pub async fn all_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cluster: quorumvm_wire::api::ClusterInfo = self.get_json("/v1/cluster").await;
            if cluster.custodians.iter().all(|m| m.live) {
                return;
            }
            assert!(Instant::now() < deadline, "custodians down: {cluster:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("{}{path}", self.coordinator_url))
            .send()
            .await
            .expect("the coordinator answers")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// The package a request for `program` names: the id itself, or the name's current (else
    /// highest) version; an unknown name gets an id no package has.
    pub async fn target(&self, program: &str) -> (String, String) {
        let versions: Vec<VersionInfo> = self.get_json("/v1/packages").await;
        let chosen = versions
            .iter()
            .find(|v| v.package_id == program)
            .or_else(|| versions.iter().find(|v| v.name == program && v.current))
            .or_else(|| {
                versions
                    .iter()
                    .filter(|v| v.name == program)
                    .max_by_key(|v| v.version)
            });
        match chosen {
            Some(v) => (v.name.clone(), v.package_id.clone()),
            None => (program.to_string(), "0".repeat(64)),
        }
    }

    /// Compiles, signs (as the cluster's publisher) and installs `source`, with the custodians'
    /// keys pinned by custodian 1's config; returns its id.
    pub fn publish(&self, name: &str, source: &str, secrets: &[&str]) -> VersionInfo {
        let config = self.path("custodian-1.toml");
        let pinned = ["--cluster-config", config.to_str().unwrap()].map(String::from);
        self.publish_pinned(name, source, secrets, &pinned)
    }

    /// [`Cluster::publish`], with the custodians' keys pinned by `pinned` (`install`'s options).
    pub fn publish_pinned(
        &self,
        name: &str,
        source: &str,
        secrets: &[&str],
        pinned: &[String],
    ) -> VersionInfo {
        let src = self.path(&format!("{name}.qvm"));
        std::fs::write(&src, source).expect("source");
        let wasm = self.path(&format!("{name}.wasm"));
        let (s, w) = (src.to_str().unwrap(), wasm.to_str().unwrap());
        ok(quorumvm(&["compile", s, "-o", w]));
        ok(quorumvm(&[
            "sign",
            w,
            "--key",
            self.path("publisher/publisher.key").to_str().unwrap(),
        ]));
        let key = self.path("publisher/publisher.key");
        let mut args = vec![
            "install",
            w,
            "--key",
            key.to_str().unwrap(),
            "--json",
            "--coordinator",
            &self.coordinator_url,
        ];
        args.extend(pinned.iter().map(String::as_str));
        let pin_args = self.pin_args();
        args.extend(pin_args.iter().map(String::as_str));
        for s in secrets {
            args.extend(["--secret", s]);
        }
        serde_json::from_str(&ok(quorumvm(&args))).expect("version info")
    }

    pub fn approve(&self, package: &str, custodian: u32) -> Output {
        self.as_operator(custodian, &["approve", package])
    }

    /// A fresh request for `program`, signed by `caller`, sent with its API key.
    pub async fn eval(
        &self,
        caller: &Caller,
        program: &str,
        inputs: &[(&str, String)],
    ) -> (u16, serde_json::Value) {
        let (program, package_id) = self.target(program).await;
        let request = caller.sign(&program, &package_id, inputs);
        self.send(&caller.api_key, &request).await
    }

    pub async fn send(&self, api_key: &str, request: &Signed) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/v1/eval", self.coordinator_url))
            .bearer_auth(api_key)
            .json(request)
            .send()
            .await
            .expect("the coordinator answers");
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON body"))
    }

    /// Evaluates, waiting while the first kits are generated.
    pub async fn eval_ready(
        &self,
        key: &Caller,
        program: &str,
        inputs: &[(&str, String)],
    ) -> EvalResponse {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.eval(key, program, inputs).await;
            if status == 200 {
                return serde_json::from_value(body).expect("an eval response");
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "eval failed: {status} {body}\n{}",
                self.log("coordinator")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Evaluates with the `quorumvm eval` client (which shares and seals private inputs to
    /// the custodians' keys pinned from the coordinator's config), waiting while the first kits
    /// are generated.
    pub fn eval_cli(&self, caller: &Caller, program: &str, inputs: &[&str]) -> EvalResponse {
        let key_file = self.path(&format!("{}.key", caller.name));
        let config = self.path("coordinator.toml");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut args = vec![
                "eval",
                program,
                "--json",
                "--coordinator",
                &self.coordinator_url,
                "--key",
                &caller.api_key,
                "--identity",
                &caller.name,
                "--caller-key",
                key_file.to_str().unwrap(),
                "--cluster-config",
                config.to_str().unwrap(),
            ];
            let pin_args = self.pin_args();
            args.extend(pin_args.iter().map(String::as_str));
            args.extend_from_slice(inputs);
            let out = quorumvm(&args);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).expect("an eval response");
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("no_preprocessing") && Instant::now() < deadline,
                "eval failed: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The details of the audit entries of `kind` in the database `db` (under the cluster's
    /// directory), oldest first.
    pub fn audit_entries(&self, db: &str, kind: &str) -> Vec<serde_json::Value> {
        let ledger = quorumvm_ledger::Ledger::open(self.path(db)).expect("the database");
        let details: Vec<String> = ledger
            .connection()
            .prepare("SELECT details FROM audit_log WHERE kind = ?1 ORDER BY seq")
            .unwrap()
            .query_map([kind], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        details
            .iter()
            .map(|d| serde_json::from_str(d).expect("JSON details"))
            .collect()
    }

    pub fn audit_verifies(&self, db: &str) -> u64 {
        let out = ok(quorumvm(&[
            "audit",
            "verify",
            "--json",
            self.path(db).to_str().unwrap(),
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["ok"], true);
        v["entries"].as_u64().expect("entries")
    }
}

/// A caller's credentials: its API key and its ed25519 key.
#[derive(Clone)]
pub struct Caller {
    pub name: String,
    pub api_key: String,
    pub key: Arc<quorumvm_package::SecretKey>,
}

impl Caller {
    pub fn sign(&self, program: &str, package_id: &str, inputs: &[(&str, String)]) -> Signed {
        let request = CallerRequest {
            request_id: format!("{:032x}", rand::random::<u128>()),
            identity: self.name.clone(),
            program: program.to_string(),
            package_id: package_id.to_string(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), Decimal(v.clone())))
                .collect::<BTreeMap<_, _>>(),
            private: None,
            time_ms: quorumvm_wire::now_ms(),
        };
        Signed::sign(&request, quorumvm_package::Domain::Request, &self.key)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
