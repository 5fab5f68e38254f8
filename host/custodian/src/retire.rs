//! `Retire`: k operators approved retiring a version; this custodian checks their signatures
//! itself, then never serves nor activates the version again.
//!
//! The coordinator can relay a retirement but cannot make one: without k valid signatures of
//! distinct operators over the package id (in their own domain), the order is refused and
//! nothing changes. A version retired before it was activated here is recorded all the same,
//! so it never activates; a restart reloads every retirement (checking the approvals again).

use std::sync::Arc;

use quorumvm_package::PackageId;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::approval::{self, ApprovalError, Subject};
use quorumvm_wire::config::Cluster;
use quorumvm_wire::order::ApprovalSignature;

use crate::error::{self, ApiError};
use crate::state::Custodian;
use crate::store::{self, Decision, StoredDecision};
use crate::versions::parse_package_id;

/// Whether `approvals` hold k valid, distinct approvals of retiring `package`.
pub(crate) fn check(
    cluster: &Cluster,
    package: &PackageId,
    approvals: &[ApprovalSignature],
) -> Result<(), ApprovalError> {
    approval::check_threshold(cluster, &Subject::Retirement { package }, approvals).map(|_| ())
}

/// Handles a `Retire` order; idempotent.
pub(crate) async fn retire(
    c: &Arc<Custodian>,
    package_id: &str,
    approvals: Vec<ApprovalSignature>,
) -> Result<OrderResponse, ApiError> {
    let id = parse_package_id(package_id).ok_or_else(|| {
        ApiError::bad_request("bad_package_id", "a package id is 64 hexadecimal digits")
    })?;
    let current = c.current();
    check(&current.cluster, &id, &approvals).map_err(error::bad_approvals)?;
    // Under the activation lock: the version cannot be activated halfway through.
    let _one = c.activation.lock().await;
    let decision = StoredDecision {
        subject: id.to_string(),
        approvals,
        generation: current.generation,
    };
    let now = c.env.now_ms();
    let added = c
        .writer
        .run(move |tx| store::insert_decision(tx, Decision::Retirement, &decision, now))
        .await?;
    if added {
        c.versions.retire_for_good(id);
        tracing::info!(package_id = %id, "version retired by its operators");
    }
    Ok(OrderResponse {
        status: "retired".into(),
        kits: 0,
        ..Default::default()
    })
}
