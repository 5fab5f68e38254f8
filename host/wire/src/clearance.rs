//! Clearance: the coordinator's operator puts a custodian the coordinator holds suspect (its
//! deviation proven by failed checks) back into evaluation quorums.
//!
//! Signed in [`Domain::Clearance`] with the coordinator's key, on the coordinator's machine
//! (`quorumvm custodian clear INDEX --config coordinator.toml`). A statement is fresh for
//! [`CLEARANCE_WINDOW_MS`], and clears only a suspicion raised before it was signed: an old
//! clearance replayed cannot clear a custodian caught again since.

use quorumvm_package::{Domain, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

use crate::signed::{Signed, SignedError};

/// How far a statement's time may be from the coordinator's clock, either way.
pub const CLEARANCE_WINDOW_MS: u64 = 120_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clearance {
    pub custodian: u32,
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearanceError {
    #[error("the clearance is not signed by the coordinator's key")]
    BadSignature,
    #[error("the clearance is malformed: {0}")]
    Malformed(String),
    #[error(
        "the clearance was signed {0} ms away from the coordinator's clock (at most {CLEARANCE_WINDOW_MS} ms)"
    )]
    Stale(u64),
}

impl Clearance {
    pub fn sign(&self, key: &SecretKey) -> Signed {
        Signed::sign(self, Domain::Clearance, key)
    }

    /// Opens a statement signed by `key` (the coordinator's) and fresh at `now_ms`.
    pub fn open(
        signed: &Signed,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<Clearance, ClearanceError> {
        let statement: Clearance = signed.open(Domain::Clearance, key).map_err(|e| match e {
            SignedError::BadSignature => ClearanceError::BadSignature,
            SignedError::Malformed(m) => ClearanceError::Malformed(m),
        })?;
        let skew = statement.time_ms.abs_diff(now_ms);
        if skew > CLEARANCE_WINDOW_MS {
            return Err(ClearanceError::Stale(skew));
        }
        Ok(statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_statement_under_the_coordinators_key_counts() {
        let key = SecretKey::generate();
        let statement = Clearance {
            custodian: 3,
            time_ms: 1_000_000,
        };
        let signed = statement.sign(&key);
        assert_eq!(
            Clearance::open(&signed, &key.public(), 1_000_500),
            Ok(statement)
        );
        let other = SecretKey::generate();
        assert_eq!(
            Clearance::open(&signed, &other.public(), 1_000_500),
            Err(ClearanceError::BadSignature)
        );
        assert_eq!(
            Clearance::open(&signed, &key.public(), 1_000_000 + CLEARANCE_WINDOW_MS + 1),
            Err(ClearanceError::Stale(CLEARANCE_WINDOW_MS + 1))
        );
    }
}
