//! Proactive refreshes of the custodians' shares, as the coordinator drives them: on demand
//! (`POST /v1/reshares`, a [`ReshareRequest`] signed with the coordinator's key: `quorumvm
//! reshare`) and, when the config sets `reshare_interval_s`, on a schedule.
//!
//! A refresh covers every secret of every version all n custodians serve. It needs all n, at
//! the cluster's epoch; it runs in two phases ([`quorumvm_core::reshare`] between the
//! custodians, then their commit: see the custodian's `reshare` module):
//!
//! 1. `Reshare` to everyone: each runs the protocol with the others and keeps its new shares
//!    aside, answering with its attestations. Any failure, and the refresh is abandoned
//!    (`reshare.failed`): nobody moved.
//! 2. With every custodian's attestations (the *certificate*, stored with `reshare.attested`),
//!    the cluster's epoch moves up: evaluation quorums are taken from custodians at the new
//!    epoch only, every kit pool is emptied (the custodians delete their kits as they commit)
//!    and refilled, and the publisher's ciphertexts of the refreshed versions are deleted.
//!    `CommitReshare` goes to everyone; a custodian that misses it (down, or this coordinator
//!    died first) is sent it again by the health checks as soon as it answers at an older
//!    epoch, so every custodian converges to the last certified epoch.
//!
//! Evaluations running across the switch fail at the custodians (their kit is gone or their
//! ticket names the old epoch) and are retried on the new epoch with a fresh kit, after waiting
//! for the commits and the refilled pool ([`crate::admission::wait_until_ready`]).

use quorumvm_ledger::Commit as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use quorumvm_server::Body;
use quorumvm_wire::api::ReshareReport;
use quorumvm_wire::clearance::ReshareRequest;
use quorumvm_wire::membership::Membership;
use quorumvm_wire::order::{Attestations, Order, at_epoch};
use quorumvm_wire::signed::Signed;
use rand::RngCore;

use crate::background::{abort_everywhere, order_jointly};
use crate::custodians::{CallError, Custodian, Custodians, Roster};
use crate::error::ApiError;
use crate::store::{self, Certificate};
use crate::{State, registry};

/// The certified refreshes and the cluster's epoch: one past the last certified.
#[derive(Default)]
pub struct Epochs {
    certificates: std::sync::Mutex<Vec<Certificate>>,
    /// Held for the whole of a refresh: one at a time.
    running: tokio::sync::Mutex<()>,
}

impl Epochs {
    pub fn load(certificates: Vec<Certificate>) -> Epochs {
        Epochs {
            certificates: std::sync::Mutex::new(certificates),
            running: Default::default(),
        }
    }

    /// Takes the certified refreshes as stored (another replica may have certified one since);
    /// whether the epoch moved.
    pub fn refresh(&self, certificates: Vec<Certificate>) -> bool {
        let mut held = self.certificates.lock().expect("certificates lock");
        let moved = certificates.len() > held.len();
        if moved {
            *held = certificates;
        }
        moved
    }

    /// The epoch evaluation quorums and preprocessing are taken at.
    pub fn current(&self) -> u64 {
        self.certificates
            .lock()
            .expect("certificates lock")
            .last()
            .map_or(0, |c| c.from_epoch + 1)
    }

    /// Every certified rotation in order: its generation (1, 2, …), the membership it moved
    /// to and the epoch it moved to.
    pub fn rotations(&self) -> Vec<(u64, Membership, u64)> {
        let held = self.certificates.lock().expect("certificates lock");
        held.iter()
            .filter_map(|c| Some((c.rotation.as_ref()?, c.from_epoch + 1)))
            .zip(1..)
            .map(|((r, since), generation)| (generation, r.membership.clone(), since))
            .collect()
    }

    /// Every certified rotation in order, as approved: the chain a joining custodian checks.
    pub fn chain(&self) -> Vec<store::Rotation> {
        let held = self.certificates.lock().expect("certificates lock");
        held.iter().filter_map(|c| c.rotation.clone()).collect()
    }

    /// The certificates that take a custodian at `epoch` to the current one, in order.
    fn from(&self, epoch: u64) -> Vec<Certificate> {
        self.certificates
            .lock()
            .expect("certificates lock")
            .iter()
            .filter(|c| c.from_epoch >= epoch)
            .cloned()
            .collect()
    }
}

/// `POST /v1/reshares`: a refresh now, at the operator's signed request.
pub async fn handle(
    AxumState(state): AxumState<Arc<State>>,
    Body(signed): Body<Signed>,
) -> Result<Json<ReshareReport>, ApiError> {
    ReshareRequest::open(&signed, &state.custodians.public_key(), state.env.now_ms())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_reshare_request", e.to_string()))?;
    reshare(&state).await.map(Json)
}

/// Runs one refresh of every serving version's shares; see the module documentation.
pub async fn reshare(state: &Arc<State>) -> Result<ReshareReport, ApiError> {
    let started = Instant::now();
    let _one = one_at_a_time(state)?;
    let from = state.epochs.current();
    let roster = state.custodians.roster();
    everyone_at(state, &roster, from, "a refresh").await?;
    let versions: Vec<Arc<registry::Version>> = state
        .registry
        .all()
        .into_iter()
        .filter(|v| {
            v.is_active()
                && !v.manifest.secrets.is_empty()
                && roster.all.iter().all(|c| c.serves(&v.package_id))
        })
        .collect();
    if versions.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_to_reshare",
            "no version with secrets is served by every custodian",
        ));
    }
    let packages: Vec<String> = versions.iter().map(|v| v.package_id.clone()).collect();
    let secrets: usize = versions.iter().map(|v| v.manifest.secrets.len()).sum();
    let session = session_id("reshare", from);
    start(state, &session, from, &packages, None).await?;
    tracing::info!(%session, from, versions = packages.len(), secrets, "reshare started");

    let order = Order::Reshare {
        session: session.clone(),
        epoch: from,
        packages: packages.clone(),
    };
    let answers = order_jointly(state, &roster, order).await;
    let attestations = match answers.map_err(|(index, e)| format!("custodian {index}: {e}")) {
        Ok(answers) => certify(&roster, answers),
        Err(reason) => Err(reason),
    };
    let attestations = match attestations {
        Ok(a) => a,
        Err(reason) => {
            let failed = fail(state, &roster, (&session, from), "reshare_failed", reason);
            return Err(failed.await);
        }
    };
    let certificate = Certificate {
        session: session.clone(),
        from_epoch: from,
        packages: packages.clone(),
        attestations,
        rotation: None,
    };
    let (committed, behind) = certify_and_commit(state, &roster, certificate, None).await?;
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(%session, epoch = from + 1, ms, ?behind, "reshare committed");
    Ok(ReshareReport {
        session,
        epoch: from + 1,
        packages,
        secrets: secrets as u64,
        committed,
        behind,
        ms,
    })
}

/// Holds the right to run a refresh or a rotation, which move the epoch: one at a time.
pub(crate) fn one_at_a_time(state: &State) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
    state.epochs.running.try_lock().map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "reshare_running",
            "a refresh of the shares or a rotation is under way; try again when it ends",
        )
    })
}

/// A fresh session id for a refresh or rotation from `from`.
pub(crate) fn session_id(kind: &str, from: u64) -> String {
    let mut nonce = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut nonce);
    format!("{kind}-{from}-{}", hex::encode(nonce))
}

/// Sends custodians behind `from` the commits they missed; then every custodian of `roster`
/// must be live at `from`, or `what` cannot run (503, naming each one missing).
pub(crate) async fn everyone_at(
    state: &State,
    roster: &Roster,
    from: u64,
    what: &str,
) -> Result<(), ApiError> {
    for c in &roster.all {
        if c.is_live() && c.epoch() < from {
            catch_up(state, c).await;
        }
    }
    let missing: Vec<String> = roster
        .all
        .iter()
        .filter_map(|c| {
            if !c.is_live() {
                Some(format!("custodian {} is not answering", c.index()))
            } else if c.epoch() != from {
                Some(format!(
                    "custodian {} is at epoch {}, not {from}",
                    c.index(),
                    c.epoch()
                ))
            } else {
                None
            }
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::unavailable(
            "too_few_custodians",
            format!(
                "{what} needs all {} custodians live at epoch {from}: {}",
                roster.all.len(),
                missing.join("; ")
            ),
        )
        .with_retry_after(1));
    }
    Ok(())
}

/// Records a refresh or rotation as started, before any custodian hears of it.
pub(crate) async fn start(
    state: &State,
    session: &str,
    from: u64,
    packages: &[String],
    rotation: Option<store::Rotation>,
) -> Result<(), ApiError> {
    let (id, list, now) = (session.to_string(), packages.to_vec(), state.env.now_ms());
    let owner = state.replica.clone();
    state
        .storage
        .commit(move |tx| {
            store::start_reshare(tx, &id, from, &list, rotation.as_ref(), (&owner, now))
        })
        .await?;
    Ok(())
}

/// Gives up a refresh or rotation that some custodian did not verify: everyone stays at `from`.
/// Answered `502 code`.
pub(crate) async fn fail(
    state: &State,
    roster: &Roster,
    (session, from): (&str, u64),
    code: &'static str,
    reason: String,
) -> ApiError {
    abort_everywhere(state, roster, &at_epoch(session, from)).await;
    let (id, why, now) = (session.to_string(), reason.clone(), state.env.now_ms());
    if let Err(e) = state
        .storage
        .commit(move |tx| store::fail_reshare(tx, &id, &why, now))
        .await
    {
        return e.into();
    }
    state.metrics.reshares_failed.fetch_add(1, Relaxed);
    tracing::warn!(%session, "refresh or rotation failed: {reason}");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        code,
        format!("it did not complete, every custodian stays at epoch {from}: {reason}"),
    )
}

/// Stores `certificate` (from then on the cluster's epoch is the next one, and for a rotation
/// its membership is the cluster's, its `kept` machines at their new indices: new → old),
/// then sends its commit to every custodian of `roster` (the membership it moves from); which
/// committed and which are behind, by index in it.
pub(crate) async fn certify_and_commit(
    state: &Arc<State>,
    roster: &Arc<Roster>,
    certificate: Certificate,
    kept: Option<BTreeMap<u32, u32>>,
) -> Result<(Vec<u32>, Vec<u32>), ApiError> {
    let (cert, now) = (certificate.clone(), state.env.now_ms());
    let renumbered = kept.is_some();
    state
        .storage
        .commit(move |tx| {
            store::attest_reshare(tx, &cert, now)?;
            match &kept {
                Some(kept) => store::renumber_suspects(tx, kept),
                None => Ok(()),
            }
        })
        .await?;
    if renumbered {
        // The quorums that failed name custodians by their old indices.
        state.suspects.forget();
    }
    // The new epoch serves from now on: the old kits are gone as each custodian commits.
    state
        .epochs
        .certificates
        .lock()
        .expect("certificates lock")
        .push(certificate.clone());
    follow_membership(&state.epochs, &state.custodians)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    for v in state.registry.all() {
        v.kits.lock().expect("kits lock").discard();
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..roster.all.len() {
        let (state, roster, certificate) =
            (Arc::clone(state), Arc::clone(roster), certificate.clone());
        calls.spawn(async move {
            let c = &roster.all[i];
            commit_on(&state, c, &certificate)
                .await
                .then_some(c.index())
        });
    }
    let mut committed = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok(Some(index)) = joined {
            committed.push(index);
        }
    }
    committed.sort_unstable();
    let behind: Vec<u32> = roster
        .all
        .iter()
        .map(Custodian::index)
        .filter(|i| !committed.contains(i))
        .collect();
    state.metrics.reshares_committed.fetch_add(1, Relaxed);
    Ok((committed, behind))
}

/// Moves the custodians this coordinator orders through every certified rotation it has not
/// applied yet, in order (at its start, every one).
pub(crate) fn follow_membership(epochs: &Epochs, custodians: &Custodians) -> anyhow::Result<()> {
    for (generation, membership, since) in epochs.rotations() {
        let cluster = membership.cluster().map_err(|e| {
            // Checked before it was certified: only a corrupt database gets here.
            anyhow::anyhow!("certified rotation {generation}'s membership does not parse: {e}")
        })?;
        custodians.move_to(generation, cluster, since);
    }
    Ok(())
}

/// Every custodian's attestations, each naming every peer; or why not.
fn certify(
    roster: &Roster,
    answers: Vec<(u32, quorumvm_wire::api::OrderResponse)>,
) -> Result<Attestations, String> {
    let n = roster.all.len();
    let mut attestations = BTreeMap::new();
    for (index, answer) in answers {
        if answer.status != "verified" || answer.attestations.len() != n - 1 {
            return Err(format!(
                "custodian {index} answered {:?} with {} attestations",
                answer.status,
                answer.attestations.len()
            ));
        }
        attestations.insert(index, answer.attestations);
    }
    if attestations.len() != n {
        return Err(format!(
            "{} of the {n} custodians answered",
            attestations.len()
        ));
    }
    Ok(Attestations(attestations))
}

/// Sends `c` the commit of `certificate`; whether it is at the new epoch now.
async fn commit_on(state: &State, c: &Custodian, certificate: &Certificate) -> bool {
    match state.custodians.order(c, certificate.commit()).await {
        Ok(answer) => {
            c.set_epoch(answer.epoch);
            // A machine the rotation kept is another entry of the new roster: it knows too.
            if let Some(kept) = state
                .custodians
                .roster()
                .all
                .iter()
                .find(|k| k.member.sealing_key == c.member.sealing_key)
            {
                kept.set_epoch(answer.epoch);
            }
            true
        }
        Err(e) => {
            if let CallError::Unreachable(_) = e {
                c.mark_dead();
            }
            tracing::warn!(
                custodian = c.index(),
                session = %certificate.session,
                "commit of a reshare not taken yet: {e}"
            );
            false
        }
    }
}

/// Sends a custodian behind the cluster's epoch every commit it missed, in order.
pub async fn catch_up(state: &State, c: &Custodian) {
    if state.env.planted(quorumvm_server::Bug::CommitOnce) {
        return;
    }
    for certificate in state.epochs.from(c.epoch()) {
        if !commit_on(state, c, &certificate).await {
            return;
        }
        tracing::info!(
            custodian = c.index(),
            epoch = c.epoch(),
            "custodian caught up on a reshare"
        );
    }
}

/// Refreshes on a schedule, every `interval`, while the coordinator runs. A refresh that cannot
/// run (a custodian down) is tried again at the next tick.
pub async fn schedule(state: Arc<State>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match reshare(&state).await {
            Ok(report) => tracing::info!(
                epoch = report.epoch,
                ms = report.ms,
                "scheduled reshare done"
            ),
            Err(e) => tracing::warn!("scheduled reshare not done: {}", e.message),
        }
    }
}
