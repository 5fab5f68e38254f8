//! Approvals by custodian operators, counted per distinct custodian: of a version
//! (`POST /v1/packages/{id}/approvals`; at k it activates), and the check every kind of approval
//! goes through here (versions, identities, revocations, retirements). The coordinator counts
//! approvals but cannot make one: each custodian checks the k signatures again itself.

use quorumvm_ledger::Commit as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use quorumvm_ledger::Sql;
use quorumvm_server::Body;
use quorumvm_wire::api::{ApproveRequest, VersionInfo, VersionState};
use quorumvm_wire::approval::{ApprovalError, Subject};
use quorumvm_wire::order::ApprovalSignature;

use crate::error::ApiError;
use crate::packages::{info, known, parse_id};
use crate::store::StoreError;
use crate::{State, background, store};

/// Checks one operator's approval of `subject` against the cluster's keys; a refusal is
/// audited as `refused` (with `details` and the reason) and answered 400.
pub async fn check(
    state: &State,
    subject: &Subject<'_>,
    request: &ApproveRequest,
    refused: &'static str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let approval = ApprovalSignature {
        custodian: request.custodian,
        signature: request.signature.clone(),
    };
    match quorumvm_wire::approval::check(&state.custodians.roster().cluster, subject, &approval) {
        Ok(_) => Ok(()),
        Err(e) => Err(refused_approval(state, refused, details, e).await),
    }
}

/// Stores one checked approval of `key` (a package id or an identity's name) of `kind`;
/// returns how many distinct custodians approved it now.
pub async fn record(
    state: &State,
    kind: store::Approved,
    key: &str,
    request: &ApproveRequest,
) -> Result<usize, ApiError> {
    let (count, ()) = record_then(state, kind, key, request, |_, _, _, _| Ok(())).await?;
    Ok(count)
}

/// [`record`], then `then(tx, key, count, now)` in the same transaction: what the approval
/// that reaches k changes (an activation, a retirement) commits with it.
pub async fn record_then<T: Send + 'static>(
    state: &State,
    kind: store::Approved,
    key: &str,
    request: &ApproveRequest,
    then: impl FnOnce(&dyn Sql, &str, usize, u64) -> Result<T, StoreError> + Send + 'static,
) -> Result<(usize, T), ApiError> {
    let (key, custodian, signature) = (
        key.to_string(),
        request.custodian,
        request.signature.clone(),
    );
    let now = state.env.now_ms();
    state
        .storage
        .commit(move |tx| {
            let count = store::approve(tx, kind, &key, custodian, &signature, now)?;
            let then = then(tx, &key, count, now)?;
            Ok::<_, StoreError>((count, then))
        })
        .await
        .map_err(ApiError::from)
}

/// Audits a refused approval with the reason, and returns the 400 that answers it (or the
/// storage error, if the entry could not be written).
async fn refused_approval(
    state: &State,
    kind: &'static str,
    mut details: serde_json::Value,
    err: ApprovalError,
) -> ApiError {
    let reason = err.to_string();
    details["reason"] = serde_json::json!(reason);
    let now = state.env.now_ms();
    let logged = state
        .storage
        .commit(move |tx| store::audit(tx, now, "coordinator", kind, details))
        .await;
    match logged {
        Ok(()) => ApiError::bad_request("bad_approval", reason),
        Err(e) => e.into(),
    }
}

pub async fn approve(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    Body(request): Body<ApproveRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    let version = known(&state, &id).await?;
    let package = parse_id(&id)?;
    let subject = Subject::Version {
        package: &package,
        manifest: &version.manifest,
        deal: &version.deal.digest(),
    };
    let details = serde_json::json!({ "package_id": id, "custodian": request.custodian });
    check(&state, &subject, &request, "approval.rejected", details).await?;
    let k = state.custodians.roster().threshold();
    let job_version = Arc::clone(&version);
    let (count, activated) = record_then(
        &state,
        store::Approved::Version,
        &id,
        &request,
        move |tx, id, count, now| {
            if count >= k {
                store::activate(tx, id, &job_version.manifest, now)
            } else {
                Ok(None)
            }
        },
    )
    .await?;
    crate::registry::hold_approval(&version.approvals, request.custodian, request.signature);
    tracing::info!(package = %id, custodian = request.custodian, count, "approval accepted");
    match activated {
        None => {}
        Some(store::Activated::Superseded) => {
            *version.state.lock().expect("state lock") = VersionState::Retired;
            tracing::info!(package = %id, name = %version.manifest.name, version = version.manifest.version, "approved, but a higher version is active: retired");
        }
        Some(store::Activated::Current { retired }) => {
            for old in retired.iter().filter_map(|r| state.registry.get(r)) {
                *old.state.lock().expect("state lock") = VersionState::Retired;
            }
            *version.state.lock().expect("state lock") = VersionState::Active;
            state.registry.set_alias(&version.manifest.name, &id);
            tracing::info!(package = %id, name = %version.manifest.name, version = version.manifest.version, ?retired, "version active");
            background::push_activation(Arc::clone(&state), Arc::clone(&version)).await;
        }
    }
    Ok(Json(info(&state, &version)))
}
