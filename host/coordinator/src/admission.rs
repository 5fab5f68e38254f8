//! Admitting a caller's request at the coordinator: its signature checked as every custodian
//! will check it, then rate limit, budget, audit entry and the first kit in one savepoint of a
//! group commit. Every custodian checks and charges again itself.

use quorumvm_ledger::Commit as _;
use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_core::circuit::Policy;
use quorumvm_policy::EvalRequest as Admission;
use quorumvm_server::{Bug, Env};
use quorumvm_wire::freeze::Target;
use quorumvm_wire::request::{self, CallerRequest, claimed_identity};
use quorumvm_wire::signed::Signed;

use crate::State;
use crate::error::{ApiError, policy_refusal};
use crate::registry::Version;
use crate::store;

/// The caller's signed request, checked as every custodian will check it: signed by the
/// API key's identity with the key its approvals name, that identity active (k approvals, not
/// revoked, not frozen here), fresh, and with a well-formed request id.
pub async fn check_request(
    state: &State,
    identity: &str,
    signed: &Signed,
) -> Result<CallerRequest, ApiError> {
    let claimed = claimed_identity(signed).map_err(ApiError::from)?;
    if claimed != identity {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "identity_mismatch",
            format!("the API key is `{identity}`'s, the request is signed as `{claimed}`"),
        ));
    }
    let caller = state.identities.caller(identity).await?;
    caller.admit(state.custodians.roster().threshold())?;
    state
        .freezes
        .admit(&Target::Identity(caller.name.clone()), "the coordinator")?;
    request::open(signed, &caller.key, state.env.now_ms()).map_err(ApiError::from)
}

/// How long a request waits for a quorum at the cluster's share epoch and a kit, when both are
/// coming: right after a refresh of the shares (the custodians committing it, the kit pool
/// emptied and refilling), or under a burst of load that emptied the pool.
pub const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the wait looks again at the custodians' epochs (a kit batch wakes it at once).
pub const READY_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits, until `deadline` at most, until `v` has k custodians at the cluster's epoch and a
/// kit, if they are coming: at least k custodians up and serving it (those behind the epoch are
/// sent its commit), and a batch being made or all n up to make one. Returns at once
/// otherwise: the quorum or the admission then says what is missing. A request's waits share
/// one deadline ([`READY_WAIT`] after it arrived), so one that is never served is refused in
/// that time, however often it waits.
pub async fn wait_until_ready(state: &State, v: &Version, deadline: tokio::time::Instant) {
    loop {
        // Registered before the pool is looked at, so that a batch added in between wakes it.
        let added = v.kits_added.notified();
        let epoch = state.epochs.current();
        let roster = state.custodians.roster();
        let k = roster.threshold();
        let serving: Vec<_> = roster.willing(&v.package_id, &[]).collect();
        let at_epoch = serving.iter().filter(|c| c.epoch() == epoch).count();
        let (kits, generating) = {
            let kits = v.kits.lock().expect("kits lock");
            (kits.available() > 0, kits.generating)
        };
        if at_epoch >= k && kits {
            return;
        }
        let refill = kits || generating || serving.len() == roster.all.len();
        if serving.len() < k || !refill {
            return;
        }
        let poll = tokio::time::Instant::now() + READY_POLL;
        if tokio::time::timeout_at(deadline.min(poll), added)
            .await
            .is_err()
            && tokio::time::Instant::now() >= deadline
        {
            return;
        }
    }
}

/// Rate limit, budget, audit entry and the first kit, in one savepoint of a group commit: the
/// evaluation is on record before it is answered.
///
/// Returns as soon as the writer has decided, with the commit still running: the caller starts
/// the evaluation at once and awaits the commit before answering, so the fsync overlaps the
/// custodians' work instead of preceding it. Should the commit fail, the result is withheld
/// (and nothing was charged); a crash before it leaves no answer behind either.
pub async fn admit(
    state: &Arc<State>,
    version: &Arc<Version>,
    identity: &str,
    request_id: &str,
    mut policy: Policy,
) -> Result<((u64, u64), Committing), ApiError> {
    let (v, identity, request_id) = (
        Arc::clone(version),
        identity.to_string(),
        request_id.to_string(),
    );
    let (decided, decision) = tokio::sync::oneshot::channel();
    let (writer, env) = (state.storage.clone(), state.env.clone());
    if env.planted(Bug::BudgetUnchecked) {
        policy.budget_per_identity = u64::MAX;
    }
    let now = state.env.now_ms();
    let committing = tokio::spawn(async move {
        writer
            .commit(move |tx| {
                if !store::record_request(tx, &identity, &request_id, now)? {
                    return Err(ApiError::conflict(
                        "replayed_request",
                        format!("request {request_id} of `{identity}` was served before: a request is served once"),
                    ));
                }
                // The kit the evaluation will use is named in its audit entry, but taken only
                // once the request is admitted: a refused request must not burn one.
                let next = v.kits.lock().expect("kits lock").peek();
                let next = next.ok_or_else(|| no_kits(&v))?;
                let admitted = quorumvm_policy::admit_in(
                    tx,
                    &Admission {
                        identity: &identity,
                        program: &v.manifest.name,
                        request_id: &request_id,
                        context: &serde_json::json!({ "package_id": v.package_id, "kit": next }),
                        policy: &policy,
                        now_ms: now,
                    },
                )
                .map_err(policy_refusal)?
                .map_err(policy_refusal)?;
                let kit = take_kit(tx, &v, &env)?;
                if kit != next {
                    return Err(ApiError::internal(format!(
                        "kit {kit} was taken where {next} was recorded"
                    )));
                }
                let outcome = (kit, admitted.remaining_budget);
                let _ = decided.send(outcome);
                Ok::<_, ApiError>(outcome)
            })
            .await
    });
    match decision.await {
        Ok(outcome) => Ok((outcome, committing)),
        // The job decided nothing: it failed, and the commit task says why.
        Err(_) => match committing.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err(ApiError::internal(
                "an admission succeeded without a decision",
            )),
            Err(e) => Err(ApiError::internal(e.to_string())),
        },
    }
}

pub type Committing = tokio::task::JoinHandle<Result<(u64, u64), ApiError>>;

/// The next kit id of `v`, persisting the reservation watermark first when it moves.
pub fn take_kit(tx: &dyn quorumvm_ledger::Sql, v: &Version, env: &Env) -> Result<u64, ApiError> {
    let taken = v.kits.lock().expect("kits lock").take();
    let (kit, reserve) = taken.ok_or_else(|| no_kits(v))?;
    if let Some(up_to) = reserve
        && !env.planted(Bug::KitsNotReserved)
    {
        store::reserve_kits(tx, &v.package_id, up_to)?;
    }
    Ok(kit)
}

fn no_kits(v: &Version) -> ApiError {
    ApiError::unavailable(
        "no_preprocessing",
        format!(
            "no preprocessed kits of {} are ready; the custodians refill the pool while all of them are up",
            v.manifest.name
        ),
    )
    .with_retry_after(1)
}
