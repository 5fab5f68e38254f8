//! `Redeal` and `CommitRedeal`: a rotation of the cluster's membership (change k, add machines,
//! remove custodians and renumber the others), re-dealing every secret of every version from
//! the current custodians to the new set ([`quorumvm_core::redeal`], Desmedt–Jajodia with
//! parity checks of the old sharing), then the move to the new membership once every new member
//! holds its shares. The design is in `docs/rotation.md`.
//!
//! Every custodian checks for itself that k operators of its **current** cluster approved the
//! new membership, bound to its current epoch ([`Subject::Membership`]); without that a
//! coordinator could name a set of its own and be dealt every secret. The commit is the
//! refresh's two-phase commit ([`crate::reshare`]): each new member keeps its new shares aside,
//! sealed to itself and bound to the next epoch, and attests so to every other machine of the
//! change; a custodian moves (new membership, new shares, epoch up by one, kits deleted, in one
//! transaction) only when every other new member's attestation to it verifies. A custodian that
//! leaves only deals; at the commit it deletes every share it holds. A machine that joins has
//! checked the chain of rotations, the statement and its versions at `Join` ([`crate::join`]);
//! here it only receives, and at the commit opens its versions from its ledger.
//!
//! The rotation becomes this custodian's state: recorded as the next *generation* of the
//! cluster, it wins over the configuration at every start, where the chain of rotations is
//! checked again from the configured cluster ([`history`]), and every decision recorded here is
//! checked against the generation that approved it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use axum::http::StatusCode;
use quorumvm_core::field::Fp;
use quorumvm_core::redeal::{self, RedealError};
use quorumvm_server::Lie;
use quorumvm_wire::api::OrderResponse;
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::code::ErrorCode;
use quorumvm_wire::config::Cluster;
use quorumvm_wire::membership::{Change, Membership};
use quorumvm_wire::order::{ApprovalSignature, Attestations};
use sha2::{Digest, Sha256};

use crate::error::{self, ApiError};
use crate::layers::{open_layer, seal_layer_to};
use crate::peers::Peers;
use crate::preprocess::epoch_mismatch;
use crate::reshare::{
    ATTESTATION_LAYER, Attested, Gathered, gather, label, open_fresh, seal_fresh,
};
use crate::state::{Current, Custodian, open_stored};
use crate::store::{self, Committed, NewMembership, Pending, StoredMembership};
use crate::versions::parse_package_id;
use quorumvm_core::circuit::Manifest;
use quorumvm_package::PackageId;
use zeroize::Zeroizing;

/// What the coordinator orders.
pub(crate) struct Order {
    pub session: String,
    pub membership: Membership,
    pub approvals: Vec<ApprovalSignature>,
    /// Every version held here, each once.
    pub packages: Vec<String>,
}

impl Order {
    fn epoch(&self) -> u64 {
        self.membership.from_epoch
    }

    fn label(&self) -> Result<String, ApiError> {
        label(&self.session, self.epoch(), &self.packages)
    }

    /// What an attestation tags: the session, the membership statement (epoch included) and
    /// the versions, each length-prefixed or of fixed width.
    fn statement(&self, change: &Change) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"quorumvm rotation attestation v1\0");
        h.update((self.session.len() as u64).to_be_bytes());
        h.update(self.session.as_bytes());
        h.update(change.statement());
        h.update((self.packages.len() as u64).to_be_bytes());
        for p in &self.packages {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        h.finalize().to_vec()
    }
}

/// The change the order makes, checked here: a valid membership, approved by k operators of
/// this custodian's current cluster.
fn check(c: &Custodian, order: &Order) -> Result<(Current, Change), ApiError> {
    let current = c.current();
    let change = Change::new(&current.cluster, &order.membership)
        .map_err(|e| bad_membership(e.to_string()))?;
    approval::check_threshold(
        &current.cluster,
        &Subject::Membership(&change),
        &order.approvals,
    )
    .map_err(error::bad_approvals)?;
    Ok((current, change))
}

pub(crate) fn bad_membership(message: String) -> ApiError {
    ApiError::bad_request("bad_membership", message)
}

/// The peers of a rotation's round messages. Without a joining machine, the current ones, at
/// their current indices. With one, the new membership's: every current member is kept at its
/// index and the joining ones take fresh indices ([`Change::new`] allows no other change with
/// a joining machine), so one table of peers serves every layer; this custodian takes it (and
/// pins the joining machines' TLS keys), so that it authenticates the joining machines'
/// messages from now on.
pub(crate) fn widen(
    c: &Custodian,
    current: &Current,
    change: &Change,
) -> Result<Arc<Peers>, ApiError> {
    if change.joining().is_empty() {
        return Ok(Arc::clone(&current.peers));
    }
    for m in change.next().members() {
        if let Some(pin) = m.tls {
            c.env.admit(&m.url, pin).map_err(|e| {
                ApiError::internal(format!("pinning custodian {}'s TLS key: {e:#}", m.index))
            })?;
        }
    }
    let peers = Arc::new(Peers::new(
        current.me,
        &c.sealing_key,
        change.next(),
        c.http.clone(),
    ));
    c.move_to(Current {
        peers: Arc::clone(&peers),
        ..c.current()
    });
    Ok(peers)
}

/// Where the round messages of a rotation go: every machine of the change at the index it
/// answers at now (a kept machine at its current index, a joining one at its new one), and
/// the index in the new set of each of those that receive.
struct Routes {
    /// The current members', then the joining ones', each once: who attests to whom.
    everyone: Vec<u32>,
    /// The new members, where they answer now.
    receivers: Vec<u32>,
    /// Index in the new set → where it answers now.
    peer_of: BTreeMap<u32, u32>,
    /// Where it answers now → index in the new set.
    party_of: BTreeMap<u32, u32>,
}

impl Routes {
    fn new(change: &Change) -> Routes {
        let mut peer_of = change.kept().clone();
        peer_of.extend(change.joining().iter().map(|&x| (x, x)));
        let party_of: BTreeMap<u32, u32> = peer_of.iter().map(|(&n, &o)| (o, n)).collect();
        let mut everyone = change.current().indices();
        everyone.extend_from_slice(change.joining());
        Routes {
            everyone,
            receivers: peer_of.values().copied().collect(),
            peer_of,
            party_of,
        }
    }

    fn as_parties(&self, opened: Vec<(u32, Vec<Fp>)>) -> Vec<(u32, Vec<Fp>)> {
        opened
            .into_iter()
            .map(|(sender, values)| (self.party_of[&sender], values))
            .collect()
    }
}

/// The versions a rotation re-deals, as this custodian holds them: their ids and manifests in
/// the order's order, and (for a current member) its shares of their secrets. A current member
/// must hold exactly those versions; a joining machine must have recorded each at `Join`.
async fn redealt(
    c: &Custodian,
    order: &Order,
    dealer: bool,
) -> Result<(Vec<(PackageId, Manifest)>, Option<Zeroizing<Vec<Fp>>>), ApiError> {
    if dealer {
        // A version left out would keep shares of the old cluster, which the new one cannot use.
        let held = c.versions.held_ids();
        let mut named = order.packages.clone();
        named.sort();
        if named != held {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "bad_redeal",
                format!(
                    "a rotation re-deals every version held here ({held:?}); the order names \
                     {named:?}"
                ),
            ));
        }
        let Gathered { versions, shares } = gather(c, &order.packages, order.epoch())?;
        let versions = versions
            .iter()
            .map(|v| (v.id, v.manifest.clone()))
            .collect();
        return Ok((versions, Some(shares)));
    }
    let packages = order.packages.clone();
    let manifests = c
        .writer
        .run(move |tx| store::manifests(tx, &packages))
        .await?;
    let mut versions = Vec::with_capacity(manifests.len());
    for (package, manifest) in order.packages.iter().zip(manifests) {
        let not_joined = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_joined",
                format!("version {package} was not recorded here by a `Join` order"),
            )
        };
        let id = parse_package_id(package).ok_or_else(not_joined)?;
        let manifest: Manifest = serde_json::from_str(&manifest.ok_or_else(not_joined)?)
            .map_err(|e| ApiError::internal(format!("a stored manifest does not parse: {e}")))?;
        versions.push((id, manifest));
    }
    Ok((versions, None))
}

/// Deals this custodian's shares to the new set (a current member) and, as a member of it,
/// checks the dealings with the other new members and keeps its new shares aside; answers
/// with its attestations.
pub(crate) async fn redeal(c: &Arc<Custodian>, order: Order) -> Result<OrderResponse, ApiError> {
    let label = order.label()?;
    let from = order.epoch();
    let at = c.versions.epoch();
    if at != from {
        return Err(epoch_mismatch(c, from, at));
    }
    let (current, change) = check(c, &order)?;
    let roles = change.roles(&c.sealing_key.public().to_bytes());
    if roles.old.is_none() && roles.new.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_joining",
            "this machine is neither a member now nor in the membership this rotation moves to",
        ));
    }
    let (versions, shares) = redealt(c, &order, roles.old.is_some()).await?;
    let secrets: usize = versions.iter().map(|(_, m)| m.secrets.len()).sum();
    let peers = widen(c, &current, &change)?;
    let transition = change.transition();
    let me = current.me;
    let me_next = roles.new;
    let routes = Routes::new(&change);
    let dealers = transition.old.xs().to_vec();
    let inbox = c.mailbox.open(&label)?;
    tracing::info!(session = %order.session, epoch = from, secrets, "rotation started");

    // Layer 1: every current member deals to every new one.
    let (sealed, own) = match shares {
        Some(shares) => {
            let mut out =
                redeal::deal(&transition, me, &shares, &mut rand::thread_rng()).map_err(refused)?;
            drop(shares);
            if c.env.lies(Lie::Refresh) {
                out.shift_first(Fp::ONE);
            }
            let own = me_next.and_then(|x| out.take(x));
            let sealed = seal_layer_to(&peers, &label, 1, &out, |x| routes.peer_of[&x])?;
            (sealed, own)
        }
        None => (Vec::new(), None),
    };
    let from_dealers = match me_next {
        Some(_) => c.others(&dealers),
        None => Vec::new(),
    };
    let received = c
        .exchange(&inbox, &label, 1, sealed, &from_dealers, c.round_timeout)
        .await?;
    let Some(me_next) = me_next else {
        tracing::info!(session = %order.session, "rotation: dealt; this custodian leaves");
        return Ok(OrderResponse {
            status: "dealt".into(),
            epoch: from,
            ..Default::default()
        });
    };
    let mut dealt = open_layer(&peers, &label, 1, received)?;
    if let Some(mut own) = own {
        dealt.push((me, std::mem::take(&mut *own)));
    }

    // Layers 2 and 3, among the new members: the joint challenge, then the check.
    let receivers = c.others(&routes.receivers);
    let (challenging, out) =
        redeal::receive(transition, me_next, secrets, dealt).map_err(refused)?;
    let sealed = seal_layer_to(&peers, &label, 2, &out, |x| routes.peer_of[&x])?;
    let received = c
        .exchange(&inbox, &label, 2, sealed, &receivers, c.round_timeout)
        .await?;
    let (checking, out) = challenging
        .check(routes.as_parties(open_layer(&peers, &label, 2, received)?))
        .map_err(refused)?;
    let sealed = seal_layer_to(&peers, &label, 3, &out, |x| routes.peer_of[&x])?;
    let received = c
        .exchange(&inbox, &label, 3, sealed, &receivers, c.round_timeout)
        .await?;
    let fresh = checking
        .finish(routes.as_parties(open_layer(&peers, &label, 3, received)?))
        .map_err(refused)?;
    drop(inbox);

    let sealed = seal_fresh(
        c,
        versions.iter().map(|(id, m)| (id, m)),
        &fresh,
        (from + 1, me_next),
    )?;
    drop(fresh);
    let (session, packages, now) = (
        order.session.clone(),
        order.packages.clone(),
        c.env.now_ms(),
    );
    c.writer
        .run(move |tx| {
            store::insert_pending(
                tx,
                &Pending {
                    kind: "membership.verified",
                    reshare: &session,
                    from_epoch: from,
                    packages: &packages,
                    shares: sealed,
                    now_ms: now,
                },
            )
        })
        .await?;
    // To every other machine of the change, those that leave included: each moves only once
    // every new member holds its shares.
    let statement = order.statement(&change);
    let attestations: BTreeMap<u32, String> = c
        .others(&routes.everyone)
        .into_iter()
        .filter_map(|peer| {
            let tag = peers.tag(peer, &label, ATTESTATION_LAYER, &statement)?;
            Some((peer, tag))
        })
        .collect();
    tracing::info!(session = %order.session, epoch = from, "rotation verified: new shares kept aside");
    Ok(OrderResponse {
        status: "verified".into(),
        attestations,
        epoch: from,
        ..Default::default()
    })
}

/// Moves to the new membership and shares once every other new member's attestation verifies.
pub(crate) async fn commit(
    c: &Arc<Custodian>,
    order: Order,
    attestations: Attestations,
) -> Result<OrderResponse, ApiError> {
    let label = order.label()?;
    let from = order.epoch();
    let committed = || OrderResponse {
        status: "committed".into(),
        epoch: from + 1,
        ..Default::default()
    };
    // No activation or registration between the check and the move.
    let _one = c.activation.lock().await;
    let at = c.versions.epoch();
    if at == from + 1 {
        let session = order.session.clone();
        let done = c
            .writer
            .run(move |tx| store::committed(tx, &session, from))
            .await?;
        if done {
            return Ok(committed());
        }
    }
    if at != from {
        return Err(epoch_mismatch(c, from, at));
    }
    let (current, change) = check(c, &order)?;
    let statement = order.statement(&change);
    let roles = change.roles(&c.sealing_key.public().to_bytes());
    let me_next = roles.new;
    let routes = Routes::new(&change);
    // Each other new member, where it answers now: who must attest.
    let attesters: Vec<u32> = routes
        .peer_of
        .iter()
        .filter(|&(&new, _)| Some(new) != me_next)
        .map(|(_, &now)| now)
        .collect();
    let peers = widen(c, &current, &change)?;
    let attested = Attested {
        peers: &peers,
        me: current.me,
        session: (&label, &statement),
    };
    attested.by(
        &attesters,
        &attestations,
        &format!("rotation {}", order.session),
    )?;
    let stays = me_next.is_some();
    let generation = current.generation + 1;
    let now = c.env.now_ms();
    let moved = c
        .writer
        .run(move |tx| {
            store::commit_membership(
                tx,
                &NewMembership {
                    session: &order.session,
                    from_epoch: from,
                    generation,
                    membership: &order.membership,
                    approvals: &order.approvals,
                    packages: &order.packages,
                    stays,
                },
                now,
            )
            .map(|committed| (committed, order))
        })
        .await?;
    let (Committed::Now(rows), order) = moved else {
        return Ok(committed());
    };
    let next = Arc::new(change.next().clone());
    let fresh = match (roles.old, me_next) {
        (Some(_), Some(index)) => open_fresh(c, rows, (from + 1, index))?,
        // A joining machine held no version until now: it opens them as at a start.
        (None, Some(index)) => {
            joined(c, &current, &order.packages, index).await?;
            Vec::new()
        }
        (_, None) => Vec::new(),
    };
    for id in c.versions.held_ids() {
        if !stays || !order.packages.contains(&id) {
            let id = parse_package_id(&id).expect("a held version's id parses");
            c.versions.refuse(id);
        }
    }
    c.move_to(match me_next {
        Some(index) => Current {
            generation,
            me: index,
            peers: Arc::new(Peers::new(index, &c.sealing_key, &next, c.http.clone())),
            cluster: next,
        },
        // It left: it is a member of nothing, and refuses every session and order that needs one.
        None => Current {
            generation,
            cluster: next,
            ..current
        },
    });
    c.versions.refresh(from + 1, fresh);
    tracing::info!(
        session = %order.session,
        generation,
        epoch = from + 1,
        stays,
        "membership changed"
    );
    Ok(committed())
}

/// Opens, at a joining machine's commit, the versions it recorded at `Join` with the shares
/// the re-dealing gave it (just committed), each checked against the approvals of `current`,
/// the cluster it joined.
async fn joined(
    c: &Arc<Custodian>,
    current: &Current,
    packages: &[String],
    index: u32,
) -> Result<(), ApiError> {
    let stored = c.writer.run(|tx| store::load_versions(tx)).await?;
    let (opening, approved, packages) = (
        Arc::clone(c),
        Arc::clone(&current.cluster),
        packages.to_vec(),
    );
    let opened = c
        .off_thread("opening the versions joined", move || {
            stored
                .iter()
                .filter(|v| packages.contains(&v.package_id))
                .map(|v| {
                    open_stored(&opening.sandbox, &approved, &opening.sealing_key, index, v)
                        .map_err(|e| ApiError::internal(format!("{}: {e:#}", v.package_id)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
    for version in opened {
        c.versions.insert(version, true);
    }
    Ok(())
}

/// The clusters this custodian has belonged to: the configured one (generation 0), then each
/// rotation recorded here, checked against the cluster before it as when it was committed
/// (a valid change, k approvals of that cluster's operators, the next epoch after the last).
pub(crate) fn history(
    configured: Cluster,
    stored: Vec<StoredMembership>,
) -> anyhow::Result<Vec<Arc<Cluster>>> {
    let mut generations = vec![Arc::new(configured)];
    let mut after = 0;
    for (g, m) in (1..).zip(stored) {
        if m.generation != g {
            bail!(
                "rotation {g} is missing (the next recorded is {})",
                m.generation
            );
        }
        let current = generations.last().expect("the configured cluster");
        let change =
            Change::new(current, &m.membership).map_err(|e| anyhow!("rotation {g}: {e}"))?;
        if g > 1 && change.from_epoch() < after {
            bail!(
                "rotation {g} moves from epoch {}, before rotation {} ended",
                change.from_epoch(),
                g - 1
            );
        }
        approval::check_threshold(current, &Subject::Membership(&change), &m.approvals)
            .map_err(|e| anyhow!("rotation {g}: {e}"))?;
        after = change.from_epoch() + 1;
        generations.push(Arc::new(change.next().clone()));
    }
    Ok(generations)
}

/// The rotation did not complete: the peers' messages were missing or malformed, or its check
/// refused them (nothing is kept; the custodians stay on their membership and epoch).
fn refused(err: RedealError) -> ApiError {
    match err {
        RedealError::Messages(e) => ApiError::of(ErrorCode::BadPeerMessage, e.to_string()),
        RedealError::Refused { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "rotation_refused", err.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}
