//! A client of the coordinator's HTTP API, for the commands that talk to a cluster (install,
//! approve, eval, demo, bench). Errors keep the server's status, code and message.

use std::time::Duration;

use quorumvm_core::circuit::Manifest;
use quorumvm_core::eval::{decode_outputs, encode_inputs};
use quorumvm_core::shamir::Threshold;
use quorumvm_core::shares::{self, share_inputs};
use quorumvm_package::{Domain, PackageId, SecretKey};
use quorumvm_sealing::{
    CustodianSecretKey, InputsBinding, OutputsBinding, open_outputs, seal_inputs,
};
use quorumvm_wire::api::{
    ApproveRequest, ClusterInfo, ErrorBody, EvalResponse, IdentityInfo, InstallRequest, VersionInfo,
};
use quorumvm_wire::config::Cluster;
use quorumvm_wire::now_ms;
use quorumvm_wire::request::{CallerRequest, Decimal, PrivateInputs};
use quorumvm_wire::signed::Signed;
use rand::RngCore;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure};

/// A caller's two credentials: the API key the coordinator admits it by, and the ed25519 key
/// (approved by k custodian operators) whose signature every custodian checks.
pub struct Caller {
    pub identity: String,
    pub api_key: String,
    pub key: SecretKey,
}

/// The exact version a request asks for, with its manifest as read from the package's own
/// bytes (not the coordinator's description of it): which inputs are private decides what
/// never leaves this machine in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub program: String,
    pub package_id: String,
    pub manifest: Manifest,
}

/// A signed request, and the one-time key its outputs come back sealed to (when it has
/// private inputs).
pub struct Prepared {
    pub signed: Signed,
    reply: Option<Reply>,
}

struct Reply {
    key: CustodianSecretKey,
    cluster: Cluster,
}

impl Caller {
    /// A fresh request (random id, now) for `target`, signed. Every input is checked here
    /// against its declaration; private inputs are Shamir-shared k-of-n and each custodian's
    /// shares sealed to its key in `cluster` (the caller's own, pinned copy of the custodians'
    /// keys: sealing to keys the coordinator names would let it read them).
    pub fn prepare(
        &self,
        target: &Target,
        inputs: &[(String, String)],
        cluster: Option<&Cluster>,
    ) -> Result<Prepared, CallError> {
        let encoded = encode_inputs(&target.manifest, inputs).map_err(|e| CallError::Local {
            code: "bad_input",
            message: e.to_string(),
        })?;
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let request_id = hex::encode(id);
        let is_private = |name: &str| {
            target
                .manifest
                .private_inputs
                .iter()
                .any(|d| d.name == name)
        };
        let (private, reply) = if target.manifest.private_inputs.is_empty() {
            (None, None)
        } else {
            let cluster = cluster.ok_or_else(|| CallError::Local {
                code: "unpinned_cluster",
                message: format!(
                    "`{}` has private inputs: pass the cluster's config (--cluster-config) so \
                     they are sealed to the custodians' own keys",
                    target.program
                ),
            })?;
            let seal_failed = |e: quorumvm_sealing::SealError| CallError::Local {
                code: "unpinned_cluster",
                message: format!("sealing to a custodian's key: {e}"),
            };
            let package = parse_package_id(&target.package_id)?;
            let t =
                Threshold::new(cluster.threshold(), cluster.n()).map_err(|e| CallError::Local {
                    code: "unpinned_cluster",
                    message: e.to_string(),
                })?;
            let shares = share_inputs(&encoded.private, t, &mut rand::rngs::OsRng);
            let mut sealed = std::collections::BTreeMap::new();
            for (member, shares) in cluster.members().iter().zip(&shares) {
                let binding = InputsBinding {
                    request_id: &request_id,
                    package,
                    custodian: member.index,
                };
                let envelope =
                    seal_inputs(member.sealing_key, &binding, shares).map_err(seal_failed)?;
                sealed.insert(member.index, hex::encode(envelope));
            }
            let key = CustodianSecretKey::generate();
            let private = PrivateInputs {
                sealed,
                reply_key: key.public().to_hex(),
            };
            let reply = Reply {
                key,
                cluster: cluster.clone(),
            };
            (Some(private), Some(reply))
        };
        let request = CallerRequest {
            request_id,
            identity: self.identity.clone(),
            program: target.program.clone(),
            package_id: target.package_id.clone(),
            inputs: inputs
                .iter()
                .filter(|(k, _)| !is_private(k))
                .map(|(k, v)| (k.clone(), Decimal(v.clone())))
                .collect(),
            private,
            time_ms: now_ms(),
        };
        Ok(Prepared {
            signed: Signed::sign(&request, Domain::Request, &self.key),
            reply,
        })
    }
}

impl Prepared {
    /// Opens the output shares the custodians sealed to this request's reply key (each must
    /// be sealed by that custodian's own key) and reconstructs the outputs from all of them,
    /// naming a custodian only when the others prove its share wrong. A request without private
    /// inputs was answered in the clear already.
    fn open(&self, target: &Target, answer: &mut EvalResponse) -> Result<(), CallError> {
        let Some(reply) = &self.reply else {
            return Ok(());
        };
        let refused = |message: String| CallError::Local {
            code: "bad_output_share",
            message,
        };
        let mut answers = Vec::with_capacity(answer.sealed_outputs.len());
        for (&index, hex_text) in &answer.sealed_outputs {
            let member = reply
                .cluster
                .member(index)
                .ok_or_else(|| refused(format!("custodian {index} is not in the cluster")))?;
            let bytes = hex::decode(hex_text)
                .map_err(|_| refused(format!("custodian {index}'s output shares are not hex")))?;
            let binding = OutputsBinding {
                request: self.signed.digest(),
                custodian: index,
            };
            let values = open_outputs(&reply.key, member.sealing_key, &binding, &bytes)
                .map_err(|e| refused(format!("custodian {index}'s output shares: {e}")))?;
            answers.push((index, values.to_vec()));
        }
        let outputs = target.manifest.outputs.len();
        // Checked here by their MACs, as the coordinator checks outputs in the clear.
        let reconstructed = shares::open_outputs(&answers, reply.cluster.threshold(), outputs)
            .map_err(|e| CallError::Local {
                code: "inconsistent_shares",
                message: e.to_string(),
            })?;
        answer.outputs = decode_outputs(&target.manifest, &reconstructed.values)
            .into_iter()
            .map(|(name, value)| (name, value.to_string()))
            .collect();
        answer.inconsistent = reconstructed.inconsistent;
        Ok(())
    }
}

fn parse_package_id(text: &str) -> Result<PackageId, CallError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| CallError::Local {
        code: "bad_package_id",
        message: format!("`{text}` is not a package id"),
    })?;
    Ok(PackageId(bytes))
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// What a call returned: the answer, or the server's error (or no answer at all).
#[derive(Debug)]
pub enum CallError {
    Unreachable(String),
    /// Refused on this machine, before anything was sent (or after the answer came back).
    Local {
        code: &'static str,
        message: String,
    },
    Api {
        status: StatusCode,
        code: String,
        message: String,
        retry_after: Option<String>,
    },
}

impl CallError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Api { status, .. } => Some(*status),
            CallError::Unreachable(_) | CallError::Local { .. } => None,
        }
    }
    pub fn code(&self) -> &str {
        match self {
            CallError::Api { code, .. } => code,
            CallError::Local { code, .. } => code,
            CallError::Unreachable(_) => "unreachable",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "no answer: {m}"),
            CallError::Local { code, message } => write!(f, "{code}: {message}"),
            CallError::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "{} {code}: {message}", status.as_u16()),
        }
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        let code = match e.status() {
            None if matches!(e, CallError::Local { .. }) => Code::DataErr,
            None => Code::Unavailable,
            Some(s) if s == StatusCode::SERVICE_UNAVAILABLE || s.is_server_error() => {
                Code::Unavailable
            }
            Some(s) if s == StatusCode::BAD_REQUEST => Code::DataErr,
            Some(_) => Code::Rejected,
        };
        Failure::new(code, e.to_string())
    }
}

impl Client {
    /// A client of the server at `at`, checked as its trust says (see [`Endpoint`]).
    pub fn new(at: &Endpoint) -> crate::exit::Result<Client> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64);
        let builder = match at.tls()? {
            Some(tls) => builder.use_preconfigured_tls(tls).https_only(true),
            None => builder,
        };
        let http = builder
            .build()
            .map_err(|e| Failure::data(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: at.url.clone(),
        })
    }

    async fn answer<T: DeserializeOwned>(
        response: reqwest::Result<reqwest::Response>,
    ) -> Result<(T, reqwest::header::HeaderMap), CallError> {
        let response = response.map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(|v| (v, headers))
                .map_err(|e| CallError::Api {
                    status,
                    code: "bad_answer".into(),
                    message: format!("unreadable answer: {e}"),
                    retry_after: None,
                });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => ("error".into(), String::from_utf8_lossy(&bytes).into_owned()),
        };
        Err(CallError::Api {
            status,
            code,
            message,
            retry_after: headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        Ok(
            Self::answer(self.http.get(format!("{}{path}", self.base)).send().await)
                .await?
                .0,
        )
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CallError> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if !r.status().is_success() {
            return Err(CallError::Api {
                status: r.status(),
                code: "error".into(),
                message: r.text().await.unwrap_or_default(),
                retry_after: None,
            });
        }
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| CallError::Unreachable(e.to_string()))
    }

    /// A bare round trip (the health endpoint): the floor `quorumvm bench` compares with.
    pub async fn ping(&self) -> Result<(), CallError> {
        self.get::<serde_json::Value>("/v1/health")
            .await
            .map(|_| ())
    }

    pub async fn cluster(&self) -> Result<ClusterInfo, CallError> {
        self.get("/v1/cluster").await
    }

    /// POSTs `body` as JSON: the answer, or the server's error.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, CallError> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        Ok(Self::answer(request.send().await).await?.0)
    }

    pub async fn install(&self, request: &InstallRequest) -> Result<VersionInfo, CallError> {
        self.post("/v1/packages", request).await
    }

    pub async fn approve(
        &self,
        package_id: &str,
        request: &ApproveRequest,
    ) -> Result<VersionInfo, CallError> {
        self.post(&format!("/v1/packages/{package_id}/approvals"), request)
            .await
    }

    pub async fn approve_identity(
        &self,
        name: &str,
        request: &ApproveRequest,
    ) -> Result<IdentityInfo, CallError> {
        self.post(&format!("/v1/identities/{name}/approvals"), request)
            .await
    }

    /// The version `program` (a name, or a package id) stands for now, which a caller then
    /// signs for, with the manifest read from the package's own bytes (checked against its
    /// id) in `sandbox`.
    pub async fn target(
        &self,
        program: &str,
        sandbox: &quorumvm_sandbox::Sandbox,
    ) -> Result<Target, CallError> {
        let versions: Vec<VersionInfo> = self.get("/v1/packages").await?;
        // A name's current version; else its highest (pending, so the coordinator says so).
        let named = |v: &&VersionInfo| v.name == program;
        let chosen = versions
            .iter()
            .find(|v| v.package_id == program)
            .or_else(|| versions.iter().filter(named).find(|v| v.current))
            .or_else(|| versions.iter().filter(named).max_by_key(|v| v.version));
        let chosen = chosen.ok_or_else(|| CallError::Api {
            status: StatusCode::NOT_FOUND,
            code: "unknown_program".into(),
            message: format!("no active program or package `{program}` is installed"),
            retry_after: None,
        })?;
        self.read_target(&chosen.name, &chosen.package_id, sandbox)
            .await
    }

    /// The version `package_id` of `program`, its manifest read from its own bytes.
    pub async fn read_target(
        &self,
        program: &str,
        package_id: &str,
        sandbox: &quorumvm_sandbox::Sandbox,
    ) -> Result<Target, CallError> {
        let bytes = self
            .get_bytes(&format!("/v1/packages/{package_id}/wasm"))
            .await?;
        let refused = |message: String| CallError::Local {
            code: "package_mismatch",
            message,
        };
        if quorumvm_package::package_id(&bytes).to_string() != package_id {
            return Err(refused(format!(
                "the coordinator served bytes that are not package {package_id}"
            )));
        }
        let (manifest, _) = sandbox
            .read_package(&bytes, quorumvm_sandbox::package_limits())
            .map_err(|e| refused(format!("package {package_id} does not read: {e}")))?;
        Ok(Target {
            program: program.to_string(),
            package_id: package_id.to_string(),
            manifest,
        })
    }

    /// Signs a fresh request for `target` and sends it; opens and reconstructs the outputs
    /// sealed to the caller when it has private inputs (`cluster` pins the custodians' keys).
    pub async fn eval(
        &self,
        caller: &Caller,
        target: &Target,
        inputs: &[(String, String)],
        cluster: Option<&Cluster>,
    ) -> Result<EvalResponse, CallError> {
        let prepared = caller.prepare(target, inputs, cluster)?;
        let mut answer = self.eval_signed(&caller.api_key, &prepared.signed).await?;
        prepared.open(target, &mut answer)?;
        Ok(answer)
    }

    /// Sends a signed request as it is (a test may replay or alter one).
    pub async fn eval_signed(
        &self,
        api_key: &str,
        request: &Signed,
    ) -> Result<EvalResponse, CallError> {
        Ok(Self::answer(
            self.http
                .post(format!("{}/v1/eval", self.base))
                .bearer_auth(api_key)
                .json(request)
                .send()
                .await,
        )
        .await?
        .0)
    }

    /// The coordinator's metrics as (name with labels, value) pairs.
    pub async fn metrics(&self) -> Result<Vec<(String, f64)>, CallError> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .text()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! The caller's side of a private evaluation, with the test as custodians and as a
    //! coordinator that tampers with what it relays.

    use std::collections::BTreeMap;

    use quorumvm_core::Fp;
    use quorumvm_sealing::{CustodianPublicKey, open_inputs, seal_outputs};
    use quorumvm_wire::config::CustodianEntry;

    use super::*;

    /// A 2-of-3 cluster whose sealing keys the test holds.
    fn cluster() -> (Cluster, Vec<CustodianSecretKey>) {
        let keys: Vec<_> = (0..3).map(|_| CustodianSecretKey::generate()).collect();
        let entries: Vec<CustodianEntry> = keys
            .iter()
            .zip(1..)
            .map(|(k, index)| CustodianEntry {
                index,
                url: format!("http://127.0.0.1:{}", 7100 + index),
                operator_key: SecretKey::generate().public().to_hex(),
                sealing_key: k.public().to_hex(),
                tls_fingerprint: None,
            })
            .collect();
        (Cluster::new(2, &entries).unwrap(), keys)
    }

    const ECHO: &str =
        "program echo\nprivate salary in 0..1000000 scale 2\ninput age in 0..100\noutput salary\n";

    fn target() -> Target {
        let program = quorumvm_compiler::compile(ECHO, "echo").unwrap();
        Target {
            program: "echo".into(),
            package_id: "ab".repeat(32),
            manifest: program.manifest,
        }
    }

    fn caller() -> Caller {
        Caller {
            identity: "alice".into(),
            api_key: "qvm_test".into(),
            key: SecretKey::generate(),
        }
    }

    fn inputs(salary: &str) -> Vec<(String, String)> {
        vec![
            ("salary".into(), salary.into()),
            ("age".into(), "41".into()),
        ]
    }

    /// What honest custodians answer for the echo program: each opens its envelope, runs its
    /// session with the others (kits from the test dealer) and seals its answer (its share of
    /// the salary, the program's one output, and what checks it) back to the reply key.
    fn answer(prepared: &Prepared, keys: &[CustodianSecretKey]) -> EvalResponse {
        use quorumvm_core::session::{Session, Setup, Step};
        let request: CallerRequest = prepared.signed.parse_unverified().unwrap();
        let private = request.private.as_ref().unwrap();
        let reply = CustodianPublicKey::from_file_text(&private.reply_key).unwrap();
        let circuit = quorumvm_compiler::compile(ECHO, "echo").unwrap().circuit;
        let t = quorumvm_core::shamir::Threshold::new(2, 3).unwrap();
        let kits = quorumvm_core::dealer::deal_kits(&circuit, &[], t, &mut rand::thread_rng());
        let quorum = vec![1u32, 2, 3];
        let mut sessions = Vec::new();
        let mut sent = Vec::new();
        for ((key, index), kit) in keys.iter().zip(1u32..).zip(kits) {
            let binding = InputsBinding {
                request_id: &request.request_id,
                package: parse_package_id(&request.package_id).unwrap(),
                custodian: index,
            };
            let envelope = hex::decode(&private.sealed[&index]).unwrap();
            let shares = open_inputs(key, &binding, &envelope).unwrap();
            let (session, step) = Session::begin(Setup {
                circuit: circuit.clone(),
                me: index,
                quorum: quorum.clone(),
                threshold: 2,
                secrets: vec![],
                inputs: vec![Fp::from(41)],
                private_inputs: shares.to_vec(),
                kit,
            })
            .unwrap();
            let Step::Send(message) = step else {
                panic!("the masks of the private input take a round")
            };
            sessions.push(session);
            sent.push((index, message));
        }
        let mut sealed_outputs = BTreeMap::new();
        for ((mut session, key), index) in sessions.into_iter().zip(keys).zip(1u32..) {
            let others: Vec<_> = sent.iter().filter(|(x, _)| *x != index).cloned().collect();
            let Step::Done(answer) = session.advance(&others).unwrap() else {
                panic!("one round")
            };
            let out = OutputsBinding {
                request: prepared.signed.digest(),
                custodian: index,
            };
            let sealed = seal_outputs(reply, key, &out, &answer).unwrap();
            sealed_outputs.insert(index, hex::encode(sealed));
        }
        EvalResponse {
            request_id: request.request_id,
            program: "echo".into(),
            version: 1,
            package_id: request.package_id,
            outputs: BTreeMap::new(),
            sealed_outputs,
            rounds: 0,
            custodians: vec![1, 2, 3],
            inconsistent: vec![],
            remaining_budget: 0,
        }
    }

    #[test]
    fn private_inputs_leave_only_sealed_and_come_back_reconstructed() {
        let (cluster, keys) = cluster();
        let target = target();
        let prepared = caller()
            .prepare(&target, &inputs("84000.25"), Some(&cluster))
            .unwrap();
        // The request the coordinator relays: the visible input in the clear, the salary not.
        let body = prepared.signed.body.clone();
        assert!(body.contains("\"age\":\"41\""), "{body}");
        assert!(
            !body.contains("84000") && !body.contains("8400025"),
            "{body}"
        );
        let mut answer = answer(&prepared, &keys);
        prepared.open(&target, &mut answer).unwrap();
        assert_eq!(answer.outputs["salary"], "84000.25");
        // Without the custodians' pinned keys, a program with private inputs is refused here.
        let e = caller().prepare(&target, &inputs("1"), None).err().unwrap();
        assert_eq!(e.code(), "unpinned_cluster");
        // And a private value outside its range never leaves this machine.
        let e = caller()
            .prepare(&target, &inputs("2000000"), Some(&cluster))
            .err()
            .unwrap();
        assert_eq!(e.code(), "bad_input");
    }

    #[test]
    fn output_shares_a_coordinator_forged_or_moved_are_refused() {
        let (cluster, keys) = cluster();
        let target = target();
        let prepared = caller()
            .prepare(&target, &inputs("84000.25"), Some(&cluster))
            .unwrap();
        let honest = answer(&prepared, &keys);
        // A coordinator seals a share of its choosing to the reply key (it is in the request).
        let request: CallerRequest = prepared.signed.parse_unverified().unwrap();
        let reply =
            CustodianPublicKey::from_file_text(&request.private.unwrap().reply_key).unwrap();
        let mut forged = honest.clone();
        let own = CustodianSecretKey::generate();
        let binding = OutputsBinding {
            request: prepared.signed.digest(),
            custodian: 2,
        };
        let lie = seal_outputs(reply, &own, &binding, &[Fp::from(1); 6]).unwrap();
        forged.sealed_outputs.insert(2, hex::encode(lie));
        let e = prepared.open(&target, &mut forged).unwrap_err();
        assert_eq!(e.code(), "bad_output_share", "{e}");
        // Custodian 1's envelope relabelled as custodian 2's does not open either.
        let mut moved = honest.clone();
        let one = moved.sealed_outputs[&1].clone();
        moved.sealed_outputs.insert(2, one);
        let e = prepared.open(&target, &mut moved).unwrap_err();
        assert_eq!(e.code(), "bad_output_share", "{e}");
        // Another request's output shares do not open for this one.
        let other = caller()
            .prepare(&target, &inputs("84000.25"), Some(&cluster))
            .unwrap();
        let mut replayed = answer(&other, &keys);
        assert!(prepared.open(&target, &mut replayed).is_err());
    }
}
