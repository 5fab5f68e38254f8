//! Caller identities through their approvals: `GET /v1/identities/{name}` shows a proposed
//! identity and its key to a custodian operator, `POST /v1/identities/{name}/approvals` takes the
//! operator's signature over (name, key). At k the identity is active here, and every custodian
//! is sent `RegisterIdentity` with the k approvals, which it checks itself: the coordinator
//! counts approvals but cannot make one.
//!
//! Revocation runs the same way: `POST /v1/identities/{name}/revocations` takes an operator's
//! signature over the name (`quorumvm identity revoke`); at k the identity is refused here
//! (403 `identity_revoked`) and every custodian is sent `RevokeIdentity` with the k approvals,
//! which it checks itself. Nothing un-revokes a name.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use quorumvm_server::Body;
use quorumvm_wire::api::{ApproveRequest, IdentityInfo};
use quorumvm_wire::approval::Subject;

use crate::approve;
use crate::error::ApiError;
use crate::{State, background, store};

pub async fn show(
    AxumState(state): AxumState<Arc<State>>,
    Path(name): Path<String>,
) -> Result<Json<IdentityInfo>, ApiError> {
    let caller = state.identities.caller(&name).await?;
    Ok(Json(state.identity_info(&caller)))
}

pub async fn approve(
    AxumState(state): AxumState<Arc<State>>,
    Path(name): Path<String>,
    Body(request): Body<ApproveRequest>,
) -> Result<Json<IdentityInfo>, ApiError> {
    let caller = state.identities.caller(&name).await?;
    let subject = Subject::Identity {
        name: &caller.name,
        key: &caller.key,
    };
    let details = serde_json::json!({ "identity": name, "custodian": request.custodian });
    approve::check(
        &state,
        &subject,
        &request,
        "identity.approval_rejected",
        details,
    )
    .await?;
    let k = state.custodians.roster().threshold();
    let count = approve::record(&state, store::Approved::Identity, &name, &request).await?;
    crate::registry::hold_approval(&caller.approvals, request.custodian, request.signature);
    tracing::info!(identity = %name, custodian = request.custodian, count, "identity approval accepted");
    if count == k {
        tracing::info!(identity = %name, "identity active");
        background::push_identity(Arc::clone(&state), Arc::clone(&caller)).await;
    }
    Ok(Json(state.identity_info(&caller)))
}

pub async fn revoke(
    AxumState(state): AxumState<Arc<State>>,
    Path(name): Path<String>,
    Body(request): Body<ApproveRequest>,
) -> Result<Json<IdentityInfo>, ApiError> {
    let caller = state.identities.caller(&name).await?;
    let subject = Subject::Revocation { name: &caller.name };
    let details = serde_json::json!({ "identity": name, "custodian": request.custodian });
    approve::check(&state, &subject, &request, "revocation.rejected", details).await?;
    let k = state.custodians.roster().threshold();
    let count = approve::record(&state, store::Approved::Revocation, &name, &request).await?;
    crate::registry::hold_approval(&caller.revocations, request.custodian, request.signature);
    tracing::info!(identity = %name, custodian = request.custodian, count, "revocation approval accepted");
    if count == k {
        tracing::info!(identity = %name, "identity revoked");
        background::push_revocation(Arc::clone(&state), Arc::clone(&caller)).await;
    }
    Ok(Json(state.identity_info(&caller)))
}
