//! Everything a running coordinator holds, and how it starts: its keys (created on first use),
//! its ledger, and what it loads from it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use quorumvm_ledger::{Ledger, Writer};
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sandbox::Sandbox;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::anomaly::Anomalies;
use quorumvm_server::freeze::Freezes;
use quorumvm_server::{Env, keys};
use quorumvm_wire::api::IdentityInfo;
use quorumvm_wire::config::{CoordinatorConfig, PoolConfig};
use quorumvm_wire::freeze::Target;

use crate::custodians::Custodians;
use crate::freeze::Unfreezes;
use crate::identities::{Caller, Identities};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reshare::Epochs;
use crate::store;
use crate::suspects::Suspects;

const KEY_FILE: &str = "coordinator.key";
const EXCHANGE_KEY_FILE: &str = "coordinator.x25519";
const DB_FILE: &str = "coordinator.db";

/// Everything a request handler shares.
pub(crate) struct State {
    /// The clock, connections and blocking work this coordinator is given.
    pub env: Env,
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
    pub suspects: Suspects,
    /// Whose turn it is among the bare quorums a retry after a deviation may take.
    pub bare_turn: std::sync::atomic::AtomicUsize,
    /// The refreshes of the shares every custodian verified, and the epoch they make.
    pub epochs: Epochs,
    /// What is frozen here.
    pub freezes: Freezes,
    /// The unfreezes k operators approved.
    pub unfreezes: Unfreezes,
    /// The policies' anomaly rules, over every request admitted here.
    pub anomalies: Anomalies,
}

impl State {
    /// What the coordinator knows of `caller`.
    pub fn identity_info(&self, caller: &Caller) -> IdentityInfo {
        let frozen = self
            .freezes
            .is_frozen(&Target::Identity(caller.name.clone()));
        caller.info(self.custodians.cluster.threshold(), frozen)
    }
}

impl State {
    /// Loads (or creates) the keys, opens the ledger, abandons the preprocessing batches the
    /// last stop interrupted, and loads the versions and identities.
    pub fn start(env: Env, config: &CoordinatorConfig) -> anyhow::Result<Arc<State>> {
        let (key, exchange) = load_or_create_keys(&config.data_dir)?;
        let cluster = config.cluster()?;
        let mut ledger = open_ledger(&config.data_dir)?;
        let failed = ledger.transaction(store::fail_unfinished_batches)?;
        if failed > 0 {
            tracing::info!(
                failed,
                "preprocessing batches interrupted by the last stop are abandoned"
            );
        }
        let failed = ledger.transaction(store::fail_unfinished_reshares)?;
        if failed > 0 {
            tracing::info!(
                failed,
                "a reshare interrupted by the last stop is abandoned"
            );
        }
        let reader = open_ledger(&config.data_dir)?;
        let registry = Registry::load(
            store::load_versions(reader.connection())?,
            store::aliases(reader.connection())?,
        );
        let stored_identities = store::load_identities(reader.connection())?;
        let suspects = store::load_suspects(reader.connection())?;
        let epochs = Epochs::load(store::load_certificates(reader.connection())?);
        let freezes = Freezes::load(&reader)?;
        let unfreezes = Unfreezes::load(store::load_unfreezes(
            reader.connection(),
            cluster.threshold(),
        )?);
        let reader = Arc::new(Mutex::new(reader));
        let identities = Identities::new(&env, Arc::clone(&reader));
        identities.load(stored_identities)?;
        let custodians = Custodians::new(&env, cluster, key, &exchange);
        for index in suspects {
            if let Some(c) = custodians.get(index) {
                c.set_suspect(true);
            }
        }
        Ok(Arc::new(State {
            custodians,
            registry,
            identities,
            writer: env.writer(ledger, "coordinator-ledger"),
            reader,
            sandbox: Sandbox::new().map_err(|e| anyhow::anyhow!("{e:#}"))?,
            publishers: config.publisher_keys()?,
            pool: config.pool,
            metrics: Metrics::default(),
            suspects: Suspects::default(),
            bare_turn: Default::default(),
            epochs,
            freezes,
            unfreezes,
            anomalies: Anomalies::default(),
            env,
        }))
    }
}

/// The path of the coordinator's signing key in `data_dir`.
pub(crate) fn key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(KEY_FILE)
}

pub(crate) fn load_or_create_keys(
    data_dir: &Path,
) -> anyhow::Result<(SecretKey, CustodianSecretKey)> {
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

pub(crate) fn open_ledger(data_dir: &Path) -> anyhow::Result<Ledger> {
    let path = data_dir.join(DB_FILE);
    let mut ledger =
        Ledger::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    ledger.apply_schema(&quorumvm_policy::SCHEMA)?;
    ledger.apply_schema(&quorumvm_server::freeze::SCHEMA)?;
    ledger.apply_schema(&store::SCHEMA)?;
    Ok(ledger)
}
