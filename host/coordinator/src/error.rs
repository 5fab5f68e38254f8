//! The coordinator's refusals as the one error every route answers with
//! ([`quorumvm_server::ApiError`]): a status, a stable code and a message, answered as JSON
//! `{"error": {"code", "message"}}` (with `Retry-After` when a retry can succeed later).

use axum::http::StatusCode;
use quorumvm_policy::PolicyError;

use crate::store::StoreError;

pub use quorumvm_server::ApiError;

/// A caller refused by its budget, rate limit or credentials, or an identity the policy will
/// not take.
pub fn policy_refusal(e: PolicyError) -> ApiError {
    match e {
        PolicyError::RateLimited { retry_after_secs } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
                .with_retry_after(retry_after_secs)
        }
        PolicyError::BudgetExhausted { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exhausted",
            e.to_string(),
        ),
        PolicyError::Unauthenticated => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
        }
        PolicyError::BadName(_) | PolicyError::InvalidRateLimit { .. } => {
            ApiError::bad_request("bad_request", e.to_string())
        }
        PolicyError::IdentityExists(_) => ApiError::conflict("identity_exists", e.to_string()),
        PolicyError::Ledger(l) => l.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::VersionConflict { .. } => {
                ApiError::conflict("version_conflict", err.to_string())
            }
            StoreError::DuplicateApproval { .. } => {
                ApiError::conflict("duplicate_approval", err.to_string())
            }
            StoreError::ReshareUnderWay { .. } => {
                ApiError::conflict("reshare_under_way", err.to_string())
            }
            StoreError::Ledger(l) => l.into(),
            StoreError::Corrupt { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                err.to_string(),
            ),
        }
    }
}
