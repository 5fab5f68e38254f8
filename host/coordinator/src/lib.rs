//! The QuorumVM coordinator (see docs/cluster.md): accepts signed packages, counts approvals
//! and activates versions, authenticates callers, enforces budgets and rate limits, signs
//! tickets and drives evaluations among the custodians, and keeps its own audit log.
//!
//! What it never holds: secret coefficients (it stores and forwards sealed shares only), Beaver
//! material (kits are generated and consumed by the custodians; it knows their ids), and the
//! custodians' round messages (they go from custodian to custodian).

mod background;
mod custodians;
mod enrol;
mod error;
mod eval;
mod identities;
mod metrics;
mod registry;
mod retirement;
mod routes;
mod store;
mod suspension;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use quorumvm_ledger::{Ledger, Writer};
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sandbox::Sandbox;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::keys;
use quorumvm_wire::config::{CoordinatorConfig, PoolConfig};

use crate::custodians::Custodians;
use crate::identities::Identities;
use crate::metrics::Metrics;
use crate::registry::Registry;

pub use quorumvm_policy::IdentityKey;

const KEY_FILE: &str = "coordinator.key";
const EXCHANGE_KEY_FILE: &str = "coordinator.x25519";
const DB_FILE: &str = "coordinator.db";

/// Everything a request handler shares.
pub(crate) struct State {
    pub custodians: Custodians,
    pub registry: Registry,
    pub identities: Identities,
    pub writer: Writer,
    /// A second connection for reads (WAL: never blocked by the writer).
    pub reader: Arc<Mutex<Ledger>>,
    pub sandbox: Sandbox,
    pub publishers: Vec<PublicKey>,
    pub pool: PoolConfig,
    pub metrics: Metrics,
}

/// The public halves of the coordinator's keys, which every custodian's config names.
pub struct CoordinatorPublicKeys {
    /// ed25519 (hex): orders.
    pub signing_key: String,
    /// X25519 (hex): session tickets (see `quorumvm_wire::order::TicketKey`).
    pub exchange_key: String,
}

/// The coordinator's ed25519 key, for `quorumvm identity suspend --config coordinator.toml`
/// on the coordinator's machine (the coordinator admits a suspension only under this key).
pub fn signing_key(config: &CoordinatorConfig) -> anyhow::Result<SecretKey> {
    let path = config.data_dir.join(KEY_FILE);
    let text = keys::read(&path).context("cannot read the coordinator's key")?;
    SecretKey::from_file_text(&text)
        .with_context(|| format!("{} is not a coordinator key", path.display()))
}

/// Loads the coordinator's keys from `data_dir`, creating them (0600) on first use.
pub fn init_key(data_dir: &Path) -> anyhow::Result<CoordinatorPublicKeys> {
    let (signing, exchange) = load_or_create_keys(data_dir)?;
    Ok(CoordinatorPublicKeys {
        signing_key: signing.public().to_hex(),
        exchange_key: exchange.public().to_hex(),
    })
}

fn load_or_create_keys(data_dir: &Path) -> anyhow::Result<(SecretKey, CustodianSecretKey)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let signing = load_or_create(
        &data_dir.join(KEY_FILE),
        |t| SecretKey::from_file_text(t).map_err(anyhow::Error::from),
        || SecretKey::generate().to_file_text(),
    )?;
    let exchange = load_or_create(
        &data_dir.join(EXCHANGE_KEY_FILE),
        |t| CustodianSecretKey::from_file_text(t).map_err(anyhow::Error::from),
        || CustodianSecretKey::generate().to_file_text(),
    )?;
    Ok((signing, exchange))
}

/// The key at `path`, made by `generate` if it is absent.
fn load_or_create<K>(
    path: &Path,
    parse: impl Fn(&str) -> anyhow::Result<K>,
    generate: impl FnOnce() -> zeroize::Zeroizing<String>,
) -> anyhow::Result<K> {
    keys::create_if_absent(path, generate)?;
    let text = keys::read(path)?;
    parse(&text).with_context(|| format!("{} is not a coordinator key", path.display()))
}

fn open_ledger(data_dir: &Path) -> anyhow::Result<Ledger> {
    let path = data_dir.join(DB_FILE);
    let mut ledger =
        Ledger::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    ledger.apply_schema(&quorumvm_policy::SCHEMA)?;
    ledger.apply_schema(&store::SCHEMA)?;
    Ok(ledger)
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
    let mut ledger = open_ledger(&config.data_dir)?;
    let now = quorumvm_wire::now_ms();
    let (key, hash) = IdentityKey::generate();
    ledger.transaction(|tx| {
        quorumvm_policy::identity::insert(tx, "operator", name, &hash, now)?;
        store::propose_identity(tx, name, &caller_key.to_hex(), now)
            .map_err(|e| anyhow::anyhow!(e.message))
    })?;
    Ok(key)
}

/// Runs the coordinator on `listener` until the process ends.
pub async fn serve(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let (key, exchange) = load_or_create_keys(&config.data_dir)?;
    let cluster = config.cluster()?;
    let mut ledger = open_ledger(&config.data_dir)?;
    let failed = ledger.transaction(|tx| {
        store::fail_unfinished_batches(tx).map_err(|e| anyhow::anyhow!(e.message))
    })?;
    if failed > 0 {
        tracing::info!(
            failed,
            "preprocessing batches interrupted by the last stop are abandoned"
        );
    }
    let reader = open_ledger(&config.data_dir)?;
    let registry = Registry::load(
        store::load_versions(reader.connection()).map_err(|e| anyhow::anyhow!(e.message))?,
        store::aliases(reader.connection()).map_err(|e| anyhow::anyhow!(e.message))?,
    );
    let stored_identities =
        store::load_identities(reader.connection()).map_err(|e| anyhow::anyhow!(e.message))?;
    let reader = Arc::new(Mutex::new(reader));
    let identities = Identities::new(Arc::clone(&reader));
    identities
        .load(stored_identities)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let state = Arc::new(State {
        custodians: Custodians::new(cluster, key, &exchange)?,
        registry,
        identities,
        writer: Writer::spawn(ledger, "coordinator-ledger"),
        reader,
        sandbox: Sandbox::new().map_err(|e| anyhow::anyhow!("{e:#}"))?,
        publishers: config.publisher_keys()?,
        pool: config.pool,
        metrics: Metrics::default(),
    });
    background::start(Arc::clone(&state));
    tracing::info!(addr = %listener.local_addr()?, "coordinator listening");
    axum::serve(quorumvm_server::no_delay(listener), routes::router(state)).await?;
    Ok(())
}
