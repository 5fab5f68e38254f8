//! A custodian operator's and the coordinator's governance of callers and versions:
//! freezing an identity or a version at one party (`freeze`), approving an unfreeze
//! (`unfreeze`), approving an identity's revocation (`identity revoke`), approving a version's retirement (`retire`), clearing a
//! custodian the coordinator holds suspect (`clear-suspect`) and refreshing the shares
//! (`reshare`).
//!
//! A freeze is signed with the key of the party it binds and posted straight to that
//! party: an operator's to its own custodian (so the coordinator can neither withhold nor
//! forge it), the coordinator's to the coordinator. Revocations and retirements are approvals
//! like any other: one operator's signature, collected by the coordinator, which sends every
//! custodian the k of them to check.

use std::path::Path;

use quorumvm_package::{PackageId, SecretKey};
use quorumvm_wire::api::{
    ApproveRequest, ClearanceState, ErrorBody, FreezeState, IdentityInfo, ReshareReport,
    UnfreezeApproval, UnfreezeState, VersionInfo,
};
use quorumvm_wire::approval::Subject;
use quorumvm_wire::clearance::{Clearance, ReshareRequest};
use quorumvm_wire::config::{CoordinatorConfig, CustodianConfig};
use quorumvm_wire::freeze::{Authority, Freeze, Target, Unfreeze};
use quorumvm_wire::now_ms;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::CallError;
use crate::exit::{Code, Failure, Result};
use crate::publish::operator_key;

/// The party a `--config` file stands for: the coordinator's machine, or one custodian
/// operator's.
pub enum Party {
    Coordinator(CoordinatorConfig),
    Custodian(CustodianConfig),
}

impl Party {
    /// Reads a coordinator's or a custodian's config (the two have different fields).
    pub fn load(path: &Path) -> Result<Party> {
        match CoordinatorConfig::load(path) {
            Ok(c) => Ok(Party::Coordinator(c)),
            Err(coordinator) => match CustodianConfig::load(path) {
                Ok(c) => Ok(Party::Custodian(c)),
                Err(custodian) => Err(Failure::data(format!(
                    "{} is neither a coordinator's config ({coordinator}) nor a custodian's \
                     ({custodian})",
                    path.display()
                ))),
            },
        }
    }

    /// Where the party's statement goes, and the key it signs with.
    fn authority(&self) -> Result<(Authority, String, SecretKey)> {
        match self {
            Party::Coordinator(c) => {
                let key = quorumvm_coordinator::signing_key(c)
                    .map_err(|e| Failure::new(Code::NoInput, format!("{e:#}")))?;
                let mut addr = c.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip([127, 0, 0, 1].into());
                }
                Ok((Authority::Coordinator, format!("http://{addr}"), key))
            }
            Party::Custodian(c) => {
                let cluster = c.cluster().map_err(Failure::data)?;
                let url = cluster
                    .member(c.index)
                    .ok_or_else(|| {
                        Failure::data(format!("custodian {} is not in its own config", c.index))
                    })?
                    .url
                    .clone();
                Ok((Authority::Custodian(c.index), url, operator_key(c)?))
            }
        }
    }
}

/// Freezes `target` at `party`, at once.
pub async fn freeze(party: &Party, target: Target) -> Result<FreezeState> {
    let (at, url, key) = party.authority()?;
    let statement = Freeze {
        target,
        at,
        time_ms: now_ms(),
    };
    Ok(post(&url, "/v1/freezes", &statement.sign(&key)).await?)
}

/// One operator's approval of lifting `target`'s freezes older than `at` (now, if none is
/// given: the first approval fixes the time the others sign), sent to the coordinator.
pub async fn unfreeze(
    config: &CustodianConfig,
    target: Target,
    at: Option<u64>,
) -> Result<UnfreezeState> {
    let key = operator_key(config)?;
    let unfreeze = Unfreeze {
        target,
        time_ms: at.unwrap_or_else(now_ms),
    };
    let signature = quorumvm_wire::approval::sign(&key, &Subject::Unfreeze(&unfreeze));
    let request = UnfreezeApproval {
        unfreeze,
        custodian: config.index,
        signature: hex::encode(signature),
    };
    Ok(post(&config.coordinator_url, "/v1/unfreezes", &request).await?)
}

/// Clears custodian `index` at the coordinator, signed with the coordinator's key.
pub async fn clear_suspect(config: &CoordinatorConfig, index: u32) -> Result<ClearanceState> {
    let (_, url, key) = Party::Coordinator(config.clone()).authority()?;
    let statement = Clearance {
        custodian: index,
        time_ms: now_ms(),
    };
    Ok(post(&url, "/v1/custodians/clearances", &statement.sign(&key)).await?)
}

/// Asks the coordinator for a refresh of the shares now, signed with the coordinator's key.
pub async fn reshare(config: &CoordinatorConfig) -> Result<ReshareReport> {
    let (_, url, key) = Party::Coordinator(config.clone()).authority()?;
    let request = ReshareRequest { time_ms: now_ms() };
    Ok(post(&url, "/v1/reshares", &request.sign(&key)).await?)
}

/// One operator's approval of revoking identity `name`, sent to the coordinator.
pub async fn revoke(config: &CustodianConfig, name: &str) -> Result<IdentityInfo> {
    let key = operator_key(config)?;
    let signature = quorumvm_wire::approval::sign(&key, &Subject::Revocation { name });
    let request = ApproveRequest {
        custodian: config.index,
        signature: hex::encode(signature),
    };
    let path = format!("/v1/identities/{name}/revocations");
    Ok(post(&config.coordinator_url, &path, &request).await?)
}

/// One operator's approval of retiring version `package` (hex id), sent to the coordinator.
pub async fn retire(config: &CustodianConfig, package: &str) -> Result<VersionInfo> {
    let id = hex::decode(package)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(PackageId)
        .ok_or_else(|| Failure::data(format!("`{package}` is not a package id (64 hex digits)")))?;
    let key = operator_key(config)?;
    let signature = quorumvm_wire::approval::sign(&key, &Subject::Retirement { package: &id });
    let request = ApproveRequest {
        custodian: config.index,
        signature: hex::encode(signature),
    };
    let path = format!("/v1/packages/{package}/retirements");
    Ok(post(&config.coordinator_url, &path, &request).await?)
}

/// POSTs `body` as JSON; the answer, or the server's error as the other commands report it.
async fn post<T: DeserializeOwned>(
    base: &str,
    path: &str,
    body: &impl Serialize,
) -> std::result::Result<T, CallError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| CallError::Unreachable(format!("POST {url}: {e}")))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CallError::Unreachable(format!("POST {url}: {e}")))?;
    let api = |status: StatusCode, code: String, message: String| CallError::Api {
        status,
        code,
        message,
        retry_after: None,
    };
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            api(
                status,
                "bad_answer".into(),
                format!("unreadable answer: {e}"),
            )
        });
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => api(status, b.error.code, b.error.message),
        Err(_) => api(
            status,
            "error".into(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ),
    })
}
