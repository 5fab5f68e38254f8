//! Freezes at the coordinator, and the unfreezes k operators approve.
//!
//! `POST /v1/freezes`: a [`Freeze`] addressed to the coordinator and signed with its own key
//! (`quorumvm freeze --config coordinator.toml` signs it on the coordinator's machine). Applied
//! durably with its audit entry, then at once: the next request of the identity or version is
//! refused (403 `frozen`). It binds the coordinator's admission only; each custodian's operator
//! freezes at its custodian with its own key (see the custodian's `freeze`).
//!
//! `POST /v1/unfreezes`: one operator's approval of an [`Unfreeze`] (`quorumvm unfreeze`). At k
//! the coordinator lifts its own freeze of the target (if older) and sends every custodian
//! `Unfreeze` with the k approvals, which each checks itself; a custodian down now is sent it
//! again when its health shows it still frozen since before the unfreeze.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State as AxumState;
use quorumvm_server::Body;
use quorumvm_server::freeze::NewFreeze;
use quorumvm_wire::api::{ApproveRequest, FreezeState, Frozen, UnfreezeApproval, UnfreezeState};
use quorumvm_wire::approval::Subject;
use quorumvm_wire::freeze::{Authority, Freeze, FreezeError, Target, Unfreeze};
use quorumvm_wire::order::{ApprovalSignature, Order};
use quorumvm_wire::signed::Signed;

use crate::error::ApiError;
use crate::packages::installed;
use crate::registry::signature_list;
use crate::{State, approve, background, store};

/// The latest unfreeze k operators approved, per target, with its approvals: what a custodian
/// that missed it is sent again.
#[derive(Default)]
pub struct Unfreezes(Mutex<HashMap<Target, (Unfreeze, Vec<ApprovalSignature>)>>);

impl Unfreezes {
    pub fn load(stored: Vec<store::CertifiedUnfreeze>) -> Unfreezes {
        let held = Unfreezes::default();
        for (u, approvals) in stored {
            held.certify(u, signature_list(&approvals));
        }
        held
    }

    /// Takes the unfreezes certified since (by another replica, say).
    pub fn refresh(&self, stored: Vec<store::CertifiedUnfreeze>) {
        for (u, approvals) in stored {
            self.certify(u, signature_list(&approvals));
        }
    }

    fn certify(&self, u: Unfreeze, approvals: Vec<ApprovalSignature>) {
        let mut held = self.0.lock().expect("unfreezes lock");
        if held
            .get(&u.target)
            .is_none_or(|(h, _)| u.time_ms > h.time_ms)
        {
            held.insert(u.target.clone(), (u, approvals));
        }
    }

    /// The orders that lift what a custodian reports frozen since before an unfreeze held here.
    pub fn missed(&self, frozen: &[Frozen]) -> Vec<Order> {
        let held = self.0.lock().expect("unfreezes lock");
        frozen
            .iter()
            .filter_map(|f| {
                let (u, approvals) = held.get(&f.target)?;
                (u.time_ms > f.since_ms).then(|| Order::Unfreeze {
                    unfreeze: u.clone(),
                    approvals: approvals.clone(),
                })
            })
            .collect()
    }
}

pub async fn freeze(
    AxumState(state): AxumState<Arc<State>>,
    Body(signed): Body<Signed>,
) -> Result<Json<FreezeState>, ApiError> {
    let statement = Freeze::open(
        &signed,
        &state.custodians.public_key(),
        Authority::Coordinator,
        state.env.now_ms(),
    )
    .map_err(refused)?;
    let known = match &statement.target {
        Target::Identity(name) => state.identities.caller(name).await.is_ok(),
        Target::Version(id) => installed(&state, id).await?.is_some(),
    };
    let record = NewFreeze {
        target: statement.target.clone(),
        frozen: true,
        time_ms: statement.time_ms,
        statement: serde_json::to_string(&signed).expect("statements serialize"),
        actor: "operator",
        now_ms: state.env.now_ms(),
    };
    apply(&state, record).await?;
    tracing::info!(target = %statement.target, "coordinator's freeze applied");
    Ok(Json(FreezeState {
        target: statement.target,
        at: Authority::Coordinator,
        frozen: true,
        known,
    }))
}

pub async fn unfreeze(
    AxumState(state): AxumState<Arc<State>>,
    Body(request): Body<UnfreezeApproval>,
) -> Result<Json<UnfreezeState>, ApiError> {
    let u = request.unfreeze;
    u.target
        .check()
        .map_err(|e| ApiError::bad_request("bad_target", e))?;
    u.check_time(state.env.now_ms()).map_err(refused)?;
    let approval = ApproveRequest {
        custodian: request.custodian,
        signature: request.signature,
    };
    let key = store::unfreeze_key(&u);
    let details = serde_json::json!({ "unfreeze": key, "custodian": approval.custodian });
    approve::check(
        &state,
        &Subject::Unfreeze(&u),
        &approval,
        "unfreeze.rejected",
        details,
    )
    .await?;
    let k = state.custodians.roster().threshold();
    let lift = NewFreeze {
        target: u.target.clone(),
        frozen: false,
        time_ms: u.time_ms,
        statement: serde_json::to_string(&u).expect("unfreezes serialize"),
        actor: "operators",
        now_ms: state.env.now_ms(),
    };
    let (count, lifted_here) = approve::record_then(
        &state,
        store::Approved::Unfreeze,
        &key,
        &approval,
        move |tx, _, count, _| {
            if count != k {
                return Ok(false);
            }
            Ok(quorumvm_server::freeze::apply(tx, &lift)?.is_ok())
        },
    )
    .await?;
    tracing::info!(unfreeze = %key, custodian = approval.custodian, count, "unfreeze approval accepted");
    let mut taken_by = Vec::new();
    if count >= k {
        if lifted_here {
            state.freezes.set(u.target.clone(), false, u.time_ms);
        }
        let (storage, held) = (state.storage.clone(), key.clone());
        let approvals = state
            .env
            .blocking(move || {
                storage.read(|conn| store::approvals_of(conn, store::Approved::Unfreeze, &held))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        let approvals = signature_list(&approvals);
        state.unfreezes.certify(u.clone(), approvals.clone());
        let order = Order::Unfreeze {
            unfreeze: u.clone(),
            approvals,
        };
        for (index, answer) in
            background::order_everyone(&state, &state.custodians.roster(), order).await
        {
            match answer {
                Ok(_) => taken_by.push(index),
                Err(e) => tracing::warn!(custodian = index, "unfreeze not taken: {e}"),
            }
        }
        taken_by.sort_unstable();
    }
    Ok(Json(UnfreezeState {
        unfreeze: u,
        approvals: count,
        needed: k,
        lifted: count >= k,
        taken_by,
    }))
}

/// Applies a freeze or an unfreeze (see [`quorumvm_server::freeze::commit`]).
async fn apply(state: &State, record: NewFreeze) -> Result<(), ApiError> {
    quorumvm_server::freeze::commit(&state.storage, &state.freezes, record).await
}

/// A statement the coordinator does not take.
fn refused(err: FreezeError) -> ApiError {
    quorumvm_server::freeze::refused(err, "not_the_coordinator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unfreezes_later_than_a_custodians_freeze_are_sent_again() {
        let target = |name: &str| Target::Identity(name.into());
        let held = Unfreezes::load(vec![
            (
                Unfreeze {
                    target: target("a"),
                    time_ms: 100,
                },
                vec![(1, "s1".into()), (2, "s2".into())],
            ),
            (
                Unfreeze {
                    target: target("b"),
                    time_ms: 100,
                },
                vec![(1, "t1".into()), (3, "t3".into())],
            ),
        ]);
        // An older unfreeze of `a` does not replace the later one held.
        held.certify(
            Unfreeze {
                target: target("a"),
                time_ms: 50,
            },
            Vec::new(),
        );
        let frozen = |name: &str, since_ms| Frozen {
            target: target(name),
            since_ms,
        };
        // `c` has no unfreeze, `b` was frozen after its unfreeze, `a` before.
        let missed = held.missed(&[frozen("c", 10), frozen("b", 200), frozen("a", 90)]);
        assert_eq!(
            missed,
            vec![Order::Unfreeze {
                unfreeze: Unfreeze {
                    target: target("a"),
                    time_ms: 100
                },
                approvals: signature_list(&[(1, "s1".into()), (2, "s2".into())]),
            }]
        );
    }
}
