//! Admitting a caller's request at the coordinator: its signature checked as every custodian
//! will check it, then rate limit, budget, audit entry and the first kit in one savepoint of a
//! group commit. Every custodian checks and charges again itself.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_policy::EvalRequest as Admission;
use quorumvm_wire::now_ms;
use quorumvm_wire::request::{self, CallerRequest, claimed_identity};
use quorumvm_wire::signed::Signed;

use crate::State;
use crate::error::{ApiError, policy_refusal};
use crate::registry::Version;
use crate::store;

/// The caller's signed request, checked as every custodian will check it: signed by the
/// API key's identity with the key its approvals name, that identity active (k approvals, not
/// revoked, not suspended here), fresh, and with a well-formed request id.
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
    caller.admit(state.custodians.cluster.threshold())?;
    request::open(signed, &caller.key, now_ms()).map_err(ApiError::from)
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
) -> Result<((u64, u64), Committing), ApiError> {
    let (v, identity, request_id) = (
        Arc::clone(version),
        identity.to_string(),
        request_id.to_string(),
    );
    let (decided, decision) = tokio::sync::oneshot::channel();
    let writer = state.writer.clone();
    let committing = tokio::spawn(async move {
        writer
            .run(move |tx| {
                let now = now_ms();
                if !store::record_request(tx, &identity, &request_id, now)? {
                    return Err(ApiError::conflict(
                        "replayed_request",
                        format!("request {request_id} of `{identity}` was served before: a request is served once"),
                    ));
                }
                let admitted = quorumvm_policy::admit_in(
                    tx,
                    &Admission {
                        identity: &identity,
                        program: &v.manifest.name,
                        request_id: &request_id,
                        context: &serde_json::json!({ "package_id": v.package_id }),
                        policy: &v.manifest.policy,
                        now_ms: now,
                    },
                )
                .map_err(policy_refusal)?
                .map_err(policy_refusal)?;
                // Only now take a kit: a refused request must not burn one. If none is ready,
                // the job fails and its savepoint takes the charge and the entry back.
                let kit = take_kit(tx, &v)?;
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
pub fn take_kit(
    tx: &quorumvm_ledger::rusqlite::Transaction<'_>,
    v: &Version,
) -> Result<u64, ApiError> {
    let taken = v.kits.lock().expect("kits lock").take();
    let (kit, reserve) = taken.ok_or_else(|| {
        ApiError::unavailable(
            "no_preprocessing",
            format!(
                "no preprocessed kits of {} are ready; the custodians refill the pool while all of them are up",
                v.manifest.name
            ),
        )
        .with_retry_after(1)
    })?;
    if let Some(up_to) = reserve {
        store::reserve_kits(tx, &v.package_id, up_to)?;
    }
    Ok(kit)
}
