//! `CheckShares`: the joint check, by all n custodians, that the shares of every secret of an
//! activated version lie on one polynomial of degree k − 1, before it serves
//! ([`quorumvm_core::share_check`], in two layers of round messages under the order's session
//! id: each custodian deals a random mask, then each opens its masked combination of shares).
//!
//! The coordinator only starts it. Each custodian decides from the values its peers sent it
//! directly, sealed to it under their pairwise keys; the challenge is a hash of the package id,
//! the deal it checked at activation and the session id, so no choice of the coordinator makes
//! inconsistent shares pass. The outcome is recorded once, with its audit entry:
//!
//! - consistent: the version serves, here and after any restart (`shares.checked`), and
//!   retires the lower versions of its name;
//! - inconsistent: the version never serves here (`shares.refused`), naming the custodians
//!   whose values were proven off, if any.
//!
//! A check that does not complete (a peer down, silent or sending malformed messages) records
//! nothing: the coordinator orders another. A custodian whose version serves already takes part
//! in the new check (the others need its values) without changing anything here.

use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_core::share_check::{Masking, Setup, ShareCheckError, Verdict, challenge};
use quorumvm_wire::api::OrderResponse;
use zeroize::Zeroizing;

use crate::activation::{ACTIVE, retired, status};
use crate::error::{self, ApiError};
use crate::layers::{open_layer, seal_layer};
use crate::peers::valid_session_id;
use crate::state::Custodian;
use crate::store::{self, CheckRecord};
use crate::versions::{Standing, parse_package_id};
use quorumvm_wire::code::ErrorCode;

/// Runs one check of `package_id`'s shares with every other custodian and records its outcome.
pub(crate) async fn check_shares(
    c: &Arc<Custodian>,
    package_id: &str,
    session: String,
) -> Result<OrderResponse, ApiError> {
    if !valid_session_id(&session) {
        return Err(ApiError::bad_request(
            "bad_session_id",
            "the order's session id is invalid",
        ));
    }
    let id = parse_package_id(package_id).ok_or_else(|| {
        ApiError::bad_request("bad_package_id", "a package id is 64 hexadecimal digits")
    })?;
    let (version, serving) = match c.versions.standing(&id) {
        Some(Standing::Unchecked(v)) => (v, false),
        Some(Standing::Serving(v)) => (v, true),
        Some(Standing::Refused) => return Err(error::shares_refused(package_id, "")),
        Some(Standing::Retired) => return Err(retired(&id)),
        None => return Err(error::unknown_version(package_id)),
    };
    let cluster = c.cluster();
    let everyone = cluster.indices();
    let peers = c.others(&everyone);
    let gamma = challenge(&id.0, &version.deal_digest, &session);
    let inbox = c.mailbox.open(&session)?;
    tracing::info!(%session, package_id = %version.id_hex, "joint check of shares started");

    // Layer 1: deal a random mask (a single value per peer: no need to leave the async thread).
    let shares = Zeroizing::new(c.versions.shares(&version).1);
    let setup = Setup {
        me: c.me(),
        n: cluster.n(),
        k: cluster.threshold(),
        challenge: gamma,
        shares: &shares,
    };
    let (masking, out) = Masking::begin(setup, &mut rand::thread_rng()).map_err(check_error)?;
    drop(shares);
    let messages = seal_layer(&c.peers(), &session, 1, &out)?;
    drop(out);
    let received = c
        .exchange(&inbox, &session, 1, messages, &peers, c.round_timeout)
        .await?;

    // Layer 2: open the masked combination to everyone.
    let opened = open_layer(&c.peers(), &session, 1, received)?;
    let (opening, out) = masking.open(opened).map_err(check_error)?;
    let messages = seal_layer(&c.peers(), &session, 2, &out)?;
    let received = c
        .exchange(&inbox, &session, 2, messages, &peers, c.round_timeout)
        .await?;
    let opened = open_layer(&c.peers(), &session, 2, received)?;
    let verdict = opening.finish(opened).map_err(check_error)?;
    drop(inbox);

    let culprits = match &verdict {
        Verdict::Consistent => None,
        Verdict::Inconsistent { culprits } => Some(culprits.as_slice()),
    };
    if serving {
        // Checked here before: the shares have not changed since, so a failure now is a peer's
        // doing in this check, not a reason to stop serving.
        return match culprits {
            None => Ok(status(ACTIVE)),
            Some(culprits) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "check_failed",
                format!(
                    "the check of {package_id} in session {session} failed{}, though its shares \
                     passed here before: it keeps serving",
                    named(culprits)
                ),
            )),
        };
    }
    // Recording and the change in memory happen under the activation lock, so that an
    // activation of the same name sees both or neither.
    let _one = c.activation.lock().await;
    let (package, check, refused, now) = (
        version.id_hex.clone(),
        session.clone(),
        culprits.map(<[u32]>::to_vec),
        c.env.now_ms(),
    );
    let superseded = c
        .writer
        .run(move |tx| {
            store::record_check(
                tx,
                &CheckRecord {
                    package_id: &package,
                    session: &check,
                    refused: refused.as_deref(),
                    now_ms: now,
                },
            )
        })
        .await?;
    match culprits {
        None => {
            c.versions.checked(&version.id);
            for old in superseded.iter().filter_map(|old| parse_package_id(old)) {
                c.versions.retire(old);
                tracing::info!(package_id = %old, by = %version.id_hex, "version retired");
            }
            tracing::info!(%session, package_id = %version.id_hex, "shares checked: the version serves");
            Ok(status(ACTIVE))
        }
        Some(culprits) => {
            c.versions.refuse(version.id);
            tracing::warn!(
                %session,
                package_id = %version.id_hex,
                ?culprits,
                "shares refused: the version never serves"
            );
            Err(error::shares_refused(package_id, &named(culprits)))
        }
    }
}

/// Who the check named, as the end of a sentence.
fn named(culprits: &[u32]) -> String {
    match culprits {
        [] => " (which custodian's share is off cannot be told)".to_string(),
        [one] => format!(" (custodian {one}'s share is off)"),
        many => format!(" (the shares of custodians {many:?} are off)"),
    }
}

/// A core step refused: the peers' messages are missing, extra or of the wrong length (the
/// parameters come from the configuration, which is checked at start).
fn check_error(err: ShareCheckError) -> ApiError {
    match err {
        ShareCheckError::Messages(e) => ApiError::of(ErrorCode::BadPeerMessage, e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}
