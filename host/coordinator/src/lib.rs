//! The QuorumVM coordinator (see docs/cluster.md): accepts signed packages, counts approvals
//! and activates versions, authenticates callers, enforces budgets and rate limits, signs
//! tickets and drives evaluations among the custodians, and keeps its own audit log.
//!
//! What it never holds: secret coefficients (it stores and forwards sealed shares only), Beaver
//! material (kits are generated and consumed by the custodians; it knows their ids), and the
//! custodians' round messages (they go from custodian to custodian).

mod admission;
mod approve;
mod background;
mod custodians;
mod enrol;
mod error;
mod eval;
mod freeze;
mod identities;
mod install;
mod metrics;
mod packages;
mod registry;
mod replicas;
mod reshare;
mod retirement;
mod rotation;
mod routes;
mod state;
mod store;
mod suspects;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::Listener;
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_server::{Env, keys, tls};
use quorumvm_wire::config::CoordinatorConfig;

pub(crate) use crate::state::State;

pub use quorumvm_policy::IdentityKey;

/// The public halves of the coordinator's keys, which every custodian's config names.
pub struct CoordinatorPublicKeys {
    /// ed25519 (hex): orders.
    pub signing_key: String,
    /// X25519 (hex): session tickets (see `quorumvm_wire::order::TicketKey`).
    pub exchange_key: String,
    /// Its TLS key's pin (`tls.key`; a chain named by `tls_cert` has its own).
    pub tls_fingerprint: quorumvm_wire::fingerprint::Fingerprint,
}

/// The coordinator's ed25519 key, for `quorumvm freeze --config coordinator.toml` on the
/// coordinator's machine (the coordinator admits a freeze only under this key).
pub fn signing_key(config: &CoordinatorConfig) -> anyhow::Result<SecretKey> {
    let path = state::key_path(&config.data_dir);
    let text = keys::read(&path).context("cannot read the coordinator's key")?;
    SecretKey::from_file_text(&text)
        .with_context(|| format!("{} is not a coordinator key", path.display()))
}

/// The pin of the key the coordinator presents (`None` for an `insecure_loopback` cluster):
/// for a client on its own machine (`quorumvm freeze --config`).
pub fn tls_fingerprint(
    config: &CoordinatorConfig,
) -> anyhow::Result<Option<quorumvm_wire::fingerprint::Fingerprint>> {
    if config.insecure_loopback {
        return Ok(None);
    }
    Ok(Some(tls_identity(config)?.fingerprint()))
}

/// The chain the config names, or the self-signed certificate of `tls.key`.
fn tls_identity(config: &CoordinatorConfig) -> anyhow::Result<tls::Identity> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(chain), Some(key)) => tls::Identity::from_files(chain, key),
        _ => tls::Identity::load(&config.data_dir, "quorumvm-coordinator"),
    }
}

/// Loads the coordinator's keys from `data_dir` (signing, exchange, TLS), creating them (0600)
/// on first use.
pub fn init_key(data_dir: &Path) -> anyhow::Result<CoordinatorPublicKeys> {
    let (signing, exchange) = state::load_or_create_keys(data_dir)?;
    Ok(CoordinatorPublicKeys {
        signing_key: signing.public().to_hex(),
        exchange_key: exchange.public().to_hex(),
        tls_fingerprint: tls::Identity::init(data_dir)?,
    })
}

/// `quorumvm identity add NAME --pubkey FILE`: proposes an identity in the coordinator's
/// database (the coordinator may be running) with the caller's ed25519 key, and returns its
/// API key, which is stored nowhere else. The identity serves once k custodian operators
/// approved it.
pub fn add_identity(
    config: &CoordinatorConfig,
    name: &str,
    caller_key: &PublicKey,
) -> anyhow::Result<IdentityKey> {
    let now = quorumvm_wire::now_ms();
    let (key, hash) = IdentityKey::generate();
    let propose = |tx: &dyn quorumvm_ledger::Sql| {
        quorumvm_policy::identity::insert(tx, "operator", name, &hash, now)
            .map_err(error::policy_refusal)?;
        store::propose_identity(tx, name, &caller_key.to_hex(), now).map_err(error::ApiError::from)
    };
    match &config.database {
        None => state::open_ledger(&config.data_dir)?.transaction(|tx| propose(tx))?,
        Some(db) => state::open_postgres(db)?.transaction(|tx| propose(tx))?,
    }
    Ok(key)
}

/// Runs the coordinator on `listener` until the process ends: over TLS, with the key in its
/// data directory (or the chain its config names) and the custodians' keys pinned, unless the
/// config says `insecure_loopback`.
pub async fn serve(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    if config.insecure_loopback {
        return run(Env::system(), config, quorumvm_server::no_delay(listener)).await;
    }
    let identity = tls_identity(&config)?;
    let cluster = config.cluster()?;
    let parties: Vec<_> = cluster
        .members()
        .iter()
        .filter_map(|m| Some((m.url.as_str(), m.tls?)))
        .collect();
    let (env, listener) = tls::serving(&identity, &parties, listener)?;
    run(env, config, listener).await
}

/// Runs the coordinator in `env` (a real process's, or a simulation's) on `listener`, until
/// this future is dropped (which stops it as a crash would: only what it committed remains).
pub async fn run<L>(env: Env, config: CoordinatorConfig, listener: L) -> anyhow::Result<()>
where
    L: Listener,
    L::Addr: std::fmt::Display + std::fmt::Debug,
{
    let state = State::start(env, &config)?;
    background::start(Arc::clone(&state));
    tokio::spawn(replicas::follow(Arc::clone(&state)));
    if let Some(seconds) = config.reshare_interval_s {
        let interval = std::time::Duration::from_secs(seconds.max(1));
        tokio::spawn(reshare::schedule(Arc::clone(&state), interval));
    }
    tracing::info!(addr = %listener.local_addr()?, "coordinator listening");
    axum::serve(listener, routes::router(state)).await?;
    Ok(())
}
