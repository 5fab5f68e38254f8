//! `POST /v1/sessions`: one evaluation, on a coordinator's ticket, with the other members of
//! its quorum.
//!
//! Nothing is spent until the ticket, the version, the quorum and the inputs have been checked,
//! a plugin slot and the session id have been claimed. Then one ledger job charges this
//! custodian's own budget counter for (identity, version), takes the ticket's kit and records
//! the evaluation: a replayed ticket finds its kit gone. Only after that job has committed does
//! the plugin see the kit, so a kit is never used twice, even across a crash.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_core::field::Fp;
use quorumvm_core::session::{Setup, Step, Triple};
use quorumvm_sandbox::{PluginError, PluginSession};
use quorumvm_wire::api::{SessionRequest, SessionResponse};
use quorumvm_wire::elements::{self, from_bytes, to_bytes, to_hex};
use quorumvm_wire::now_ms;
use quorumvm_wire::order::Ticket;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::mailbox::Inbox;
use crate::metrics::Metrics;
use crate::peers::valid_session_id;
use crate::state::{Custodian, INLINE_GATES, compute};
use crate::store::{self, Admission, Admitted};
use crate::versions::{Version, parse_package_id};

pub(crate) async fn evaluate(
    c: &Arc<Custodian>,
    request: SessionRequest,
) -> Result<SessionResponse, ApiError> {
    let ticket = c.tickets.open(&request, now_ms())?;
    if !valid_session_id(&ticket.session) {
        return Err(ApiError::bad_request(
            "bad_session_id",
            "the ticket's session id is invalid",
        ));
    }
    let version = parse_package_id(&ticket.package_id)
        .and_then(|id| c.versions.get(&id))
        .ok_or_else(|| ApiError::unknown_version(&ticket.package_id))?;
    check_quorum(c, &ticket.quorum)?;
    let inputs = elements::from_hex(&request.inputs)
        .map_err(|e| ApiError::bad_request("bad_inputs", format!("input shares: {e}")))?;
    if inputs.len() != version.manifest.inputs.len() {
        return Err(ApiError::bad_request(
            "bad_inputs",
            format!(
                "{} input shares given; {} declares {} inputs",
                inputs.len(),
                version.id_hex,
                version.manifest.inputs.len()
            ),
        ));
    }
    // Claimed before the kit is spent: a session refused for lack of room costs nothing.
    let _slot = c.session_slots.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "every plugin slot of this custodian is in use",
        )
    })?;
    let inbox = c.mailbox.open(&ticket.session)?;

    let admission = Admission {
        session: ticket.session.clone(),
        request_id: ticket.request_id.clone(),
        identity: ticket.identity.clone(),
        package_id: version.id_hex.clone(),
        kit: ticket.kit,
        policy: version.manifest.policy.clone(),
        now_ms: now_ms(),
    };
    let kit = match c.writer.run(move |tx| store::admit(tx, &admission)).await? {
        Admitted::Kit(material) => material,
        Admitted::BudgetExhausted { remaining, cost } => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "budget_exhausted",
                format!(
                    "`{}` has {remaining} budget units left for {} at this custodian; an evaluation costs {cost}",
                    ticket.identity, version.id_hex
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
    let result = run(c, &version, &ticket, &inbox, inputs, kit).await;
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

/// The ticket's quorum: sorted, distinct members of the cluster, this custodian among them,
/// at least k of them.
fn check_quorum(c: &Custodian, quorum: &[u32]) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::bad_request("bad_quorum", why);
    if !quorum.windows(2).all(|w| w[0] < w[1]) {
        return Err(refuse(format!(
            "quorum {quorum:?} is not sorted and distinct"
        )));
    }
    if let Some(x) = quorum.iter().find(|&&x| c.cluster.member(x).is_none()) {
        return Err(refuse(format!(
            "custodian {x} is not a member of this cluster"
        )));
    }
    if !quorum.contains(&c.me) {
        return Err(refuse(format!(
            "custodian {} is not in the quorum {quorum:?}",
            c.me
        )));
    }
    let k = c.cluster.threshold();
    if quorum.len() < k {
        return Err(refuse(format!(
            "a quorum of {} cannot reach threshold {k}",
            quorum.len()
        )));
    }
    Ok(())
}

/// Runs the plugin session layer by layer, exchanging each layer's message with the quorum.
async fn run(
    c: &Arc<Custodian>,
    version: &Arc<Version>,
    ticket: &Ticket,
    inbox: &Inbox<'_>,
    mut inputs: Zeroizing<Vec<Fp>>,
    kit: Zeroizing<Vec<u8>>,
) -> Result<SessionResponse, ApiError> {
    let corrupt = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("kit {} of {}: {why}", ticket.kit, version.id_hex),
        )
    };
    let flat = elements::from_bytes(&kit).map_err(|e| corrupt(e.to_string()))?;
    let triples = Triple::unflatten(&version.circuit, &flat).map_err(|e| corrupt(e.to_string()))?;
    drop(flat);
    let setup = Setup {
        circuit: version.circuit.clone(),
        me: c.me,
        quorum: ticket.quorum.clone(),
        threshold: c.cluster.threshold(),
        secrets: version.secrets(),
        inputs: std::mem::take(&mut *inputs),
        triples,
    };
    let plugin = c.plugin.current();
    let inline = version.circuit.gates.len() <= INLINE_GATES;
    let (mut session, mut step) = compute(inline, "the plugin", move || {
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
            Step::Done(outputs) => {
                return Ok(SessionResponse {
                    outputs: to_hex(&outputs),
                    rounds: layer,
                });
            }
            Step::Send(values) => values,
        };
        layer += 1;
        let body = to_bytes(&values);
        let messages = peers.iter().map(|&p| (p, body.clone())).collect();
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
                        ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "bad_peer_message",
                            format!("custodian {sender}'s layer {layer} message: {e}"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        (session, step) = compute(inline, "the plugin", move || {
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

#[derive(Debug, Clone, Copy)]
enum Call {
    Begin,
    Advance,
}

fn plugin_error(err: PluginError, call: Call) -> ApiError {
    match (err, call) {
        // Refused mid-session: the peers' messages are wrong (lengths, or shares off the
        // polynomial: the message names who, when it can tell).
        (PluginError::Refused(m), Call::Advance) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "evaluation_failed", m)
        }
        (other, call) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_failed",
            format!("the evaluator plugin ({call:?}): {other}"),
        ),
    }
}
