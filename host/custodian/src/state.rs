//! Everything a running custodian holds, and how it starts.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use quorumvm_ledger::{Ledger, Writer};
use quorumvm_package::PublicKey;
use quorumvm_sandbox::{EngineKind, EvaluatorPlugin, Limits, PluginSlot, Sandbox, SandboxConfig};
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::Env;
use quorumvm_server::http::HttpClient;
use quorumvm_wire::config::{Cluster, CustodianConfig, Engine};
use quorumvm_wire::order::TicketKey;
use tokio::sync::{Mutex, Semaphore};

use crate::activation::{Checker, Shares};
use crate::callers::Callers;
use crate::error::ApiError;
use crate::keys::load_key;
use crate::mailbox::{self, Inbox, Mailbox};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::store::{Decision, SharesChecked};
use crate::versions::{Version, Versions, parse_package_id};
use crate::{register, retire, revoke, rotation, store};
use quorumvm_server::anomaly::Anomalies;
use quorumvm_server::freeze::Freezes;

/// What one call into the evaluator plugin may use. A layer of a large circuit is a few ms;
/// the deadline only stops a plugin that has gone wrong (under Winch, fuel does).
const PLUGIN_LIMITS: Limits = Limits {
    memory_bytes: 64 << 20,
    fuel: 1_000_000_000,
    deadline: Duration::from_secs(2),
};
/// Instance slots of the sandbox's pooling allocator.
const SANDBOX_INSTANCES: u32 = 128;
/// Sessions that may hold a plugin instance at once: the slots, less a few kept for reading
/// packages at activation, so a burst of sessions cannot block an activation.
const SESSION_SLOTS: usize = 120;

/// The cluster this custodian belongs to now: the configured one until a rotation commits
/// another ([`crate::rotation`]). `generation` counts the rotations committed; every decision
/// recorded here (a version, an identity, a retirement or revocation) records the generation
/// whose operators approved it, and is checked against that generation's cluster again at
/// every start.
#[derive(Clone)]
pub(crate) struct Current {
    pub generation: u64,
    pub cluster: Arc<Cluster>,
    /// This custodian's index (Shamir x-coordinate) in `cluster`: where its sealing key is.
    pub me: u32,
    /// The other members of `cluster`, with their pairwise keys.
    pub peers: Arc<Peers>,
}

pub(crate) struct Custodian {
    /// The configured cluster (generation 0): the trust root every chain of rotations is
    /// checked from.
    pub configured: Arc<Cluster>,
    /// Read through [`Custodian::current`] / [`Custodian::cluster`]; replaced only when a
    /// rotation commits.
    current: RwLock<Current>,
    pub coordinator_url: String,
    /// Every order must verify under this key.
    pub coordinator_key: PublicKey,
    /// Every session ticket must carry this key's tag.
    pub tickets: TicketKey,
    /// How long a session waits for a layer's messages.
    pub round_timeout: Duration,
    pub sealing_key: CustodianSecretKey,
    /// For the coordinator (activation fetches); [`Peers`] holds a clone (one pool).
    pub http: HttpClient,
    /// The clock, connections and blocking work this custodian is given.
    pub env: Env,
    pub writer: Writer,
    pub sandbox: Sandbox,
    pub plugin: PluginSlot,
    pub session_slots: Semaphore,
    pub versions: Versions,
    /// The caller identities k operators approved.
    pub callers: Callers,
    /// What is frozen here.
    pub freezes: Freezes,
    /// The policies' anomaly rules, over the queries this custodian sees.
    pub anomalies: Anomalies,
    pub mailbox: Mailbox,
    pub metrics: Metrics,
    /// Held for the whole of an activation or registration: they are rare and must not race
    /// each other.
    pub activation: Mutex<()>,
}

impl Custodian {
    /// Checks the configuration and keys, opens the ledger and the sandbox, and loads every
    /// active version. All of it blocks (fsyncs, compiling components), so it runs on a
    /// blocking thread.
    pub async fn start(env: Env, config: CustodianConfig) -> anyhow::Result<Custodian> {
        env.clone()
            .blocking(move || Custodian::start_blocking(env, config))
            .await
            .context("starting the custodian")?
    }

    fn start_blocking(env: Env, config: CustodianConfig) -> anyhow::Result<Custodian> {
        let coordinator_key = config.coordinator_public_key()?;
        let data_dir = &config.data_dir;
        let sealing_key = load_key(data_dir)?;
        if config.round_timeout_ms == 0 {
            bail!("round_timeout_ms must be positive");
        }
        let round_timeout = Duration::from_millis(config.round_timeout_ms);
        let http = env.http();

        let db = data_dir.join("custodian.db");
        let mut ledger = Ledger::open(&db).with_context(|| format!("opening {}", db.display()))?;
        ledger.apply_schema(&quorumvm_server::freeze::SCHEMA)?;
        ledger.apply_schema(&store::SCHEMA)?;
        ledger.apply_schema(&quorumvm_policy::SCHEMA)?;

        // The configured cluster, then each rotation committed here, each checked against the
        // cluster before it: what runs now is what k operators approved, step by step.
        let generations = rotation::history(config.cluster()?, store::load_memberships(&ledger)?)
            .with_context(|| format!("the rotations recorded in {}", db.display()))?;
        let generation = generations.len() as u64 - 1;
        let cluster = Arc::clone(generations.last().expect("the configured cluster"));
        let me = match place(&generations, &sealing_key, (config.index, config.joins)) {
            Ok(me) => me,
            Err(why) => bail!("{why} (the key in {})", data_dir.display()),
        };
        let at = |g: u64, what: &dyn Fn() -> String| -> anyhow::Result<&Arc<Cluster>> {
            generations
                .get(g as usize)
                .ok_or_else(|| anyhow!("{} names rotation {g}, which is not recorded", what()))
        };

        let sandbox = Sandbox::with_config(SandboxConfig {
            engine: engine_kind(config.engine),
            cache_dir: Some(data_dir.join("cache")),
            max_instances: SANDBOX_INSTANCES,
            max_memory_bytes: PLUGIN_LIMITS.memory_bytes,
        })
        .map_err(|e| anyhow!("starting the sandbox: {e:#}"))?;
        let plugin = EvaluatorPlugin::load(&sandbox, quorumvm_guests::EVALUATOR, PLUGIN_LIMITS)
            .context("loading the evaluator plugin")?;

        let versions = Versions::default();
        versions.set_epoch(store::current_epoch(ledger.connection())?);
        for stored in store::load_decisions(&ledger, Decision::Retirement)? {
            let loading = || format!("retirement of {} in {}", stored.subject, db.display());
            let id = parse_package_id(&stored.subject)
                .ok_or_else(|| anyhow!("the package id is not 64 hex digits"))
                .with_context(loading)?;
            retire::check(at(stored.generation, &loading)?, &id, &stored.approvals)
                .with_context(loading)?;
            versions.retire_for_good(id);
        }
        // A machine waiting to join holds no version yet: those recorded for its rotation have
        // no shares until it commits.
        let stored = match me {
            Place::Member(_) => store::load_versions(ledger.connection())?,
            Place::Joining(_) => Vec::new(),
        };
        let me = me.index();
        for stored in stored {
            let loading = || format!("version {} in {}", stored.package_id, db.display());
            let id = parse_package_id(&stored.package_id)
                .ok_or_else(|| anyhow!("the package id is not 64 hex digits"))
                .with_context(loading)?;
            if stored.retired || versions.is_retired(&id) {
                versions.retire(id);
                continue;
            }
            if stored.shares == SharesChecked::Refused {
                versions.refuse(id);
                continue;
            }
            let approved = at(stored.generation, &loading)?;
            let passed = stored.shares == SharesChecked::Passed;
            let version =
                open_stored(&sandbox, approved, &sealing_key, me, &stored).with_context(loading)?;
            versions.insert(version, passed);
        }

        let callers = Callers::default();
        for stored in store::load_decisions(&ledger, Decision::Revocation)? {
            let loading = || format!("revocation of {} in {}", stored.subject, db.display());
            revoke::check(
                at(stored.generation, &loading)?,
                &stored.subject,
                &stored.approvals,
            )
            .with_context(loading)?;
            callers.revoke(stored.subject);
        }
        let freezes = Freezes::load(ledger.connection())?;
        for stored in store::load_callers(&ledger)? {
            if callers.is_revoked(&stored.name) {
                continue;
            }
            let loading = || format!("identity {} in {}", stored.name, db.display());
            let key = register::check(
                at(stored.generation, &loading)?,
                &stored.name,
                &stored.public_key,
                &stored.approvals,
            )
            .with_context(loading)?;
            callers.insert(stored.name, key);
        }

        let peers = Arc::new(Peers::new(me, &sealing_key, &cluster, http.clone()));
        Ok(Custodian {
            configured: Arc::clone(&generations[0]),
            callers,
            freezes,
            anomalies: Anomalies::default(),
            coordinator_url: config.coordinator_url.trim_end_matches('/').to_string(),
            coordinator_key,
            tickets: TicketKey::new(&sealing_key, config.coordinator_exchange_key()?),
            round_timeout,
            sealing_key,
            http,
            writer: env.writer(ledger, &format!("custodian-{me}-ledger")),
            env,
            plugin: PluginSlot::new(plugin),
            sandbox,
            session_slots: Semaphore::new(SESSION_SLOTS),
            versions,
            mailbox: Mailbox::new(mailbox::LIMITS),
            metrics: Metrics::default(),
            activation: Mutex::new(()),
            current: RwLock::new(Current {
                generation,
                me,
                peers,
                cluster,
            }),
        })
    }

    /// The cluster now and its generation.
    pub fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster now.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.current().cluster
    }

    /// This custodian's index now.
    pub fn me(&self) -> u32 {
        self.current.read().unwrap_or_else(|p| p.into_inner()).me
    }

    /// The peers now.
    pub fn peers(&self) -> Arc<Peers> {
        self.current().peers
    }

    /// Moves to the cluster a rotation committed.
    pub fn move_to(&self, next: Current) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// A checker of versions against the cluster `current` (a snapshot: a rotation that
    /// commits meanwhile does not change what one check sees).
    pub fn checker<'a>(&'a self, current: &'a Current) -> Checker<'a> {
        Checker {
            sandbox: &self.sandbox,
            cluster: &current.cluster,
            me: Some(current.me),
            now: current.me,
            key: &self.sealing_key,
        }
    }

    /// The other members of `members`, in order: who a layer's messages go to and come from.
    pub fn others(&self, members: &[u32]) -> Vec<u32> {
        let me = self.me();
        members.iter().copied().filter(|&x| x != me).collect()
    }

    /// One layer of a protocol: sends each peer its message, then waits for the layer's
    /// message from each of `from`; each of the two within `timeout`.
    pub async fn exchange(
        &self,
        inbox: &Inbox<'_>,
        session: &str,
        layer: u32,
        messages: Vec<(u32, Vec<u8>)>,
        from: &[u32],
        timeout: Duration,
    ) -> Result<Vec<(u32, Vec<u8>)>, ApiError> {
        let sent = messages.len() as u64;
        // Handing a message to a peer takes a round timeout, plus a transfer at 10 MB/s for a
        // large one, however long the layer may then wait for the peers' computations: a send
        // held for the whole of a long wait (a preprocessing layer's 30 s) on a connection a
        // partition broke would hold the peer's queue, and every session behind it, that long
        // (found by the simulation once refreshes of the shares emptied kit pools mid-partition).
        let largest = messages.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
        let send = (self.round_timeout + Duration::from_micros(largest as u64 / 10)).min(timeout);
        self.peers().send(session, layer, messages, send).await?;
        Metrics::add(&self.metrics.rounds_sent, sent);
        Ok(inbox.wait(layer, from, timeout).await?)
    }
}

/// Circuits up to this many gates run their plugin calls on the async worker itself: such a
/// call takes tens of microseconds, less than handing it to a blocking thread and back (two
/// thread wake-ups per call, measured as the larger cost under load). Larger circuits go to
/// [`Custodian::off_thread`].
pub(crate) const INLINE_GATES: usize = 1024;

impl Custodian {
    /// Runs `work` here when `inline`, else off the async workers (see
    /// [`Custodian::off_thread`]).
    pub(crate) async fn compute<T: Send + 'static>(
        &self,
        inline: bool,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if inline {
            Ok(work())
        } else {
            self.off_thread(what, work).await
        }
    }

    /// Runs CPU-bound work (a plugin call, a preprocessing step) off the async workers
    /// ([`Env::blocking`]), which must keep answering round messages and health checks.
    pub(crate) async fn off_thread<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.env
            .blocking(work)
            .await
            .map_err(|e| ApiError::task_failed(what, e))
    }
}

/// The index of the member with this custodian's sealing key, if it is one.
/// Where this machine stands in the cluster in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A member, at this index.
    Member(u32),
    /// Not a member yet, waiting to join at this index (a fresh one, its config's): it serves
    /// nothing and takes part only in the rotation that brings it in
    /// ([`crate::rotation`]).
    Joining(u32),
}

impl Place {
    pub fn index(self) -> u32 {
        match self {
            Place::Member(i) | Place::Joining(i) => i,
        }
    }
}

/// This machine's place after `generations`, its key and its configured index: a member of
/// the last; a machine that has never been a member and `joins`, joining at `configured`; or
/// refused, with why (a member since left, or a key that is not at the configured index: the
/// wrong data directory or index).
pub(crate) fn place(
    generations: &[Arc<Cluster>],
    key: &CustodianSecretKey,
    (configured, joins): (u32, bool),
) -> Result<Place, String> {
    let first = &generations[0];
    let last = generations.last().expect("the configured cluster");
    let last_member = generations.iter().rposition(|c| index_of(c, key).is_some());
    match (index_of(first, key), index_of(last, key)) {
        (Some(at), _) if at != configured => Err(format!(
            "this machine's key is not custodian {configured}'s sealing key in the \
             configuration (it is custodian {at}'s): wrong data directory or wrong index"
        )),
        (_, Some(index)) => Ok(Place::Member(index)),
        _ if let Some(g) = last_member => Err(format!(
            "custodian {configured} left the cluster in rotation {} and holds no shares: its \
             data directory can be destroyed",
            g + 1
        )),
        _ if joins => Ok(Place::Joining(configured)),
        _ => Err(format!(
            "the sealing key is not custodian {configured}'s in the cluster in force (rotation \
             {}): wrong data directory or wrong index (a machine that joins the cluster later \
             says `joins = true`)",
            generations.len() - 1
        )),
    }
}

/// Checks a stored version against `approved`, the cluster whose operators approved it, and
/// opens this custodian's shares of it (at index `now`). Blocking: compiles the package.
pub(crate) fn open_stored(
    sandbox: &Sandbox,
    approved: &Cluster,
    key: &CustodianSecretKey,
    now: u32,
    stored: &store::StoredVersion,
) -> anyhow::Result<Version> {
    let id = parse_package_id(&stored.package_id)
        .ok_or_else(|| anyhow!("the package id is not 64 hex digits"))?;
    let checker = Checker {
        sandbox,
        cluster: approved,
        me: index_of(approved, key),
        now,
        key,
    };
    let checked = checker.check(
        &id,
        &stored.package,
        &stored.approvals,
        &stored.deal,
        Shares {
            sealed: &stored.sealed,
            refreshed: &stored.refreshed,
        },
    )?;
    Ok(Version::new(
        id,
        checked.manifest,
        checked.circuit,
        stored.deal.digest(),
        checked.secrets,
        stored.kits,
    ))
}

pub(crate) fn index_of(cluster: &Cluster, key: &CustodianSecretKey) -> Option<u32> {
    let public = key.public();
    cluster
        .members()
        .iter()
        .find(|m| m.sealing_key == public)
        .map(|m| m.index)
}

fn engine_kind(engine: Engine) -> EngineKind {
    match engine {
        Engine::Cranelift => EngineKind::Cranelift,
        Engine::Winch => EngineKind::Winch,
        Engine::Pulley => EngineKind::Pulley,
    }
}
