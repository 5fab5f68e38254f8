//! Orders: what the coordinator asks of a custodian.
//!
//! Activations, checks of shares, preprocessing batches and aborts are [`SignedOrder`]s: signed with the
//! coordinator's ed25519 key. Session tickets, one per custodian per evaluation, are
//! authenticated with an HMAC under a [`TicketKey`] that the coordinator shares with that
//! custodian alone: an ed25519 verification per custodian per evaluation was the largest single
//! cost of an evaluation, an HMAC costs a microsecond, and the tag also covers the custodian's
//! input shares, which a signature over a ticket shared by the quorum could not.
//!
//! A custodian acts only on an order or ticket that verifies under the keys in its own
//! configuration and has not expired; anything else is refused before it is parsed further.
//! Signature and tag cover the exact bytes of the JSON body, so nothing is re-serialized before
//! checking. Orders are short-lived, and a ticket's kit is consumed on first use, so an
//! intercepted ticket cannot be replayed either.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use quorumvm_package::{Domain, PublicKey, SecretKey};
use quorumvm_sealing::{CustodianPublicKey, CustodianSecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::api::SessionRequest;
use crate::signed::Signed;

/// The name a protocol among all n custodians runs under at share epoch `epoch` (preprocessing,
/// a refresh): its order's session id bound to the epoch, so that custodians told different
/// epochs never take each other's round messages.
pub fn at_epoch(session: &str, epoch: u64) -> String {
    format!("{session}.e{epoch}")
}

/// How long an order stays valid after it is issued.
pub const ORDER_LIFETIME_MS: u64 = 30_000;

/// A session ticket: one attempt at the caller's signed request (which travels beside it), on
/// the custodians of `quorum`, consuming preprocessed kit `kit` of the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The [`crate::request::Terms`] digest of request, package, kit, quorum and attempt:
    /// every member recomputes it, and names the session in round messages and audit entries.
    pub session: String,
    pub package_id: String,
    /// Shamir indices of the custodians taking part, sorted.
    pub quorum: Vec<u32>,
    pub kit: u64,
    /// 0, then one more for each retry of the same request.
    pub attempt: u32,
    /// The epoch of shares every member must be at ([`Order::Reshare`]).
    #[serde(default)]
    pub epoch: u64,
}

/// One of K approval signatures, as the coordinator forwards them at activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSignature {
    pub custodian: u32,
    /// ed25519 signature (hex) over [`crate::approval::statement`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Order {
    /// A version reached its approvals: fetch it if needed and serve it. The custodian checks
    /// the approvals itself; the coordinator's word alone does not activate anything.
    Activate {
        package_id: String,
        approvals: Vec<ApprovalSignature>,
    },
    /// Check with every other custodian, under this session id, that the shares of every secret
    /// of an activated version lie on one polynomial, so that it may serve (or is refused).
    CheckShares { package_id: String, session: String },
    /// Generate kits `first_kit .. first_kit + count` of a version with every other custodian,
    /// all at share epoch `epoch`.
    Preprocess {
        session: String,
        package_id: String,
        first_kit: u64,
        count: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// Refresh the shares of every secret of `packages` (in that order) with every other
    /// custodian, from share epoch `epoch` to `epoch + 1`, and keep the new shares aside until
    /// [`Order::CommitReshare`]: the answer attests, to each peer, that this custodian holds
    /// them.
    Reshare {
        session: String,
        epoch: u64,
        packages: Vec<String>,
    },
    /// Move to the shares of reshare `session`, given every custodian's attestation that it
    /// holds its own.
    CommitReshare {
        session: String,
        epoch: u64,
        packages: Vec<String>,
        attestations: Attestations,
    },
    /// Re-deal every secret of `packages` (every version the custodian holds, in that order)
    /// to the cluster `membership` names, which k operators of the current cluster approved
    /// ([`crate::membership`]): the custodian checks the approvals itself, deals as a current
    /// member and, as a member of the new set, checks the dealings with the other new members
    /// and keeps its new shares aside until [`Order::CommitRedeal`]; the answer attests, to
    /// each other new member, that it holds them.
    Redeal {
        session: String,
        membership: crate::membership::Membership,
        approvals: Vec<ApprovalSignature>,
        packages: Vec<String>,
    },
    /// To a machine that `membership` brings in, before [`Order::Redeal`]: check the chain of
    /// `rotations` from the configured cluster (this machine's trust root), the statement and
    /// its k approvals against the cluster the chain ends at, and each version against its
    /// approvals, fetching its package and deal from the coordinator; then record them and be
    /// ready to receive the current members' dealings.
    Join {
        session: String,
        rotations: Vec<crate::membership::Approved>,
        membership: crate::membership::Membership,
        approvals: Vec<ApprovalSignature>,
        versions: Vec<JoiningVersion>,
    },
    /// Move to the membership and shares of re-dealing `session`, given every new member's
    /// attestation that it holds its own.
    CommitRedeal {
        session: String,
        membership: crate::membership::Membership,
        approvals: Vec<ApprovalSignature>,
        packages: Vec<String>,
        attestations: Attestations,
    },
    /// Give up a session (a member died); its waits end at once.
    Abort { session: String },
    /// A caller identity reached its approvals: the custodian checks them itself, then accepts
    /// requests signed with `public_key` (hex) as `name`'s.
    RegisterIdentity {
        name: String,
        public_key: String,
        approvals: Vec<ApprovalSignature>,
    },
    /// k operators approved revoking identity `name`: the custodian checks them itself, then
    /// refuses the name for good (whatever key it comes with).
    RevokeIdentity {
        name: String,
        approvals: Vec<ApprovalSignature>,
    },
    /// k operators approved retiring version `package_id`: the custodian checks them itself,
    /// then never serves nor activates it again.
    Retire {
        package_id: String,
        approvals: Vec<ApprovalSignature>,
    },
    /// k operators approved lifting the freezes of a target older than the unfreeze: the
    /// custodian checks them itself (see [`crate::freeze`]).
    Unfreeze {
        unfreeze: crate::freeze::Unfreeze,
        approvals: Vec<ApprovalSignature>,
    },
}

/// A version a joining custodian is to hold, with the approvals that activated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoiningVersion {
    pub package_id: String,
    pub approvals: Vec<ApprovalSignature>,
}

/// Every custodian's attestations of a refresh: `0[i][j]` is custodian i's tag for custodian j.
/// On the wire, a list of `[i, j, tag]` (orders are an internally tagged enum, whose maps take
/// only string keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<(u32, u32, String)>", from = "Vec<(u32, u32, String)>")]
pub struct Attestations(pub BTreeMap<u32, BTreeMap<u32, String>>);

impl From<Attestations> for Vec<(u32, u32, String)> {
    fn from(a: Attestations) -> Self {
        a.0.into_iter()
            .flat_map(|(from, tags)| tags.into_iter().map(move |(to, tag)| (from, to, tag)))
            .collect()
    }
}

impl From<Vec<(u32, u32, String)>> for Attestations {
    fn from(list: Vec<(u32, u32, String)>) -> Self {
        let mut map: BTreeMap<u32, BTreeMap<u32, String>> = BTreeMap::new();
        for (from, to, tag) in list {
            map.entry(from).or_default().insert(to, tag);
        }
        Attestations(map)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    order: Order,
    expires_ms: u64,
}

/// An order as it travels: its JSON and the coordinator's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOrder {
    pub body: String,
    /// ed25519 signature (hex).
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order is not signed by this cluster's coordinator")]
    BadSignature,
    #[error("the order expired {0} ms ago")]
    Expired(u64),
    #[error("the order is malformed: {0}")]
    Malformed(String),
}

impl SignedOrder {
    pub fn sign(order: Order, now_ms: u64, key: &SecretKey) -> SignedOrder {
        let body = serde_json::to_string(&Envelope {
            order,
            expires_ms: now_ms + ORDER_LIFETIME_MS,
        })
        .expect("orders serialize");
        let signature = hex::encode(key.sign_statement(Domain::Order, body.as_bytes()));
        SignedOrder { body, signature }
    }

    /// Checks the signature first, then the expiry, and only then parses the order.
    pub fn open(&self, coordinator: &PublicKey, now_ms: u64) -> Result<Order, OrderError> {
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| OrderError::BadSignature)?;
        if !coordinator.verify_statement(Domain::Order, self.body.as_bytes(), &sig) {
            return Err(OrderError::BadSignature);
        }
        let envelope: Envelope =
            serde_json::from_str(&self.body).map_err(|e| OrderError::Malformed(e.to_string()))?;
        if now_ms > envelope.expires_ms {
            return Err(OrderError::Expired(now_ms - envelope.expires_ms));
        }
        Ok(envelope.order)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketEnvelope {
    ticket: Ticket,
    expires_ms: u64,
}

/// The key the coordinator shares with one custodian for its session tickets: derived from
/// the X25519 agreement between the coordinator's exchange key and the custodian's sealing key
/// (either side computes it from its secret and the other's public key), under a label of its
/// own, so it is never the key custodians use between themselves.
pub struct TicketKey(Zeroizing<[u8; 32]>);

impl TicketKey {
    pub fn new(mine: &CustodianSecretKey, theirs: CustodianPublicKey) -> TicketKey {
        let pairwise = mine.pairwise_key(theirs);
        let mut hasher = Sha256::new();
        hasher.update(b"quorumvm session ticket key v1\0");
        hasher.update(&pairwise[..]);
        TicketKey(Zeroizing::new(hasher.finalize().into()))
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The coordinator's side: a session request carrying `ticket` and the caller's signed
    /// request, both under the tag.
    pub fn seal(&self, ticket: Ticket, request: Signed, now_ms: u64) -> SessionRequest {
        let ticket = serde_json::to_string(&TicketEnvelope {
            ticket,
            expires_ms: now_ms + ORDER_LIFETIME_MS,
        })
        .expect("tickets serialize");
        let tag = hex::encode(
            self.mac(&[
                b"ticket",
                ticket.as_bytes(),
                request.body.as_bytes(),
                request.signature.as_bytes(),
            ])
            .finalize()
            .into_bytes(),
        );
        SessionRequest {
            ticket,
            request,
            tag,
        }
    }

    /// The custodian's side: checks the tag (in constant time), then the expiry, and only
    /// then parses the ticket.
    pub fn open(&self, request: &SessionRequest, now_ms: u64) -> Result<Ticket, OrderError> {
        let tag = hex::decode(&request.tag).map_err(|_| OrderError::BadSignature)?;
        self.mac(&[
            b"ticket",
            request.ticket.as_bytes(),
            request.request.body.as_bytes(),
            request.request.signature.as_bytes(),
        ])
        .verify_slice(&tag)
        .map_err(|_| OrderError::BadSignature)?;
        let envelope: TicketEnvelope = serde_json::from_str(&request.ticket)
            .map_err(|e| OrderError::Malformed(e.to_string()))?;
        if now_ms > envelope.expires_ms {
            return Err(OrderError::Expired(now_ms - envelope.expires_ms));
        }
        Ok(envelope.ticket)
    }

    /// A custodian proving to the coordinator that it is asking for `path` (its own sealed
    /// shares), at `now_ms`: a tag only the two of them can make.
    pub fn fetch_tag(&self, path: &str, now_ms: u64) -> String {
        let mac = self.mac(&[b"fetch", path.as_bytes(), &now_ms.to_be_bytes()]);
        format!("{now_ms}.{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The coordinator's check of [`TicketKey::fetch_tag`]: the right path, made within
    /// [`ORDER_LIFETIME_MS`] of `now_ms`.
    pub fn check_fetch_tag(&self, path: &str, tag: &str, now_ms: u64) -> bool {
        let Some((time, mac)) = tag.split_once('.') else {
            return false;
        };
        let (Ok(time), Ok(mac)) = (time.parse::<u64>(), hex::decode(mac)) else {
            return false;
        };
        time.abs_diff(now_ms) <= ORDER_LIFETIME_MS
            && self
                .mac(&[b"fetch", path.as_bytes(), &time.to_be_bytes()])
                .verify_slice(&mac)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_only_for_their_custodian_unchanged_and_fresh() {
        let coordinator = CustodianSecretKey::generate();
        let (one, two) = (
            CustodianSecretKey::generate(),
            CustodianSecretKey::generate(),
        );
        let sending = TicketKey::new(&coordinator, one.public());
        let receiving = TicketKey::new(&one, coordinator.public());
        let ticket = Ticket {
            session: "s-0".into(),
            package_id: "p".into(),
            quorum: vec![1, 2, 3],
            kit: 7,
            attempt: 0,
            epoch: 0,
        };
        let caller = Signed {
            body: "{}".into(),
            signature: "00ff".into(),
        };
        let request = sending.seal(ticket.clone(), caller, 1_000);
        assert_eq!(receiving.open(&request, 2_000), Ok(ticket));
        assert!(matches!(
            receiving.open(&request, 1_000 + ORDER_LIFETIME_MS + 1),
            Err(OrderError::Expired(1))
        ));
        // Another custodian's key, another caller request, another kit: refused.
        let other = TicketKey::new(&two, coordinator.public());
        assert_eq!(other.open(&request, 2_000), Err(OrderError::BadSignature));
        let mut swapped = request.clone();
        swapped.request.body = "{ }".into();
        assert_eq!(
            receiving.open(&swapped, 2_000),
            Err(OrderError::BadSignature)
        );
        let mut altered = request.clone();
        altered.ticket = altered.ticket.replace("\"kit\":7", "\"kit\":8");
        assert_ne!(altered.ticket, request.ticket);
        assert_eq!(
            receiving.open(&altered, 2_000),
            Err(OrderError::BadSignature)
        );
        // Fetch tags: this path, this pair of keys, fresh.
        let tag = receiving.fetch_tag("/v1/packages/p/shares/1", 5_000);
        assert!(sending.check_fetch_tag("/v1/packages/p/shares/1", &tag, 6_000));
        assert!(!sending.check_fetch_tag("/v1/packages/p/shares/2", &tag, 6_000));
        assert!(!sending.check_fetch_tag(
            "/v1/packages/p/shares/1",
            &tag,
            5_000 + ORDER_LIFETIME_MS + 1
        ));
        let stranger = TicketKey::new(&coordinator, two.public());
        assert!(!stranger.check_fetch_tag("/v1/packages/p/shares/1", &tag, 6_000));
    }

    #[test]
    fn orders_open_only_signed_unchanged_and_fresh() {
        let key = SecretKey::generate();
        let order = Order::Abort {
            session: "s1".into(),
        };
        let signed = SignedOrder::sign(order.clone(), 1_000, &key);
        assert_eq!(signed.open(&key.public(), 2_000), Ok(order));
        assert_eq!(
            signed.open(&key.public(), 1_000 + ORDER_LIFETIME_MS + 5),
            Err(OrderError::Expired(5))
        );
        let other = SecretKey::generate();
        assert_eq!(
            signed.open(&other.public(), 2_000),
            Err(OrderError::BadSignature)
        );
        let mut altered = signed.clone();
        altered.body = altered.body.replace("s1", "s2");
        assert_eq!(
            altered.open(&key.public(), 2_000),
            Err(OrderError::BadSignature)
        );
    }
}
