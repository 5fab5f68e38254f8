//! `RevokeIdentity`: k operators approved revoking an identity; this custodian checks their
//! signatures itself, then refuses the name for good.
//!
//! The coordinator can relay a revocation but cannot make one: without k valid signatures of
//! distinct operators over the name (in their own domain), the order is refused and nothing
//! changes. Nothing undoes a revocation: no order lifts it, a restart reloads it (checking the
//! approvals again), and the name is never registered again, under any key.

use std::sync::Arc;

use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::approval::{self, ApprovalError, Subject};
use quorumvm_wire::config::Cluster;
use quorumvm_wire::order::ApprovalSignature;

use crate::error::{self, ApiError};
use crate::state::Custodian;
use crate::store::{self, Decision, StoredDecision};

/// Whether `approvals` hold k valid, distinct approvals of revoking `name`.
pub(crate) fn check(
    cluster: &Cluster,
    name: &str,
    approvals: &[ApprovalSignature],
) -> Result<(), ApprovalError> {
    approval::check_threshold(cluster, &Subject::Revocation { name }, approvals).map(|_| ())
}

/// Handles a `RevokeIdentity` order; idempotent.
pub(crate) async fn revoke(
    c: &Arc<Custodian>,
    name: String,
    approvals: Vec<ApprovalSignature>,
) -> Result<OrderResponse, ApiError> {
    let current = c.current();
    check(&current.cluster, &name, &approvals).map_err(error::bad_approvals)?;
    // Under the registration lock: a registration cannot slip in after the revocation.
    let _one = c.activation.lock().await;
    let revoked = || OrderResponse {
        status: "revoked".into(),
        kits: 0,
        ..Default::default()
    };
    if c.callers.is_revoked(&name) {
        return Ok(revoked());
    }
    let decision = StoredDecision {
        subject: name.clone(),
        approvals,
        generation: current.generation,
    };
    let now = c.env.now_ms();
    c.writer
        .run(move |tx| store::insert_decision(tx, Decision::Revocation, &decision, now))
        .await?;
    tracing::info!(identity = %name, "caller identity revoked");
    c.callers.revoke(name);
    Ok(revoked())
}
