//! A client of the coordinator's HTTP API, for the commands that talk to a cluster (install,
//! approve, eval, demo, bench). Errors keep the server's status, code and message.

use std::time::Duration;

use quorumvm_package::{Domain, SecretKey};
use quorumvm_wire::api::{
    ApproveRequest, ClusterInfo, ErrorBody, EvalResponse, IdentityInfo, InstallRequest, VersionInfo,
};
use quorumvm_wire::now_ms;
use quorumvm_wire::request::{CallerRequest, Decimal};
use quorumvm_wire::signed::Signed;
use rand::RngCore;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::exit::{Code, Failure};

/// A caller's two credentials: the API key the coordinator admits it by, and the ed25519 key
/// (approved by k custodian operators) whose signature every custodian checks.
pub struct Caller {
    pub identity: String,
    pub api_key: String,
    pub key: SecretKey,
}

/// The exact version a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub program: String,
    pub package_id: String,
}

impl Caller {
    /// A fresh request (random id, now), signed.
    pub fn sign(&self, target: &Target, inputs: &[(String, String)]) -> Signed {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let request = CallerRequest {
            request_id: hex::encode(id),
            identity: self.identity.clone(),
            program: target.program.clone(),
            package_id: target.package_id.clone(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.clone(), Decimal(v.clone())))
                .collect(),
            time_ms: now_ms(),
        };
        Signed::sign(&request, Domain::Request, &self.key)
    }
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
            CallError::Unreachable(_) => None,
        }
    }
    pub fn code(&self) -> &str {
        match self {
            CallError::Api { code, .. } => code,
            CallError::Unreachable(_) => "unreachable",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "no answer: {m}"),
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
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .build()
            .expect("a plain HTTP client builds");
        Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
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

    pub async fn install(&self, request: &InstallRequest) -> Result<VersionInfo, CallError> {
        Ok(Self::answer(
            self.http
                .post(format!("{}/v1/packages", self.base))
                .json(request)
                .send()
                .await,
        )
        .await?
        .0)
    }

    pub async fn approve(
        &self,
        package_id: &str,
        request: &ApproveRequest,
    ) -> Result<VersionInfo, CallError> {
        Ok(Self::answer(
            self.http
                .post(format!("{}/v1/packages/{package_id}/approvals", self.base))
                .json(request)
                .send()
                .await,
        )
        .await?
        .0)
    }

    pub async fn approve_identity(
        &self,
        name: &str,
        request: &ApproveRequest,
    ) -> Result<IdentityInfo, CallError> {
        Ok(Self::answer(
            self.http
                .post(format!("{}/v1/identities/{name}/approvals", self.base))
                .json(request)
                .send()
                .await,
        )
        .await?
        .0)
    }

    /// The version `program` (a name, or a package id) stands for now, which a caller then
    /// signs for.
    pub async fn target(&self, program: &str) -> Result<Target, CallError> {
        let versions: Vec<VersionInfo> = self.get("/v1/packages").await?;
        // A name's current version; else its highest (pending, so the coordinator says so).
        let named = |v: &&VersionInfo| v.name == program;
        let chosen = versions
            .iter()
            .find(|v| v.package_id == program)
            .or_else(|| versions.iter().filter(named).find(|v| v.current))
            .or_else(|| versions.iter().filter(named).max_by_key(|v| v.version));
        chosen
            .map(|v| Target {
                program: v.name.clone(),
                package_id: v.package_id.clone(),
            })
            .ok_or_else(|| CallError::Api {
                status: StatusCode::NOT_FOUND,
                code: "unknown_program".into(),
                message: format!("no active program or package `{program}` is installed"),
                retry_after: None,
            })
    }

    /// Signs a fresh request for `target` and sends it.
    pub async fn eval(
        &self,
        caller: &Caller,
        target: &Target,
        inputs: &[(String, String)],
    ) -> Result<EvalResponse, CallError> {
        self.eval_signed(&caller.api_key, &caller.sign(target, inputs))
            .await
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
