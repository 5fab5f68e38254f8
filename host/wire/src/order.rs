//! Orders: what the coordinator asks of a custodian, signed with the coordinator's ed25519 key.
//!
//! A custodian acts only on an order that verifies under the coordinator key in its own
//! configuration and has not expired; anything else is refused before it is parsed further.
//! The signature covers the exact bytes of `body` (JSON), so nothing is re-serialized before
//! checking. Orders are short-lived: an intercepted ticket is useless after a few seconds, and a
//! ticket's kit is consumed on first use, so it cannot be replayed either.

use quorumvm_package::{Domain, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

/// How long an order stays valid after it is issued.
pub const ORDER_LIFETIME_MS: u64 = 30_000;

/// A session ticket: one evaluation of one active program version by one identity, on the
/// custodians of `quorum`, consuming preprocessed kit `kit` of that version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Unique per attempt; names the session in round messages and audit entries.
    pub session: String,
    /// The coordinator's request id (the same across retries of one request).
    pub request_id: String,
    pub package_id: String,
    pub identity: String,
    /// Shamir indices of the custodians taking part, sorted.
    pub quorum: Vec<u32>,
    pub kit: u64,
}

/// One of K approval signatures, as the coordinator forwards them at activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSignature {
    pub custodian: u32,
    /// ed25519 signature (hex) over [`crate::approval::statement`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Order {
    /// Take part in one evaluation session.
    Session(Ticket),
    /// A version reached its approvals: fetch it if needed and serve it. The custodian checks
    /// the approvals itself; the coordinator's word alone does not activate anything.
    Activate {
        package_id: String,
        approvals: Vec<ApprovalSignature>,
    },
    /// Generate kits `first_kit .. first_kit + count` of a version with every other custodian.
    Preprocess {
        session: String,
        package_id: String,
        first_kit: u64,
        count: u64,
    },
    /// Give up a session (a member died); its waits end at once.
    Abort { session: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    order: Order,
    expires_ms: u64,
}

/// An order as it travels: its JSON and the coordinator's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOrder {
    pub body: String,
    /// ed25519 signature (hex).
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order is not signed by this cluster's coordinator")]
    BadSignature,
    #[error("the order expired {0} ms ago")]
    Expired(u64),
    #[error("the order is malformed: {0}")]
    Malformed(String),
}

impl SignedOrder {
    pub fn sign(order: Order, now_ms: u64, key: &SecretKey) -> SignedOrder {
        let body = serde_json::to_string(&Envelope {
            order,
            expires_ms: now_ms + ORDER_LIFETIME_MS,
        })
        .expect("orders serialize");
        let signature = hex::encode(key.sign_statement(Domain::Order, body.as_bytes()));
        SignedOrder { body, signature }
    }

    /// Checks the signature first, then the expiry, and only then parses the order.
    pub fn open(&self, coordinator: &PublicKey, now_ms: u64) -> Result<Order, OrderError> {
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| OrderError::BadSignature)?;
        if !coordinator.verify_statement(Domain::Order, self.body.as_bytes(), &sig) {
            return Err(OrderError::BadSignature);
        }
        let envelope: Envelope =
            serde_json::from_str(&self.body).map_err(|e| OrderError::Malformed(e.to_string()))?;
        if now_ms > envelope.expires_ms {
            return Err(OrderError::Expired(now_ms - envelope.expires_ms));
        }
        Ok(envelope.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_open_only_signed_unchanged_and_fresh() {
        let key = SecretKey::generate();
        let order = Order::Abort {
            session: "s1".into(),
        };
        let signed = SignedOrder::sign(order.clone(), 1_000, &key);
        assert_eq!(signed.open(&key.public(), 2_000), Ok(order));
        assert_eq!(
            signed.open(&key.public(), 1_000 + ORDER_LIFETIME_MS + 5),
            Err(OrderError::Expired(5))
        );
        let other = SecretKey::generate();
        assert_eq!(
            signed.open(&other.public(), 2_000),
            Err(OrderError::BadSignature)
        );
        let mut altered = signed.clone();
        altered.body = altered.body.replace("s1", "s2");
        assert_eq!(
            altered.open(&key.public(), 2_000),
            Err(OrderError::BadSignature)
        );
    }
}
