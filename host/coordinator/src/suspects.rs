//! Custodians proven to deviate, left out of evaluation quorums until an operator clears them.
//!
//! What counts as proof: honest custodians always agree, so a quorum whose members reported
//! inconsistent round messages, or whose answers fail their MAC check ([`open_outputs`]),
//! holds at least one deviating member; so does a subset of a quorum's answers that fails the
//! check when the quorum had 2k − 1 members or more (each honest member then checked every
//! opening against enough points to see any lie), and a custodian the decoding of the answers
//! names. The coordinator remembers these failing sets, and a custodian is proven a liar when
//! every set of at most k − 1 custodians (as many as the attacker may hold) that meets them all
//! holds it ([`proven_liars`]). So an honest custodian is never named, and with one liar in a
//! 2-of-3 cluster two failed quorums are enough.
//!
//! A suspect is recorded durably with its evidence and audited (`custodian.suspected`), counted
//! in `/metrics`, and left out of every later quorum at once. `POST /v1/custodians/clearances`,
//! with a [`Clearance`] signed by the coordinator's key (`quorumvm clear-suspect`), puts it
//! back, audited (`custodian.cleared`), and forgets the failing sets seen so far.
//!
//! [`open_outputs`]: quorumvm_core::shares::open_outputs

use quorumvm_ledger::Commit as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use quorumvm_core::shares::proven_liars;
use quorumvm_server::Body;
use quorumvm_wire::api::ClearanceState;
use quorumvm_wire::clearance::Clearance;
use quorumvm_wire::signed::Signed;

use crate::error::ApiError;
use crate::{State, store};

/// The sets of custodians seen failing since the coordinator started (or the last clearance).
#[derive(Default)]
pub struct Suspects {
    failing: Mutex<Vec<Vec<u32>>>,
}

impl Suspects {
    /// Drops the failing quorums seen so far (a rotation renumbered their members).
    pub fn forget(&self) {
        self.failing.lock().expect("suspects lock").clear();
    }
}

/// Records `failed` sets (each holds a deviating custodian) and marks every custodian they now
/// prove deviated.
pub async fn record(state: &Arc<State>, failed: Vec<Vec<u32>>) {
    if failed.is_empty() {
        return;
    }
    let roster = state.custodians.roster();
    let bound = roster.threshold() - 1;
    let (proven, evidence) = {
        let mut failing = state.suspects.failing.lock().expect("suspects lock");
        for mut set in failed {
            set.sort_unstable();
            set.dedup();
            if !failing.contains(&set) {
                failing.push(set);
            }
        }
        (proven_liars(&failing, bound), failing.clone())
    };
    for index in proven {
        let Some(c) = roster.get(index) else {
            continue;
        };
        if c.is_suspect() {
            continue;
        }
        let relevant: Vec<Vec<u32>> = evidence
            .iter()
            .filter(|set| set.contains(&index))
            .cloned()
            .collect();
        let now = state.env.now_ms();
        let marked = state
            .storage
            .commit(move |tx| store::mark_suspect(tx, index, &relevant, now))
            .await;
        match marked {
            Ok(_) => {
                c.set_suspect(true);
                state.metrics.custodians_suspected.fetch_add(1, Relaxed);
                tracing::warn!(
                    custodian = index,
                    "custodian proven to deviate: left out of every quorum until cleared"
                );
            }
            Err(e) => tracing::warn!(custodian = index, "cannot record a suspect: {e}"),
        }
    }
}

/// `POST /v1/custodians/clearances`.
pub async fn clear(
    AxumState(state): AxumState<Arc<State>>,
    Body(signed): Body<Signed>,
) -> Result<Json<ClearanceState>, ApiError> {
    let statement = Clearance::open(&signed, &state.custodians.public_key(), state.env.now_ms())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_clearance", e.to_string()))?;
    let index = statement.custodian;
    let roster = state.custodians.roster();
    let custodian = roster.get(index).ok_or_else(|| {
        ApiError::not_found(
            "unknown_custodian",
            format!("custodian {index} is not in the cluster"),
        )
    })?;
    let text = serde_json::to_string(&signed).expect("statements serialize");
    let (now, signed_ms) = (state.env.now_ms(), statement.time_ms);
    let cleared = state
        .storage
        .commit(move |tx| store::clear_suspect(tx, index, signed_ms, &text, now))
        .await?;
    if cleared {
        state
            .suspects
            .failing
            .lock()
            .expect("suspects lock")
            .clear();
        custodian.set_suspect(false);
        tracing::info!(custodian = index, "custodian cleared by the operator");
    }
    Ok(Json(ClearanceState {
        custodian: index,
        cleared,
    }))
}
