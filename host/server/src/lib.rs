//! What QuorumVM's two servers (the coordinator and the custodian) would otherwise each write
//! for themselves: what they take from outside their own code ([`Env`]: clock, connections,
//! blocking work, the ledger's writer), their HTTP client ([`http`]), the JSON error every route
//! answers with ([`ApiError`]), the JSON body extractor that answers its rejections the same
//! way ([`Body`]), Prometheus text ([`metrics`]), the listener's socket options ([`no_delay`])
//! key files ([`keys`]), TLS with pinned keys ([`tls`]), what is frozen at the
//! party ([`freeze`]) and the policy's anomaly rules there ([`anomaly`]).
//!
//! What each server means by its errors (which code a refusal gets) stays in that server.

pub mod anomaly;
mod body;
pub mod env;
mod error;
pub mod freeze;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod tls;

use axum::serve::{Listener, ListenerExt as _};

pub use body::{Body, body_error, json};
pub use env::{Bug, Env, Lie};
pub use error::ApiError;

/// `listener`, with every accepted connection set to `TCP_NODELAY`: round messages and answers
/// are small and latency-bound, and must never be held back for Nagle.
pub fn no_delay(listener: tokio::net::TcpListener) -> impl Listener<Addr = std::net::SocketAddr> {
    listener.tap_io(|stream: &mut tokio::net::TcpStream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    })
}
