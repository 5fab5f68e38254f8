//! `Preprocess`: a batch of kits of one version, generated with every other custodian by
//! [`quorumvm_core::preprocess`] (no dealer: no party, the coordinator included, ever sees a
//! triple), in [`quorumvm_core::preprocess::LAYERS`] layers of round messages under the order's
//! session id: the random values dealt, their products and MACs, the MACs of the products, and
//! two openings that check the batch. A batch whose check fails is refused, naming the
//! custodians the openings prove deviated.
//!
//! Every layer's message is sealed to its recipient (most are shares of secrets)
//! ([`crate::layers`]) before it leaves. The computation runs off the async
//! threads. The batch is stored in one ledger job, all or nothing; a kit id that already exists
//! refuses the whole batch.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use quorumvm_core::field::Fp;
use quorumvm_core::preprocess::{KitShape, PreprocessError, Preprocessing, Progress};
use quorumvm_server::Lie;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::elements;
use quorumvm_wire::order::at_epoch;
use zeroize::Zeroizing;

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

/// What a step of the batch leads to, as the host moves it.
enum Next {
    /// The next layer's messages, sealed.
    Layer(Box<Preprocessing>, Vec<(u32, Vec<u8>)>),
    /// The kits, as stored.
    Kits(Vec<Zeroizing<Vec<u8>>>),
}

/// What the coordinator asks for.
pub(crate) struct Batch {
    pub session: String,
    pub package_id: String,
    pub first_kit: u64,
    pub count: u64,
    pub epoch: u64,
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
        epoch,
    } = batch;
    if !valid_session_id(&session) || !valid_session_id(&at_epoch(&session, epoch)) {
        return Err(ApiError::bad_request(
            "bad_session_id",
            "the order's session id is invalid",
        ));
    }
    // Kits of a version whose shares are unchecked or refused would be made for nothing.
    let version = c.versions.serving(&package_id)?;
    let shape = KitShape::of(&version.circuit);
    let kits = check_batch(&shape, first_kit, count)?;
    let cluster = c.cluster();
    let everyone = cluster.indices();
    let peers = c.others(&everyone);
    let (me, n, k) = (c.me(), cluster.n(), cluster.threshold());
    let timeout = c.round_timeout.max(MIN_LAYER_TIMEOUT);
    let (at, shares) = c.versions.shares(&version);
    if at != epoch {
        drop(Zeroizing::new(shares));
        return Err(epoch_mismatch(c, epoch, at));
    }
    // The epoch is part of what the round messages are bound to: custodians the coordinator
    // told different epochs never take each other's messages.
    let session = at_epoch(&session, epoch);
    let inbox = c.mailbox.open(&session)?;
    tracing::info!(
        %session,
        package_id = %version.id_hex,
        first_kit,
        count,
        "preprocessing batch started"
    );

    // Layer 1: deal this custodian's random values; then each layer's step takes the others'
    // messages of the last one and says what to send next, until the batch's check passes.
    let custodian = Arc::clone(c);
    let id = session.clone();
    // The kits carry MACs of the version's secrets: this custodian's shares go in.
    let mut secrets = Zeroizing::new(shares);
    secrets.truncate(shape.secrets());
    let (mut batch, mut messages) = c
        .off_thread("dealing", move || {
            let (batch, out) =
                Preprocessing::begin(shape, kits, (me, n, k), &secrets, &mut rand::thread_rng())
                    .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
            Ok::<_, ApiError>((batch, seal_layer(&custodian.peers(), &id, 1, &out)?))
        })
        .await??;
    let mut layer = 1;
    let material = loop {
        let received = c
            .exchange(&inbox, &session, layer, messages, &peers, timeout)
            .await?;
        let custodian = Arc::clone(c);
        let id = session.clone();
        let progress = c
            .off_thread("preprocessing", move || {
                let received = open_layer(&custodian.peers(), &id, layer, received)?;
                let next = match batch
                    .step(received, &mut rand::thread_rng())
                    .map_err(peer_error)?
                {
                    Progress::Send(batch, mut out) => {
                        if custodian.env.lies(Lie::Reshare) && layer + 1 == 2 {
                            out.shift_first(Fp::ONE);
                        }
                        let sealed = seal_layer(&custodian.peers(), &id, layer + 1, &out)?;
                        Next::Layer(batch, sealed)
                    }
                    Progress::Done(kits) => Next::Kits(
                        kits.into_iter()
                            .map(|kit| Zeroizing::new(elements::to_bytes(&kit)))
                            .collect(),
                    ),
                };
                Ok::<_, ApiError>(next)
            })
            .await??;
        match progress {
            Next::Layer(next, out) => (batch, messages) = (*next, out),
            Next::Kits(material) => break material,
        }
        layer += 1;
    };
    let (package, id, now) = (version.id_hex.clone(), session.clone(), c.env.now_ms());
    c.writer
        .run(move |tx| store::insert_kits(tx, &id, (&package, epoch), first_kit, &material, now))
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
        ..Default::default()
    })
}

/// The order names another share epoch than this custodian's.
pub(crate) fn epoch_mismatch(c: &Custodian, ordered: u64, at: u64) -> ApiError {
    ApiError::of(
        ErrorCode::EpochMismatch,
        format!(
            "the order is for share epoch {ordered}; custodian {} is at epoch {at}",
            c.me()
        ),
    )
}

/// Refuses batches that are empty, whose kit ids do not fit the ledger's integers, or whose
/// largest layer message would not fit a round message body. Returns the count.
fn check_batch(shape: &KitShape, first_kit: u64, count: u64) -> Result<usize, ApiError> {
    let refuse = |why: String| ApiError::bad_request("bad_batch", why);
    if count == 0 {
        return Err(refuse("a batch has at least one kit".into()));
    }
    match first_kit.checked_add(count - 1) {
        Some(last) if last <= i64::MAX as u64 => {}
        _ => return Err(refuse(format!("kit ids {first_kit}.. + {count} overflow"))),
    }
    let largest = usize::try_from(count)
        .ok()
        .and_then(|n| shape.largest_message(n))
        .and_then(|values| values.checked_mul(16))
        .and_then(|bytes| bytes.checked_add(SEAL_OVERHEAD));
    match largest {
        Some(bytes) if bytes <= ROUND_BODY_LIMIT => Ok(count as usize),
        _ => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_batch",
            format!(
                "{count} kits of {} multiplication terms and {} shared leaves make round \
                 messages over {ROUND_BODY_LIMIT} bytes: order smaller batches",
                shape.terms(),
                shape.leaves()
            ),
        )),
    }
}

/// A core step refused the peers' messages (missing, extra, or of the wrong length), or the
/// batch failed its check.
fn peer_error(err: PreprocessError) -> ApiError {
    match err {
        PreprocessError::Check { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "batch_refused", err.to_string())
        }
        _ => ApiError::of(ErrorCode::BadPeerMessage, err.to_string()),
    }
}
