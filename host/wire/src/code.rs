//! The codes a custodian refuses a session with (`POST /v1/sessions`), with the status each is
//! sent with and what it means for the caller's request at the coordinator: try again (with a
//! fresh kit, on the custodians still up), try again without this custodian, or give up.
//!
//! One table, read by both sides: the custodian answers with [`ErrorCode::status`], and the
//! coordinator decides by [`ErrorCode::is_retryable`] and [`ErrorCode::refuses_caller`], never
//! by a status number.

/// Why a custodian refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // The caller's own request, refused by the custodian itself: no other quorum will differ.
    ReplayedRequest,
    UnknownIdentity,
    IdentityRevoked,
    BadRequestSignature,
    StaleRequest,
    BadRequest,
    BadRequestId,
    BadInput,
    BadPrivateInputs,
    BadTerms,
    Retired,
    RateLimited,
    BudgetExhausted,
    /// The caller or the version is frozen at this custodian (by its operator or by a rule):
    /// other custodians may serve it.
    Frozen,
    // The session could not run now; another attempt (a fresh kit, the custodians still up)
    // can succeed.
    Busy,
    Aborted,
    PeerUnreachable,
    PeerTimeout,
    PeerRefused,
    BadPeerMessage,
    EvaluationFailed,
    KitUnavailable,
    DuplicateSession,
    SessionClosed,
    SharesUnchecked,
    /// The ticket names another share epoch than this custodian's: a refresh of the shares is
    /// being committed.
    EpochMismatch,
}

use ErrorCode::*;

const ALL: [ErrorCode; 26] = [
    ReplayedRequest,
    UnknownIdentity,
    IdentityRevoked,
    BadRequestSignature,
    StaleRequest,
    BadRequest,
    BadRequestId,
    BadInput,
    BadPrivateInputs,
    BadTerms,
    Retired,
    RateLimited,
    BudgetExhausted,
    Frozen,
    Busy,
    Aborted,
    PeerUnreachable,
    PeerTimeout,
    PeerRefused,
    BadPeerMessage,
    EvaluationFailed,
    KitUnavailable,
    DuplicateSession,
    SessionClosed,
    SharesUnchecked,
    EpochMismatch,
];

impl ErrorCode {
    /// The code as it travels in `{"error": {"code"}}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayedRequest => "replayed_request",
            UnknownIdentity => "unknown_identity",
            IdentityRevoked => "identity_revoked",
            BadRequestSignature => "bad_request_signature",
            StaleRequest => "stale_request",
            BadRequest => "bad_request",
            BadRequestId => "bad_request_id",
            BadInput => "bad_input",
            BadPrivateInputs => "bad_private_inputs",
            BadTerms => "bad_terms",
            Retired => "retired",
            RateLimited => "rate_limited",
            BudgetExhausted => "budget_exhausted",
            Frozen => "frozen",
            Busy => "busy",
            Aborted => "aborted",
            PeerUnreachable => "peer_unreachable",
            PeerTimeout => "peer_timeout",
            PeerRefused => "peer_refused",
            BadPeerMessage => "bad_peer_message",
            EvaluationFailed => "evaluation_failed",
            KitUnavailable => "kit_unavailable",
            DuplicateSession => "duplicate_session",
            SessionClosed => "session_closed",
            SharesUnchecked => "shares_unchecked",
            EpochMismatch => "epoch_mismatch",
        }
    }

    /// The code a refusal names, if it is one of these.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP status a custodian sends it with.
    pub fn status(self) -> u16 {
        match self {
            BadRequest | BadRequestId | BadInput | BadPrivateInputs | BadTerms => 400,
            BadRequestSignature | StaleRequest => 401,
            UnknownIdentity | IdentityRevoked | Frozen => 403,
            ReplayedRequest | Aborted | KitUnavailable | DuplicateSession | SessionClosed
            | SharesUnchecked | EpochMismatch => 409,
            Retired => 410,
            RateLimited | BudgetExhausted => 429,
            PeerUnreachable | PeerRefused | BadPeerMessage | EvaluationFailed => 502,
            Busy => 503,
            PeerTimeout => 504,
        }
    }

    /// Whether another attempt at the same request (a fresh kit, a new session, on the
    /// custodians still up) can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Busy | Aborted
                | PeerUnreachable
                | PeerTimeout
                | PeerRefused
                | BadPeerMessage
                | EvaluationFailed
                | KitUnavailable
                | DuplicateSession
                | SessionClosed
                | SharesUnchecked
                | EpochMismatch
        )
    }

    /// Whether the custodian refuses the caller's request itself, so that no other quorum
    /// would take it either.
    pub fn refuses_caller(self) -> bool {
        !self.is_retryable() && self != Frozen
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_and_has_one_meaning() {
        for code in ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let kinds = [code.is_retryable(), code.refuses_caller(), code == Frozen];
            assert_eq!(kinds.iter().filter(|&&k| k).count(), 1, "{code}");
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
        // The caller's own mistakes are 4xx; a session that failed for want of a peer is 5xx.
        assert!(
            ALL.iter()
                .filter(|c| c.refuses_caller())
                .all(|c| c.status() < 500)
        );
        assert!(
            [PeerTimeout, PeerUnreachable, Busy]
                .iter()
                .all(|c| c.status() >= 500)
        );
    }
}
