//! `Preprocess`: a batch of kits of one version, generated with every other custodian by
//! [`quorumvm_core::preprocess`] (no dealer: no party, the coordinator included, ever sees a
//! triple), in two layers of round messages under the order's session id:
//!
//! 1. each custodian deals random sharings of `a` and `b` to the others;
//! 2. each deals sharings of its local products, which everyone reduces into `c`.
//!
//! Both layers' messages are shares of secrets: each is sealed to its recipient
//! ([`crate::layers`]) before it leaves. The computation runs off the async
//! threads. The batch is stored in one ledger job, all or nothing; a kit id that already exists
//! refuses the whole batch.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use quorumvm_core::preprocess::{Generation, KitShape, PreprocessError};
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::elements;
use zeroize::{Zeroize, Zeroizing};

use crate::error::ApiError;
use crate::layers::{open_layer, seal_layer};
use crate::metrics::Metrics;
use crate::peers::{SEAL_OVERHEAD, valid_session_id};
use crate::routes::ROUND_BODY_LIMIT;
use crate::state::Custodian;
use crate::store;
use quorumvm_wire::code::ErrorCode;

/// The least a preprocessing layer waits for the others: between its layers each custodian
/// computes over the whole batch, which may take seconds where an evaluation layer takes ms.
const MIN_LAYER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the coordinator asks for.
pub(crate) struct Batch {
    pub session: String,
    pub package_id: String,
    pub first_kit: u64,
    pub count: u64,
}

/// Runs one batch and stores its kits.
pub(crate) async fn preprocess(
    c: &Arc<Custodian>,
    batch: Batch,
) -> Result<OrderResponse, ApiError> {
    let Batch {
        session,
        package_id,
        first_kit,
        count,
    } = batch;
    if !valid_session_id(&session) {
        return Err(ApiError::bad_request(
            "bad_session_id",
            "the order's session id is invalid",
        ));
    }
    // Kits of a version whose shares are unchecked or refused would be made for nothing.
    let version = c.versions.serving(&package_id)?;
    let shape = KitShape::of(&version.circuit);
    let kits = check_batch(&shape, first_kit, count)?;
    let everyone = c.cluster.indices();
    let peers = c.others(&everyone);
    let (me, n, k) = (c.me, c.cluster.n(), c.cluster.threshold());
    let timeout = c.round_timeout.max(MIN_LAYER_TIMEOUT);
    let inbox = c.mailbox.open(&session)?;
    tracing::info!(
        %session,
        package_id = %version.id_hex,
        first_kit,
        count,
        "preprocessing batch started"
    );

    // Layer 1: deal a and b.
    let custodian = Arc::clone(c);
    let id = session.clone();
    let (generation, messages) = c
        .off_thread("dealing", move || {
            let (generation, out) =
                Generation::begin(shape, kits, me, n, k, &mut rand::thread_rng())
                    .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
            Ok::<_, ApiError>((generation, seal_layer(&custodian.peers, &id, 1, &out)?))
        })
        .await??;
    let received = c
        .exchange(&inbox, &session, 1, messages, &peers, timeout)
        .await?;

    // Layer 2: reshare the local products.
    let custodian = Arc::clone(c);
    let id = session.clone();
    let (reduction, messages) = c
        .off_thread("resharing", move || {
            let received = open_layer(&custodian.peers, &id, 1, received)?;
            let (reduction, out) = generation
                .reshare(received, &mut rand::thread_rng())
                .map_err(peer_error)?;
            Ok::<_, ApiError>((reduction, seal_layer(&custodian.peers, &id, 2, &out)?))
        })
        .await??;
    let received = c
        .exchange(&inbox, &session, 2, messages, &peers, timeout)
        .await?;

    // Reduce into c, and store.
    let custodian = Arc::clone(c);
    let id = session.clone();
    let material = c
        .off_thread("reducing", move || {
            let received = open_layer(&custodian.peers, &id, 2, received)?;
            let kits = reduction.finish(received).map_err(peer_error)?;
            Ok::<_, ApiError>(
                kits.into_iter()
                    .map(|mut kit| {
                        let bytes = Zeroizing::new(elements::to_bytes(&kit));
                        kit.zeroize();
                        bytes
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await??;
    let (package, id, now) = (version.id_hex.clone(), session.clone(), c.env.now_ms());
    c.writer
        .run(move |tx| store::insert_kits(tx, &id, &package, first_kit, &material, now))
        .await?;
    version.kits_stored(count);
    Metrics::add(&c.metrics.kits_generated, count);
    tracing::info!(
        %session,
        package_id = %version.id_hex,
        first_kit,
        count,
        "preprocessing batch stored"
    );
    Ok(OrderResponse {
        status: "stored".into(),
        kits: count,
    })
}

/// Refuses batches that are empty, whose kit ids do not fit the ledger's integers, or whose
/// layer-1 message (the larger one) would not fit a round message body. Returns the count.
fn check_batch(shape: &KitShape, first_kit: u64, count: u64) -> Result<usize, ApiError> {
    let refuse = |why: String| ApiError::bad_request("bad_batch", why);
    if count == 0 {
        return Err(refuse("a batch has at least one kit".into()));
    }
    match first_kit.checked_add(count - 1) {
        Some(last) if last <= i64::MAX as u64 => {}
        _ => return Err(refuse(format!("kit ids {first_kit}.. + {count} overflow"))),
    }
    let layer_one = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(2 * shape.terms()))
        .and_then(|values| values.checked_mul(16))
        .and_then(|bytes| bytes.checked_add(SEAL_OVERHEAD));
    match layer_one {
        Some(bytes) if bytes <= ROUND_BODY_LIMIT => Ok(count as usize),
        _ => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_batch",
            format!(
                "{count} kits of {} multiplication terms make round messages over {ROUND_BODY_LIMIT} bytes: order smaller batches",
                shape.terms()
            ),
        )),
    }
}

/// A core step refused the peers' messages (missing, extra, or of the wrong length).
fn peer_error(err: PreprocessError) -> ApiError {
    ApiError::of(ErrorCode::BadPeerMessage, err.to_string())
}
