//! The one error every route of both servers answers with: a status, a stable code and a
//! message, as JSON [`ErrorBody`] `{"error": {"code", "message"}}`, with `Retry-After` when a
//! retry can succeed later.
//!
//! Each server keeps its own typed errors; they become an [`ApiError`] at its edge, where each is
//! given the status and code its caller acts on. Messages name ids, counts and peers, never
//! shares or values.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quorumvm_ledger::LedgerError;
use quorumvm_wire::api::ErrorBody;
use quorumvm_wire::code::ErrorCode;
use quorumvm_wire::request::RequestError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable and machine-readable.
    pub code: &'static str,
    pub message: String,
    /// Seconds after which the same request may succeed (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A refusal whose code has one status everywhere ([`ErrorCode::status`]), so the two
    /// cannot disagree.
    pub fn of(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.status()).expect("the table's statuses are valid");
        ApiError::new(status, code.as_str(), message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A task that panicked or was cancelled: a bug, reported without its payload.
    pub fn task_failed(what: &str, err: impl std::fmt::Display) -> ApiError {
        ApiError::internal(format!("{what} did not complete: {err}"))
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> ApiError {
        self.message = message.into();
        self
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

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(code = self.code, "{}", self.message);
        }
        let mut response =
            (self.status, Json(ErrorBody::new(self.code, self.message))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("digits are a header value"),
            );
        }
        response
    }
}

/// The ledger failed under a request: the server's fault, never the caller's.
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

/// A caller's signed request refused before anything is spent, as both servers answer it.
impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> ApiError {
        ApiError::of(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_its_json_body_with_its_status_and_retry_after() {
        let response = ApiError::unavailable("busy", "try later")
            .with_retry_after(0)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
