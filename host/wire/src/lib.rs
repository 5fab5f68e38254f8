//! What QuorumVM's servers and CLI say to each other.
//!
//! - [`config`]: the coordinator's and custodians' configuration files (TOML) and the cluster
//!   they describe (threshold, every custodian's index, URL and public keys), validated once.
//! - [`api`]: the JSON bodies of the HTTP API, and its error body.
//! - [`order`]: what the coordinator asks of a custodian (a session ticket, an activation, a
//!   preprocessing batch, an abort), signed with the coordinator's ed25519 key and short-lived.
//! - [`approval`]: the statement a custodian operator signs to approve a package version, a
//!   caller identity, or the revocation of one or the retirement of the other, and the count of
//!   distinct valid approvals.
//! - [`freeze`]: a caller identity or a version frozen at one party by that party's own key,
//!   and the unfreeze that k operators approve.
//! - [`membership`]: the custodians and threshold a rotation moves the cluster to, as k
//!   current operators approve them, and what that changes (who deals, who joins, who leaves).
//! - [`peer`]: round messages between custodians, authenticated with a pairwise key.
//! - [`signed`]: a signed JSON statement; [`deal`]: the publisher's signed deal of the sealed
//!   shares; [`request`]: a caller's signed request and the terms of the session serving it.
//! - [`elements`]: field elements on the wire (hex in JSON, 16 bytes each in binary bodies).
//! - [`fingerprint`]: a party's TLS key as the configs pin it.

pub mod api;
pub mod approval;
pub mod clearance;
pub mod code;
pub mod config;
pub mod deal;
pub mod elements;
pub mod fingerprint;
pub mod freeze;
pub mod membership;
pub mod order;
pub mod peer;
pub mod request;
pub mod signed;

/// Milliseconds since the Unix epoch: the one clock every signed expiry is measured on.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
