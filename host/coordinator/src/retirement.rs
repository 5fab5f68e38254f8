//! Retiring a version by k custodian operators: `POST /v1/packages/{id}/retirements` takes one
//! operator's signature over the package id (`quorumvm retire`). At k the version is retired
//! here (410 `retired` to every request) and every custodian is sent `Retire` with the k
//! approvals, which it checks itself: the coordinator counts approvals but cannot make one,
//! and nothing un-retires a version.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use quorumvm_server::Body;
use quorumvm_wire::api::{ApproveRequest, VersionInfo, VersionState};
use quorumvm_wire::approval::Subject;

use crate::approve;
use crate::error::ApiError;
use crate::packages::{info, known, parse_id};
use crate::{State, background, store};

pub async fn approve(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    Body(request): Body<ApproveRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    let version = known(&state, &id).await?;
    let package = parse_id(&id)?;
    let subject = Subject::Retirement { package: &package };
    let details = serde_json::json!({ "package_id": id, "custodian": request.custodian });
    approve::check(&state, &subject, &request, "retirement.rejected", details).await?;
    let k = state.custodians.roster().threshold();
    let (count, ()) = approve::record_then(
        &state,
        store::Approved::Retirement,
        &id,
        &request,
        move |tx, id, count, now| {
            if count == k {
                store::retire(tx, id, now)?;
            }
            Ok(())
        },
    )
    .await?;
    crate::registry::hold_approval(&version.retirements, request.custodian, request.signature);
    tracing::info!(package = %id, custodian = request.custodian, count, "retirement approval accepted");
    if count == k {
        *version.state.lock().expect("state lock") = VersionState::Retired;
        tracing::info!(package = %id, "version retired by its operators");
        background::push_retirement(Arc::clone(&state), Arc::clone(&version)).await;
    }
    Ok(Json(info(&state, &version)))
}
