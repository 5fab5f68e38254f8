//! A QuorumVM custodian: one of the n servers that each hold one Shamir share of every secret
//! of every active program version, and evaluate on shares with the others (docs/cluster.md).
//!
//! It obeys only orders signed by its cluster's coordinator ([`quorumvm_wire::order`]), and
//! even then it activates a version only once it has checked `k` custodian approvals itself.
//! Its shares are stored sealed (as the publisher sealed them) and opened into memory only; the
//! preprocessing it generates with the other custodians never leaves it in the clear.
//!
//! - `keys`: the server's own key file ([`init_key`]); the operator's key is not on the server.
//! - `store`: its tables in the ledger, and every write (each in one group commit).
//! - `versions`: the active versions in memory, with their opened shares and kit counts.
//! - `mailbox`: round messages from peers, buffered until the session that waits for them.
//! - `peers`: sending round messages, and encrypting the secret ones; `layers`: a layer of
//!   secret field elements, sealed to each peer (preprocessing, the check of shares).
//! - `callers`: the caller identities it accepts signed requests from, and those k operators
//!   revoked; `freezes`: the identities and versions frozen here (by its own operator or an
//!   anomaly rule).
//! - `activation`, `share_check`, `register`, `preprocess`, and `revoke`, `retire` (decisions
//!   of k operators): the coordinator's orders (a version serves once activated and its shares
//!   checked by all n custodians together); `session`: an evaluation of a caller's signed
//!   request, on the coordinator's ticket; `freeze`: its own operator's freezes, and the
//!   unfreezes k operators approved; `reshare`: the proactive refresh of the shares;
//!   `rotation`: a change of the membership k operators approved.
//! - `routes`: the HTTP API; `error`: its error bodies; `metrics`: `GET /metrics`.
//! - `state`: everything a running custodian holds, and how it starts.

mod activation;
mod callers;
mod error;
mod freeze;
mod join;
mod keys;
mod layers;
mod mailbox;
mod metrics;
mod peers;
mod preprocess;
mod register;
mod reshare;
mod retire;
mod revoke;
mod rotation;
mod routes;
mod session;
mod share_check;
mod state;
mod store;
mod versions;

use std::sync::Arc;

use axum::serve::Listener;
use quorumvm_server::{Env, tls};
use quorumvm_wire::config::{CustodianConfig, Fingerprint};

pub use keys::init_key;

/// Runs a custodian on `listener` until the process ends (or this future is dropped, which
/// stops it as a crash would, minus the requests already being answered).
///
/// Refuses to start if the configuration is not a valid cluster, if the key in
/// `config.data_dir` (see [`init_key`]) is not the one the configuration lists for this
/// custodian's index, or if an operator's key is there too. At start it loads every active version from its ledger (reopening the
/// sealed shares), so a custodian killed at any point serves exactly as before when restarted.
///
/// Over TLS (unless the config says `insecure_loopback`) with the key in its data directory,
/// which must be the one the config pins for it, and the coordinator's and peers' keys pinned.
pub async fn serve(
    config: CustodianConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    if config.insecure_loopback {
        return run(Env::system(), config, quorumvm_server::no_delay(listener)).await;
    }
    let name = format!("quorumvm-custodian-{}", config.index);
    let identity = tls::Identity::load(&config.data_dir, &name)?;
    let cluster = config.cluster()?;
    // A machine that joins later is in no configured entry: the membership statement that
    // brings it in pins its key for the others
    // (and may take an index a machine since removed had).
    let sealing = keys::load_key(&config.data_dir)?.public();
    let configured = cluster
        .member(config.index)
        .filter(|m| m.sealing_key == sealing);
    let pinned = configured.and_then(|m| m.tls);
    if configured.is_some() && pinned != Some(identity.fingerprint()) {
        let pinned = pinned.map_or("no key".to_string(), |pin| pin.to_hex());
        anyhow::bail!(
            "the TLS key in {} is {}, but the config pins {pinned} for custodian {}",
            config.data_dir.display(),
            identity.fingerprint(),
            config.index
        );
    }
    let coordinator = config
        .coordinator_tls_fingerprint
        .map(|pin| (config.coordinator_url.as_str(), pin));
    let peers = cluster
        .members()
        .iter()
        .filter(|m| m.index != config.index)
        .filter_map(|m| Some((m.url.as_str(), m.tls?)));
    let parties: Vec<_> = coordinator.into_iter().chain(peers).collect();
    let (env, listener) = tls::serving(&identity, &parties, listener)?;
    run(env, config, listener).await
}

/// Creates this custodian's TLS key in `data_dir` if absent; returns its pin, which every
/// config lists as this custodian's `tls_fingerprint`.
pub fn init_tls_key(data_dir: &std::path::Path) -> anyhow::Result<Fingerprint> {
    tls::Identity::init(data_dir)
}

/// [`serve`] in `env` (a real process's, or a simulation's), on `listener`.
///
/// Over TLS (`L::Addr` is a [`tls::Peer`]), the coordinator's orders and sessions and the
/// peers' round messages are admitted only from a client that presented a pinned certificate.
pub async fn run<L>(env: Env, config: CustodianConfig, listener: L) -> anyhow::Result<()>
where
    L: Listener,
    L::Addr: Into<tls::Peer>,
{
    let custodian = Arc::new(state::Custodian::start(env, config).await?);
    // The configuration pins the configured cluster's TLS keys; rotations since may have
    // brought in others.
    for m in custodian.cluster().members() {
        if let Some(pin) = m.tls {
            custodian.env.admit(&m.url, pin)?;
        }
    }
    let listener = tls::PeerListener(listener);
    let address = listener.local_addr()?;
    tracing::info!(
        index = custodian.me(),
        %address,
        versions = custodian.versions.len(),
        "custodian serving"
    );
    // Dropping this future drops `_running`, which ends the graceful-shutdown signal: the
    // listener closes and idle keep-alive connections (peers pool them) are closed too, so a
    // stopped custodian stops answering instead of lingering on connections already open.
    let (_running, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = routes::router(custodian).into_make_service_with_connect_info::<tls::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await?;
    Ok(())
}
