//! The custodian's HTTP API (see [`quorumvm_wire::api`]). Its callers are the coordinator
//! (orders, sessions, health, metrics), the other custodians (round messages) and its own
//! operator (freezes). Every error
//! is an [`quorumvm_wire::api::ErrorBody`]; a refused request changes nothing.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::IntoResponse as _;
use axum::response::Response;
use axum::routing::{get, post};
use quorumvm_server::tls::Peer;
use quorumvm_server::{body_error, json};
use quorumvm_wire::api::{
    CustodianHealth, FreezeState, MembershipInfo, OrderResponse, SessionRequest, SessionResponse,
    VersionKits,
};
use quorumvm_wire::freeze::Target;
use quorumvm_wire::order::{Order, SignedOrder};
use quorumvm_wire::peer::{Frame, FrameRefusal, FrameResult, SENDER_HEADER, decode_frames};
use quorumvm_wire::request::claimed_identity;
use quorumvm_wire::signed::Signed;

use crate::error::{self, ApiError};
use crate::mailbox::DeliverError;
use crate::metrics::Metrics;
use crate::peers::valid_session_id;
use crate::preprocess::{self, Batch};
use crate::state::Custodian;
use crate::{
    activation, freeze, join, register, reshare, retire, revoke, rotation, session, share_check,
};

/// The largest round message: a preprocessing layer carries `2 · count · terms` elements to
/// each peer, and the coordinator sizes its batches under this.
pub(crate) const ROUND_BODY_LIMIT: usize = 64 << 20;
/// A session request: the ticket and one input share per declared input.
const SESSION_BODY_LIMIT: usize = 16 << 20;
/// An order: a few ids, or k approvals.
const ORDER_BODY_LIMIT: usize = 1 << 20;

pub(crate) fn router(custodian: Arc<Custodian>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/membership", get(membership))
        .route("/metrics", get(metrics))
        .route(
            "/v1/orders",
            post(orders)
                .layer(DefaultBodyLimit::max(ORDER_BODY_LIMIT))
                .layer(middleware::from_fn(parties_only)),
        )
        .route(
            "/v1/sessions",
            post(sessions)
                .layer(DefaultBodyLimit::max(SESSION_BODY_LIMIT))
                .layer(middleware::from_fn(parties_only)),
        )
        .route(
            "/v1/rounds",
            post(rounds)
                .layer(DefaultBodyLimit::max(ROUND_BODY_LIMIT))
                .layer(middleware::from_fn(parties_only)),
        )
        .route(
            "/v1/freezes",
            post(freezes).layer(DefaultBodyLimit::max(ORDER_BODY_LIMIT)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(custodian)
}

/// The coordinator's orders and sessions and the peers' round messages come from a client that
/// presented a pinned certificate (the listener refused any other); over TLS, a connection
/// without one is refused here, before its body is read. Their signatures are checked as well.
async fn parties_only(
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if peer.is_anonymous() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_party",
            "this route serves the cluster's coordinator and custodians: connect with the \
             certificate of a key the cluster's configs pin",
        )
        .into_response();
    }
    next.run(request).await
}

async fn health(State(c): State<Arc<Custodian>>) -> Json<CustodianHealth> {
    let current = c.current();
    Json(CustodianHealth {
        index: current.me,
        versions: c
            .versions
            .kit_counts()
            .into_iter()
            .map(|(package_id, kits)| VersionKits { package_id, kits })
            .collect(),
        identities: c.callers.len() as u64,
        revocations: c.callers.revocations() as u64,
        retirements: c.versions.retirements() as u64,
        epoch: c.versions.epoch(),
        generation: current.generation,
        threshold: current.cluster.threshold(),
        members: current.cluster.indices(),
        frozen: c.freezes.frozen(),
    })
}

/// The membership in force here: what an operator's `quorumvm custodian` builds its statement
/// from, so that it signs a change of what its own machine holds.
async fn membership(State(c): State<Arc<Custodian>>) -> Json<MembershipInfo> {
    let current = c.current();
    Json(MembershipInfo {
        generation: current.generation,
        epoch: c.versions.epoch(),
        threshold: current.cluster.threshold(),
        custodians: current.cluster.entries(),
    })
}

async fn metrics(State(c): State<Arc<Custodian>>) -> Response {
    quorumvm_server::metrics::response(c.metrics.render(
        c.me(),
        c.writer.stats(),
        &c.versions.kit_counts(),
        c.anomalies.fired_total(),
    ))
}

async fn orders(
    State(c): State<Arc<Custodian>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<OrderResponse>, ApiError> {
    let signed: SignedOrder = json(body)?;
    match signed
        .open(&c.coordinator_key, c.env.now_ms())
        .map_err(error::bad_order)?
    {
        Order::Activate {
            package_id,
            approvals,
        } => detached(async move { activation::activate(&c, &package_id, approvals).await }).await,
        Order::Preprocess {
            session,
            package_id,
            first_kit,
            count,
            epoch,
        } => {
            let batch = Batch {
                session,
                package_id,
                first_kit,
                count,
                epoch,
            };
            detached(async move { preprocess::preprocess(&c, batch).await }).await
        }
        Order::CheckShares {
            package_id,
            session,
        } => {
            detached(async move { share_check::check_shares(&c, &package_id, session).await }).await
        }
        Order::RegisterIdentity {
            name,
            public_key,
            approvals,
        } => {
            detached(async move { register::register(&c, name, public_key, approvals).await }).await
        }
        Order::Reshare {
            session,
            epoch,
            packages,
        } => {
            let order = reshare::Order {
                session,
                epoch,
                packages,
            };
            detached(async move { reshare::reshare(&c, order).await }).await
        }
        Order::CommitReshare {
            session,
            epoch,
            packages,
            attestations,
        } => {
            let order = reshare::Order {
                session,
                epoch,
                packages,
            };
            detached(async move { reshare::commit(&c, order, attestations).await }).await
        }
        Order::Redeal {
            session,
            membership,
            approvals,
            packages,
        } => {
            let order = rotation::Order {
                session,
                membership,
                approvals,
                packages,
            };
            detached(async move { rotation::redeal(&c, order).await }).await
        }
        Order::Join {
            session,
            rotations,
            membership,
            approvals,
            versions,
        } => {
            let order = join::Order {
                session,
                rotations,
                membership,
                approvals,
                versions,
            };
            detached(async move { join::join(&c, order).await }).await
        }
        Order::CommitRedeal {
            session,
            membership,
            approvals,
            packages,
            attestations,
        } => {
            let order = rotation::Order {
                session,
                membership,
                approvals,
                packages,
            };
            detached(async move { rotation::commit(&c, order, attestations).await }).await
        }
        Order::RevokeIdentity { name, approvals } => {
            detached(async move { revoke::revoke(&c, name, approvals).await }).await
        }
        Order::Retire {
            package_id,
            approvals,
        } => detached(async move { retire::retire(&c, &package_id, approvals).await }).await,
        Order::Unfreeze {
            unfreeze,
            approvals,
        } => detached(async move { freeze::unfreeze(&c, unfreeze, approvals).await }).await,
        Order::Abort { session } => {
            if !valid_session_id(&session) {
                return Err(ApiError::bad_request(
                    "bad_session_id",
                    "the session id is invalid",
                ));
            }
            c.mailbox.abort(&session);
            tracing::debug!(%session, "session aborted");
            Ok(OrderResponse {
                status: "aborted".into(),
                kits: 0,
                ..Default::default()
            })
        }
    }
    .map(Json)
}

async fn sessions(
    State(c): State<Arc<Custodian>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SessionResponse>, ApiError> {
    let request: SessionRequest = json(body)?;
    // A revoked or frozen name is refused before anything else (an unreadable request is the
    // session's to refuse).
    if let Ok(identity) = claimed_identity(&request.request) {
        c.callers.admit(&identity)?;
        c.freezes.admit(
            &Target::Identity(identity),
            &format!("custodian {}", c.me()),
        )?;
    }
    detached(async move { session::evaluate(&c, request).await })
        .await
        .map(Json)
}

/// The operator's own freeze: applied before it is answered.
async fn freezes(
    State(c): State<Arc<Custodian>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FreezeState>, ApiError> {
    let signed: Signed = json(body)?;
    detached(async move { freeze::freeze(&c, signed).await })
        .await
        .map(Json)
}

/// A peer's round message: authenticated, then buffered for its session. Answered at once.
async fn rounds(
    State(c): State<Arc<Custodian>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<FrameResult>>, ApiError> {
    let sender = headers
        .get(SENDER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&s| c.peers().knows(s))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_sender",
                "the sender header names none of this custodian's peers".to_string(),
            )
        })?;
    let body = body.map_err(body_error)?;
    let frames =
        decode_frames(&body).map_err(|e| ApiError::bad_request("bad_frames", e.to_string()))?;
    // Each message stands or falls alone: one session's bad message must not cost another
    // session, batched into the same request, its own.
    let results = frames
        .into_iter()
        .map(|frame| deliver(&c, sender, frame).err())
        .collect();
    Ok(Json(results))
}

fn deliver(c: &Custodian, sender: u32, frame: Frame) -> Result<(), FrameRefusal> {
    let refuse = |status: StatusCode, code: &str, message: String| FrameRefusal {
        status: status.as_u16(),
        code: code.to_string(),
        message,
    };
    if !valid_session_id(&frame.session) || frame.layer == 0 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_frame",
            "a round message names a valid session id and a layer from 1".to_string(),
        ));
    }
    if !c
        .peers()
        .check(sender, &frame.session, frame.layer, &frame.body, &frame.tag)
    {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "bad_mac",
            "the message's MAC does not verify for this sender, session and layer".to_string(),
        ));
    }
    c.mailbox
        .deliver(&frame.session, frame.layer, sender, frame.body)
        .map_err(|e| {
            let (status, code) = match e {
                DeliverError::Duplicate => (StatusCode::CONFLICT, "duplicate_message"),
                DeliverError::Closed => (StatusCode::CONFLICT, "session_closed"),
                DeliverError::Full => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            };
            refuse(status, code, e.to_string())
        })?;
    Metrics::add(&c.metrics.rounds_received, 1);
    Ok(())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {uri}"),
    )
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{uri} does not take this method"),
    )
}

/// Runs a request's work in a task of its own. A caller that hangs up drops the handler, and
/// with it anything the handler awaits: the work must not stop between a ledger commit and the
/// in-memory update that follows it (kit counts), so it does not run in the handler itself.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::task_failed("the request", e))?
}
