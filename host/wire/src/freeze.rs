//! Suspension: one party stops serving a caller identity at once, at itself only.
//!
//! Two parties may suspend: the coordinator (it stops admitting the identity's requests) and
//! each custodian's operator, for that custodian alone (it refuses every session of the
//! identity, whatever the coordinator relays). A statement names the party it is addressed to,
//! is signed in [`Domain::Suspension`] with that party's key (the coordinator's own, or the
//! custodian's operator key, the one that signs approvals), and counts only there: a custodian
//! checks it under its own operator's key, so neither the coordinator nor another custodian's
//! operator can suspend or lift anything at it. With fewer than k custodians willing to serve
//! an identity, the cluster cannot serve it.
//!
//! A statement is fresh for [`SUSPENSION_WINDOW_MS`] and counts only if it is later than the
//! last one the party applied for the identity (each party records that time durably), so an
//! old "lift" replayed cannot undo a newer suspension, nor an old suspension a newer lift.

use quorumvm_package::{Domain, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

use crate::signed::{Signed, SignedError};

/// How far a statement's time may be from the receiving party's clock, either way.
pub const SUSPENSION_WINDOW_MS: u64 = 120_000;

/// Where a suspension applies, and so whose key must have signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// The coordinator's admission; signed with the coordinator's key.
    Coordinator,
    /// Custodian `i`; signed with custodian `i`'s operator key.
    Custodian(u32),
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authority::Coordinator => f.write_str("the coordinator"),
            Authority::Custodian(i) => write!(f, "custodian {i}"),
        }
    }
}

/// One suspension, or the lifting of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    pub identity: String,
    pub at: Authority,
    /// `true` suspends; `false` lifts this party's own suspension.
    pub suspended: bool,
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuspensionError {
    #[error("the suspension statement is not signed by {0}'s key")]
    BadSignature(Authority),
    #[error("the suspension statement is malformed: {0}")]
    Malformed(String),
    #[error("the statement is addressed to {addressed}, not to {here}")]
    Elsewhere {
        addressed: Authority,
        here: Authority,
    },
    #[error(
        "the statement was signed {0} ms away from this party's clock (at most {SUSPENSION_WINDOW_MS} ms)"
    )]
    Stale(u64),
}

impl Suspension {
    pub fn sign(&self, key: &SecretKey) -> Signed {
        Signed::sign(self, Domain::Suspension, key)
    }

    /// Opens a statement as party `here` does: signed by `key` (the party's own authority),
    /// addressed to `here`, and fresh at `now_ms`. Whether it is later than the last one
    /// applied is the party's check, against its own record.
    pub fn open(
        signed: &Signed,
        key: &PublicKey,
        here: Authority,
        now_ms: u64,
    ) -> Result<Suspension, SuspensionError> {
        let statement: Suspension = signed.open(Domain::Suspension, key).map_err(|e| match e {
            SignedError::BadSignature => SuspensionError::BadSignature(here),
            SignedError::Malformed(m) => SuspensionError::Malformed(m),
        })?;
        if statement.at != here {
            return Err(SuspensionError::Elsewhere {
                addressed: statement.at,
                here,
            });
        }
        let skew = statement.time_ms.abs_diff(now_ms);
        if skew > SUSPENSION_WINDOW_MS {
            return Err(SuspensionError::Stale(skew));
        }
        Ok(statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_count_only_at_their_party_under_its_key_and_fresh() {
        let operator = SecretKey::generate();
        let here = Authority::Custodian(1);
        let statement = Suspension {
            identity: "alice".into(),
            at: here,
            suspended: true,
            time_ms: 1_000_000,
        };
        let signed = statement.sign(&operator);
        assert_eq!(
            Suspension::open(&signed, &operator.public(), here, 1_000_500),
            Ok(statement.clone())
        );
        let other = SecretKey::generate();
        assert_eq!(
            Suspension::open(&signed, &other.public(), here, 1_000_500),
            Err(SuspensionError::BadSignature(here))
        );
        assert_eq!(
            Suspension::open(
                &signed,
                &operator.public(),
                Authority::Custodian(2),
                1_000_500
            ),
            Err(SuspensionError::Elsewhere {
                addressed: here,
                here: Authority::Custodian(2)
            })
        );
        assert_eq!(
            Suspension::open(
                &signed,
                &operator.public(),
                here,
                1_000_000 + SUSPENSION_WINDOW_MS + 1
            ),
            Err(SuspensionError::Stale(SUSPENSION_WINDOW_MS + 1))
        );
        // The same key's signature in another domain (an identity approval, say) is not one.
        let approval = Signed {
            body: signed.body.clone(),
            signature: hex::encode(
                operator.sign_statement(Domain::Identity, signed.body.as_bytes()),
            ),
        };
        assert_eq!(
            Suspension::open(&approval, &operator.public(), here, 1_000_500),
            Err(SuspensionError::BadSignature(here))
        );
    }
}
