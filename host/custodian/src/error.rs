//! The custodian's refusals as the one error every route answers with
//! ([`quorumvm_server::ApiError`]): a status and a stable code in
//! [`quorumvm_wire::api::ErrorBody`].
//!
//! The modules keep their own typed errors; they become an [`ApiError`] at the edge, where each
//! is given the status and code its caller (the coordinator, or a peer) acts on. Messages name
//! ids, counts and peers, never shares or values.

use axum::http::StatusCode;
use quorumvm_wire::approval::ApprovalError;
use quorumvm_wire::order::OrderError;

use crate::mailbox::{OpenError, WaitError};
use crate::peers::SendError;
use crate::store::StoreError;
use quorumvm_wire::code::ErrorCode;

pub(crate) use quorumvm_server::ApiError;

pub(crate) fn unknown_version(package_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_version",
        format!("version {package_id} is not active on this custodian"),
    )
}

/// The version is activated here, but the custodians have not checked its shares together
/// yet: it does not serve.
pub(crate) fn shares_unchecked(package_id: &str) -> ApiError {
    ApiError::of(
        ErrorCode::SharesUnchecked,
        format!(
            "version {package_id} does not serve yet: the custodians have not checked together \
             that its shares lie on one polynomial"
        ),
    )
}

/// The custodians' check found the version's shares inconsistent: it never serves here.
/// `found` says who was named, if anyone.
pub(crate) fn shares_refused(package_id: &str, found: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "shares_refused",
        format!(
            "version {package_id} never serves here: the custodians found that its shares do \
             not lie on one polynomial{found}"
        ),
    )
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let (status, code) = match &err {
            StoreError::KitUnavailable { .. } => (StatusCode::CONFLICT, "kit_unavailable"),
            StoreError::KitExists { .. } => (StatusCode::CONFLICT, "kit_exists"),
            StoreError::SessionUsed(_) => (StatusCode::CONFLICT, "duplicate_session"),
            StoreError::EpochMoved { .. } => (StatusCode::CONFLICT, "epoch_mismatch"),
            StoreError::NotVerified(_) => (StatusCode::CONFLICT, "reshare_not_verified"),
            StoreError::GenerationMoved { .. } => (StatusCode::CONFLICT, "membership_moved"),
            StoreError::Ledger(_) | StoreError::Corrupt(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

/// An order that does not open under the coordinator's key.
pub(crate) fn bad_order(err: OrderError) -> ApiError {
    let status = match err {
        // Signed by the coordinator but unreadable: its bug, not an impostor.
        OrderError::Malformed(_) => StatusCode::BAD_REQUEST,
        OrderError::BadSignature | OrderError::Expired(_) => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, "bad_order", err.to_string())
}

/// A set of operators' approvals that does not carry a decision: forged, duplicated, of
/// another subject, or fewer than k.
pub(crate) fn bad_approvals(err: ApprovalError) -> ApiError {
    let code = match err {
        ApprovalError::TooFew { .. } => "not_enough_approvals",
        _ => "bad_approval",
    };
    ApiError::new(StatusCode::FORBIDDEN, code, err.to_string())
}

impl From<OpenError> for ApiError {
    fn from(err: OpenError) -> ApiError {
        let (status, code) = match err {
            OpenError::InUse => (StatusCode::CONFLICT, "duplicate_session"),
            OpenError::Aborted => (StatusCode::CONFLICT, "aborted"),
            OpenError::Full => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<WaitError> for ApiError {
    fn from(err: WaitError) -> ApiError {
        let (status, code) = match err {
            WaitError::Aborted => (StatusCode::CONFLICT, "aborted"),
            WaitError::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "peer_timeout"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<SendError> for ApiError {
    fn from(err: SendError) -> ApiError {
        let (status, code) = match err {
            SendError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "peer_unreachable"),
            SendError::Refused { .. } => (StatusCode::BAD_GATEWAY, "peer_refused"),
            SendError::Stranger { .. } | SendError::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}
