//! The coordinator's own suspension of an identity: `POST /v1/suspensions` with a
//! [`Suspension`] addressed to the coordinator and signed with its own key (`quorumvm identity
//! suspend NAME --config coordinator.toml` signs it on the coordinator's machine). Applied
//! durably with its audit entry, then at once: the next request of the identity is refused
//! (403 `identity_suspended`). It binds the coordinator's admission only; each custodian's
//! operator suspends at its custodian with its own key (see the custodian's `suspend`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use quorumvm_server::Body;
use quorumvm_wire::api::SuspensionState;
use quorumvm_wire::signed::Signed;
use quorumvm_wire::suspension::{Authority, Suspension, SuspensionError};

use crate::error::ApiError;
use crate::{State, store};

pub async fn suspend(
    AxumState(state): AxumState<Arc<State>>,
    Body(signed): Body<Signed>,
) -> Result<Json<SuspensionState>, ApiError> {
    let statement = Suspension::open(
        &signed,
        &state.custodians.public_key(),
        Authority::Coordinator,
        state.env.now_ms(),
    )
    .map_err(refused)?;
    let caller = state.identities.caller(&statement.identity).await?;
    let (name, suspended, time_ms) = (
        statement.identity.clone(),
        statement.suspended,
        statement.time_ms,
    );
    let text = serde_json::to_string(&signed).expect("statements serialize");
    let now = state.env.now_ms();
    let applied = state
        .writer
        .run(move |tx| store::apply_suspension(tx, &name, suspended, time_ms, &text, now))
        .await?;
    if let Err(last) = applied {
        return Err(ApiError::conflict(
            "superseded_statement",
            format!(
                "a statement about `{}` signed at {last} ms was applied already; only a later \
                 one counts (this one: {time_ms} ms)",
                statement.identity
            ),
        ));
    }
    caller.set_suspension(suspended, time_ms);
    tracing::info!(identity = %statement.identity, suspended, "coordinator's suspension applied");
    Ok(Json(SuspensionState {
        identity: statement.identity,
        at: Authority::Coordinator,
        suspended,
        known: true,
    }))
}

fn refused(err: SuspensionError) -> ApiError {
    let (status, code) = match err {
        SuspensionError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_statement"),
        SuspensionError::BadSignature(_) | SuspensionError::Elsewhere { .. } => {
            (StatusCode::FORBIDDEN, "not_the_coordinator")
        }
        SuspensionError::Stale(_) => (StatusCode::UNAUTHORIZED, "stale_statement"),
    };
    ApiError::new(status, code, err.to_string())
}
