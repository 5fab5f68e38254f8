//! The one error every route answers with: a status and a stable code in
//! [`quorumvm_wire::api::ErrorBody`].
//!
//! The modules keep their own typed errors; they become an [`ApiError`] at the edge, where each
//! is given the status and code its caller (the coordinator, or a peer) acts on. Messages name
//! ids, counts and peers, never shares or values.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quorumvm_ledger::LedgerError;
use quorumvm_wire::api::ErrorBody;
use quorumvm_wire::approval::ApprovalError;
use quorumvm_wire::order::OrderError;

use crate::mailbox::{OpenError, WaitError};
use crate::peers::SendError;
use crate::store::StoreError;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// Stable and machine-readable.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A plugin or computation task that panicked: a bug, reported without its payload.
    pub fn task_failed(what: &str, err: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("{what} did not complete: {err}"))
    }

    pub fn unknown_version(package_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!("version {package_id} is not active on this custodian"),
        )
    }

    /// The version is activated here, but the custodians have not checked its shares together
    /// yet: it does not serve.
    pub fn shares_unchecked(package_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "shares_unchecked",
            format!(
                "version {package_id} does not serve yet: the custodians have not checked together \
                 that its shares lie on one polynomial"
            ),
        )
    }

    /// The custodians' check found the version's shares inconsistent: it never serves here.
    /// `found` says who was named, if anyone.
    pub fn shares_refused(package_id: &str, found: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "shares_refused",
            format!(
                "version {package_id} never serves here: the custodians found that its shares do \
                 not lie on one polynomial{found}"
            ),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(code = self.code, "{}", self.message);
        }
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(err: LedgerError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            err.to_string(),
        )
    }
}

impl From<quorumvm_ledger::rusqlite::Error> for ApiError {
    fn from(err: quorumvm_ledger::rusqlite::Error) -> ApiError {
        LedgerError::from(err).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let (status, code) = match &err {
            StoreError::KitUnavailable { .. } => (StatusCode::CONFLICT, "kit_unavailable"),
            StoreError::KitExists { .. } => (StatusCode::CONFLICT, "kit_exists"),
            StoreError::SessionUsed(_) => (StatusCode::CONFLICT, "duplicate_session"),
            StoreError::Ledger(_) | StoreError::Corrupt(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> ApiError {
        let status = match err {
            // Signed by the coordinator but unreadable: its bug, not an impostor.
            OrderError::Malformed(_) => StatusCode::BAD_REQUEST,
            OrderError::BadSignature | OrderError::Expired(_) => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, "bad_order", err.to_string())
    }
}

/// A set of operators' approvals that does not carry a decision: forged, duplicated, of
/// another subject, or fewer than k.
impl From<ApprovalError> for ApiError {
    fn from(err: ApprovalError) -> ApiError {
        let code = match err {
            ApprovalError::TooFew { .. } => "not_enough_approvals",
            _ => "bad_approval",
        };
        ApiError::new(StatusCode::FORBIDDEN, code, err.to_string())
    }
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
