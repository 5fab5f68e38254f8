//! Rotations of the cluster's membership, as the coordinator drives them: change k, add
//! custodians, remove one and renumber the others (`quorumvm custodian threshold|add|remove`).
//!
//! `POST /v1/memberships` takes one operator's approval of a membership statement
//! ([`MembershipApproval`]), checked against the current cluster as any approval is. The
//! approval that reaches k of the current operators runs the rotation, in that request:
//!
//! 1. `Redeal` to every current custodian. Each checks the statement and the k approvals itself
//!    (see the custodian's `rotation` module), deals its shares of every secret to the new set
//!    and, if it is a member of it, keeps its new shares aside and answers with its
//!    attestations; one that leaves answers `dealt`. Any failure, and the rotation is
//!    abandoned (`502 rotation_failed`): nobody moved, and the approvals stay for the next try (the same approval
//!    posted again runs it again).
//! 2. With every new member's attestations the rotation is certified, stored as a refresh
//!    that also carries the membership ([`store::Rotation`]): from then on this coordinator
//!    orders the new membership ([`crate::custodians::Custodians::move_to`]), reconstructs
//!    with the new k, serves the new cluster to publishers (`GET /v1/cluster`), and its kit
//!    pools start again. `CommitRedeal` goes to every machine of the old membership; a member
//!    that misses it is sent it again by the health checks, as a refresh's commit is.
//!
//! A change that brings in new machines (`quorumvm custodian add`) first sends each of them
//! `Join`, with the chain of rotations certified so far and the versions to hold (see the
//! custodian's `join` module); the rotation's orders then go to them too, at their new
//! indices. Every current member keeps its index in such a change, so one index names one
//! machine throughout.
//!
//! The coordinator only carries the approvals and the rounds: it cannot make a custodian deal
//! to a membership its operators did not approve, or move without every other new member's
//! attestation.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use quorumvm_ledger::Commit as _;
use quorumvm_server::Body;
use quorumvm_wire::api::{
    ApproveRequest, MembershipApproval, MembershipInfo, MembershipState, OrderResponse,
    RotationReport,
};
use quorumvm_wire::approval::Subject;
use quorumvm_wire::membership::{Change, Membership};
use quorumvm_wire::order::{ApprovalSignature, Attestations, JoiningVersion, Order};

use crate::background::order_jointly;
use crate::custodians::Roster;
use crate::error::ApiError;
use crate::reshare;
use crate::store::{self, Certificate, Rotation, StoreError};
use crate::{State, approve};

/// `GET /v1/membership`: the membership this coordinator orders.
pub async fn show(AxumState(state): AxumState<Arc<State>>) -> Json<MembershipInfo> {
    let roster = state.custodians.roster();
    Json(MembershipInfo {
        generation: roster.generation,
        epoch: state.epochs.current(),
        threshold: roster.threshold(),
        custodians: roster.cluster.entries(),
    })
}

/// `POST /v1/memberships`: one operator's approval; at k, the rotation.
pub async fn approve(
    AxumState(state): AxumState<Arc<State>>,
    Body(request): Body<MembershipApproval>,
) -> Result<Json<MembershipState>, ApiError> {
    let MembershipApproval {
        membership,
        custodian,
        signature,
    } = request;
    let roster = state.custodians.roster();
    let from = state.epochs.current();
    if membership.from_epoch != from {
        return Err(stale(membership.from_epoch, from));
    }
    let change = Change::new(&roster.cluster, &membership)
        .map_err(|e| ApiError::bad_request("bad_membership", e.to_string()))?;
    let statement = hex::encode(change.statement());
    let approval = ApproveRequest {
        custodian,
        signature,
    };
    let details = serde_json::json!({ "statement": statement, "custodian": custodian });
    approve::check(
        &state,
        &Subject::Membership(&change),
        &approval,
        "membership.rejected",
        details,
    )
    .await?;
    // The same approval posted again counts once, and runs a rotation that failed again.
    let (key, signature, now) = (
        statement.clone(),
        approval.signature.clone(),
        state.env.now_ms(),
    );
    let approvals = state
        .storage
        .commit(move |tx| {
            let kind = store::Approved::Membership;
            match store::approve(tx, kind, &key, custodian, &signature, now) {
                Ok(_) | Err(StoreError::DuplicateApproval { .. }) => {}
                Err(e) => return Err(e),
            }
            store::approvals_of(tx, kind, &key)
        })
        .await?;
    let approvals: Vec<ApprovalSignature> = approvals
        .into_iter()
        .map(|(custodian, signature)| ApprovalSignature {
            custodian,
            signature,
        })
        .collect();
    let needed = roster.threshold();
    tracing::info!(%statement, custodian, count = approvals.len(), needed, "membership approval accepted");
    let counted = approvals.iter().map(|a| a.custodian).collect();
    let rotation = if approvals.len() >= needed {
        Some(rotate(&state, &roster, &change, membership, approvals).await?)
    } else {
        None
    };
    Ok(Json(MembershipState {
        statement,
        from_epoch: from,
        approvals: counted,
        needed,
        rotation,
    }))
}

fn stale(statement: u64, now: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "stale_membership",
        format!(
            "the statement moves from epoch {statement}, but the cluster is at epoch {now}: \
             build it again from the membership in force"
        ),
    )
}

/// Runs the rotation k operators approved; see the module documentation.
async fn rotate(
    state: &Arc<State>,
    roster: &Arc<Roster>,
    change: &Change,
    membership: Membership,
    approvals: Vec<ApprovalSignature>,
) -> Result<RotationReport, ApiError> {
    let started = Instant::now();
    let _one = reshare::one_at_a_time(state)?;
    let from = change.from_epoch();
    if state.epochs.current() != from {
        return Err(stale(from, state.epochs.current()));
    }
    reshare::everyone_at(state, roster, from, "a rotation").await?;
    // Every version the custodians hold: each refuses a rotation that leaves one out.
    let mut packages: Vec<String> = roster
        .all
        .first()
        .map(|c| c.serving_ids())
        .unwrap_or_default()
        .into_iter()
        .filter(|id| roster.all.iter().all(|c| c.serves(id)))
        .collect();
    packages.sort();
    if packages.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_to_redeal",
            "no version is served by every custodian: a rotation re-deals the versions held",
        ));
    }
    let session = reshare::session_id("rotate", from);
    let rotation = Rotation {
        membership,
        approvals,
    };
    // With machines joining, every order of the rotation goes to them as well.
    let roster = match change.joining() {
        [] => Arc::clone(roster),
        joining => {
            let everyone = state.custodians.joining(change.next());
            let k = roster.threshold();
            let plan = (session.as_str(), &rotation, packages.as_slice());
            join(state, (&everyone, joining, k), plan).await?;
            everyone
        }
    };
    reshare::start(state, &session, from, &packages, Some(rotation.clone())).await?;
    tracing::info!(%session, from, versions = packages.len(), "rotation started");
    let order = Order::Redeal {
        session: session.clone(),
        membership: rotation.membership.clone(),
        approvals: rotation.approvals.clone(),
        packages: packages.clone(),
    };
    let answers = order_jointly(state, &roster, order)
        .await
        .map_err(|(index, e)| format!("custodian {index}: {e}"))
        .and_then(|answers| certify(change, answers));
    let attestations = match answers {
        Ok(a) => a,
        Err(reason) => {
            let failed = reshare::fail(state, &roster, (&session, from), "rotation_failed", reason);
            return Err(failed.await);
        }
    };
    let certificate = Certificate {
        session: session.clone(),
        from_epoch: from,
        packages: packages.clone(),
        attestations,
        rotation: Some(rotation),
    };
    let kept = Some(change.kept().clone());
    let (committed, behind) =
        reshare::certify_and_commit(state, &roster, certificate, kept).await?;
    let now = state.custodians.roster();
    // What this coordinator knows of a machine that joined starts now: it is checked at once,
    // so that the next operation (an evaluation, another rotation) finds it live and serving.
    for &index in change.joining() {
        if let Some(c) = now.get(index) {
            state.custodians.check_health(&now, c).await;
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(%session, generation = now.generation, epoch = from + 1, ms, ?behind, "rotation committed");
    Ok(RotationReport {
        session,
        generation: now.generation,
        epoch: from + 1,
        threshold: now.threshold(),
        members: now.cluster.indices(),
        packages,
        committed,
        behind,
        ms,
    })
}

/// Sends `Join` to each machine of `joining` (indices in `everyone`): each checks the chain of
/// rotations, the statement and the versions itself and records them (see the custodian's
/// `join` module), and takes the new membership's peers before any dealing reaches it; then
/// the caller identities active under the current k.
async fn join(
    state: &Arc<State>,
    (everyone, joining, k): (&Roster, &[u32], usize),
    (session, rotation, packages): (&str, &Rotation, &[String]),
) -> Result<(), ApiError> {
    let mut versions = Vec::with_capacity(packages.len());
    for id in packages {
        let v = state.registry.get(id).ok_or_else(|| {
            ApiError::internal(format!("version {id} is served but not in the registry"))
        })?;
        versions.push(JoiningVersion {
            package_id: id.clone(),
            approvals: crate::registry::signatures(&v.approvals),
        });
    }
    for &index in joining {
        let c = everyone
            .get(index)
            .expect("a joining machine of the roster");
        if let Some(pin) = c.member.tls {
            state
                .env
                .admit(&c.member.url, pin)
                .map_err(|e| ApiError::internal(format!("pinning custodian {index}: {e:#}")))?;
        }
        let order = Order::Join {
            session: session.to_string(),
            rotations: state.epochs.chain(),
            membership: rotation.membership.clone(),
            approvals: rotation.approvals.clone(),
            versions: versions.clone(),
        };
        state.custodians.order(c, order).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "rotation_failed",
                format!(
                    "it did not start, every custodian stays at epoch {}: the joining \
                     custodian {index} did not take the `Join` order: {e}",
                    rotation.membership.from_epoch
                ),
            )
        })?;
        // The caller identities, which it checks against the cluster it joins from, as every
        // member did.
        crate::background::send_identities(state, c, k, (0, 0)).await;
    }
    Ok(())
}

/// Every new member's attestations, each naming every other machine of the change (by the
/// index it answers at now: those that leave included, as each moves only once every new
/// member holds its shares); every leaving one dealt. Or why not.
fn certify(change: &Change, answers: Vec<(u32, OrderResponse)>) -> Result<Attestations, String> {
    // A kept machine answers at its current index, a joining one at its new one.
    let staying: Vec<u32> = change
        .kept()
        .values()
        .chain(change.joining())
        .copied()
        .collect();
    let others = change.current().n() + change.joining().len() - 1;
    let mut attestations = std::collections::BTreeMap::new();
    for (index, answer) in answers {
        let (want, count) = if staying.contains(&index) {
            ("verified", others)
        } else {
            ("dealt", 0)
        };
        if answer.status != want || answer.attestations.len() != count {
            return Err(format!(
                "custodian {index} answered {:?} with {} attestations, not {want:?} with {count}",
                answer.status,
                answer.attestations.len()
            ));
        }
        if count > 0 {
            attestations.insert(index, answer.attestations);
        }
    }
    if attestations.len() != staying.len() {
        return Err(format!(
            "{} of the {} new members answered",
            attestations.len(),
            staying.len()
        ));
    }
    Ok(Attestations(attestations))
}
