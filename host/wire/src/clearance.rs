//! What the coordinator's operator asks of the coordinator, signed with the coordinator's key on
//! the coordinator's machine, each in a domain of its own and fresh for [`CLEARANCE_WINDOW_MS`]:
//!
//! - [`Clearance`] (`quorumvm clear-suspect INDEX --config coordinator.toml`): put a custodian
//!   the coordinator holds suspect (its deviation proven by failed checks) back into evaluation
//!   quorums. It clears only a suspicion raised before it was signed: an old clearance replayed
//!   cannot clear a custodian caught again since.
//! - [`ReshareRequest`] (`quorumvm reshare --config coordinator.toml`): refresh the custodians'
//!   shares now. A replay within its window costs one more refresh, nothing else.

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
    #[error("the statement is not signed by the coordinator's key")]
    BadSignature,
    #[error("the statement is malformed: {0}")]
    Malformed(String),
    #[error(
        "the statement was signed {0} ms away from the coordinator's clock (at most {CLEARANCE_WINDOW_MS} ms)"
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
        let statement: Clearance = open(signed, Domain::Clearance, key)?;
        fresh(statement.time_ms, now_ms)?;
        Ok(statement)
    }
}

/// The operator asks for a refresh of the shares of every serving version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshareRequest {
    pub time_ms: u64,
}

impl ReshareRequest {
    pub fn sign(&self, key: &SecretKey) -> Signed {
        Signed::sign(self, Domain::Reshare, key)
    }

    /// Opens a request signed by `key` (the coordinator's) and fresh at `now_ms`.
    pub fn open(
        signed: &Signed,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<ReshareRequest, ClearanceError> {
        let request: ReshareRequest = open(signed, Domain::Reshare, key)?;
        fresh(request.time_ms, now_ms)?;
        Ok(request)
    }
}

fn open<T: serde::de::DeserializeOwned>(
    signed: &Signed,
    domain: Domain,
    key: &PublicKey,
) -> Result<T, ClearanceError> {
    signed.open(domain, key).map_err(|e| match e {
        SignedError::BadSignature => ClearanceError::BadSignature,
        SignedError::Malformed(m) => ClearanceError::Malformed(m),
    })
}

fn fresh(time_ms: u64, now_ms: u64) -> Result<(), ClearanceError> {
    let skew = time_ms.abs_diff(now_ms);
    if skew > CLEARANCE_WINDOW_MS {
        return Err(ClearanceError::Stale(skew));
    }
    Ok(())
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

    #[test]
    fn a_reshare_request_is_neither_a_clearance_nor_stale() {
        let key = SecretKey::generate();
        let request = ReshareRequest { time_ms: 5_000_000 };
        let signed = request.sign(&key);
        assert_eq!(
            ReshareRequest::open(&signed, &key.public(), 5_000_100),
            Ok(request)
        );
        assert_eq!(
            Clearance::open(&signed, &key.public(), 5_000_100),
            Err(ClearanceError::BadSignature)
        );
        assert_eq!(
            ReshareRequest::open(&signed, &key.public(), 5_000_000 + CLEARANCE_WINDOW_MS + 1),
            Err(ClearanceError::Stale(CLEARANCE_WINDOW_MS + 1))
        );
    }
}
