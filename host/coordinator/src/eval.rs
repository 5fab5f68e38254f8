//! `POST /v1/eval`: authenticate, admit ([`crate::admission`]), relay the caller's signed request to the quorum,
//! reconstruct from every output share (or, for a request with private inputs, relay the
//! output shares the custodians sealed to the caller), answer.

use quorumvm_ledger::Commit as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequest, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use quorumvm_core::eval::{decode_outputs, encode_values};
use quorumvm_core::field::Fp;
use quorumvm_core::shares::open_outputs;
use quorumvm_server::anomaly;
use quorumvm_server::{Body, Bug};
use quorumvm_wire::api::{EvalResponse, OutputShares, SessionResponse};
use quorumvm_wire::code::ErrorCode;
use quorumvm_wire::elements;
use quorumvm_wire::freeze::Target;
use quorumvm_wire::order::{Order, Ticket};
use quorumvm_wire::request::Terms;
use quorumvm_wire::signed::Signed;
use tokio::task::JoinSet;

use crate::State;
use crate::admission::{READY_POLL, READY_WAIT, admit, check_request, take_kit, wait_until_ready};
use crate::custodians::{CallError, Roster};
use crate::error::ApiError;
use crate::registry::Version;
use crate::{replicas, store, suspects};

/// A failed attempt is retried this many times on the custodians still standing.
const RETRIES: u32 = 2;

/// How long a request right after a start waits for the first health checks (each times out
/// after half a second).
const FIRST_CHECKS: std::time::Duration = std::time::Duration::from_secs(2);

pub const ROUNDS_HEADER: &str = "x-quorumvm-rounds";

/// An evaluation request: a signed caller request of a few inputs. Larger bodies are refused
/// unread.
pub const MAX_EVAL_BODY: usize = 64 << 10;

/// Authenticates (API key before the body is read, then the caller's signature), admits,
/// relays the signed request to the quorum, reconstructs, answers.
pub async fn handle(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let identity = state.identities.authenticate(&headers).await?;
    let Body(signed) = Body::<Signed>::from_request(request, &()).await?;
    let caller = check_request(&state, &identity, &signed).await?;
    let serving = || state.registry.serving(&caller.package_id, &caller.program);
    // Unknown or pending here may be installed or activated at another replica a moment ago.
    let version = match serving() {
        Ok(version) => version,
        Err(_) => {
            replicas::catch_up(&state).await?;
            serving()?
        }
    };
    state.freezes.admit(
        &Target::Version(version.package_id.clone()),
        "the coordinator",
    )?;
    // Refused here early; every custodian checks the same again itself.
    let inputs = encode_values("input", &version.manifest.inputs, &caller.input_texts())
        .map_err(|e| ApiError::bad_request("bad_input", e.to_string()))?;
    if caller.private.is_some() == version.manifest.private_inputs.is_empty() {
        return Err(ApiError::bad_request(
            "bad_private_inputs",
            format!(
                "`{}` declares {} private input(s): a request carries its private part exactly \
                 when there are some",
                version.manifest.name,
                version.manifest.private_inputs.len()
            ),
        ));
    }
    // Refuse before charging anything when a quorum is out of reach anyway (right after a
    // restart, once the custodians have been checked).
    state.custodians.checked_once(FIRST_CHECKS).await;
    let ready_by = tokio::time::Instant::now() + READY_WAIT;
    wait_until_ready(&state, &version, ready_by).await;
    quorum_at_epoch(&state, &version, &[]).await?;
    let query = anomaly::Query {
        at: "the coordinator",
        identity: &identity,
        manifest: &version.manifest,
        inputs: &inputs,
        now_ms: state.env.now_ms(),
    };
    let policy = anomaly::screen(&state.anomalies, &state.freezes, &state.storage, &query).await?;
    let request_id = caller.request_id.clone();
    // The pool may be emptied between the wait and the admission (a refresh of the shares
    // switching the epoch, seen by the bench): a refused admission changed nothing, so the
    // request waits for kits again, within the same bound.
    let admitted = loop {
        match admit(&state, &version, &identity, &request_id, policy.clone()).await {
            Err(e) if e.code == "no_preprocessing" && tokio::time::Instant::now() < ready_by => {
                tokio::time::sleep(READY_POLL).await;
                wait_until_ready(&state, &version, ready_by).await;
            }
            other => break other,
        }
    };
    let ((kit, remaining), committed) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                state.metrics.evals_denied.fetch_add(1, Relaxed);
            }
            return Err(e);
        }
    };
    let result = run(&state, &version, &signed, &request_id, kit).await;
    // Nothing is answered before the admission (charge and audit entry) is durable.
    match committed.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            let message = format!(
                "the evaluation's admission could not be stored, so its result is withheld: {}",
                e.message
            );
            return Err(e.with_message(message));
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
    }
    let Outcome {
        outputs,
        quorum,
        rounds,
    } = match result {
        Ok(done) => done,
        Err(e) => {
            state.metrics.evals_failed.fetch_add(1, Relaxed);
            return Err(e);
        }
    };
    let (decoded, sealed_outputs, inconsistent) = match outputs {
        Outputs::Values {
            values,
            inconsistent,
        } => {
            let decoded: BTreeMap<String, String> = decode_outputs(&version.manifest, &values)
                .into_iter()
                .map(|(name, value)| (name, value.to_string()))
                .collect();
            (decoded, BTreeMap::new(), inconsistent)
        }
        Outputs::Sealed(sealed) => (BTreeMap::new(), sealed, Vec::new()),
    };
    let m = &state.metrics;
    m.evals_ok.fetch_add(1, Relaxed);
    m.eval_rounds.fetch_add(rounds as u64, Relaxed);
    m.eval_micros
        .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    let mut response = Json(EvalResponse {
        request_id,
        program: version.manifest.name.clone(),
        version: version.manifest.version,
        package_id: version.package_id.clone(),
        outputs: decoded,
        sealed_outputs,
        rounds,
        custodians: quorum,
        inconsistent,
        remaining_budget: remaining,
    })
    .into_response();
    response.headers_mut().insert(
        ROUNDS_HEADER,
        HeaderValue::from_str(&rounds.to_string()).expect("digits"),
    );
    Ok(response)
}

/// A finished evaluation: its outputs, the custodians that answered, its rounds.
struct Outcome {
    outputs: Outputs,
    quorum: Vec<u32>,
    rounds: u32,
}

enum Outputs {
    /// Reconstructed here, with the custodians whose shares were proven inconsistent.
    Values {
        values: Vec<Fp>,
        inconsistent: Vec<u32>,
    },
    /// Sealed by each custodian to the caller, who reconstructs them: the request had private
    /// inputs.
    Sealed(BTreeMap<u32, String>),
}

/// Runs the evaluation, retrying on the remaining custodians when one fails.
async fn run(
    state: &Arc<State>,
    version: &Arc<Version>,
    signed: &Signed,
    request_id: &str,
    first_kit: u64,
) -> Result<Outcome, ApiError> {
    let mut kit = first_kit;
    let mut attempt = 0;
    let mut so_far = SoFar::default();
    loop {
        let failed = attempt_once(
            state,
            version,
            signed,
            request_id,
            attempt,
            kit,
            &mut so_far,
        );
        let e = match failed.await {
            Ok(outcome) => return Ok(outcome),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => e,
            Err(Attempt::Deviated(quorum, e)) => {
                // Someone in the quorum lied: try bare quorums, which tell more.
                so_far.deviated.push(quorum);
                e
            }
            Err(Attempt::Without(index, e)) => {
                so_far.refusing.push(index);
                // Fewer than k custodians willing: the freeze binds the cluster.
                let roster = state.custodians.roster();
                if quorum(state, &roster, version, &so_far.refusing).is_err() {
                    return Err(e);
                }
                e
            }
        };
        if attempt >= RETRIES {
            return Err(e);
        }
        tracing::info!(
            request = request_id,
            "retrying on the custodians still up: {}",
            e.message
        );
        state.metrics.eval_retries.fetch_add(1, Relaxed);
        attempt += 1;
        // A fresh kit: the failed attempt may have opened masks of the old one. Audited, as
        // the first kit is in the request's `eval.accepted` entry. (The pool may be refilling
        // after a refresh of the shares emptied it.)
        wait_until_ready(state, version, tokio::time::Instant::now() + READY_WAIT).await;
        let (v, env, now) = (Arc::clone(version), state.env.clone(), state.env.now_ms());
        let request = request_id.to_string();
        kit = state
            .storage
            .commit(move |tx| {
                let kit = take_kit(tx, &v, &env)?;
                let details = serde_json::json!({
                    "request": request,
                    "package_id": v.package_id,
                    "kit": kit,
                    "attempt": attempt,
                });
                store::audit(tx, now, "coordinator", "eval.retried", details)?;
                Ok::<_, ApiError>(kit)
            })
            .await?;
    }
}

/// What the attempts of one request so far leave to the next.
#[derive(Default)]
struct SoFar {
    /// Custodians that refuse this request themselves (the caller or the version is frozen there):
    /// the rest of the cluster may still serve it.
    refusing: Vec<u32>,
    /// Quorums of this request that held a deviating custodian: the next attempts run on
    /// quorums of k, so that those which fail prove something ([`crate::suspects`]).
    deviated: Vec<Vec<u32>>,
    /// Output shares of failed attempts: only [`Bug::RetryKeepsAnswers`] keeps any.
    kept: Vec<(u32, SessionResponse)>,
}

enum Attempt {
    /// A custodian failed: it is marked dead, and another quorum may succeed.
    Retry(ApiError),
    /// A custodian refuses this caller by its own operator's decision: a quorum without it
    /// may serve.
    Without(u32, ApiError),
    /// The quorum held a custodian that deviated from the protocol (its members saw
    /// inconsistent messages, or its answers fail their check).
    Deviated(Vec<u32>, ApiError),
    Fatal(ApiError),
}

async fn attempt_once(
    state: &Arc<State>,
    version: &Arc<Version>,
    signed: &Signed,
    request_id: &str,
    attempt: u32,
    kit: u64,
    so_far: &mut SoFar,
) -> Result<Outcome, Attempt> {
    // One membership for the whole attempt: its quorum, its tickets, its k to reconstruct with.
    let (roster, mut quorum) = quorum_at_epoch(state, version, &so_far.refusing)
        .await
        .map_err(Attempt::Fatal)?;
    let k = roster.threshold();
    let epoch = state.epochs.current();
    if !so_far.deviated.is_empty() {
        quorum = bare_quorum(state, k, &quorum, &so_far.deviated);
    }
    let session = Terms {
        request: signed.digest(),
        package_id: &version.package_id,
        kit,
        quorum: &quorum,
        attempt,
        epoch,
    }
    .session_id();
    let ticket = Ticket {
        session: session.clone(),
        package_id: version.package_id.clone(),
        quorum: quorum.clone(),
        kit,
        attempt,
        epoch,
    };
    // Every member gets the caller's signed request as it is, under its own ticket tag.
    let now = state.env.now_ms();
    let mut calls = JoinSet::new();
    for &index in &quorum {
        let c = roster.get(index).expect("a quorum member");
        let request = c.tickets.seal(ticket.clone(), signed.clone(), now);
        let (state, roster) = (Arc::clone(state), Arc::clone(&roster));
        calls.spawn(async move {
            let c = roster.get(index).expect("a quorum member");
            (index, state.custodians.session(c, &request).await)
        });
    }
    let mut answers: Vec<(u32, SessionResponse)> = Vec::with_capacity(quorum.len());
    let mut failure: Option<Attempt> = None;
    // A member refused the messages it got: only a deviating member's can be refused.
    let mut deviation = false;
    while let Some(joined) = calls.join_next().await {
        let (index, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                failure.get_or_insert(Attempt::Fatal(ApiError::internal(e.to_string())));
                continue;
            }
        };
        match result {
            Ok(answer) => answers.push((index, answer)),
            Err(e) => {
                if failure.is_none() {
                    // Stop the others now rather than at their round timeout.
                    abort(state, &roster, &session, &quorum, index);
                }
                let reason = format!("custodian {index}: {e}");
                let next = match e {
                    CallError::Unreachable(_) => {
                        if roster.get(index).is_some_and(|c| c.mark_dead()) {
                            tracing::warn!(
                                custodian = index,
                                "custodian failed during a session: marked dead"
                            );
                        }
                        Attempt::Retry(ApiError::unavailable("custodian_failed", reason))
                    }
                    CallError::Refused { status, ref body } => {
                        let code = ErrorCode::parse(&body.error.code);
                        if matches!(
                            code,
                            Some(ErrorCode::EvaluationFailed | ErrorCode::BadPeerMessage)
                        ) {
                            deviation = true;
                        }
                        refusal(index, status, &body.error.code, reason)
                    }
                };
                // Keep the first failure, unless a later one rules out a retry.
                if failure.is_none() || matches!(next, Attempt::Fatal(_)) {
                    failure = Some(next);
                }
            }
        }
    }
    // k answers reconstruct: a member that failed after its last round message (it died
    // before answering) costs nothing. Fewer, and the attempt failed.
    let planted = state.env.planted(Bug::RetryKeepsAnswers);
    match failure {
        Some(f) if answers.len() < k => {
            if planted {
                so_far.kept.append(&mut answers);
            }
            return Err(match f {
                Attempt::Retry(e) if deviation => Attempt::Deviated(quorum, e),
                other => other,
            });
        }
        _ => {}
    }
    if planted {
        for (index, answer) in so_far.kept.drain(..) {
            if let Some(slot) = answers.iter_mut().find(|(i, _)| *i == index) {
                slot.1 = answer;
            }
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    let answered: Vec<u32> = answers.iter().map(|(i, _)| *i).collect();
    let checked = Checked {
        quorum: &quorum,
        k,
        // Every honest member checked every opening against 2k − 1 points or more: a subset of
        // answers that fails its check holds a liar itself.
        openings_checked: quorum.len() > 2 * (k - 1) && !deviation,
    };
    let mut failing = Vec::new();
    if deviation {
        failing.push(quorum.clone());
    }
    let result = reconstruct(
        state,
        version,
        request_id,
        &answered,
        answers,
        &checked,
        &mut failing,
    );
    suspects::record(state, failing).await;
    // Answers that do not open mean a member deviated.
    result.map_err(|e| Attempt::Deviated(quorum.clone(), e))
}

/// A quorum of k among `candidates`, not one of `failed`, taken in turn across requests (so
/// that the quorums that fail, each holding a liar, soon prove which; see
/// [`crate::suspects`]); all of `candidates` when every one has failed.
fn bare_quorum(state: &State, k: usize, candidates: &[u32], failed: &[Vec<u32>]) -> Vec<u32> {
    let untried: Vec<Vec<u32>> = subsets(candidates, k)
        .into_iter()
        .filter(|q| !failed.contains(q))
        .collect();
    if untried.is_empty() {
        return candidates.to_vec();
    }
    let turn = state.bare_turn.fetch_add(1, Relaxed);
    untried[turn % untried.len()].clone()
}

/// Every `k`-element subset of `set`, in lexicographic order.
fn subsets(set: &[u32], k: usize) -> Vec<Vec<u32>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    if set.len() < k {
        return Vec::new();
    }
    let (first, rest) = (set[0], &set[1..]);
    let mut out: Vec<Vec<u32>> = subsets(rest, k - 1)
        .into_iter()
        .map(|mut s| {
            s.insert(0, first);
            s
        })
        .collect();
    out.extend(subsets(rest, k));
    out
}

/// What an attempt's answers can prove about its members.
struct Checked<'a> {
    quorum: &'a [u32],
    /// k of the membership the quorum was taken from: what the answers open with.
    k: usize,
    openings_checked: bool,
}

/// What a custodian's refusal of a session means for the request, by its code
/// ([`ErrorCode`]): the caller's own request refused (final, with the custodian's status),
/// this custodian alone refusing the caller (retry without it), or the session failing for
/// now (retry, with a fresh kit, on the custodians still up). A code the table does not know
/// is a custodian failing: final, 502.
fn refusal(index: u32, status: u16, code: &str, reason: String) -> Attempt {
    match ErrorCode::parse(code) {
        Some(ErrorCode::Frozen) => Attempt::Without(
            index,
            ApiError::new(StatusCode::FORBIDDEN, "frozen", reason),
        ),
        Some(c) if c.is_retryable() => {
            Attempt::Retry(ApiError::unavailable("custodian_failed", reason))
        }
        Some(ErrorCode::RateLimited | ErrorCode::BudgetExhausted) => Attempt::Fatal(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "custodian_budget_exhausted",
            reason,
        )),
        Some(_) => Attempt::Fatal(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            "custodian_refused",
            reason,
        )),
        None => Attempt::Fatal(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "custodian_refused",
            reason,
        )),
    }
}

/// Every live custodian serving `version` but those in `refusing` (all of them take part, so
/// that every opening and output is checked against the extra shares), or 503 when fewer than
/// k are.
fn quorum(
    state: &State,
    custodians: &Roster,
    version: &Version,
    refusing: &[u32],
) -> Result<Vec<u32>, ApiError> {
    let k = custodians.threshold();
    let epoch = state.epochs.current();
    let quorum: Vec<u32> = custodians
        .willing(&version.package_id, refusing)
        .filter(|c| c.epoch() == epoch)
        .map(|c| c.index())
        .collect();
    if quorum.len() < k {
        let suspects: Vec<u32> = custodians
            .all
            .iter()
            .filter(|c| c.is_suspect())
            .map(|c| c.index())
            .collect();
        let mut suspects = if suspects.is_empty() {
            String::new()
        } else {
            format!(" (custodians {suspects:?} are suspect until an operator clears them)")
        };
        let behind: Vec<u32> = custodians
            .all
            .iter()
            .filter(|c| c.is_live() && c.epoch() != epoch)
            .map(|c| c.index())
            .collect();
        if !behind.is_empty() {
            suspects.push_str(&format!(
                " (custodians {behind:?} are not at share epoch {epoch} yet)"
            ));
        }
        return Err(ApiError::unavailable(
            "too_few_custodians",
            format!(
                "{} of the {} custodians serving {} are reachable{suspects}; {k} are needed",
                quorum.len(),
                custodians.cluster.n(),
                version.manifest.name
            ),
        )
        .with_retry_after(1));
    }
    Ok(quorum)
}

/// [`quorum`], waiting (at most [`READY_WAIT`]) while k custodians or more are up and serving
/// `version` but not all at the cluster's epoch yet: a refresh of the shares is committing.
async fn quorum_at_epoch(
    state: &State,
    version: &Version,
    refusing: &[u32],
) -> Result<(Arc<Roster>, Vec<u32>), ApiError> {
    // The runtime's clock (a simulation's, under test), as every wait of the coordinator.
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        let roster = state.custodians.roster();
        let refused = match quorum(state, &roster, version, refusing) {
            Ok(quorum) => return Ok((roster, quorum)),
            Err(e) => e,
        };
        let up = roster.willing(&version.package_id, refusing).count();
        if up < roster.threshold() || tokio::time::Instant::now() >= deadline {
            return Err(refused);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn abort(state: &Arc<State>, roster: &Arc<Roster>, session: &str, quorum: &[u32], failed: u32) {
    for &index in quorum.iter().filter(|&&i| i != failed) {
        let (state, roster) = (Arc::clone(state), Arc::clone(roster));
        let session = session.to_string();
        tokio::spawn(async move {
            if let Some(c) = roster.get(index) {
                let _ = state.custodians.order(c, Order::Abort { session }).await;
            }
        });
    }
}

/// Every output from all the answers received, checked by their MACs (see [`open_outputs`]:
/// the right value or an error, and a custodian is named only when enough shares agree to
/// prove its share wrong), or the sealed answers as they are, for the caller, who checks them
/// the same way.
///
/// When the answers of the whole quorum do not open, each set of k of them is tried: one whose
/// members all followed the protocol opens to the right value (and any set that opens, opens
/// to the right value, by its MACs). The sets that fail go into `failing` where they prove
/// something ([`Checked`]).
fn reconstruct(
    state: &Arc<State>,
    version: &Version,
    request_id: &str,
    quorum: &[u32],
    answers: Vec<(u32, SessionResponse)>,
    checked: &Checked<'_>,
    failing: &mut Vec<Vec<u32>>,
) -> Result<Outcome, ApiError> {
    let k = checked.k;
    let bad_share = |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "bad_share", message);
    let rounds = answers.iter().map(|(_, a)| a.rounds).max().unwrap_or(0);
    let private = !version.manifest.private_inputs.is_empty();
    let mut plain = Vec::with_capacity(answers.len());
    let mut sealed = BTreeMap::new();
    for (index, answer) in answers {
        match (answer.outputs, private) {
            (OutputShares::Plain(hex), false) => {
                let values = elements::from_hex(&hex)
                    .map_err(|e| bad_share(format!("custodian {index}: {e}")))?;
                plain.push((index, values.to_vec()));
            }
            (OutputShares::Sealed(hex), true) => {
                sealed.insert(index, hex);
            }
            _ => {
                return Err(bad_share(format!(
                    "custodian {index} answered with {} output shares for a request {} private inputs",
                    if private { "plain" } else { "sealed" },
                    if private { "with" } else { "without" }
                )));
            }
        }
    }
    if private {
        return Ok(Outcome {
            outputs: Outputs::Sealed(sealed),
            quorum: quorum.to_vec(),
            rounds,
        });
    }
    let outputs = version.manifest.outputs.len();
    let reconstructed = match open_outputs(&plain, k, outputs) {
        Ok(opened) => opened,
        Err(e) => {
            failing.push(checked.quorum.to_vec());
            let mut served = None;
            for members in subsets(quorum, k)
                .into_iter()
                .filter(|s| s.len() < plain.len())
            {
                let some: Vec<(u32, Vec<Fp>)> = plain
                    .iter()
                    .filter(|(i, _)| members.contains(i))
                    .cloned()
                    .collect();
                // Where a failing set proves something, every set is tried (each takes
                // microseconds), so that a liar is proven at its first lie.
                match open_outputs(&some, k, outputs) {
                    Ok(opened) => {
                        served.get_or_insert(opened);
                        if !checked.openings_checked {
                            break;
                        }
                    }
                    Err(_) if checked.openings_checked => failing.push(members),
                    Err(_) => {}
                }
            }
            served.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "inconsistent_shares",
                    e.to_string(),
                )
            })?
        }
    };
    let inconsistent = reconstructed.inconsistent;
    failing.extend(inconsistent.iter().map(|&x| vec![x]));
    if !inconsistent.is_empty() {
        state
            .metrics
            .inconsistent_shares
            .fetch_add(inconsistent.len() as u64, Relaxed);
        tracing::warn!(request = request_id, custodians = ?inconsistent, "inconsistent output shares");
        let (writer, request_id, bad, now) = (
            state.storage.clone(),
            request_id.to_string(),
            inconsistent.clone(),
            state.env.now_ms(),
        );
        tokio::spawn(async move {
            let _ = writer
                .commit(move |tx| {
                    store::audit(
                        tx,
                        now,
                        "coordinator",
                        "eval.inconsistent",
                        serde_json::json!({ "request_id": request_id, "custodians": bad }),
                    )
                })
                .await;
        });
    }
    Ok(Outcome {
        outputs: Outputs::Values {
            values: reconstructed.values,
            inconsistent,
        },
        quorum: quorum.to_vec(),
        rounds,
    })
}
