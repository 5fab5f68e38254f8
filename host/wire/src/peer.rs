//! Round messages between custodians: `POST /v1/rounds` with the sender's index in
//! [`SENDER_HEADER`] and a body of [`Frame`]s, one per message: its session, layer, body and an
//! HMAC-SHA256 tag. The tag's key is the pairwise key of sender and recipient (derived from
//! their X25519 keys), and it covers sender, recipient, session, layer and body, so a message
//! cannot be forged by anyone else, nor replayed to another peer, session or layer.
//!
//! One request carries every message queued for a peer while the previous request was in
//! flight (group sending): a single session pays one request per message, as before, while
//! concurrent sessions share requests instead of each paying HTTP's fixed cost. The answer is
//! one result per frame ([`FrameResult`]), in order.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use quorumvm_sealing::CustodianSecretKey;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::Cluster;

pub const SENDER_HEADER: &str = "x-quorumvm-sender";

/// One round message in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub session: String,
    pub layer: u32,
    /// [`PeerKeys::tag`] (hex).
    pub tag: String,
    pub body: Vec<u8>,
}

/// Why the recipient refused one frame: the status and error a request of its own would have
/// had.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameRefusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// What the recipient made of one frame: `None` when taken.
pub type FrameResult = Option<FrameRefusal>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed round messages: {0}")]
pub struct FrameError(&'static str);

/// Frames in sequence, each: session (u16 length, bytes), layer (u32), tag (u8 length,
/// ASCII), body (u32 length, bytes); big-endian lengths.
pub fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    let size = frames
        .iter()
        .map(|f| 2 + f.session.len() + 4 + 1 + f.tag.len() + 4 + f.body.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for f in frames {
        out.extend_from_slice(&(f.session.len() as u16).to_be_bytes());
        out.extend_from_slice(f.session.as_bytes());
        out.extend_from_slice(&f.layer.to_be_bytes());
        out.push(f.tag.len() as u8);
        out.extend_from_slice(f.tag.as_bytes());
        out.extend_from_slice(&(f.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&f.body);
    }
    out
}

pub fn decode_frames(mut bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if bytes.len() < n {
            return Err(FrameError("a frame is cut short"));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let n = u16::from_be_bytes(take(&mut bytes, 2)?.try_into().expect("2 bytes")) as usize;
        let session = std::str::from_utf8(take(&mut bytes, n)?)
            .map_err(|_| FrameError("a session id is not UTF-8"))?
            .to_string();
        let layer = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
        let n = take(&mut bytes, 1)?[0] as usize;
        let tag = std::str::from_utf8(take(&mut bytes, n)?)
            .map_err(|_| FrameError("a tag is not ASCII"))?
            .to_string();
        let n = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let body = take(&mut bytes, n)?.to_vec();
        frames.push(Frame {
            session,
            layer,
            tag,
            body,
        });
    }
    Ok(frames)
}

/// This custodian's pairwise keys, one per peer.
pub struct PeerKeys {
    me: u32,
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl PeerKeys {
    pub fn new(me: u32, secret: &CustodianSecretKey, cluster: &Cluster) -> PeerKeys {
        let keys = cluster
            .members()
            .iter()
            .filter(|m| m.index != me)
            .map(|m| (m.index, secret.pairwise_key(m.sealing_key)))
            .collect();
        PeerKeys { me, keys }
    }

    fn mac(
        &self,
        peer: u32,
        sender: u32,
        recipient: u32,
        session: &str,
        layer: u32,
    ) -> Option<Hmac<Sha256>> {
        let key = self.keys.get(&peer)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key[..]).expect("HMAC takes any key length");
        mac.update(&sender.to_be_bytes());
        mac.update(&recipient.to_be_bytes());
        mac.update(&(session.len() as u64).to_be_bytes());
        mac.update(session.as_bytes());
        mac.update(&layer.to_be_bytes());
        Some(mac)
    }

    /// The tag (hex) for a message from this custodian to `recipient`; `None` for a
    /// non-member.
    pub fn tag(&self, recipient: u32, session: &str, layer: u32, body: &[u8]) -> Option<String> {
        let mut mac = self.mac(recipient, self.me, recipient, session, layer)?;
        mac.update(body);
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `tag` (hex) authenticates a message from `sender` to this custodian, compared
    /// in constant time.
    pub fn check(&self, sender: u32, session: &str, layer: u32, body: &[u8], tag: &str) -> bool {
        let Ok(tag) = hex::decode(tag) else {
            return false;
        };
        let Some(mut mac) = self.mac(sender, sender, self.me, session, layer) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CustodianEntry;
    use quorumvm_package::SecretKey;

    #[test]
    fn frames_round_trip_and_refuse_truncation() {
        let frames = vec![
            Frame {
                session: "r-0".into(),
                layer: 1,
                tag: "ab".repeat(32),
                body: vec![1, 2, 3],
            },
            Frame {
                session: "prep-x-0".into(),
                layer: 2,
                tag: String::new(),
                body: vec![],
            },
        ];
        let bytes = encode_frames(&frames);
        let first = encode_frames(&frames[..1]).len();
        assert_eq!(decode_frames(&bytes), Ok(frames));
        for cut in (1..bytes.len()).filter(|&c| c != first) {
            assert!(decode_frames(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_frames(&[]), Ok(vec![]));
    }

    #[test]
    fn tags_verify_only_for_their_pair_session_layer_and_body() {
        let secrets: Vec<CustodianSecretKey> =
            (0..3).map(|_| CustodianSecretKey::generate()).collect();
        let entries: Vec<CustodianEntry> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| CustodianEntry {
                index: i as u32 + 1,
                url: "http://127.0.0.1:1".into(),
                operator_key: SecretKey::generate().public().to_hex(),
                sealing_key: s.public().to_hex(),
                tls_fingerprint: None,
            })
            .collect();
        let cluster = Cluster::new(2, &entries).unwrap();
        let keys: Vec<PeerKeys> = (0..3)
            .map(|i| PeerKeys::new(i as u32 + 1, &secrets[i], &cluster))
            .collect();
        let tag = keys[0].tag(2, "s", 1, b"body").unwrap();
        assert!(keys[1].check(1, "s", 1, b"body", &tag));
        assert!(!keys[1].check(1, "s", 2, b"body", &tag));
        assert!(!keys[1].check(1, "t", 1, b"body", &tag));
        assert!(!keys[1].check(1, "s", 1, b"bodY", &tag));
        // Custodian 3 cannot pass it off as its own, nor can it be replayed to custodian 3.
        assert!(!keys[1].check(3, "s", 1, b"body", &tag));
        assert!(!keys[2].check(1, "s", 1, b"body", &tag));
        assert!(keys[0].tag(9, "s", 1, b"body").is_none());
    }
}
