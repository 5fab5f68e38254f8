//! Round messages between custodians: `POST /v1/rounds/{session}/{layer}` with the values as
//! raw field elements in the body, the sender's index in [`SENDER_HEADER`] and an HMAC-SHA256
//! tag in [`MAC_HEADER`]. The tag's key is the pairwise key of sender and recipient (derived
//! from their X25519 keys), and it covers sender, recipient, session, layer and body, so a
//! message cannot be forged by anyone else, nor replayed to another peer, session or layer.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use quorumvm_sealing::CustodianSecretKey;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::Cluster;

pub const SENDER_HEADER: &str = "x-quorumvm-sender";
pub const MAC_HEADER: &str = "x-quorumvm-mac";

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
    fn tags_verify_only_for_their_pair_session_layer_and_body() {
        let secrets: Vec<CustodianSecretKey> =
            (0..3).map(|_| CustodianSecretKey::generate()).collect();
        let entries: Vec<CustodianEntry> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| CustodianEntry {
                index: i as u32 + 1,
                url: "http://127.0.0.1:1".into(),
                signing_key: SecretKey::generate().public().to_hex(),
                sealing_key: s.public().to_hex(),
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
