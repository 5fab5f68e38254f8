//! What the coordinator does on its own: health checks (a dead custodian is noticed within one
//! interval, or at once when a call to it fails), pushing activations, registrations,
//! revocations and retirements to custodians that missed them, and keeping each active
//! version's pool of preprocessed kits filled.

use std::sync::Arc;
use std::time::Duration;

use quorumvm_wire::order::Order;
use tokio::task::JoinSet;

use crate::State;
use crate::custodians::{CallError, Custodian, HEALTH_INTERVAL};
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
        for i in 0..state.custodians.all.len() {
            let state = Arc::clone(&state);
            checks.spawn(async move {
                let c = &state.custodians.all[i];
                if let Some(health) = state.custodians.check_health(c).await {
                    for v in state.registry.all() {
                        if v.is_active() && !c.serves(&v.package_id) {
                            activate_on(Arc::clone(&state), i, Arc::clone(&v));
                        }
                    }
                    let k = state.custodians.cluster.threshold();
                    let callers = state.identities.all();
                    let (revoked, active): (Vec<_>, Vec<_>) = callers
                        .into_iter()
                        .filter(|caller| caller.is_active(k) || caller.is_revoked(k))
                        .partition(|caller| caller.is_revoked(k));
                    // Fewer there than here: it missed some while down. Each order is
                    // idempotent, so all of its kind go again.
                    if (health.revocations as usize) < revoked.len() {
                        for caller in &revoked {
                            order_on(&state, i, revocation(caller)).await;
                        }
                    }
                    if (health.identities as usize) < active.len() {
                        for caller in &active {
                            order_on(&state, i, registration(caller)).await;
                        }
                    }
                    let retired: Vec<_> = state
                        .registry
                        .all()
                        .into_iter()
                        .filter(|v| v.is_retired_by_operators(k))
                        .collect();
                    if (health.retirements as usize) < retired.len() {
                        for v in &retired {
                            order_on(&state, i, retirement(v)).await;
                        }
                    }
                }
            });
        }
        while checks.join_next().await.is_some() {}
        state.custodians.first_round_done();
    }
}

/// Tells every custodian that `version` is active and waits for their answers (those down now
/// get it when seen again), so that an approval that activates returns once the version
/// serves.
pub async fn push_activation(state: Arc<State>, version: Arc<Version>) {
    let pushes: Vec<_> = (0..state.custodians.all.len())
        .filter_map(|i| activate_on(Arc::clone(&state), i, Arc::clone(&version)))
        .collect();
    for p in pushes {
        let _ = p.await;
    }
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
    let pushes: Vec<_> = (0..state.custodians.all.len())
        .map(|i| {
            let (state, order) = (Arc::clone(&state), order.clone());
            tokio::spawn(async move { order_on(&state, i, order).await })
        })
        .collect();
    for p in pushes {
        let _ = p.await;
    }
}

async fn order_on(state: &State, i: usize, order: Order) {
    let c = &state.custodians.all[i];
    let what = format!("{order:?}");
    if let Err(e) = state.custodians.order(c, order).await {
        tracing::warn!(
            custodian = c.index(),
            "order not taken: {e} ({:.120})",
            what
        );
    }
}

fn activate_on(
    state: Arc<State>,
    i: usize,
    version: Arc<Version>,
) -> Option<tokio::task::JoinHandle<()>> {
    let custodian: &Custodian = &state.custodians.all[i];
    if !custodian
        .activating
        .lock()
        .expect("activating lock")
        .insert(version.package_id.clone())
    {
        return None;
    }
    Some(tokio::spawn(async move {
        let c = &state.custodians.all[i];
        let approvals = crate::registry::signatures(&version.approvals);
        let order = Order::Activate {
            package_id: version.package_id.clone(),
            approvals,
        };
        match state.custodians.order(c, order).await {
            Ok(_) => {
                c.mark_serving(&version.package_id);
                tracing::info!(custodian = c.index(), package = %version.package_id, "custodian serves the version");
            }
            Err(e) => {
                tracing::warn!(custodian = c.index(), package = %version.package_id, "activation not taken: {e}")
            }
        }
        c.activating
            .lock()
            .expect("activating lock")
            .remove(&version.package_id);
    }))
}

async fn pool_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(POOL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for v in state.registry.all() {
            if !v.is_active() || !everyone_serves(&state, &v) {
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

/// Generation needs every custodian: each deals randomness and takes part in reducing the
/// products (n >= 2k − 1), and each must store its share of every kit.
fn everyone_serves(state: &State, v: &Version) -> bool {
    state.custodians.all.iter().all(|c| c.serves(&v.package_id))
}

async fn fill(state: Arc<State>, v: Arc<Version>) {
    loop {
        let first = {
            let mut kits = v.kits.lock().expect("kits lock");
            let first = kits.next_batch;
            kits.next_batch += state.pool.batch;
            first
        };
        let count = state.pool.batch;
        let stored = run_batch(&state, &v, first, count).await;
        let more = {
            let kits = v.kits.lock().expect("kits lock");
            stored && kits.available() < state.pool.target
        };
        if !more || !everyone_serves(&state, &v) {
            break;
        }
    }
    v.kits.lock().expect("kits lock").generating = false;
}

async fn run_batch(state: &Arc<State>, v: &Arc<Version>, first: u64, count: u64) -> bool {
    let id = v.package_id.clone();
    let recorded = state
        .writer
        .run(move |tx| store::order_batch(tx, &id, first, count))
        .await;
    if let Err(e) = recorded {
        tracing::warn!(package = %v.package_id, "cannot record a preprocessing batch: {}", e.message);
        return false;
    }
    let started = std::time::Instant::now();
    let session = format!("prep-{}-{first}", &v.package_id[..16]);
    let mut calls = JoinSet::new();
    for i in 0..state.custodians.all.len() {
        let state = Arc::clone(state);
        let order = Order::Preprocess {
            session: session.clone(),
            package_id: v.package_id.clone(),
            first_kit: first,
            count,
        };
        calls.spawn(async move {
            let c = &state.custodians.all[i];
            let result = state.custodians.order(c, order).await;
            if let Err(CallError::Unreachable(_)) = &result {
                c.mark_dead();
            }
            (c.index(), result)
        });
    }
    let mut ok = true;
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((_, Ok(r))) if r.status == "stored" && r.kits == count => {}
            Ok((index, Ok(r))) => {
                tracing::warn!(custodian = index, "preprocessing: unexpected answer {r:?}");
                ok = false;
            }
            Ok((index, Err(e))) => {
                tracing::warn!(custodian = index, "preprocessing batch failed: {e}");
                ok = false;
            }
            Err(e) => {
                tracing::warn!("preprocessing task failed: {e}");
                ok = false;
            }
        }
    }
    if !ok {
        // Peers waiting on a failed member give up at their round timeout; ask them now.
        for c in &state.custodians.all {
            let _ = state
                .custodians
                .order(
                    c,
                    Order::Abort {
                        session: session.clone(),
                    },
                )
                .await;
        }
    }
    let id = v.package_id.clone();
    let finished = state
        .writer
        .run(move |tx| store::finish_batch(tx, &id, first, ok))
        .await;
    let metrics = &state.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    if ok && finished.is_ok() {
        v.kits.lock().expect("kits lock").add_batch(first, count);
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
