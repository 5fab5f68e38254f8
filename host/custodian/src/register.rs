//! `RegisterIdentity`: a caller identity reached its approvals at the coordinator; this
//! custodian checks the k approvals itself before it accepts a single request signed as it.
//!
//! The coordinator's word creates no caller: without k valid signatures of distinct operators
//! over exactly this name and key, the order is refused and nothing is stored. A name already
//! registered with another key is refused too (a caller is never silently re-keyed), and so is
//! a name k operators revoked, under any key.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_package::PublicKey;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::approval::{self, ApprovalError, Subject};
use quorumvm_wire::config::Cluster;
use quorumvm_wire::order::ApprovalSignature;

use crate::error::{self, ApiError};
use crate::state::Custodian;
use crate::store::{self, StoredCaller};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("{0}")]
    BadName(#[from] quorumvm_policy::PolicyError),
    #[error("the identity's key is not an ed25519 public key: {0}")]
    BadKey(String),
    #[error("{0}")]
    Approval(#[from] ApprovalError),
    #[error("identity `{0}` is registered here with another key")]
    OtherKey(String),
    #[error("identity `{0}` is revoked: its name is never registered again")]
    Revoked(String),
}

impl From<RegisterError> for ApiError {
    fn from(err: RegisterError) -> ApiError {
        let (status, code) = match &err {
            RegisterError::Approval(e) => return error::bad_approvals(e.clone()),
            RegisterError::BadName(_) | RegisterError::BadKey(_) => {
                (StatusCode::BAD_REQUEST, "bad_identity")
            }
            RegisterError::OtherKey(_) => (StatusCode::CONFLICT, "identity_conflict"),
            RegisterError::Revoked(_) => (StatusCode::FORBIDDEN, "identity_revoked"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

/// The identity's key, if `approvals` hold k valid, distinct approvals of `name` with it.
pub(crate) fn check(
    cluster: &Cluster,
    name: &str,
    public_key: &str,
    approvals: &[ApprovalSignature],
) -> Result<PublicKey, RegisterError> {
    quorumvm_policy::check_name(name)?;
    let key =
        PublicKey::from_file_text(public_key).map_err(|e| RegisterError::BadKey(e.to_string()))?;
    approval::check_threshold(cluster, &Subject::Identity { name, key: &key }, approvals)?;
    Ok(key)
}

/// Handles a `RegisterIdentity` order; idempotent.
pub(crate) async fn register(
    c: &Arc<Custodian>,
    name: String,
    public_key: String,
    approvals: Vec<ApprovalSignature>,
) -> Result<OrderResponse, ApiError> {
    let current = c.current();
    let key = check(&current.cluster, &name, &public_key, &approvals)?;
    // Registrations are rare; one at a time, so two keys for one name cannot race.
    let _one = c.activation.lock().await;
    if c.callers.is_revoked(&name) {
        return Err(RegisterError::Revoked(name).into());
    }
    let registered = || OrderResponse {
        status: "registered".into(),
        kits: 0,
        ..Default::default()
    };
    match c.callers.key(&name) {
        Some(known) if known == key => return Ok(registered()),
        Some(_) => return Err(RegisterError::OtherKey(name).into()),
        None => {}
    }
    let caller = StoredCaller {
        name: name.clone(),
        public_key: key.to_hex(),
        approvals,
        generation: current.generation,
    };
    let now = c.env.now_ms();
    c.writer
        .run(move |tx| store::insert_caller(tx, &caller, now))
        .await?;
    tracing::info!(identity = %name, "caller identity registered");
    c.callers.insert(name, key);
    Ok(registered())
}
