//! Everything a running coordinator holds, and how it starts: its keys (created on first use),
//! its ledger, and what it loads from it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use quorumvm_ledger::{Ledger, Postgres, Sql, Storage, Writer};
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sandbox::Sandbox;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::anomaly::Anomalies;
use quorumvm_server::freeze::Freezes;
use quorumvm_server::{Env, keys};
use quorumvm_wire::api::IdentityInfo;
use quorumvm_wire::config::{CoordinatorConfig, Database, PoolConfig};
use quorumvm_wire::freeze::Target;
use zeroize::Zeroizing;

use crate::custodians::Custodians;
use crate::freeze::Unfreezes;
use crate::identities::{Caller, Identities};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replicas::{Follower, POLL};
use crate::reshare::Epochs;
use crate::store::{self, StoreError};
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
    /// Its database (SQLite, or PostgreSQL shared with other replicas): a writer, and a second
    /// connection for reads (which never wait for the writer).
    pub storage: Storage,
    /// This replica's name among those sharing a PostgreSQL database ('' with SQLite): the
    /// preprocessing batches it orders are its own.
    pub replica: String,
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
    /// What this replica has seen of the others' changes (none with SQLite: no others).
    pub follower: Option<Follower>,
}

impl State {
    /// What the coordinator knows of `caller`.
    pub fn identity_info(&self, caller: &Caller) -> IdentityInfo {
        let frozen = self
            .freezes
            .is_frozen(&Target::Identity(caller.name.clone()));
        caller.info(self.custodians.roster().threshold(), frozen)
    }
}

impl State {
    /// Loads (or creates) the keys, opens the ledger, abandons the preprocessing batches the
    /// last stop interrupted, and loads the versions and identities.
    pub fn start(env: Env, config: &CoordinatorConfig) -> anyhow::Result<Arc<State>> {
        let (key, exchange) = load_or_create_keys(&config.data_dir)?;
        let cluster = config.cluster()?;
        let (replica, follower) = match &config.database {
            None => (String::new(), None),
            Some(db) => {
                let replica = db.replica.clone().filter(|r| !r.is_empty()).context(
                    "a coordinator on PostgreSQL needs its replica's name: `replica` in \
                     [database], or `quorumvm coordinator --replica NAME`",
                )?;
                let poll = db.poll_ms.map_or(POLL, Duration::from_millis);
                anyhow::ensure!(
                    poll >= Duration::from_millis(10),
                    "[database] poll_ms must be at least 10 (milliseconds)"
                );
                (replica, Some(Follower::new(poll)))
            }
        };
        let owner = replica.clone();
        let (storage, failed) = open_storage(&env, config, move |tx| {
            Ok((
                store::fail_unfinished_batches(tx, &owner)?,
                store::fail_unfinished_reshares(tx, &owner)?,
            ))
        })?;
        if failed.0 > 0 {
            tracing::info!(
                failed = failed.0,
                "preprocessing batches interrupted by the last stop are abandoned"
            );
        }
        if failed.1 > 0 {
            tracing::info!(
                failed = failed.1,
                "a reshare interrupted by the last stop is abandoned"
            );
        }
        let threshold = cluster.threshold();
        let owner = replica.clone();
        let shared = storage.read(move |conn| store::load_shared(conn, &owner, threshold))?;
        let registry = Registry::load(shared.versions, shared.aliases);
        let epochs = Epochs::load(shared.certificates);
        let unfreezes = Unfreezes::load(shared.unfreezes);
        let (freezes, suspects) = (shared.freezes, shared.suspects);
        let identities = Identities::new(&env, storage.clone());
        identities.refresh(shared.identities)?;
        // The membership in force: the configured cluster, through every certified rotation.
        let custodians = Custodians::new(&env, cluster, key, exchange);
        crate::reshare::follow_membership(&epochs, &custodians)?;
        for index in suspects {
            if let Some(c) = custodians.roster().get(index) {
                c.set_suspect(true);
            }
        }
        Ok(Arc::new(State {
            custodians,
            registry,
            identities,
            storage,
            replica,
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
            follower,
            env,
        }))
    }
}

/// The coordinator's database: `coordinator.db` in its data directory, or the PostgreSQL
/// database its config names, with every schema applied and `first` committed on the writer's
/// connection before the writer starts.
pub(crate) fn open_storage<T: Send>(
    env: &Env,
    config: &CoordinatorConfig,
    first: impl FnOnce(&dyn Sql) -> Result<T, StoreError> + Send,
) -> anyhow::Result<(Storage, T)> {
    let Some(db) = &config.database else {
        let mut ledger = open_ledger(&config.data_dir)?;
        let done = ledger.transaction(|tx| first(tx))?;
        let reader = open_ledger(&config.data_dir)?;
        let storage = Storage::Sqlite {
            writer: env.writer(ledger, "coordinator-ledger"),
            reader: Arc::new(Mutex::new(reader)),
        };
        return Ok((storage, done));
    };
    let mut writer = open_postgres(db)?;
    let done = writer.transaction(|tx| first(tx))?;
    let storage = Storage::Postgres {
        writer: Writer::spawn(writer, "coordinator-ledger"),
        // The writer's connection has applied every schema: the reader's only connects.
        reader: Arc::new(Mutex::new(connect_postgres(db)?)),
    };
    Ok((storage, done))
}

/// A connection to the replicas' PostgreSQL database, every schema applied.
pub(crate) fn open_postgres(db: &Database) -> anyhow::Result<Postgres> {
    let mut pg = connect_postgres(db)?;
    pg.apply_schema(&quorumvm_policy::POSTGRES_SCHEMA)?;
    pg.apply_schema(&quorumvm_server::freeze::POSTGRES_SCHEMA)?;
    pg.apply_schema(&store::POSTGRES_SCHEMA)?;
    Ok(pg)
}

/// A connection to the replicas' PostgreSQL database, with the password from its file.
fn connect_postgres(db: &Database) -> anyhow::Result<Postgres> {
    let password = match &db.password_file {
        Some(path) => Some(Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the database password {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        )),
        None => None,
    };
    Postgres::connect_with_password(&db.url, password.as_deref().map(String::as_str))
        .with_context(|| format!("cannot reach the coordinator's database at {}", db.url))
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

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_ledger::postgres::testing::Server;

    fn database(url: String, password_file: Option<std::path::PathBuf>) -> Database {
        Database {
            url,
            password_file,
            replica: Some("a".into()),
            poll_ms: None,
        }
    }

    #[test]
    fn the_database_password_comes_from_its_file_not_the_url() {
        let server = Server::start_with_password("from a secret");
        let dir = tempfile::tempdir().unwrap();
        let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
        // As a mounted secret holds it, with a newline at the end.
        std::fs::write(&right, "from a secret\n").unwrap();
        std::fs::write(&wrong, "guess\n").unwrap();
        open_postgres(&database(server.url(), Some(right))).expect("the password from its file");
        for refused in [
            database(server.url(), None),
            database(server.url(), Some(wrong)),
        ] {
            let error = format!("{:#}", open_postgres(&refused).err().expect("refused"));
            assert!(
                error.contains("cannot reach the coordinator's database"),
                "{error}"
            );
        }
        let missing = database(server.url(), Some(dir.path().join("absent")));
        let error = format!("{:#}", open_postgres(&missing).err().expect("refused"));
        assert!(
            error.contains("cannot read the database password"),
            "{error}"
        );
    }
}
