//! `Join`: a machine that a rotation brings in gets ready to receive its shares.
//!
//! It starts from its configured cluster (the same file every custodian of the cluster has: its
//! trust root) and takes nothing on the coordinator's word. The order carries the chain of
//! rotations certified since, which it checks link by link as every custodian checks its own
//! at start ([`crate::rotation::history`]); then the statement it joins under and k approvals
//! of the cluster the chain ends at; then each version it is to hold, whose package and deal it
//! fetches from the coordinator and checks against the approvals of that same cluster, as an
//! activation does. The chain, the epoch the rotation moves from and the versions (without
//! shares: those come from the re-dealing) are recorded in one transaction, and this machine
//! takes the new membership's peers and TLS pins, so that the current members' dealings find
//! it ready when `Redeal` follows.
//!
//! What a joining machine does not learn here: the caller identities and revocations (the
//! coordinator sends them to it as to any member that missed them, once it is a member) and
//! the retirements (a retired version is not re-dealt, so it never holds one).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_package::PackageId;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::membership::{Approved, Change, Membership};
use quorumvm_wire::order::{ApprovalSignature, JoiningVersion};
use quorumvm_wire::signed::Signed;

use crate::activation::{Checker, MAX_PACKAGE_BYTES, MAX_SHARES_BYTES, fetch};
use crate::error::{self, ApiError};
use crate::rotation::{self, bad_membership};
use crate::state::{Current, Custodian};
use crate::store::{self, NewVersion, StoredMembership};
use crate::versions::parse_package_id;

/// What the coordinator orders.
pub(crate) struct Order {
    pub session: String,
    pub rotations: Vec<Approved>,
    pub membership: Membership,
    pub approvals: Vec<ApprovalSignature>,
    pub versions: Vec<JoiningVersion>,
}

/// Checks the chain, the statement and every version, records them, and takes the new
/// membership's peers; answers `joined`. Idempotent until the rotation commits.
pub(crate) async fn join(c: &Arc<Custodian>, order: Order) -> Result<OrderResponse, ApiError> {
    // No activation, registration or commit between the checks and the record.
    let _one = c.activation.lock().await;
    let current = c.current();
    let stored: Vec<StoredMembership> = (1..)
        .zip(order.rotations)
        .map(|(generation, r)| StoredMembership {
            generation,
            membership: r.membership,
            approvals: r.approvals,
        })
        .collect();
    let generations = rotation::history((*c.configured).clone(), stored.clone())
        .map_err(|e| bad_membership(format!("the chain of rotations: {e:#}")))?;
    let generation = generations.len() as u64 - 1;
    let cluster = Arc::clone(generations.last().expect("the configured cluster"));
    // A chain that forgets what this machine recorded at an earlier `Join` is another chain.
    let recorded = &generations[(current.generation as usize).min(generations.len() - 1)];
    if generation < current.generation
        || recorded.entries() != current.cluster.entries()
        || recorded.threshold() != current.cluster.threshold()
    {
        return Err(bad_membership(format!(
            "the chain of rotations ends at rotation {generation}, and does not extend the \
             {} recorded here",
            current.generation
        )));
    }
    let change =
        Change::new(&cluster, &order.membership).map_err(|e| bad_membership(e.to_string()))?;
    approval::check_threshold(&cluster, &Subject::Membership(&change), &order.approvals)
        .map_err(error::bad_approvals)?;
    let roles = change.roles(&c.sealing_key.public().to_bytes());
    let me = match (roles.old, roles.new) {
        (None, Some(me)) if me == current.me => me,
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_joining",
                format!(
                    "this machine (configured as custodian {}) is not one this membership \
                     brings in at that index",
                    current.me
                ),
            ));
        }
    };
    let from = change.from_epoch();
    // A statement from before the last rotation of the chain is one of its own past.
    if let Some(last) = stored.last()
        && from <= last.membership.from_epoch
    {
        return Err(bad_membership(format!(
            "the statement moves from epoch {from}, not after rotation {} (from epoch {})",
            last.generation, last.membership.from_epoch
        )));
    }

    let mut versions = Vec::with_capacity(order.versions.len());
    for v in order.versions {
        versions.push(fetch_version(c, (&cluster, generation), me, v).await?);
    }

    let (session, now) = (order.session.clone(), c.env.now_ms());
    let ids: Vec<String> = versions.iter().map(|v| v.package_id.clone()).collect();
    c.writer
        .run(move |tx| {
            store::record_joining(
                tx,
                &store::Joining {
                    session: &session,
                    rotations: &stored,
                    from_epoch: from,
                    generation,
                    versions: &versions,
                },
                now,
            )
        })
        .await?;
    rotation::widen(c, &current, &change)?;
    c.move_to(Current {
        generation,
        cluster,
        ..c.current()
    });
    c.versions.set_epoch(from);
    tracing::info!(
        session = %order.session,
        generation,
        epoch = from,
        index = me,
        versions = ?ids,
        "ready to join"
    );
    Ok(OrderResponse {
        status: "joined".into(),
        epoch: from,
        ..Default::default()
    })
}

/// Fetches version `v`'s package and deal from the coordinator and checks them against the
/// approvals of `cluster` (of generation `generation`), as an activation does; the version to
/// record, without shares.
async fn fetch_version(
    c: &Arc<Custodian>,
    (cluster, generation): (&Arc<quorumvm_wire::config::Cluster>, u64),
    me: u32,
    v: JoiningVersion,
) -> Result<NewVersion, ApiError> {
    let id: PackageId = parse_package_id(&v.package_id).ok_or_else(|| {
        ApiError::bad_request("bad_package_id", "a package id is 64 hexadecimal digits")
    })?;
    let base = format!("/v1/packages/{}", v.package_id);
    let package = fetch(c, &format!("{base}/wasm"), MAX_PACKAGE_BYTES).await?;
    let deal = fetch(c, &format!("{base}/deal"), MAX_SHARES_BYTES).await?;
    let deal: Signed = serde_json::from_slice(&deal).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_deal",
            format!(
                "the coordinator's deal of {} is unreadable: {e}",
                v.package_id
            ),
        )
    })?;
    let (checking, cluster, now_ms) = (Arc::clone(c), Arc::clone(cluster), c.env.now_ms());
    c.off_thread("checking a version to join with", move || {
        let checker = Checker {
            sandbox: &checking.sandbox,
            cluster: &cluster,
            me: None,
            now: me,
            key: &checking.sealing_key,
        };
        let approved = checker.approved(&id, &package, &v.approvals, &deal)?;
        let manifest_json = serde_json::to_string(&approved.manifest)
            .map_err(|e| ApiError::internal(format!("the manifest does not serialize: {e}")))?;
        Ok(NewVersion {
            package_id: v.package_id,
            name: approved.manifest.name.clone(),
            version: approved.manifest.version,
            package,
            manifest_json,
            approvals: v.approvals,
            deal,
            sealed: BTreeMap::new(),
            generation,
            now_ms,
        })
    })
    .await?
}
