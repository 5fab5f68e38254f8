//! The custodians as the coordinator sees them: who is live, which versions each serves, and
//! the calls the coordinator makes to them (signed orders, session tickets, health checks).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::http::HttpClient;
use quorumvm_server::{Bug, Env};
use quorumvm_wire::api::{
    CustodianHealth, ErrorBody, OrderResponse, SessionRequest, SessionResponse,
};
use quorumvm_wire::config::{Cluster, Member};
use quorumvm_wire::order::{Order, SignedOrder, TicketKey};

/// How often every custodian is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// A session waits for its slowest peer (the custodians' round timeout is 2 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// An activation or a check of shares: a package compiled, a few rounds; allow for a slow disk.
const PREPROCESS_TIMEOUT: Duration = Duration::from_secs(120);
/// A preprocessing batch of thousands of kits takes a few hundred ms: its timeout is this much,
/// plus [`PREPROCESS_PER_KIT`] per kit, for a slow disk. Not a fixed two minutes: a custodian
/// whose answer is lost would hold the kit pool that long (found by the simulation).
const PREPROCESS_BASE: Duration = Duration::from_secs(5);
/// A refresh's commit: one transaction and a few share openings. A custodian that does not
/// answer within it is sent the commit again by the health checks.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
const PREPROCESS_PER_KIT: Duration = Duration::from_millis(5);

pub struct Custodian {
    pub member: Member,
    /// Authenticates this custodian's session tickets (shared with it alone).
    pub tickets: TicketKey,
    live: AtomicBool,
    /// Proven to have deviated ([`crate::suspects`]): in no evaluation quorum until cleared.
    suspect: AtomicBool,
    /// Versions (package ids) this custodian reported or acknowledged serving.
    serving: Mutex<HashSet<String>>,
    /// The share epoch it reported or acknowledged last ([`crate::reshare`]).
    epoch: AtomicU64,
    /// A task is sending it the commits of refreshes it missed.
    pub catching_up: AtomicBool,
}

impl Custodian {
    pub fn index(&self) -> u32 {
        self.member.index
    }
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
    pub fn serves(&self, package_id: &str) -> bool {
        self.is_live()
            && self
                .serving
                .lock()
                .expect("serving lock")
                .contains(package_id)
    }
    /// The versions it reported or acknowledged serving.
    pub fn serving_ids(&self) -> HashSet<String> {
        self.serving.lock().expect("serving lock").clone()
    }
    pub fn mark_serving(&self, package_id: &str) {
        self.serving
            .lock()
            .expect("serving lock")
            .insert(package_id.to_string());
    }
    /// Marks the custodian dead; returns whether it was live.
    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Acquire)
    }
    /// Sets whether this custodian is suspect; returns whether it was.
    pub fn set_suspect(&self, suspect: bool) -> bool {
        self.suspect.swap(suspect, Ordering::AcqRel)
    }
    pub fn mark_dead(&self) -> bool {
        self.live.swap(false, Ordering::AcqRel)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }
}

/// The custodians of `cluster` (rotation `generation`, which moved to epoch `since_epoch`);
/// those `before` knew (by sealing key) keep what it knew of them, and those it had that
/// `cluster` has not are departed.
fn roster(
    exchange: &CustodianSecretKey,
    (generation, cluster, since_epoch): (u64, Cluster, u64),
    before: Option<&Roster>,
) -> Roster {
    let custodian = |m: &Member| {
        let known =
            before.and_then(|r| r.all.iter().find(|c| c.member.sealing_key == m.sealing_key));
        Custodian {
            member: m.clone(),
            tickets: TicketKey::new(exchange, m.sealing_key),
            live: AtomicBool::new(known.is_some_and(Custodian::is_live)),
            suspect: AtomicBool::new(known.is_some_and(Custodian::is_suspect)),
            serving: Mutex::new(known.map_or_else(HashSet::new, Custodian::serving_ids)),
            epoch: AtomicU64::new(known.map_or(0, Custodian::epoch)),
            catching_up: AtomicBool::new(false),
        }
    };
    let all = cluster.members().iter().map(custodian).collect();
    let departed = before.map_or_else(Vec::new, |r| {
        r.all
            .iter()
            .filter(|c| {
                !cluster
                    .members()
                    .iter()
                    .any(|m| m.sealing_key == c.member.sealing_key)
            })
            .map(|c| custodian(&c.member))
            .collect()
    });
    Roster {
        generation,
        cluster,
        all,
        departed,
        since_epoch,
    }
}

/// Why a call to a custodian failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer: refused, reset, timed out. The custodian is treated as dead.
    Unreachable(String),
    /// It answered with an error.
    Refused { status: u16, body: ErrorBody },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "unreachable: {m}"),
            CallError::Refused { status, body } => {
                write!(f, "{status} {}: {}", body.error.code, body.error.message)
            }
        }
    }
}

/// The custodians of one membership: the configured cluster (generation 0), or the one the
/// last rotation committed ([`crate::rotation`]). Everything that takes custodians (quorums,
/// kit batches, approvals, reconstruction with k) takes one roster and keeps to it, so a
/// rotation committing meanwhile never mixes two memberships in one operation.
pub struct Roster {
    /// How many rotations made this membership.
    pub generation: u64,
    pub cluster: Cluster,
    pub all: Vec<Custodian>,
    /// The machines the rotation that made this membership removed. Each is sent that
    /// rotation's commit until it takes it (it then deletes its shares and serves nothing), as
    /// a member behind is; they are in no quorum.
    pub departed: Vec<Custodian>,
    /// The epoch that rotation moved to (0 for the configured cluster).
    pub since_epoch: u64,
}

impl Roster {
    /// The custodians that may take part in an evaluation of `package_id`, at any share epoch:
    /// live, serving it, not suspect, and not in `refusing` (those that refuse the caller).
    pub fn willing<'a>(
        &'a self,
        package_id: &'a str,
        refusing: &'a [u32],
    ) -> impl Iterator<Item = &'a Custodian> {
        self.all.iter().filter(move |c| {
            c.serves(package_id) && !c.is_suspect() && !refusing.contains(&c.index())
        })
    }

    pub fn get(&self, index: u32) -> Option<&Custodian> {
        self.all.iter().find(|c| c.index() == index)
    }

    /// k of this membership.
    pub fn threshold(&self) -> usize {
        self.cluster.threshold()
    }
}

pub struct Custodians {
    roster: RwLock<Arc<Roster>>,
    /// Derives the session-ticket key shared with each custodian, members to come included.
    exchange: CustodianSecretKey,
    client: HttpClient,
    /// The clock orders are signed on, and whether a planted bug is on.
    env: Env,
    key: SecretKey,
    /// Whether a first round of health checks has finished since this process started: until
    /// then, no live custodian means "not known yet", not "down".
    checked: tokio::sync::watch::Sender<bool>,
}

impl Custodians {
    /// The custodians of the configured cluster; [`Custodians::move_to`] applies rotations.
    pub fn new(
        env: &Env,
        cluster: Cluster,
        key: SecretKey,
        exchange: CustodianSecretKey,
    ) -> Custodians {
        let roster = roster(&exchange, (0, cluster, 0), None);
        Custodians {
            roster: RwLock::new(Arc::new(roster)),
            exchange,
            client: env.http(),
            env: env.clone(),
            key,
            checked: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The membership in force: take it once per operation.
    pub fn roster(&self) -> Arc<Roster> {
        Arc::clone(&self.roster.read().expect("roster lock"))
    }

    /// Moves to the membership of rotation `generation`, which moved the cluster to epoch
    /// `since_epoch` (a no-op if that one is in force). A machine kept (the same sealing key)
    /// keeps what this coordinator knows of it: whether it is live, suspect, what it serves and
    /// its epoch; one removed is [`Roster::departed`].
    pub fn move_to(&self, generation: u64, cluster: Cluster, since_epoch: u64) {
        let mut held = self.roster.write().expect("roster lock");
        if held.generation >= generation {
            return;
        }
        // The configuration pins the configured cluster's TLS keys, not those of machines a
        // rotation brought in.
        for m in cluster.members() {
            if let Some(pin) = m.tls
                && let Err(e) = self.env.admit(&m.url, pin)
            {
                tracing::warn!(custodian = m.index, "its TLS key is not pinned: {e:#}");
            }
        }
        let next = roster(
            &self.exchange,
            (generation, cluster, since_epoch),
            Some(&held),
        );
        *held = Arc::new(next);
    }

    /// The machines of a rotation that brings machines in: the current members (as this
    /// coordinator knows them) and the joining ones, each at its index in `next`. Every current
    /// member keeps its index in such a rotation, so the indices name one machine each.
    pub fn joining(&self, next: &Cluster) -> Arc<Roster> {
        let held = self.roster();
        Arc::new(roster(
            &self.exchange,
            (held.generation, next.clone(), held.since_epoch),
            Some(&held),
        ))
    }

    /// Records that every custodian has been checked once.
    pub fn first_round_done(&self) {
        self.checked.send_replace(true);
    }

    /// Waits, at most `limit`, until every custodian has been checked once since the start:
    /// right after a restart a request waits for the first health checks instead of being
    /// refused because no custodian is known to be live yet.
    pub async fn checked_once(&self, limit: Duration) {
        let mut checked = self.checked.subscribe();
        let _ = tokio::time::timeout(limit, checked.wait_for(|done| *done)).await;
    }

    /// Checks one custodian; on success records it live with the versions it serves.
    ///
    /// A machine that missed the commit of a rotation still answers at its index before it
    /// (a renumbered one at another): it counts as live, behind the cluster's epoch, and is
    /// sent the commits it missed.
    pub async fn check_health(&self, roster: &Roster, c: &Custodian) -> Option<CustodianHealth> {
        if self.env.planted(Bug::DeadStaysDead) && !c.is_live() && *self.checked.borrow() {
            return None;
        }
        let result = self
            .client
            .get(format!("{}/v1/health", c.member.url))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await;
        let health = match result {
            Ok(r) if r.status.is_success() => r.json::<CustodianHealth>().ok(),
            _ => None,
        };
        match &health {
            Some(h) if h.index == c.index() || h.generation < roster.generation => {
                *c.serving.lock().expect("serving lock") =
                    h.versions.iter().map(|v| v.package_id.clone()).collect();
                c.set_epoch(h.epoch);
                if !c.live.swap(true, Ordering::AcqRel) {
                    tracing::info!(custodian = c.index(), "custodian is live");
                }
            }
            _ => {
                if c.mark_dead() {
                    tracing::warn!(custodian = c.index(), "custodian is not answering");
                }
            }
        }
        health
    }

    /// The coordinator's own public key (orders, and its own suspension statements).
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    pub fn sign(&self, order: Order) -> SignedOrder {
        SignedOrder::sign(order, self.env.now_ms(), &self.key)
    }

    pub async fn order(&self, c: &Custodian, order: Order) -> Result<OrderResponse, CallError> {
        let timeout = match order {
            Order::Preprocess { count, .. } => {
                PREPROCESS_BASE + PREPROCESS_PER_KIT * count.min(u32::MAX as u64) as u32
            }
            Order::Activate { .. }
            | Order::CheckShares { .. }
            | Order::Reshare { .. }
            | Order::Redeal { .. }
            | Order::Join { .. } => PREPROCESS_TIMEOUT,
            Order::CommitReshare { .. } | Order::CommitRedeal { .. } => COMMIT_TIMEOUT,
            _ => HEALTH_TIMEOUT,
        };
        let signed = self.sign(order);
        self.post(c, "/v1/orders", &signed, timeout).await
    }

    pub async fn session(
        &self,
        c: &Custodian,
        request: &SessionRequest,
    ) -> Result<SessionResponse, CallError> {
        self.post(c, "/v1/sessions", request, SESSION_TIMEOUT).await
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        c: &Custodian,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let response = self
            .client
            .post(format!("{}{path}", c.member.url))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let (status, bytes) = (response.status, response.body);
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| CallError::Refused {
                status: 502,
                body: ErrorBody::new("bad_answer", format!("unreadable answer: {e}")),
            })
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                ErrorBody::new("error", String::from_utf8_lossy(&bytes).into_owned())
            });
            Err(CallError::Refused {
                status: status.as_u16(),
                body,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quorumvm_wire::config::CustodianEntry;

    use super::*;

    fn custodians() -> Custodians {
        let entries: Vec<CustodianEntry> = (1..=3)
            .map(|index| CustodianEntry {
                index,
                url: format!("http://127.0.0.1:{}", 7100 + index),
                operator_key: SecretKey::generate().public().to_hex(),
                sealing_key: CustodianSecretKey::generate().public().to_hex(),
                tls_fingerprint: None,
            })
            .collect();
        let cluster = Cluster::new(2, &entries).unwrap();
        Custodians::new(
            &Env::system(),
            cluster,
            SecretKey::generate(),
            CustodianSecretKey::generate(),
        )
    }

    /// Right after a start no custodian is known to be live: a request waits for the first
    /// round of health checks rather than being refused for want of a quorum.
    #[tokio::test]
    async fn a_request_waits_for_the_first_health_checks() {
        let custodians = Arc::new(custodians());
        let checked = Arc::new(AtomicBool::new(false));
        let (c, done) = (Arc::clone(&custodians), Arc::clone(&checked));
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            done.store(true, Ordering::Release);
            c.first_round_done();
        });
        custodians.checked_once(Duration::from_secs(60)).await;
        assert!(checked.load(Ordering::Acquire));
        // Once checked, it never waits again.
        custodians.checked_once(Duration::ZERO).await;
    }
}
