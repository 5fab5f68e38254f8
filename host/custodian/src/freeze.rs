//! Freezing a caller identity or a version at this custodian, and lifting a freeze.
//!
//! `POST /v1/freezes`: this custodian's operator freezes a target here, at once. The statement
//! comes straight from the operator (`quorumvm freeze --config custodian.toml` posts it to this
//! custodian), not through the coordinator, which could otherwise withhold it. Whoever
//! delivers it, only the signature counts: it must verify under this custodian's operator key
//! from its own configuration, name this custodian, be fresh, and be later than the last
//! statement applied about the target. It is applied durably with its audit entry, then at once
//! to every later session.
//!
//! `Unfreeze` (an order the coordinator relays once k operators approved): this custodian
//! checks the k approvals itself and lifts its freeze of the target if the unfreeze is later
//! than it; a freeze signed after the unfreeze stays. The coordinator can relay an unfreeze but
//! cannot make one.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_server::freeze::NewFreeze;
use quorumvm_wire::api::{FreezeState, OrderResponse};
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::freeze::{Authority, Freeze, FreezeError, Target, Unfreeze};
use quorumvm_wire::order::ApprovalSignature;
use quorumvm_wire::signed::Signed;

use crate::error::{self, ApiError};
use crate::state::Custodian;
use crate::store;
use crate::versions::parse_package_id;

/// A statement this custodian does not take.
fn refused(err: FreezeError) -> ApiError {
    quorumvm_server::freeze::refused(err, "not_the_operator")
}

/// The operator's freeze: applied before it is answered.
pub(crate) async fn freeze(c: &Arc<Custodian>, signed: Signed) -> Result<FreezeState, ApiError> {
    let here = Authority::Custodian(c.me());
    // None once this custodian left the cluster in a rotation: it serves nothing to freeze.
    let operator = c
        .cluster()
        .member(c.me())
        .map(|m| m.operator_key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "not_a_member",
                format!("custodian {} left the cluster in a rotation", c.me()),
            )
        })?;
    let statement = Freeze::open(&signed, &operator, here, c.env.now_ms()).map_err(refused)?;
    let record = NewFreeze {
        target: statement.target.clone(),
        frozen: true,
        time_ms: statement.time_ms,
        statement: serde_json::to_string(&signed).expect("statements serialize"),
        actor: store::OPERATOR,
        now_ms: c.env.now_ms(),
    };
    apply(c, record).await?;
    tracing::info!(target = %statement.target, "operator's freeze applied");
    Ok(FreezeState {
        known: known(c, &statement.target),
        target: statement.target,
        at: here,
        frozen: true,
    })
}

/// Handles an `Unfreeze` order: k valid approvals, not dated in the future; idempotent.
pub(crate) async fn unfreeze(
    c: &Arc<Custodian>,
    unfreeze: Unfreeze,
    approvals: Vec<ApprovalSignature>,
) -> Result<OrderResponse, ApiError> {
    unfreeze
        .target
        .check()
        .map_err(|e| ApiError::bad_request("bad_target", e))?;
    unfreeze.check_time(c.env.now_ms()).map_err(refused)?;
    approval::check_threshold(&c.cluster(), &Subject::Unfreeze(&unfreeze), &approvals)
        .map_err(error::bad_approvals)?;
    let record = NewFreeze {
        target: unfreeze.target.clone(),
        frozen: false,
        time_ms: unfreeze.time_ms,
        statement: serde_json::json!({ "unfreeze": unfreeze, "approvals": approvals }).to_string(),
        actor: store::COORDINATOR,
        now_ms: c.env.now_ms(),
    };
    let status = match apply(c, record).await {
        Ok(()) => {
            tracing::info!(target = %unfreeze.target, "unfreeze applied");
            "unfrozen"
        }
        // A later statement holds: this unfreeze was taken before, or a freeze came after it.
        Err(e) if e.code == "superseded_statement" => "superseded",
        Err(e) => return Err(e),
    };
    Ok(OrderResponse {
        status: status.into(),
        kits: 0,
        ..Default::default()
    })
}

/// Applies a freeze or an unfreeze (see [`quorumvm_server::freeze::commit`]).
async fn apply(c: &Custodian, record: NewFreeze) -> Result<(), ApiError> {
    quorumvm_server::freeze::commit(&c.writer, &c.freezes, record).await
}

/// Whether this custodian knows the target: an identity registered here, a version held.
fn known(c: &Custodian, target: &Target) -> bool {
    match target {
        Target::Identity(name) => c.callers.key(name).is_some(),
        Target::Version(id) => {
            parse_package_id(id).is_some_and(|id| c.versions.held(&id).is_some())
        }
    }
}
