//! `POST /v1/suspensions`: this custodian's operator suspends an identity here, or lifts its
//! own suspension, at once.
//!
//! The statement comes straight from the operator (`quorumvm identity suspend --config
//! custodian.toml` posts it to this custodian), not through the coordinator: a suspension is
//! how an operator acts without, or against, the coordinator, which could otherwise withhold
//! it. Whoever delivers it, only the signature counts: it must verify under this custodian's
//! operator key from its own configuration, name this custodian, be fresh, and be later than
//! the last statement applied for the identity, so neither the coordinator nor another
//! custodian's operator can suspend or lift anything here, and an old statement replayed
//! cannot undo a newer one. It is applied durably with its audit entry, then at once to every
//! later session.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_wire::api::SuspensionState;
use quorumvm_wire::signed::Signed;
use quorumvm_wire::suspension::{Authority, Suspension, SuspensionError};

use crate::error::ApiError;
use crate::state::Custodian;
use crate::store::{self, NewSuspension};

/// A statement this custodian does not take.
fn refused(err: SuspensionError) -> ApiError {
    let (status, code) = match err {
        SuspensionError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_statement"),
        SuspensionError::BadSignature(_) | SuspensionError::Elsewhere { .. } => {
            (StatusCode::FORBIDDEN, "not_the_operator")
        }
        SuspensionError::Stale(_) => (StatusCode::UNAUTHORIZED, "stale_statement"),
    };
    ApiError::new(status, code, err.to_string())
}

pub(crate) async fn suspend(
    c: &Arc<Custodian>,
    signed: Signed,
) -> Result<SuspensionState, ApiError> {
    let here = Authority::Custodian(c.me);
    let operator = c
        .cluster
        .member(c.me)
        .expect("a configured member")
        .signing_key;
    let statement = Suspension::open(&signed, &operator, here, c.env.now_ms()).map_err(refused)?;
    quorumvm_policy::check_name(&statement.identity)
        .map_err(|e| ApiError::bad_request("bad_identity", e.to_string()))?;
    let record = NewSuspension {
        name: statement.identity.clone(),
        suspended: statement.suspended,
        time_ms: statement.time_ms,
        statement: serde_json::to_string(&signed).expect("statements serialize"),
        now_ms: c.env.now_ms(),
    };
    if let Err(last) = c
        .writer
        .run(move |tx| store::apply_suspension(tx, &record))
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "superseded_statement",
            format!(
                "a statement about `{}` signed at {last} ms was applied here already; only a \
                 later one counts (this one: {} ms)",
                statement.identity, statement.time_ms
            ),
        ));
    }
    tracing::info!(identity = %statement.identity, suspended = statement.suspended, "operator's suspension applied");
    c.callers.set_suspension(
        statement.identity.clone(),
        statement.suspended,
        statement.time_ms,
    );
    Ok(SuspensionState {
        known: c.callers.key(&statement.identity).is_some(),
        identity: statement.identity,
        at: here,
        suspended: statement.suspended,
    })
}
