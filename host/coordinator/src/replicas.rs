//! Replicas of one coordinator sharing a PostgreSQL database (the config's `database`): what
//! each holds in memory follows what the others commit.
//!
//! What the replicas must never disagree on is decided in the database itself, in the
//! transaction that changes it: budgets and rate limits (a row lock per identity and program),
//! request ids (a primary key), kit ids (allocated by the database, each batch handed out only
//! by the replica that ordered it), approvals counted to k and freezes (taken in turns), one
//! refresh per epoch (a unique index) and the audit chain (one tip, taken in turns).
//!
//! What a replica keeps in memory to serve fast (versions and their approvals, identities,
//! freezes, unfreezes, suspects, the certified refreshes) it loads at start and changes as its
//! own requests commit; what another replica changed it learns here. Every such change commits
//! with an audit entry, so a replica watches the log: every [`POLL`] (the config's `poll_ms`)
//! it looks for entries appended since it last looked that are not an evaluation's own
//! (`eval.*`), and if there are any, loads those tables again. A request naming a version this
//! replica does not know, or knows as pending, looks at once before it is refused
//! ([`catch_up`]), so a client that installs a version through one replica and approves or
//! evaluates it through another, behind a load balancer, is never told that it does not exist.
//! What only the poll brings is what makes a replica refuse: for at most one interval, it may
//! still serve an identity or version another replica just froze or retired. Every custodian
//! checks approvals, revocations, retirements and its own freezes for itself, so no request the
//! cluster must refuse is answered because of it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use quorumvm_ledger::Sql;

use crate::State;
use crate::error::ApiError;
use crate::store::{self, StoreError};

/// How often a replica looks for the others' changes unless its config says otherwise.
pub const POLL: Duration = Duration::from_millis(200);

/// What this replica last saw of the shared log. One look at a time: a request that missed
/// waits for the look in progress and then makes its own, cheap unless the log moved.
pub struct Follower {
    seen: tokio::sync::Mutex<Option<u64>>,
    poll: Duration,
}

impl Follower {
    pub fn new(poll: Duration) -> Follower {
        Follower {
            seen: tokio::sync::Mutex::new(None),
            poll,
        }
    }

    /// Loads what the other replicas committed since the last look, now.
    pub async fn catch_up(&self, state: &State) -> Result<(), ApiError> {
        let mut seen = self.seen.lock().await;
        *seen = Some(look(state, *seen).await?);
        Ok(())
    }
}

/// Follows the other replicas' changes until the process ends.
pub async fn follow(state: Arc<State>) {
    let Some(follower) = &state.follower else {
        return;
    };
    let mut tick = tokio::time::interval(follower.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = follower.catch_up(&state).await {
            tracing::warn!("cannot follow the other replicas' changes: {e}");
        }
    }
}

/// Before a request is refused because this replica does not know what it names (or knows it
/// as pending): what another replica committed a moment ago, which the client may have just
/// been answered, is loaded first. Nothing with SQLite, where there is no other replica.
pub async fn catch_up(state: &State) -> Result<(), ApiError> {
    match &state.follower {
        Some(follower) => follower.catch_up(state).await,
        None => Ok(()),
    }
}

/// The audit log's head; if entries other than evaluations' were appended after `seen`, with
/// everything they may have changed loaded again. (The first look loads everything again: a
/// change may have committed between the start's load and this look.)
async fn look(state: &State, seen: Option<u64>) -> Result<u64, ApiError> {
    let storage = state.storage.clone();
    let (head, changed) = state
        .env
        .blocking(move || storage.read(|conn| changes(conn, seen)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    if changed {
        reload(state).await?;
    }
    Ok(head)
}

fn changes(conn: &dyn Sql, seen: Option<u64>) -> Result<(u64, bool), StoreError> {
    // Entries commit in the order of their sequence numbers (each takes the chain's tip in
    // turns until it commits), so none can appear later below the head read here.
    let head = conn
        .query("SELECT COALESCE(MAX(seq), 0) FROM audit_log", &[])?
        .first()
        .map(|r| r.uint(0))
        .transpose()?
        .unwrap_or(0);
    let Some(seen) = seen else {
        return Ok((head, true));
    };
    let changed = conn
        .query_opt(
            "SELECT seq FROM audit_log WHERE seq > ?1 AND seq <= ?2 AND kind NOT LIKE 'eval.%'
             LIMIT 1",
            quorumvm_ledger::sql_params![seen, head],
        )?
        .is_some();
    Ok((head, changed))
}

/// Loads the shared tables again into what this replica holds.
async fn reload(state: &State) -> Result<(), ApiError> {
    let storage = state.storage.clone();
    let owner = state.replica.clone();
    let threshold = state.custodians.roster().threshold();
    let shared = state
        .env
        .blocking(move || storage.read(|conn| store::load_shared(conn, &owner, threshold)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    state.registry.refresh(shared.versions, shared.aliases);
    state.identities.refresh(shared.identities)?;
    let suspects: HashSet<u32> = shared.suspects.into_iter().collect();
    for c in &state.custodians.roster().all {
        c.set_suspect(suspects.contains(&c.index()));
    }
    if state.epochs.refresh(shared.certificates) {
        // It may have been a rotation: the membership moves here too.
        crate::reshare::follow_membership(&state.epochs, &state.custodians)
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        // Another replica certified a refresh: the kits of the old epoch are gone, as on it.
        for v in state.registry.all() {
            v.kits.lock().expect("kits lock").discard();
        }
        tracing::info!(
            epoch = state.epochs.current(),
            "another replica certified a refresh of the shares"
        );
    }
    state.freezes.merge(&shared.freezes);
    state.unfreezes.refresh(shared.unfreezes);
    Ok(())
}
