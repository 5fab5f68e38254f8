//! `POST /v1/sessions`: one attempt at a caller's signed request, on a coordinator's ticket,
//! with the other members of its quorum.
//!
//! What this custodian checks itself before anything is spent, whatever the coordinator says:
//! the ticket's tag; that the version serves here (not retired); the quorum; that the caller's
//! request is signed by the key k operators approved for its identity, is fresh, and asks for
//! this program and version; that the ticket's session id is the digest of the session's terms
//! (request, version, kit, quorum, attempt), so members given different terms never meet; and
//! that every visible input lies in its declared range at its declared scale. A visible input is
//! a public value: the constant polynomial is a valid degree-0 sharing of it, so each custodian
//! uses the value itself as its share and the coordinator chooses nothing. A private input
//! arrives as this custodian's share, sealed to it by the caller's client inside the signed
//! request; when there are private inputs, this custodian seals its output shares to the
//! request's one-time reply key (authenticated as its own), so the coordinator that relays
//! them sees neither inputs nor outputs.
//!
//! Then one ledger job records the session, charges this custodian's own budget and rate
//! limit for (identity, program name) on the request's first attempt only, refuses an attempt
//! no later than one it served (the coordinator's retries count up, at most three), takes the
//! ticket's kit and records the evaluation: a replayed ticket finds its kit gone. Only after
//! that job has committed does the plugin see the kit, so a kit is never used twice, even
//! across a crash.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_core::eval::encode_values;
use quorumvm_core::field::Fp;
use quorumvm_core::session::{Kit, Setup, Step};
use quorumvm_policy::PolicyError;
use quorumvm_sandbox::{PluginError, PluginSession};
use quorumvm_sealing::{
    CustodianPublicKey, InputsBinding, OutputsBinding, open_inputs, seal_outputs,
};
use quorumvm_server::anomaly;
use quorumvm_server::{Bug, Lie};
use quorumvm_wire::api::{OutputShares, SessionRequest, SessionResponse};
use quorumvm_wire::elements::{self, from_bytes, to_bytes, to_hex};
use quorumvm_wire::freeze::Target;
use quorumvm_wire::order::Ticket;
use quorumvm_wire::request::{self, CallerRequest, Terms, claimed_identity};
use quorumvm_wire::signed::Signed;
use zeroize::Zeroizing;

use crate::error::{self, ApiError};
use crate::mailbox::Inbox;
use crate::metrics::Metrics;
use crate::state::{Custodian, INLINE_GATES};
use crate::store::{self, Admission, Admitted, MAX_ATTEMPTS};
use crate::versions::Version;
use quorumvm_wire::code::ErrorCode;

pub(crate) async fn evaluate(
    c: &Arc<Custodian>,
    request: SessionRequest,
) -> Result<SessionResponse, ApiError> {
    let ticket = c
        .tickets
        .open(&request, c.env.now_ms())
        .map_err(error::bad_order)?;
    let version = c.versions.serving(&ticket.package_id)?;
    c.freezes.admit(
        &Target::Version(version.id_hex.clone()),
        &format!("custodian {}", c.me()),
    )?;
    check_quorum(c, &ticket.quorum)?;
    let caller = check_request(c, &request.request, &version)?;
    let terms = Terms {
        request: request.request.digest(),
        package_id: &ticket.package_id,
        kit: ticket.kit,
        quorum: &ticket.quorum,
        attempt: ticket.attempt,
        epoch: ticket.epoch,
    };
    if terms.session_id() != ticket.session {
        return Err(ApiError::of(
            ErrorCode::BadTerms,
            "the ticket's session id is not the digest of its terms (request, version, kit, \
             quorum, attempt, epoch)",
        ));
    }
    let (epoch, secrets) = c.versions.shares(&version);
    let secrets = Zeroizing::new(secrets);
    if epoch != ticket.epoch {
        return Err(ApiError::of(
            ErrorCode::EpochMismatch,
            format!(
                "the ticket is for share epoch {}; custodian {} is at epoch {epoch}",
                ticket.epoch,
                c.me()
            ),
        ));
    }
    // Refused here, by this custodian, whatever the coordinator checked.
    let inputs = encode_values("input", &version.manifest.inputs, &caller.input_texts())
        .map_err(|e| ApiError::of(ErrorCode::BadInput, e.to_string()))?;
    let private = open_private(c, &caller, &version)?;
    let query = anomaly::Query {
        at: &format!("custodian {}", c.me()),
        identity: &caller.identity,
        manifest: &version.manifest,
        inputs: &inputs,
        now_ms: c.env.now_ms(),
    };
    let policy = anomaly::screen(&c.anomalies, &c.freezes, &c.writer, &query).await?;
    // Claimed before the kit is spent: a session refused for lack of room costs nothing.
    let _slot = c.session_slots.try_acquire().map_err(|_| {
        ApiError::of(
            ErrorCode::Busy,
            "every plugin slot of this custodian is in use",
        )
    })?;
    let inbox = c.mailbox.open(&ticket.session)?;

    let admission = Admission {
        session: ticket.session.clone(),
        request_id: caller.request_id.clone(),
        identity: caller.identity.clone(),
        program: version.manifest.name.clone(),
        package_id: version.id_hex.clone(),
        kit: ticket.kit,
        epoch,
        attempt: ticket.attempt,
        policy,
        now_ms: c.env.now_ms(),
    };
    let admitted = if c.env.planted(Bug::AnswerBeforeCommit) {
        answer_before_commit(c, admission).await?
    } else if c.env.planted(Bug::ChargeEveryAttempt) && admission.attempt > 0 {
        c.writer
            .run(move |tx| {
                charge(tx, &admission)?;
                store::admit(tx, &admission)
            })
            .await?
    } else {
        c.writer.run(move |tx| store::admit(tx, &admission)).await?
    };
    let kit = match admitted {
        Admitted::Kit(material) => material,
        Admitted::Refused(refusal) => return Err(refused(&caller, &version, refusal)),
        Admitted::Replayed { last_attempt } => {
            return Err(ApiError::of(
                ErrorCode::ReplayedRequest,
                format!(
                    "request {} of `{}` was served here in attempt {}; only a later attempt \
                     (at most {MAX_ATTEMPTS} in all) is taken, not attempt {}",
                    caller.request_id,
                    caller.identity,
                    last_attempt.map_or("none".to_string(), |a| a.to_string()),
                    ticket.attempt
                ),
            ));
        }
    };
    version.kit_used();
    Metrics::add(&c.metrics.kits_consumed, 1);
    Metrics::add(&c.metrics.sessions_started, 1);
    tracing::debug!(
        session = %ticket.session,
        package_id = %version.id_hex,
        kit = ticket.kit,
        quorum = ?ticket.quorum,
        "session started"
    );
    let outputs_to = |reply| {
        let binding = OutputsBinding {
            request: request.request.digest(),
            custodian: c.me(),
        };
        (reply, binding)
    };
    let leaves = match private {
        Some(Private { shares, reply }) => Leaves {
            visible: inputs,
            private: shares,
            reply: Some(outputs_to(reply)),
        },
        None => Leaves {
            visible: inputs,
            private: Zeroizing::new(Vec::new()),
            reply: None,
        },
    };
    let result = run(c, &version, &ticket, &inbox, leaves, (secrets, kit)).await;
    match &result {
        Ok(response) => {
            Metrics::add(&c.metrics.sessions_completed, 1);
            tracing::debug!(session = %ticket.session, rounds = response.rounds, "session done");
        }
        Err(e) => {
            Metrics::add(&c.metrics.sessions_failed, 1);
            tracing::debug!(session = %ticket.session, "session failed: {e}");
        }
    }
    result
}

/// The caller's request, once this custodian has verified it: signed by the key k operators
/// approved for its identity, fresh, well formed, and for exactly this program and version.
fn check_request(
    c: &Custodian,
    signed: &Signed,
    version: &Version,
) -> Result<CallerRequest, ApiError> {
    let identity = claimed_identity(signed).map_err(ApiError::from)?;
    let key = c.callers.key(&identity).ok_or_else(|| {
        ApiError::of(
            ErrorCode::UnknownIdentity,
            format!(
                "identity `{identity}` is not registered at custodian {}: k custodian operators \
                 must approve it first",
                c.me()
            ),
        )
    })?;
    let request = request::open(signed, &key, c.env.now_ms()).map_err(ApiError::from)?;
    if request.package_id != version.id_hex || request.program != version.manifest.name {
        return Err(ApiError::of(
            ErrorCode::BadTerms,
            format!(
                "the caller asked for `{}` ({}), the ticket names `{}` ({})",
                request.program, request.package_id, version.manifest.name, version.id_hex
            ),
        ));
    }
    Ok(request)
}

/// A request's private part, as this custodian opened it.
struct Private {
    /// This custodian's shares of the private inputs, in the manifest's order.
    shares: Zeroizing<Vec<Fp>>,
    /// The caller's one-time key, which the output shares are sealed to.
    reply: CustodianPublicKey,
}

/// This custodian's shares of the request's private inputs, opened from the envelope the
/// caller sealed to it, with the key to seal the outputs to; `None` for a program without
/// private inputs. A request whose private part does not match the program is refused.
fn open_private(
    c: &Custodian,
    caller: &CallerRequest,
    version: &Version,
) -> Result<Option<Private>, ApiError> {
    let refuse = |why: String| ApiError::of(ErrorCode::BadPrivateInputs, why);
    let declared = version.manifest.private_inputs.len();
    let private = match (&caller.private, declared) {
        (None, 0) => return Ok(None),
        (Some(_), 0) => {
            return Err(refuse(format!(
                "`{}` declares no private inputs",
                version.manifest.name
            )));
        }
        (None, _) => {
            return Err(refuse(format!(
                "`{}` declares {declared} private input(s); the request carries none",
                version.manifest.name
            )));
        }
        (Some(p), _) => p,
    };
    let sealed = private
        .sealed
        .get(&c.me())
        .ok_or_else(|| refuse(format!("no envelope for custodian {}", c.me())))?;
    let sealed = hex::decode(sealed)
        .map_err(|_| refuse(format!("custodian {}'s envelope is not hex", c.me())))?;
    let binding = InputsBinding {
        request_id: &caller.request_id,
        package: version.id,
        custodian: c.me(),
    };
    let shares = open_inputs(&c.sealing_key, &binding, &sealed)
        .map_err(|e| refuse(format!("custodian {}'s envelope: {e}", c.me())))?;
    if shares.len() != declared {
        return Err(refuse(format!(
            "the envelope holds {} share(s) for {declared} private input(s)",
            shares.len()
        )));
    }
    let reply = CustodianPublicKey::from_file_text(&private.reply_key)
        .map_err(|e| refuse(format!("the reply key: {e}")))?;
    Ok(Some(Private { shares, reply }))
}

fn refused(caller: &CallerRequest, version: &Version, refusal: PolicyError) -> ApiError {
    let code = match refusal {
        PolicyError::RateLimited { .. } => "rate_limited",
        _ => "budget_exhausted",
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        format!(
            "`{}` on `{}` at this custodian: {refusal}",
            caller.identity, version.manifest.name
        ),
    )
}

/// The ticket's quorum: sorted, distinct members of the cluster, this custodian among them,
/// at least k of them.
fn check_quorum(c: &Custodian, quorum: &[u32]) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::bad_request("bad_quorum", why);
    if !quorum.windows(2).all(|w| w[0] < w[1]) {
        return Err(refuse(format!(
            "quorum {quorum:?} is not sorted and distinct"
        )));
    }
    let cluster = c.cluster();
    if let Some(x) = quorum.iter().find(|&&x| cluster.member(x).is_none()) {
        return Err(refuse(format!(
            "custodian {x} is not a member of this cluster"
        )));
    }
    if !quorum.contains(&c.me()) {
        return Err(refuse(format!(
            "custodian {} is not in the quorum {quorum:?}",
            c.me()
        )));
    }
    let k = cluster.threshold();
    if quorum.len() < k {
        return Err(refuse(format!(
            "a quorum of {} cannot reach threshold {k}",
            quorum.len()
        )));
    }
    Ok(())
}

/// A session's leaves from the request, and where its outputs go.
struct Leaves {
    visible: Vec<Fp>,
    private: Zeroizing<Vec<Fp>>,
    /// The caller's reply key, when the outputs are sealed to it.
    reply: Option<(CustodianPublicKey, OutputsBinding)>,
}

/// Runs the plugin session layer by layer, exchanging each layer's message with the quorum.
async fn run(
    c: &Arc<Custodian>,
    version: &Arc<Version>,
    ticket: &Ticket,
    inbox: &Inbox<'_>,
    mut leaves: Leaves,
    (mut secrets, kit): (Zeroizing<Vec<Fp>>, Zeroizing<Vec<u8>>),
) -> Result<SessionResponse, ApiError> {
    let corrupt = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("kit {} of {}: {why}", ticket.kit, version.id_hex),
        )
    };
    let flat = elements::from_bytes(&kit).map_err(|e| corrupt(e.to_string()))?;
    let mut kit = Kit::unflatten(&version.circuit, &flat).map_err(|e| corrupt(e.to_string()))?;
    drop(flat);
    if c.env.lies(Lie::TripleC)
        && let Some(t) = kit.triples.first_mut()
    {
        t.c += Fp::ONE;
    }
    let setup = Setup {
        circuit: version.circuit.clone(),
        me: c.me(),
        quorum: ticket.quorum.clone(),
        threshold: c.cluster().threshold(),
        secrets: std::mem::take(&mut *secrets),
        inputs: std::mem::take(&mut leaves.visible),
        private_inputs: std::mem::take(&mut *leaves.private),
        kit,
    };
    let plugin = c.plugin.current();
    let inline = version.circuit.gates.len() <= INLINE_GATES;
    let (mut session, mut step) = c
        .compute(inline, "the plugin", move || {
            let mut session = plugin.session()?;
            // `setup` (shares, inputs, triples) is wiped when this closure drops it.
            let step = session.begin(&setup)?;
            Ok::<_, PluginError>((session, step))
        })
        .await?
        .map_err(|e| plugin_error(e, Call::Begin))?;

    let peers = c.others(&ticket.quorum);
    let mut layer = 0u32;
    loop {
        let values = match step {
            Step::Done(mut outputs) => {
                if c.env.lies(Lie::OutputShare) {
                    outputs[0] += Fp::ONE;
                }
                let outputs = Zeroizing::new(outputs);
                let outputs = match &leaves.reply {
                    None => OutputShares::Plain(to_hex(&outputs)),
                    Some((reply, binding)) => OutputShares::Sealed(hex::encode(
                        seal_outputs(*reply, &c.sealing_key, binding, &outputs).map_err(|e| {
                            ApiError::of(ErrorCode::BadPrivateInputs, e.to_string())
                        })?,
                    )),
                };
                return Ok(SessionResponse {
                    outputs,
                    rounds: layer,
                });
            }
            Step::Send(values) => values,
        };
        layer += 1;
        let body = deviate(c, layer, values);
        let messages = if c.env.lies(Lie::Withhold) && layer == 1 {
            Vec::new()
        } else {
            peers.iter().map(|&p| (p, body.clone())).collect()
        };
        let received = c
            .exchange(
                inbox,
                &ticket.session,
                layer,
                messages,
                &peers,
                c.round_timeout,
            )
            .await?;
        let received = received
            .into_iter()
            .map(|(sender, bytes)| {
                // Openings of masked values: the quorum learns them anyway, no wiping owed.
                from_bytes(&bytes)
                    .map(|mut v| (sender, std::mem::take(&mut *v)))
                    .map_err(|e| {
                        ApiError::of(
                            ErrorCode::BadPeerMessage,
                            format!("custodian {sender}'s layer {layer} message: {e}"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        (session, step) = c
            .compute(inline, "the plugin", move || {
                let step = session.advance(&received);
                (session, step)
            })
            .await
            .and_then(|(session, step): (PluginSession, _)| {
                step.map(|s| (session, s))
                    .map_err(|e| plugin_error(e, Call::Advance))
            })?;
    }
}

/// A layer's message as this custodian sends it: as the plugin made it, unless the test build
/// makes it lie ([`Lie::Opening`], [`Lie::Replay`]).
fn deviate(c: &Custodian, layer: u32, mut values: Vec<Fp>) -> Vec<u8> {
    if c.env.lies(Lie::Opening) && layer == 1 && !values.is_empty() {
        values[0] += Fp::ONE;
    }
    let body = to_bytes(&values);
    if c.env.lies(Lie::Replay) {
        return c.env.replay(layer, body);
    }
    body
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Begin,
    Advance,
}

fn plugin_error(err: PluginError, call: Call) -> ApiError {
    match (err, call) {
        // Refused mid-session: the peers' messages are wrong (lengths, or shares off the
        // polynomial: the message names who, when it can tell).
        (PluginError::Refused(m), Call::Advance) => ApiError::of(ErrorCode::EvaluationFailed, m),
        (other, call) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_failed",
            format!("the evaluator plugin ({call:?}): {other}"),
        ),
    }
}

/// [`Bug::AnswerBeforeCommit`]: the kit read at once, the admission (the kit taken, the charge)
/// committed a while later, after the answer.
async fn answer_before_commit(
    c: &Arc<Custodian>,
    admission: Admission,
) -> Result<Admitted, ApiError> {
    let (package_id, kit) = (admission.package_id.clone(), admission.kit);
    let material = c
        .writer
        .run(move |tx| store::peek_kit(tx, &package_id, kit))
        .await?;
    let writer = c.writer.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = writer.run(move |tx| store::admit(tx, &admission)).await;
    });
    Ok(Admitted::Kit(material))
}

/// [`Bug::ChargeEveryAttempt`]: a later attempt charged again, as a first one is.
fn charge(
    tx: &quorumvm_ledger::rusqlite::Transaction<'_>,
    a: &Admission,
) -> Result<(), store::StoreError> {
    let request = quorumvm_policy::EvalRequest {
        identity: &a.identity,
        program: &a.program,
        request_id: &a.request_id,
        context: &serde_json::json!({ "attempt": a.attempt }),
        policy: &a.policy,
        now_ms: a.now_ms,
    };
    let _ = quorumvm_policy::admit_in(tx, &request).map_err(store::policy_failure)?;
    Ok(())
}
