//! A custodian operator's and the coordinator's governance of callers and versions:
//! freezing an identity or a version at one party (`freeze`), approving an unfreeze
//! (`unfreeze`), approving an identity's revocation (`identity revoke`), approving a version's
//! retirement (`retire`), clearing a custodian the coordinator holds suspect (`clear-suspect`)
//! and refreshing the shares (`reshare`).
//!
//! A freeze is signed with the key of the party it binds and posted straight to that
//! party: an operator's to its own custodian (so the coordinator can neither withhold nor
//! forge it), the coordinator's to the coordinator. Revocations and retirements are approvals
//! like any other: one operator's signature (made on the operator's machine, [`Operator`]),
//! collected by the coordinator, which sends every custodian the k of them to check.

use quorumvm_package::{PackageId, SecretKey};
use quorumvm_wire::api::{
    ClearanceState, FreezeState, IdentityInfo, ReshareReport, UnfreezeApproval, UnfreezeState,
    VersionInfo,
};
use quorumvm_wire::approval::Subject;
use quorumvm_wire::clearance::{Clearance, ReshareRequest};
use quorumvm_wire::config::CoordinatorConfig;
use quorumvm_wire::freeze::{Authority, Freeze, Target, Unfreeze};
use quorumvm_wire::now_ms;

use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure, Result};
use crate::operator::Operator;

/// The coordinator's own side: the key it signs its statements with (in its data directory,
/// so on its machine) and where it answers.
pub struct CoordinatorSide {
    client: Client,
    key: SecretKey,
}

impl CoordinatorSide {
    /// On the coordinator's machine: it answers where it listens.
    pub fn local(config: &CoordinatorConfig) -> Result<CoordinatorSide> {
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        let pin = quorumvm_coordinator::tls_fingerprint(config)
            .map_err(|e| Failure::new(Code::NoInput, format!("{e:#}")))?;
        let scheme = if pin.is_some() { "https" } else { "http" };
        CoordinatorSide::at(config, &Endpoint::pinned(format!("{scheme}://{addr}"), pin))
    }

    /// With the coordinator's data directory at hand, reaching it `at` (the demo, from the
    /// compose network's `tools` service).
    pub fn at(config: &CoordinatorConfig, at: &Endpoint) -> Result<CoordinatorSide> {
        let key = quorumvm_coordinator::signing_key(config)
            .map_err(|e| Failure::new(Code::NoInput, format!("{e:#}")))?;
        Ok(CoordinatorSide {
            client: Client::new(at)?,
            key,
        })
    }
}

/// Freezes `target` at the coordinator, at once: it admits none of its requests.
pub async fn freeze(coordinator: &CoordinatorSide, target: Target) -> Result<FreezeState> {
    let CoordinatorSide { client, key } = coordinator;
    let statement = Freeze {
        target,
        at: Authority::Coordinator,
        time_ms: now_ms(),
    };
    Ok(client.post("/v1/freezes", &statement.sign(key)).await?)
}

/// One operator's approval of lifting `target`'s freezes older than `at` (now, if none is
/// given: the first approval fixes the time the others sign), sent to the coordinator.
pub async fn unfreeze(
    operator: &Operator,
    target: Target,
    at: Option<u64>,
) -> Result<UnfreezeState> {
    let unfreeze = Unfreeze {
        target,
        time_ms: at.unwrap_or_else(now_ms),
    };
    let signature = operator.sign(&Subject::Unfreeze(&unfreeze));
    let request = UnfreezeApproval {
        unfreeze,
        custodian: operator.index,
        signature,
    };
    Ok(operator.coordinator.post("/v1/unfreezes", &request).await?)
}

/// Clears custodian `index` at the coordinator, signed with the coordinator's key.
pub async fn clear_suspect(coordinator: &CoordinatorSide, index: u32) -> Result<ClearanceState> {
    let CoordinatorSide { client, key } = coordinator;
    let statement = Clearance {
        custodian: index,
        time_ms: now_ms(),
    };
    Ok(client
        .post("/v1/custodians/clearances", &statement.sign(key))
        .await?)
}

/// Asks the coordinator for a refresh of the shares now, signed with the coordinator's key.
pub async fn reshare(coordinator: &CoordinatorSide) -> Result<ReshareReport> {
    let CoordinatorSide { client, key } = coordinator;
    let request = ReshareRequest { time_ms: now_ms() };
    Ok(client.post("/v1/reshares", &request.sign(key)).await?)
}

/// One operator's approval of revoking identity `name`, sent to the coordinator.
pub async fn revoke(operator: &Operator, name: &str) -> Result<IdentityInfo> {
    let request = operator.approve(&Subject::Revocation { name });
    let path = format!("/v1/identities/{name}/revocations");
    Ok(operator.coordinator.post(&path, &request).await?)
}

/// One operator's approval of retiring version `package` (hex id), sent to the coordinator.
pub async fn retire(operator: &Operator, package: &str) -> Result<VersionInfo> {
    let id = hex::decode(package)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(PackageId)
        .ok_or_else(|| Failure::data(format!("`{package}` is not a package id (64 hex digits)")))?;
    let request = operator.approve(&Subject::Retirement { package: &id });
    let path = format!("/v1/packages/{package}/retirements");
    Ok(operator.coordinator.post(&path, &request).await?)
}
