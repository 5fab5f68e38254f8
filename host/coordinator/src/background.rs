//! What the coordinator does on its own: health checks (a dead custodian is noticed within one
//! interval, or at once when a call to it fails), bringing active versions up on custodians
//! that do not serve them yet (activation, then the custodians' joint check of the shares),
//! pushing registrations, revocations, retirements, unfreezes and the commits of refreshes and
//! rotations to custodians that missed them (the machines a rotation removed included, until
//! they take it), and keeping each active version's pool of preprocessed kits filled.

use quorumvm_ledger::Commit as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::order::{Order, at_epoch};
use tokio::task::JoinSet;

use crate::State;
use crate::custodians::{CallError, Custodian, HEALTH_INTERVAL, Roster};
use crate::identities::Caller;
use crate::registry::Version;
use crate::store;

const POOL_INTERVAL: Duration = Duration::from_millis(200);

pub fn start(state: Arc<State>) {
    tokio::spawn(health_loop(Arc::clone(&state)));
    tokio::spawn(pool_loop(state));
}

async fn health_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut checks = JoinSet::new();
        let roster = state.custodians.roster();
        for i in 0..roster.all.len() {
            let (state, roster) = (Arc::clone(&state), Arc::clone(&roster));
            checks.spawn(async move {
                let c = &roster.all[i];
                if let Some(health) = state.custodians.check_health(&roster, c).await {
                    // Behind the cluster's epoch: it missed the commit of a refresh. Sent off
                    // this loop, which must not wait on one custodian.
                    if health.epoch < state.epochs.current()
                        && !c.catching_up.swap(true, Ordering::AcqRel)
                    {
                        let (state, roster) = (Arc::clone(&state), Arc::clone(&roster));
                        tokio::spawn(async move {
                            let c = &roster.all[i];
                            crate::reshare::catch_up(&state, c).await;
                            c.catching_up.store(false, Ordering::Release);
                        });
                    }
                    let k = roster.threshold();
                    let held = (health.revocations as usize, health.identities as usize);
                    send_identities(&state, c, k, held).await;
                    let retired: Vec<_> = state
                        .registry
                        .all()
                        .into_iter()
                        .filter(|v| v.is_retired_by_operators(k))
                        .collect();
                    if (health.retirements as usize) < retired.len() {
                        for v in &retired {
                            order_on(&state, c, retirement(v)).await;
                        }
                    }
                    for order in state.unfreezes.missed(&health.frozen) {
                        order_on(&state, c, order).await;
                    }
                }
            });
        }
        // The machines the last rotation removed, until each took its commit.
        for i in 0..roster.departed.len() {
            let (state, roster) = (Arc::clone(&state), Arc::clone(&roster));
            checks.spawn(async move {
                let c = &roster.departed[i];
                if c.epoch() >= roster.since_epoch {
                    return;
                }
                let behind = state
                    .custodians
                    .check_health(&roster, c)
                    .await
                    .is_some_and(|h| h.epoch < roster.since_epoch);
                if behind && !c.catching_up.swap(true, Ordering::AcqRel) {
                    tokio::spawn(async move {
                        let c = &roster.departed[i];
                        crate::reshare::catch_up(&state, c).await;
                        c.catching_up.store(false, Ordering::Release);
                    });
                }
            });
        }
        while checks.join_next().await.is_some() {}
        state.custodians.first_round_done();
    }
}

/// Sends custodian `c` the revocations and registrations of caller identities when it holds
/// fewer than this coordinator (`held`: how many of each it reported), revocations first, so
/// that a revoked name is never registered in between. Fewer there than here: it missed some
/// while down, or it is joining the cluster. Each order is idempotent, so all of its kind go
/// again.
pub(crate) async fn send_identities(
    state: &State,
    c: &Custodian,
    k: usize,
    (revocations, identities): (usize, usize),
) {
    let (revoked, active): (Vec<_>, Vec<_>) = state
        .identities
        .all()
        .into_iter()
        .filter(|caller| caller.is_active(k) || caller.is_revoked(k))
        .partition(|caller| caller.is_revoked(k));
    if revocations < revoked.len() {
        for caller in &revoked {
            order_on(state, c, revocation(caller)).await;
        }
    }
    if identities < active.len() {
        for caller in &active {
            order_on(state, c, registration(caller)).await;
        }
    }
}

/// Brings `version` to serve on every custodian and waits for their answers (after any
/// attempt already under way), so that an approval that activates returns once the version
/// serves (see [`bring_up`]).
pub async fn push_activation(state: Arc<State>, version: Arc<Version>) {
    let _one = version.checks.running.lock().await;
    bring_up(&state, &version).await;
}

/// Tells every custodian that `caller` reached its approvals (those down now get it when seen
/// again), so that the approval that activates returns once the custodians accept it.
pub async fn push_identity(state: Arc<State>, caller: Arc<Caller>) {
    push_to_all(state, registration(&caller)).await
}

/// Tells every custodian that k operators revoked `caller` (those down now get it when seen
/// again).
pub async fn push_revocation(state: Arc<State>, caller: Arc<Caller>) {
    push_to_all(state, revocation(&caller)).await
}

/// Tells every custodian that k operators retired `version` (those down now get it when seen
/// again).
pub async fn push_retirement(state: Arc<State>, version: Arc<Version>) {
    push_to_all(state, retirement(&version)).await
}

fn registration(caller: &Caller) -> Order {
    Order::RegisterIdentity {
        name: caller.name.clone(),
        public_key: caller.key.to_hex(),
        approvals: caller.approvals(),
    }
}

fn revocation(caller: &Caller) -> Order {
    Order::RevokeIdentity {
        name: caller.name.clone(),
        approvals: caller.revocation_approvals(),
    }
}

fn retirement(version: &Version) -> Order {
    Order::Retire {
        package_id: version.package_id.clone(),
        approvals: crate::registry::signatures(&version.retirements),
    }
}

/// Sends `order` to every custodian at once and waits for their answers.
async fn push_to_all(state: Arc<State>, order: Order) {
    let roster = state.custodians.roster();
    let pushes: Vec<_> = (0..roster.all.len())
        .map(|i| {
            let (state, roster, order) = (Arc::clone(&state), Arc::clone(&roster), order.clone());
            tokio::spawn(async move { order_on(&state, &roster.all[i], order).await })
        })
        .collect();
    for p in pushes {
        let _ = p.await;
    }
}

async fn order_on(state: &State, c: &Custodian, order: Order) {
    let what = format!("{order:?}");
    if let Err(e) = state.custodians.order(c, order).await {
        tracing::warn!(
            custodian = c.index(),
            "order not taken: {e} ({:.120})",
            what
        );
    }
}

/// Brings `version` to serve on every custodian: each activates it (again, if it did before:
/// activation is idempotent), and once all n hold it they check its shares together
/// ([`check_shares`]). A custodian counts as serving the version only once it says so: in its
/// answer here, or in its health. Callers hold the version's `checks.running`; the pool loop
/// tries again while not every custodian serves.
async fn bring_up(state: &Arc<State>, version: &Version) {
    if everyone_serves(state, version) {
        return;
    }
    let order = Order::Activate {
        package_id: version.package_id.clone(),
        approvals: crate::registry::signatures(&version.approvals),
    };
    let mut everyone_holds = true;
    let roster = state.custodians.roster();
    for (index, answer) in order_everyone(state, &roster, order).await {
        let c = roster.get(index).expect("a member");
        match answer {
            Ok(r) if r.status == "active" => c.mark_serving(&version.package_id),
            Ok(r) if r.status == "unchecked" => {}
            Ok(r) => {
                tracing::warn!(custodian = index, package = %version.package_id, "activation: unexpected answer {r:?}");
                everyone_holds = false;
            }
            Err(e) => {
                tracing::warn!(custodian = index, package = %version.package_id, "activation not taken: {e}");
                if refuses_shares(&e) {
                    // Refused at an earlier check (before this coordinator started, say).
                    version.checks.refused.store(true, Ordering::Release);
                }
                everyone_holds = false;
            }
        }
    }
    if everyone_holds && !everyone_serves(state, version) {
        check_shares(state, version).await;
    }
}

/// Orders every custodian to check `version`'s shares with the others, under a fresh session.
/// Each decides for itself from its peers' messages; those that pass it serve the version. A
/// refusal is kept (and audited): the same shares would be refused again.
async fn check_shares(state: &Arc<State>, version: &Version) {
    let session = format!("check-{}-{}", &version.package_id[..16], state.env.now_ms());
    let order = Order::CheckShares {
        package_id: version.package_id.clone(),
        session: session.clone(),
    };
    let mut failed = false;
    let mut refusals = Vec::new();
    let roster = state.custodians.roster();
    for (index, answer) in order_everyone(state, &roster, order).await {
        match answer {
            Ok(r) if r.status == "active" => {
                let c = roster.get(index).expect("a member");
                c.mark_serving(&version.package_id);
                tracing::info!(custodian = index, package = %version.package_id, "shares checked: the custodian serves the version");
            }
            Err(CallError::Refused { body, .. }) if body.error.code == SHARES_REFUSED => {
                tracing::warn!(custodian = index, package = %version.package_id, "shares refused: {}", body.error.message);
                refusals
                    .push(serde_json::json!({ "custodian": index, "message": body.error.message }));
                failed = true;
            }
            other => {
                tracing::warn!(custodian = index, package = %version.package_id, %session, "check of shares failed: {other:?}");
                failed = true;
            }
        }
    }
    if failed {
        abort_everywhere(state, &roster, &session).await;
    }
    if !refusals.is_empty() {
        version.checks.refused.store(true, Ordering::Release);
        let details = serde_json::json!({
            "package_id": version.package_id,
            "session": session,
            "refusals": refusals,
        });
        let now = state.env.now_ms();
        let _ = state
            .storage
            .commit(move |tx| {
                store::audit(tx, now, "coordinator", "version.shares_refused", details)
            })
            .await;
    }
}

/// The code of a custodian's refusal of a version whose shares its check refused.
const SHARES_REFUSED: &str = "shares_refused";

fn refuses_shares(e: &CallError) -> bool {
    matches!(e, CallError::Refused { body, .. } if body.error.code == SHARES_REFUSED)
}

/// Sends `order` to every custodian at once: a call per custodian, each answering with its
/// index. One that cannot be reached is marked dead.
fn send_to_everyone(
    state: &Arc<State>,
    roster: &Arc<Roster>,
    order: Order,
) -> JoinSet<(u32, Result<OrderResponse, CallError>)> {
    let mut calls = JoinSet::new();
    for i in 0..roster.all.len() {
        let (state, roster, order) = (Arc::clone(state), Arc::clone(roster), order.clone());
        calls.spawn(async move {
            let c = &roster.all[i];
            let result = state.custodians.order(c, order).await;
            if let Err(CallError::Unreachable(_)) = &result {
                c.mark_dead();
            }
            (c.index(), result)
        });
    }
    calls
}

/// Sends `order` to every custodian at once; their answers by index.
pub(crate) async fn order_everyone(
    state: &Arc<State>,
    roster: &Arc<Roster>,
    order: Order,
) -> Vec<(u32, Result<OrderResponse, CallError>)> {
    let mut calls = send_to_everyone(state, roster, order);
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(e) => tracing::warn!("an order's task failed: {e}"),
        }
    }
    answers
}

/// Sends a joint protocol's `order` (every custodian takes part, so one failure fails it) to
/// every custodian at once. Returns every answer, or the first failure as soon as it comes: the
/// calls still running are dropped rather than waited for, since a custodian cut off from the
/// coordinator would otherwise hold the batch until its timeout (found by the simulation: a
/// partition of one custodian from the coordinator stopped the kit pool for two minutes).
pub(crate) async fn order_jointly(
    state: &Arc<State>,
    roster: &Arc<Roster>,
    order: Order,
) -> Result<Vec<(u32, OrderResponse)>, (u32, CallError)> {
    let mut calls = send_to_everyone(state, roster, order);
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((index, Ok(answer))) => answers.push((index, answer)),
            Ok((index, Err(e))) => return Err((index, e)),
            Err(e) => tracing::warn!("an order's task failed: {e}"),
        }
    }
    Ok(answers)
}

/// Peers waiting on a failed member give up at their round timeout; tells them now.
pub(crate) async fn abort_everywhere(state: &State, roster: &Roster, session: &str) {
    for c in &roster.all {
        let abort = Order::Abort {
            session: session.to_string(),
        };
        let _ = state.custodians.order(c, abort).await;
    }
}

async fn pool_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(POOL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for v in state.registry.all() {
            if !v.is_active() {
                continue;
            }
            if !everyone_serves(&state, &v) {
                let all_live = state.custodians.roster().all.iter().all(|c| c.is_live());
                if all_live && !v.checks.refused.load(Ordering::Acquire) {
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        if let Ok(_one) = v.checks.running.try_lock() {
                            bring_up(&state, &v).await;
                        }
                    });
                }
                continue;
            }
            // A custodian behind the cluster's epoch is sent the commit it missed first.
            if !everyone_ready(&state, &v) {
                continue;
            }
            {
                let mut kits = v.kits.lock().expect("kits lock");
                if kits.generating || kits.available() >= state.pool.low_water {
                    continue;
                }
                kits.generating = true;
            }
            tokio::spawn(fill(Arc::clone(&state), v));
        }
    }
}

/// Whether every custodian serves `v` (else it is brought up).
fn everyone_serves(state: &State, v: &Version) -> bool {
    let roster = state.custodians.roster();
    roster.all.iter().all(|c| c.serves(&v.package_id))
}

/// Generation needs every custodian: each deals randomness and takes part in reducing the
/// products (n >= 2k − 1), and each must store its share of every kit, at the cluster's epoch.
pub(crate) fn everyone_ready(state: &State, v: &Version) -> bool {
    let epoch = state.epochs.current();
    let roster = state.custodians.roster();
    roster
        .all
        .iter()
        .all(|c| c.serves(&v.package_id) && c.epoch() == epoch)
}

async fn fill(state: Arc<State>, v: Arc<Version>) {
    loop {
        let stored = run_batch(&state, &v, state.pool.batch).await;
        let more = {
            let kits = v.kits.lock().expect("kits lock");
            stored && kits.available() < state.pool.target
        };
        if !more || !everyone_ready(&state, &v) {
            break;
        }
    }
    v.kits.lock().expect("kits lock").generating = false;
}

/// Orders a batch of `count` kits from every custodian; whether they all stored it.
async fn run_batch(state: &Arc<State>, v: &Arc<Version>, count: u64) -> bool {
    let (id, owner) = (v.package_id.clone(), state.replica.clone());
    let recorded = state
        .storage
        .commit(move |tx| store::order_batch(tx, &id, count, &owner))
        .await;
    let first = match recorded {
        Ok(first) => first,
        Err(e) => {
            tracing::warn!(package = %v.package_id, "cannot record a preprocessing batch: {e}");
            return false;
        }
    };
    let started = std::time::Instant::now();
    let session = format!("prep-{}-{first}", &v.package_id[..16]);
    let epoch = state.epochs.current();
    let order = Order::Preprocess {
        session: session.clone(),
        package_id: v.package_id.clone(),
        first_kit: first,
        count,
        epoch,
    };
    let roster = state.custodians.roster();
    let ok = match order_jointly(state, &roster, order).await {
        Ok(answers) => {
            let unexpected = answers
                .iter()
                .find(|(_, r)| r.status != "stored" || r.kits != count);
            if let Some((index, r)) = unexpected {
                tracing::warn!(custodian = index, "preprocessing: unexpected answer {r:?}");
            }
            unexpected.is_none() && answers.len() == roster.all.len()
        }
        Err((index, e)) => {
            tracing::warn!(custodian = index, "preprocessing batch failed: {e}");
            if let CallError::Refused { body, .. } = &e
                && body.error.code == "batch_refused"
            {
                // The batch failed its check: some custodian deviated. Audited with the
                // custodian's report, which names the culprits the openings proved.
                let details = serde_json::json!({
                    "package_id": v.package_id,
                    "first_kit": first,
                    "reported_by": index,
                    "report": body.error.message,
                });
                let now = state.env.now_ms();
                let audited = state
                    .storage
                    .commit(move |tx| {
                        store::audit(tx, now, "coordinator", "preprocess.refused", details)
                    })
                    .await;
                if let Err(e) = audited {
                    tracing::warn!("cannot audit a refused batch: {e}");
                }
            }
            false
        }
    };
    if !ok {
        abort_everywhere(state, &roster, &at_epoch(&session, epoch)).await;
    }
    // Stored at an epoch a refresh has ended since: the custodians delete those kits.
    let ok = ok && state.epochs.current() == epoch;
    let id = v.package_id.clone();
    let finished = state
        .storage
        .commit(move |tx| store::finish_batch(tx, &id, first, ok))
        .await;
    let metrics = &state.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    // Added under the pool's lock only if no refresh moved the epoch meanwhile: a refresh
    // moves it before it empties the pools under the same lock, so a batch of the old epoch
    // is either not added or emptied with the rest.
    let ok = ok && finished.is_ok() && {
        let mut kits = v.kits.lock().expect("kits lock");
        let current = state.epochs.current() == epoch;
        if current {
            kits.add_batch(first, count);
        }
        current
    };
    if ok {
        v.kits_added.notify_waiters();
        metrics.kit_batches_stored.fetch_add(1, Relaxed);
        tracing::info!(
            package = %v.package_id, first, count,
            ms = started.elapsed().as_millis() as u64,
            "preprocessing batch stored by every custodian"
        );
        true
    } else {
        metrics.kit_batches_failed.fetch_add(1, Relaxed);
        false
    }
}
