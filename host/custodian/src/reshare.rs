//! `Reshare` and `CommitReshare`: the proactive refresh of this custodian's shares of every
//! secret of the versions the order names, with every other custodian
//! ([`quorumvm_core::reshare`], in three layers of round messages under the order's session id
//! bound to the starting epoch), and the move to the new shares once every custodian holds its
//! own.
//!
//! A refresh must never leave the custodians on a mix of epochs that cannot reconstruct, even
//! when any of them (or the coordinator) is killed at any point. So it is a two-phase commit
//! whose decision each custodian checks for itself:
//!
//! 1. `Reshare`: the custodian runs the protocol; if the check passes, it seals its new shares
//!    to its own key, bound to the new epoch, and keeps them aside in its ledger
//!    (`reshare.verified`) — its current shares and epoch unchanged. Only then does it answer,
//!    with an *attestation* for each peer: a tag under the key it shares with that peer over
//!    (session, epoch, packages), which no one else can make.
//! 2. `CommitReshare`: the coordinator forwards every custodian's attestations. A custodian
//!    moves to the new shares (`shares.refreshed`: the old ones and every kit deleted, the epoch
//!    up by one, in one transaction) only when the attestation of **every** other custodian to
//!    it verifies. Every custodian that attested holds its new shares durably, so once one
//!    commits, every other can: a custodian that missed the commit (down, or the coordinator
//!    died) commits when the order reaches it again, however late; until then it refuses
//!    sessions of the new epoch and the others serve without it.
//!
//! A refresh that fails anywhere before every attestation exists changes nothing anywhere:
//! its pending shares are dropped at the next commit. A session keeps new shares once: run
//! again (an order replayed), it is refused before anything is attested, so one set of
//! attestations never covers shares of two runs. A coordinator can withhold the commit
//! from a custodian (it can deny service anyway), but cannot make one move alone: it cannot
//! forge a peer's attestation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use quorumvm_core::circuit::Manifest;
use quorumvm_core::field::Fp;
use quorumvm_core::reshare::{self, LAYERS, ReshareError, Setup};
use quorumvm_core::shamir::Share;
use quorumvm_package::PackageId;
use quorumvm_sealing::{SealedShare, ShareBinding, open_share, seal_share};
use quorumvm_server::Lie;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::code::ErrorCode;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::layers::{open_layer, seal_layer};
use crate::peers::{Peers, valid_session_id};
use crate::preprocess::epoch_mismatch;
use crate::state::Custodian;
use crate::store::{self, Committed, Pending};
use crate::versions::{Refreshed, Version, parse_package_id};
use quorumvm_wire::order::{Attestations, at_epoch};

/// The layer number attestations are tagged under: after the protocol's last.
pub(crate) const ATTESTATION_LAYER: u32 = LAYERS + 1;

/// What the coordinator orders.
pub(crate) struct Order {
    pub session: String,
    /// The epoch the custodians move from.
    pub epoch: u64,
    pub packages: Vec<String>,
}

impl Order {
    fn label(&self) -> Result<String, ApiError> {
        label(&self.session, self.epoch, &self.packages)
    }

    /// What an attestation tags: the session, the epochs and the versions, each
    /// length-prefixed or of fixed width.
    fn statement(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"quorumvm reshare attestation v1\0");
        h.update((self.session.len() as u64).to_be_bytes());
        h.update(self.session.as_bytes());
        h.update(self.epoch.to_be_bytes());
        h.update((self.packages.len() as u64).to_be_bytes());
        for p in &self.packages {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        h.finalize().to_vec()
    }
}

/// The round messages' session name of a refresh or rotation from `epoch`, bound to the epoch,
/// after checking the order's form: a valid session id, one or more versions, each once.
pub(crate) fn label(session: &str, epoch: u64, packages: &[String]) -> Result<String, ApiError> {
    let label = at_epoch(session, epoch);
    if !valid_session_id(session) || !valid_session_id(&label) {
        return Err(ApiError::bad_request(
            "bad_session_id",
            "the order's session id is invalid",
        ));
    }
    let mut sorted = packages.to_vec();
    sorted.sort();
    sorted.dedup();
    if packages.is_empty() || sorted.len() != packages.len() {
        return Err(ApiError::bad_request(
            "bad_reshare",
            "a reshare or rotation names one or more versions, each once",
        ));
    }
    Ok(label)
}

/// Runs the refresh with every other custodian and keeps the new shares aside; answers with
/// this custodian's attestations.
pub(crate) async fn reshare(c: &Arc<Custodian>, order: Order) -> Result<OrderResponse, ApiError> {
    let label = order.label()?;
    let at = c.versions.epoch();
    if at != order.epoch {
        return Err(epoch_mismatch(c, order.epoch, at));
    }
    let Gathered { versions, shares } = gather(c, &order.packages, order.epoch)?;
    let cluster = c.cluster();
    let everyone = cluster.indices();
    let peers = c.others(&everyone);
    let (me, n, k) = (c.me(), cluster.n(), cluster.threshold());
    let inbox = c.mailbox.open(&label)?;
    tracing::info!(session = %order.session, epoch = order.epoch, secrets = shares.len(), "reshare started");

    let setup = Setup {
        me,
        n,
        k,
        shares: &shares,
    };
    let (dealt, mut out) = reshare::begin(setup, &mut rand::thread_rng()).map_err(refused)?;
    drop(shares);
    if c.env.lies(Lie::Refresh) {
        out.shift_first(Fp::ONE);
    }
    let sealed = seal_layer(&c.peers(), &label, 1, &out)?;
    drop(out);
    let received = c
        .exchange(&inbox, &label, 1, sealed, &peers, c.round_timeout)
        .await?;
    let (challenging, out) = dealt
        .challenge(open_layer(&c.peers(), &label, 1, received)?)
        .map_err(refused)?;
    let sealed = seal_layer(&c.peers(), &label, 2, &out)?;
    let received = c
        .exchange(&inbox, &label, 2, sealed, &peers, c.round_timeout)
        .await?;
    let (checking, out) = challenging
        .check(open_layer(&c.peers(), &label, 2, received)?)
        .map_err(refused)?;
    let sealed = seal_layer(&c.peers(), &label, 3, &out)?;
    let received = c
        .exchange(&inbox, &label, 3, sealed, &peers, c.round_timeout)
        .await?;
    let fresh = checking
        .finish(open_layer(&c.peers(), &label, 3, received)?)
        .map_err(refused)?;
    drop(inbox);

    let next = order.epoch + 1;
    let sealed = seal_fresh(
        c,
        versions.iter().map(|v| (&v.id, &v.manifest)),
        &fresh,
        (next, me),
    )?;
    drop(fresh);
    let (session, from, packages, now) = (
        order.session.clone(),
        order.epoch,
        order.packages.clone(),
        c.env.now_ms(),
    );
    c.writer
        .run(move |tx| {
            store::insert_pending(
                tx,
                &Pending {
                    kind: "reshare.verified",
                    reshare: &session,
                    from_epoch: from,
                    packages: &packages,
                    shares: sealed,
                    now_ms: now,
                },
            )
        })
        .await?;
    let statement = order.statement();
    let attestations: BTreeMap<u32, String> = peers
        .iter()
        .filter_map(|&peer| {
            let tag = c.peers().tag(peer, &label, ATTESTATION_LAYER, &statement)?;
            Some((peer, tag))
        })
        .collect();
    tracing::info!(session = %order.session, epoch = order.epoch, "reshare verified: new shares kept aside");
    Ok(OrderResponse {
        status: "verified".into(),
        attestations,
        epoch: order.epoch,
        ..Default::default()
    })
}

/// The versions a refresh or rotation covers and this custodian's shares of their secrets.
pub(crate) struct Gathered {
    pub versions: Vec<Arc<Version>>,
    /// Every secret of every version, in order.
    pub shares: Zeroizing<Vec<Fp>>,
}

/// The serving versions `packages` and this custodian's shares of all their secrets, in order,
/// all at `epoch`.
pub(crate) fn gather(c: &Custodian, packages: &[String], epoch: u64) -> Result<Gathered, ApiError> {
    let mut versions = Vec::with_capacity(packages.len());
    let mut shares = Zeroizing::new(Vec::new());
    for package in packages {
        let version = c.versions.serving(package)?;
        let (at, mine) = c.versions.shares(&version);
        let mine = Zeroizing::new(mine);
        if at != epoch {
            return Err(epoch_mismatch(c, epoch, at));
        }
        shares.extend_from_slice(&mine);
        versions.push(version);
    }
    Ok(Gathered { versions, shares })
}

/// Seals each new share, at point `index`, to this custodian's own key, bound to its version,
/// secret, epoch and index (a rotation may move the custodian to another index).
pub(crate) fn seal_fresh<'a>(
    c: &Custodian,
    versions: impl IntoIterator<Item = (&'a PackageId, &'a Manifest)>,
    fresh: &[Fp],
    (epoch, index): (u64, u32),
) -> Result<Vec<(String, String, Vec<u8>)>, ApiError> {
    let mut shares = fresh.iter();
    let mut sealed = Vec::with_capacity(fresh.len());
    for (id, manifest) in versions {
        for decl in &manifest.secrets {
            let y = *shares.next().expect("one new share per secret");
            let binding = ShareBinding {
                package: *id,
                custodian: index,
                secret: &decl.name,
                epoch,
            };
            let bytes = seal_share(c.sealing_key.public(), &binding, &Share { x: index, y })
                .map_err(|e| ApiError::internal(e.to_string()))?
                .to_bytes();
            sealed.push((id.to_string(), decl.name.clone(), bytes.to_vec()));
        }
    }
    Ok(sealed)
}

/// Who checks attestations, and of what: this custodian's peers and index, and the session
/// label and statement they tag.
pub(crate) struct Attested<'a> {
    pub peers: &'a Peers,
    pub me: u32,
    pub session: (&'a str, &'a [u8]),
}

impl Attested<'_> {
    /// Whether each of `attesters` (peers, at their indices in [`Attested::peers`]) attested
    /// to this custodian: the check on which a custodian moves to new shares, refused naming
    /// those that did not (`what` names the refresh or rotation).
    pub fn by(
        &self,
        attesters: &[u32],
        attestations: &Attestations,
        what: &str,
    ) -> Result<(), ApiError> {
        let (label, statement) = self.session;
        let missing: Vec<u32> = attesters
            .iter()
            .copied()
            .filter(|&peer| {
                let tag = attestations
                    .0
                    .get(&peer)
                    .and_then(|tags| tags.get(&self.me));
                !tag.is_some_and(|tag| {
                    self.peers
                        .check(peer, label, ATTESTATION_LAYER, statement, tag)
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_attestation",
            format!(
                "custodians {missing:?} did not attest holding their shares of {what}: nothing \
                 changes here"
            ),
        ))
    }
}

/// Moves to the refresh's new shares once every other custodian's attestation verifies.
pub(crate) async fn commit(
    c: &Arc<Custodian>,
    order: Order,
    attestations: Attestations,
) -> Result<OrderResponse, ApiError> {
    let label = order.label()?;
    let statement = order.statement();
    let current = c.current();
    let attested = Attested {
        peers: &current.peers,
        me: current.me,
        session: (&label, &statement),
    };
    attested.by(
        &c.others(&current.cluster.indices()),
        &attestations,
        &format!("reshare {}", order.session),
    )?;
    let (session, from, now) = (order.session.clone(), order.epoch, c.env.now_ms());
    let committed = c
        .writer
        .run(move |tx| store::commit_reshare(tx, &session, from, now))
        .await?;
    let next = order.epoch + 1;
    if let Committed::Now(rows) = committed {
        let fresh = open_fresh(c, rows, (next, c.me()))?;
        c.versions.refresh(next, fresh);
        tracing::info!(session = %order.session, epoch = next, "shares refreshed: the new epoch serves");
    }
    Ok(OrderResponse {
        status: "committed".into(),
        epoch: next,
        ..Default::default()
    })
}

/// Opens the committed shares into memory, per version in its manifest's order (versions no
/// longer held here, retired meanwhile, are skipped: their shares are in the ledger only).
pub(crate) fn open_fresh(
    c: &Custodian,
    rows: Vec<(String, String, Vec<u8>)>,
    (epoch, index): (u64, u32),
) -> Result<Vec<Refreshed>, ApiError> {
    let mut by_version: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (package, secret, sealed) in rows {
        by_version
            .entry(package)
            .or_default()
            .insert(secret, sealed);
    }
    let corrupt = |why: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", why);
    let mut fresh = Vec::new();
    for (package, sealed) in by_version {
        let Some(id) = parse_package_id(&package) else {
            return Err(corrupt(format!(
                "a refreshed share names package `{package}`"
            )));
        };
        let Some(version) = c.versions.held(&id) else {
            continue;
        };
        let mut shares = Zeroizing::new(Vec::with_capacity(version.manifest.secrets.len()));
        for decl in &version.manifest.secrets {
            let bytes = sealed.get(&decl.name).ok_or_else(|| {
                corrupt(format!(
                    "no refreshed share of `{}` of {package}",
                    decl.name
                ))
            })?;
            let binding = ShareBinding {
                package: id,
                custodian: index,
                secret: &decl.name,
                epoch,
            };
            let share = SealedShare::from_bytes(bytes)
                .and_then(|s| open_share(&c.sealing_key, &binding, &s))
                .map_err(|e| corrupt(format!("refreshed share of `{}`: {e}", decl.name)))?;
            shares.push(share.y);
        }
        fresh.push((version, shares));
    }
    Ok(fresh)
}

/// The refresh did not complete: the peers' messages were missing or malformed, or its check
/// refused them (nothing is kept; the custodians stay on their epoch).
fn refused(err: ReshareError) -> ApiError {
    match err {
        ReshareError::Messages(e) => ApiError::of(ErrorCode::BadPeerMessage, e.to_string()),
        ReshareError::Refused { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "reshare_refused", err.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}
