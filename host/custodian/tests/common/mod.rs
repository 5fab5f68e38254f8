//! A cluster of real custodians (three, 2-of-3, unless a test asks for others) on loopback
//! ports, and the test itself as their
//! coordinator: it holds the coordinator's keys (so it can play a compromised coordinator), signs
//! orders and tickets, relays callers' signed requests, reconstructs outputs, and serves
//! packages, deals and sealed shares from a small router of its own (the two GETs a custodian
//! makes at activation). It also plays the publisher, the custodian operators and the callers,
//! each with keys of their own.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use quorumvm_core::circuit::{Circuit, Manifest};
use quorumvm_core::eval::{encode_inputs, encode_values, eval_plain};
use quorumvm_core::field::Fp;
use quorumvm_core::shamir::{Share, Threshold, reconstruct, share};
use quorumvm_custodian::{init_key, serve};
use quorumvm_package::{Domain, PackageId, SecretKey, package_id};
use quorumvm_sealing::{CustodianPublicKey, CustodianSecretKey, ShareBinding, seal_share};
use quorumvm_wire::api::{CustodianHealth, DealtShares, SealedShares, SessionRequest};
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::config::{CustodianConfig, CustodianEntry, Engine};
use quorumvm_wire::deal::{Deal, Dealt, share_digest};
use quorumvm_wire::elements::from_hex;
use quorumvm_wire::freeze::{Authority, Freeze, Target, Unfreeze};
use quorumvm_wire::now_ms;
use quorumvm_wire::order::{
    ApprovalSignature, Attestations, Order, SignedOrder, Ticket, TicketKey,
};
use quorumvm_wire::request::{CallerRequest, Decimal, Terms};
use quorumvm_wire::signed::Signed;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The threshold of [`Cluster::start`]'s three custodians.
pub const K: usize = 2;

/// `q = (x·w + 7)²`: two multiplication layers, a secret and an input.
pub const PROGRAM: &str = "program affine_square
input x in 0..100
secret w in -10..10 scale 2
mul y = x w
add z = y 7
mul q = z z
output q
";

/// A version as the publisher made it, with what the test needs to check results.
pub struct Program {
    pub id: PackageId,
    pub id_hex: String,
    pub manifest: Manifest,
    pub circuit: Circuit,
    pub secrets: Vec<Fp>,
    /// The publisher's signed deal of the sealed shares.
    pub deal: Signed,
}

/// A caller: its identity's name and the ed25519 key its requests are signed with.
pub struct Caller {
    pub name: String,
    pub key: SecretKey,
}

impl Caller {
    /// A fresh signed request (random id, now) for `program` with `inputs` (decimal texts).
    pub fn request(&self, program: &Program, inputs: &[(&str, &str)]) -> Signed {
        let request = CallerRequest {
            request_id: format!("{:032x}", rand::random::<u128>()),
            identity: self.name.clone(),
            program: program.manifest.name.clone(),
            package_id: program.id_hex.clone(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), Decimal(v.to_string())))
                .collect(),
            private: None,
            time_ms: now_ms(),
        };
        Signed::sign(&request, Domain::Request, &self.key)
    }
}

pub struct Node {
    pub addr: SocketAddr,
    pub config: CustodianConfig,
    /// The operator's approval key (the operator's, never in the custodian's data directory).
    pub operator: SecretKey,
    pub sealing: CustodianPublicKey,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// What the fake coordinator serves: package bytes, the deal and, per custodian, sealed shares.
type Packages = Arc<Mutex<HashMap<String, (Vec<u8>, Signed, BTreeMap<u32, SealedShares>)>>>;

pub struct Cluster {
    /// Every custodian's data directory; removed when the cluster is dropped.
    _dir: TempDir,
    pub coordinator: SecretKey,
    /// The coordinator's X25519 key: session tickets are tagged under keys derived from it.
    pub exchange: CustodianSecretKey,
    pub nodes: Vec<Node>,
    packages: Packages,
    pub http: reqwest::Client,
    next_session: std::sync::atomic::AtomicU64,
    /// The share epoch tickets and preprocessing orders name.
    pub epoch: std::sync::atomic::AtomicU64,
    /// The threshold and the number of custodians.
    pub k: usize,
    pub n: usize,
}

/// One custodian's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub custodian: u32,
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Each answer's custodian, status and error code.
pub fn codes(answers: &[Answer]) -> Vec<(u32, u16, String)> {
    answers
        .iter()
        .map(|a| (a.custodian, a.status.as_u16(), a.code().to_string()))
        .collect()
}

/// Every custodian answered 200 with this `status`.
pub fn all_say(answers: &[Answer], status: &str) {
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::OK && a.body["status"] == status),
        "expected every custodian to answer {status}: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
}

/// Every custodian refused with this status and code.
pub fn all_refuse(answers: &[Answer], status: u16, code: &str) {
    assert!(
        answers
            .iter()
            .all(|a| a.status.as_u16() == status && a.code() == code),
        "expected every custodian to refuse with {status} {code}: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
}

impl Cluster {
    /// Three custodians (k = 2) with the given engines, each on its own loopback port.
    pub async fn start(engines: [Engine; 3], round_timeout_ms: u64) -> Cluster {
        Cluster::start_with(K, &engines, round_timeout_ms).await
    }

    /// One custodian per engine given, of threshold `k`, each on its own loopback port.
    pub async fn start_with(k: usize, engines: &[Engine], round_timeout_ms: u64) -> Cluster {
        let n = engines.len();
        let dir = tempfile::tempdir().unwrap();
        let coordinator = SecretKey::generate();
        let exchange = CustodianSecretKey::generate();
        let packages: Packages = Arc::default();
        let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let coordinator_url = format!("http://{}", fake.local_addr().unwrap());
        tokio::spawn(fake_coordinator(fake, Arc::clone(&packages)));

        let mut listeners = Vec::new();
        let mut entries = Vec::new();
        let mut operators = Vec::new();
        for index in 1..=n as u32 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let data_dir = dir.path().join(format!("custodian-{index}"));
            let sealing = init_key(&data_dir).unwrap();
            let operator = SecretKey::generate();
            entries.push(CustodianEntry {
                index,
                url: format!("http://{}", listener.local_addr().unwrap()),
                operator_key: operator.public().to_hex(),
                sealing_key: sealing.to_hex(),
                tls_fingerprint: None,
            });
            operators.push(operator);
            listeners.push(listener);
        }
        let mut nodes = Vec::new();
        for (((listener, entry), engine), operator) in listeners
            .into_iter()
            .zip(&entries)
            .zip(engines)
            .zip(operators)
        {
            let data_dir = dir.path().join(format!("custodian-{}", entry.index));
            let config = CustodianConfig {
                index: entry.index,
                joins: false,
                listen: listener.local_addr().unwrap(),
                data_dir: data_dir.clone(),
                coordinator_url: coordinator_url.clone(),
                coordinator_key: coordinator.public().to_hex(),
                coordinator_exchange_key: exchange.public().to_hex(),
                threshold: k,
                engine: *engine,
                round_timeout_ms,
                coordinator_tls_fingerprint: None,
                insecure_loopback: true,
                custodians: entries.clone(),
            };
            let sealing = CustodianPublicKey::from_file_text(&entry.sealing_key).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve(config.clone(), listener));
            nodes.push(Node {
                addr,
                config,
                operator,
                sealing,
                server: Some(server),
            });
        }
        let cluster = Cluster {
            _dir: dir,
            coordinator,
            exchange,
            nodes,
            packages,
            http: plain_http(),
            next_session: Default::default(),
            epoch: Default::default(),
            k,
            n,
        };
        for index in 1..=n as u32 {
            cluster.wait_until_up(index).await;
        }
        cluster
    }

    /// Every custodian's index.
    pub fn everyone(&self) -> Vec<u32> {
        (1..=self.n as u32).collect()
    }

    pub fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize - 1]
    }

    async fn wait_until_up(&self, index: u32) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(server) = &self.node(index).server {
                assert!(
                    !server.is_finished(),
                    "custodian {index} stopped while starting"
                );
            }
            let up = self
                .http
                .get(format!("{}/v1/health", self.node(index).url()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "custodian {index} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new machine, as its operator sets one up to join the cluster: keys of its own, an
    /// empty data directory, and the configured cluster's config (its trust root) with the next
    /// index, which no member holds. It starts waiting to join; returns its index.
    pub async fn new_machine(&mut self) -> u32 {
        let index = self.nodes.len() as u32 + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data_dir = self._dir.path().join(format!("custodian-{index}"));
        let sealing = init_key(&data_dir).unwrap();
        let config = CustodianConfig {
            index,
            joins: true,
            listen: addr,
            data_dir,
            ..self.node(1).config.clone()
        };
        let server = tokio::spawn(serve(config.clone(), listener));
        self.nodes.push(Node {
            addr,
            config,
            operator: SecretKey::generate(),
            sealing,
            server: Some(server),
        });
        self.wait_until_up(index).await;
        index
    }

    /// Custodian `index` as a membership statement lists it.
    pub fn entry(&self, index: u32) -> CustodianEntry {
        let node = self.node(index);
        CustodianEntry {
            index,
            url: node.url(),
            operator_key: node.operator.public().to_hex(),
            sealing_key: node.sealing.to_hex(),
            tls_fingerprint: None,
        }
    }

    /// Stops a custodian as a crash would (its server future is dropped mid-flight).
    pub async fn stop(&mut self, index: u32) {
        if let Some(server) = self.nodes[index as usize - 1].server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Starts a stopped custodian again, on its port and data directory.
    pub async fn restart(&mut self, index: u32) {
        self.stop(index).await;
        let node = &mut self.nodes[index as usize - 1];
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(node.addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", node.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", node.addr),
            }
        };
        node.server = Some(tokio::spawn(serve(node.config.clone(), listener)));
        // Pooled connections went with the old server: a request on one would fail.
        self.http = plain_http();
        self.wait_until_up(index).await;
    }

    /// Compiles `src`, signs it as a publisher would, Shamir-shares its secrets (decimal
    /// values) and seals share i to custodian i, and offers it all at the fake coordinator.
    pub fn publish(&self, src: &str, secrets: &[(&str, &str)]) -> Program {
        self.publish_skewed(src, secrets, None)
    }

    /// [`Cluster::publish`] by a publisher whose deal is off: with `skew = Some((i, d))`, it
    /// adds `d` to custodian i's share of every secret before sealing it, and signs a deal of
    /// what it sealed (so the deal and every custodian's own checks at activation pass).
    pub fn publish_skewed(
        &self,
        src: &str,
        secrets: &[(&str, &str)],
        skew: Option<(u32, Fp)>,
    ) -> Program {
        let (program, unsigned) = quorumvm_compiler::compile_to_package(src, "program").unwrap();
        let publisher = SecretKey::generate();
        self.deal(program, &unsigned, &publisher, secrets, skew)
    }

    /// [`Cluster::publish`] of a compiled program, signed by `publisher`.
    pub fn publish_compiled(
        &self,
        program: quorumvm_compiler::Program,
        unsigned: &[u8],
        publisher: &SecretKey,
        secrets: &[(&str, &str)],
    ) -> Program {
        self.deal(program, unsigned, publisher, secrets, None)
    }

    fn deal(
        &self,
        program: quorumvm_compiler::Program,
        unsigned: &[u8],
        publisher: &SecretKey,
        secrets: &[(&str, &str)],
        skew: Option<(u32, Fp)>,
    ) -> Program {
        let signed = quorumvm_package::sign(unsigned, publisher).unwrap();
        let id = package_id(&signed);
        let given: Vec<(String, String)> = secrets
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let values = encode_values("secret", &program.manifest.secrets, &given).unwrap();
        let t = Threshold::new(self.k, self.n).unwrap();
        let mut sealed: BTreeMap<u32, SealedShares> = (1..=self.n as u32)
            .map(|i| {
                (
                    i,
                    SealedShares {
                        custodian: i,
                        sealed: BTreeMap::new(),
                    },
                )
            })
            .collect();
        for (decl, &value) in program.manifest.secrets.iter().zip(&values) {
            for mut s in share(value, t, &mut rand::rngs::OsRng) {
                if let Some((_, d)) = skew.filter(|(i, _)| *i == s.x) {
                    s.y += d;
                }
                let binding = ShareBinding {
                    package: id,
                    custodian: s.x,
                    secret: &decl.name,
                    epoch: 0,
                };
                let bytes = seal_share(self.node(s.x).sealing, &binding, &s)
                    .unwrap()
                    .to_bytes();
                let entry = sealed.get_mut(&s.x).unwrap();
                entry.sealed.insert(decl.name.clone(), hex::encode(bytes));
            }
        }
        let deal = Deal {
            package_id: id.to_string(),
            threshold: self.k,
            custodians: sealed
                .values()
                .map(|s| Dealt {
                    custodian: s.custodian,
                    sealing_key: self.node(s.custodian).sealing.to_hex(),
                    shares: s
                        .sealed
                        .iter()
                        .map(|(n, h)| (n.clone(), share_digest(&hex::decode(h).unwrap())))
                        .collect(),
                })
                .collect(),
        };
        let deal = Signed::sign(&deal, Domain::Deal, publisher);
        self.packages
            .lock()
            .unwrap()
            .insert(id.to_string(), (signed, deal.clone(), sealed));
        Program {
            id,
            id_hex: id.to_string(),
            manifest: program.manifest,
            circuit: program.circuit,
            secrets: values,
            deal,
        }
    }

    /// Registers caller `name` with a fresh key at every custodian, with the approvals of
    /// operators `approvers`; returns the caller and the custodians' answers.
    pub async fn register_with(&self, name: &str, approvers: &[u32]) -> (Caller, Vec<Answer>) {
        let key = SecretKey::generate();
        let public = key.public();
        let approvals = approvers
            .iter()
            .map(|&i| ApprovalSignature {
                custodian: i,
                signature: hex::encode(approval::sign(
                    &self.node(i).operator,
                    &Subject::Identity { name, key: &public },
                )),
            })
            .collect();
        let order = Order::RegisterIdentity {
            name: name.to_string(),
            public_key: public.to_hex(),
            approvals,
        };
        let answers = self.order_all(&self.everyone(), order).await;
        (
            Caller {
                name: name.to_string(),
                key,
            },
            answers,
        )
    }

    /// A caller that k operators approved, registered at every custodian.
    pub async fn register(&self, name: &str) -> Caller {
        let (caller, answers) = self.register_with(name, &[1, 2]).await;
        for a in &answers {
            assert_eq!(
                a.status,
                StatusCode::OK,
                "custodian {}: {}",
                a.custodian,
                a.body
            );
        }
        caller
    }

    /// The sealed shares (secret → hex) the fake coordinator serves custodian `index`.
    pub fn shares_of(&self, program: &Program, index: u32) -> BTreeMap<String, String> {
        let packages = self.packages.lock().unwrap();
        packages[&program.id_hex].2[&index].sealed.clone()
    }

    /// Replaces what the fake coordinator serves as custodian `index`'s sealed shares.
    pub fn tamper_shares(&self, program: &Program, index: u32, shares: SealedShares) {
        let mut packages = self.packages.lock().unwrap();
        let entry = packages.get_mut(&program.id_hex).unwrap();
        entry.2.insert(index, shares);
    }

    /// Replaces the deal the fake coordinator serves with a program.
    pub fn tamper_deal(&self, program: &Program, deal: Signed) {
        let mut packages = self.packages.lock().unwrap();
        packages.get_mut(&program.id_hex).unwrap().1 = deal;
    }

    /// Operators `approvers`' approvals of `program` with `deal`.
    pub fn approvals_of(
        &self,
        program: &Program,
        deal: &Signed,
        approvers: &[u32],
    ) -> Vec<ApprovalSignature> {
        approvers
            .iter()
            .map(|&i| ApprovalSignature {
                custodian: i,
                signature: hex::encode(approval::sign(
                    &self.node(i).operator,
                    &Subject::Version {
                        package: &program.id,
                        manifest: &program.manifest,
                        deal: &deal.digest(),
                    },
                )),
            })
            .collect()
    }

    pub fn approvals(&self, program: &Program, approvers: &[u32]) -> Vec<ApprovalSignature> {
        self.approvals_of(program, &program.deal, approvers)
    }

    /// Operators `approvers`' signatures over `subject`.
    pub fn sign_subject(&self, subject: &Subject<'_>, approvers: &[u32]) -> Vec<ApprovalSignature> {
        approvers
            .iter()
            .map(|&i| ApprovalSignature {
                custodian: i,
                signature: hex::encode(approval::sign(&self.node(i).operator, subject)),
            })
            .collect()
    }

    /// Sends every custodian `RevokeIdentity` of `name` with `approvals`.
    pub async fn revoke_with(&self, name: &str, approvals: Vec<ApprovalSignature>) -> Vec<Answer> {
        let order = Order::RevokeIdentity {
            name: name.to_string(),
            approvals,
        };
        self.order_all(&[1, 2, 3], order).await
    }

    /// Sends every custodian `Retire` of `program` with `approvals`.
    pub async fn retire_with(
        &self,
        program: &Program,
        approvals: Vec<ApprovalSignature>,
    ) -> Vec<Answer> {
        let order = Order::Retire {
            package_id: program.id_hex.clone(),
            approvals,
        };
        self.order_all(&[1, 2, 3], order).await
    }

    /// A freeze of `target`, addressed to custodian `at`, signed at `time_ms` with `key`.
    pub fn freeze_statement(
        &self,
        at: u32,
        target: &Target,
        time_ms: u64,
        key: &SecretKey,
    ) -> Signed {
        Freeze {
            target: target.clone(),
            at: Authority::Custodian(at),
            time_ms,
        }
        .sign(key)
    }

    /// Posts a freeze to custodian `index`, as its operator's CLI does.
    pub async fn freeze(&self, index: u32, statement: &Signed) -> Answer {
        self.post(index, "/v1/freezes", statement).await
    }

    /// The `Unfreeze` order of `target` at `time_ms`, approved by the operators of `approvers`.
    pub fn unfreeze(&self, target: &Target, time_ms: u64, approvers: &[u32]) -> Order {
        let unfreeze = Unfreeze {
            target: target.clone(),
            time_ms,
        };
        let approvals = self.sign_subject(&Subject::Unfreeze(&unfreeze), approvers);
        Order::Unfreeze {
            unfreeze,
            approvals,
        }
    }

    pub fn sign(&self, order: Order) -> SignedOrder {
        SignedOrder::sign(order, now_ms(), &self.coordinator)
    }

    pub async fn post(&self, index: u32, path: &str, body: &impl serde::Serialize) -> Answer {
        let response = self
            .http
            .post(format!("{}{path}", self.node(index).url()))
            .json(body)
            .send()
            .await
            .unwrap();
        answer(index, response).await
    }

    pub async fn order(&self, index: u32, order: Order) -> Answer {
        self.post(index, "/v1/orders", &self.sign(order)).await
    }

    /// Sends one order to several custodians at once.
    pub async fn order_all(&self, to: &[u32], order: Order) -> Vec<Answer> {
        let signed = self.sign(order);
        let calls: Vec<_> = to
            .iter()
            .map(|&i| {
                let (http, url, signed) = (
                    self.http.clone(),
                    format!("{}/v1/orders", self.node(i).url()),
                    signed.clone(),
                );
                tokio::spawn(async move {
                    answer(i, http.post(url).json(&signed).send().await.unwrap()).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    }

    /// Orders custodian `index` to activate `program` with `approvals`.
    pub async fn activate_with(
        &self,
        index: u32,
        program: &Program,
        approvals: Vec<ApprovalSignature>,
    ) -> Answer {
        let order = Order::Activate {
            package_id: program.id_hex.clone(),
            approvals,
        };
        self.order(index, order).await
    }

    /// Brings `program` to serve as the coordinator does: every custodian activates it with
    /// the approvals of `approvers`, and if all of them did, they check its shares together.
    /// The activations' answers if any refused, else the checks'.
    pub async fn activate(&self, program: &Program, approvers: &[u32]) -> Vec<Answer> {
        let answers = self.activate_only(program, approvers).await;
        if answers.iter().any(|a| a.status != StatusCode::OK) {
            return answers;
        }
        self.check_shares(program).await
    }

    /// Only the `Activate` orders of [`Cluster::activate`], to every custodian.
    pub async fn activate_only(&self, program: &Program, approvers: &[u32]) -> Vec<Answer> {
        let order = Order::Activate {
            package_id: program.id_hex.clone(),
            approvals: self.approvals(program, approvers),
        };
        self.order_all(&self.everyone(), order).await
    }

    /// Orders every custodian to check `program`'s shares with the others, in a new session.
    pub async fn check_shares(&self, program: &Program) -> Vec<Answer> {
        let order = Order::CheckShares {
            package_id: program.id_hex.clone(),
            session: self.session_id("check"),
        };
        self.order_all(&self.everyone(), order).await
    }

    pub async fn preprocess(&self, program: &Program, first_kit: u64, count: u64) -> Vec<Answer> {
        let order = Order::Preprocess {
            session: self.session_id("prep"),
            package_id: program.id_hex.clone(),
            first_kit,
            count,
            epoch: self.epoch(),
        };
        self.order_all(&self.everyone(), order).await
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Orders every custodian to refresh the shares of `programs` from the current epoch, in
    /// session `session`.
    pub async fn reshare(&self, session: &str, programs: &[&Program]) -> Vec<Answer> {
        let order = Order::Reshare {
            session: session.to_string(),
            epoch: self.epoch(),
            packages: programs.iter().map(|p| p.id_hex.clone()).collect(),
        };
        self.order_all(&self.everyone(), order).await
    }

    /// Every custodian's attestations from the answers to [`Cluster::reshare`].
    pub fn attestations(answers: &[Answer]) -> Attestations {
        Attestations(
            answers
                .iter()
                .map(|a| {
                    let tags = serde_json::from_value(a.body["attestations"].clone()).unwrap();
                    (a.custodian, tags)
                })
                .collect(),
        )
    }

    /// The commit of reshare `session` (from epoch `from`) with these attestations, to the
    /// custodians `to`.
    pub async fn commit(
        &self,
        to: &[u32],
        (session, from): (&str, u64),
        programs: &[&Program],
        attestations: Attestations,
    ) -> Vec<Answer> {
        let order = Order::CommitReshare {
            session: session.to_string(),
            epoch: from,
            packages: programs.iter().map(|p| p.id_hex.clone()).collect(),
            attestations,
        };
        self.order_all(to, order).await
    }

    pub fn session_id(&self, prefix: &str) -> String {
        let n = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    /// The ticket of attempt `attempt` at `request` on `quorum` with kit `kit`: its session id
    /// is the digest of those terms, as every member recomputes it.
    pub fn ticket(
        &self,
        program: &Program,
        request: &Signed,
        quorum: &[u32],
        kit: u64,
        attempt: u32,
    ) -> Ticket {
        let terms = Terms {
            request: request.digest(),
            package_id: &program.id_hex,
            kit,
            quorum,
            attempt,
            epoch: self.epoch(),
        };
        Ticket {
            session: terms.session_id(),
            package_id: program.id_hex.clone(),
            quorum: quorum.to_vec(),
            kit,
            attempt,
            epoch: self.epoch(),
        }
    }

    /// `ticket` with the caller's request, tagged for custodian `index` as the coordinator does.
    pub fn request(&self, index: u32, ticket: &Ticket, request: &Signed) -> SessionRequest {
        TicketKey::new(&self.exchange, self.node(index).sealing).seal(
            ticket.clone(),
            request.clone(),
            now_ms(),
        )
    }

    /// Sends `ticket` with the caller's request to each of `to`, all at once.
    pub async fn send_sessions(
        &self,
        ticket: &Ticket,
        to: &[u32],
        request: &Signed,
    ) -> Vec<Answer> {
        let requests: Vec<_> = to
            .iter()
            .map(|&i| (i, self.request(i, ticket, request)))
            .collect();
        self.send_requests(requests).await
    }

    /// Sends each custodian its own session request, all at once.
    pub async fn send_requests(&self, requests: Vec<(u32, SessionRequest)>) -> Vec<Answer> {
        let calls: Vec<_> = requests
            .into_iter()
            .map(|(i, request)| {
                let (http, url) = (
                    self.http.clone(),
                    format!("{}/v1/sessions", self.node(i).url()),
                );
                tokio::spawn(async move {
                    answer(i, http.post(url).json(&request).send().await.unwrap()).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    }

    /// One evaluation on `quorum` with kit `kit`: the outputs reconstructed from every
    /// answer and the rounds, or the answers if any custodian refused.
    pub async fn evaluate(
        &self,
        program: &Program,
        quorum: &[u32],
        inputs: &[(&str, &str)],
        kit: u64,
        caller: &Caller,
    ) -> Result<(Vec<Fp>, u32), Vec<Answer>> {
        let request = caller.request(program, inputs);
        let ticket = self.ticket(program, &request, quorum, kit, 0);
        let answers = self.send_sessions(&ticket, quorum, &request).await;
        if answers.iter().any(|a| a.status != StatusCode::OK) {
            return Err(answers);
        }
        let rounds = answers[0].body["rounds"].as_u64().unwrap() as u32;
        assert!(answers.iter().all(|a| a.body["rounds"] == rounds));
        let outputs: Vec<_> = answers
            .iter()
            .map(|a| from_hex(a.body["outputs"]["plain"].as_str().unwrap()).unwrap())
            .collect();
        let t = Threshold::new(self.k, self.n).unwrap();
        let values = (0..program.manifest.outputs.len())
            .map(|o| {
                let points: Vec<Share> = quorum
                    .iter()
                    .zip(&outputs)
                    .map(|(&x, v)| Share { x, y: v[o] })
                    .collect();
                reconstruct(&points, t).unwrap()
            })
            .collect();
        Ok((values, rounds))
    }

    /// What the program computes in the clear.
    pub fn expected(&self, program: &Program, inputs: &[(&str, &str)]) -> Vec<Fp> {
        let given: Vec<(String, String)> = inputs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let values = encode_inputs(&program.manifest, &given).unwrap();
        eval_plain(
            &program.circuit,
            &values.visible,
            &values.private,
            &program.secrets,
        )
    }

    pub async fn health(&self, index: u32) -> CustodianHealth {
        self.http
            .get(format!("{}/v1/health", self.node(index).url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Custodian `index`'s audit log, read from its ledger while it runs (its hash chain
    /// verified first): each entry's kind and details.
    pub fn audit(&self, index: u32) -> Vec<(String, Value)> {
        let db = self.node(index).config.data_dir.join("custodian.db");
        let ledger = quorumvm_ledger::Ledger::open(&db).unwrap();
        ledger.verify_chain().unwrap();
        ledger
            .audit_entries(0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, serde_json::from_str(&e.details).unwrap()))
            .collect()
    }

    /// Unused kits custodian `index` reports for `program` (`None`: not active there).
    pub async fn kits(&self, index: u32, program: &Program) -> Option<u64> {
        self.health(index)
            .await
            .versions
            .into_iter()
            .find(|v| v.package_id == program.id_hex)
            .map(|v| v.kits)
    }
}

async fn answer(custodian: u32, response: reqwest::Response) -> Answer {
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        custodian,
        status,
        body,
    }
}

async fn fake_coordinator(listener: TcpListener, packages: Packages) {
    async fn wasm(
        State(p): State<Packages>,
        UrlPath(id): UrlPath<String>,
    ) -> Result<Vec<u8>, StatusCode> {
        let packages = p.lock().unwrap();
        packages
            .get(&id)
            .map(|(bytes, _, _)| bytes.clone())
            .ok_or(StatusCode::NOT_FOUND)
    }
    async fn shares(
        State(p): State<Packages>,
        UrlPath((id, custodian)): UrlPath<(String, u32)>,
    ) -> Result<axum::Json<DealtShares>, StatusCode> {
        let packages = p.lock().unwrap();
        packages
            .get(&id)
            .and_then(|(_, deal, s)| {
                s.get(&custodian).cloned().map(|shares| DealtShares {
                    shares,
                    deal: deal.clone(),
                })
            })
            .map(axum::Json)
            .ok_or(StatusCode::NOT_FOUND)
    }
    async fn deal(
        State(p): State<Packages>,
        UrlPath(id): UrlPath<String>,
    ) -> Result<axum::Json<Signed>, StatusCode> {
        let packages = p.lock().unwrap();
        packages
            .get(&id)
            .map(|(_, deal, _)| axum::Json(deal.clone()))
            .ok_or(StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route("/v1/packages/{id}/wasm", get(wasm))
        .route("/v1/packages/{id}/deal", get(deal))
        .route("/v1/packages/{id}/shares/{custodian}", get(shares))
        .with_state(packages);
    axum::serve(listener, app).await.unwrap();
}

/// A client of these tests' plain-HTTP servers (reqwest is built with rustls, which needs its
/// provider chosen even for plain HTTP).
fn plain_http() -> reqwest::Client {
    quorumvm_server::tls::install_default_provider();
    reqwest::Client::new()
}
