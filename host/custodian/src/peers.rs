//! Round messages to the other custodians: sending one layer to every peer at once, checking
//! what arrives, and encrypting what must stay secret.
//!
//! Every message carries the wire's HMAC ([`quorumvm_wire::peer`]), which authenticates it but
//! hides nothing. That is enough for an evaluation: a layer's message holds this custodian's
//! shares of `x − a` and `y − b`, values the quorum opens anyway. It is not enough for
//! preprocessing, whose messages are shares of the random `a`, `b` and of the products that
//! become `c`: anyone who read the n − 1 ≥ k shares one custodian deals would know its part of
//! every kit, and with all of them every kit, after which the openings of an evaluation give
//! away its inputs and secrets. Those messages are therefore sealed to their recipient with
//! [`Peers::seal`] (ChaCha20-Poly1305) before they are tagged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::http::HttpClient;
use quorumvm_wire::api::ErrorBody;
use quorumvm_wire::config::Cluster;
use quorumvm_wire::peer::{Frame, FrameResult, PeerKeys, SENDER_HEADER, encode_frames};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc, oneshot};
use zeroize::Zeroizing;

/// Messages to one peer that share a request at most (see [`quorumvm_wire::peer`]).
const MAX_BATCH: usize = 256;
/// Requests in flight to one peer at once: while they are, new messages queue for the next.
/// More than one, so that a large preprocessing message does not hold up evaluations' small
/// ones behind it.
const MAX_IN_FLIGHT: usize = 4;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a message: its nonce and its tag.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// HKDF salt: separates these keys from every other use of the pairwise key (the HMAC).
const SEAL_SALT: &[u8] = b"quorumvm sealed round message v1";

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SendError {
    #[error("custodian {peer} is not a member of this cluster")]
    Stranger { peer: u32 },
    #[error("custodian {peer} is unreachable: {reason}")]
    Unreachable { peer: u32, reason: String },
    #[error("a sending task failed: {0}")]
    Task(String),
    #[error("custodian {peer} refused the layer {layer} message: {status} {code}: {message}")]
    Refused {
        peer: u32,
        layer: u32,
        status: u16,
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    #[error("custodian {0} is not a member of this cluster")]
    Stranger(u32),
    #[error("a message of {0} bytes is too long to seal")]
    TooLong(usize),
    #[error(
        "custodian {sender}'s layer {layer} message does not open: altered, or sealed for another session, layer or recipient"
    )]
    DoesNotOpen { sender: u32, layer: u32 },
}

/// Whether `session` can name a session: 1 to 128 letters, digits, `.`, `_` and `-`, at least
/// one of them a letter or digit, so that it is one path segment of a round message's URL as it
/// is (no escaping, and never `.` or `..`, which URL parsing would resolve away).
pub(crate) fn valid_session_id(session: &str) -> bool {
    (1..=128).contains(&session.len())
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && session.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// This custodian's view of its peers.
pub(crate) struct Peers {
    me: u32,
    macs: PeerKeys,
    /// The pairwise key with each peer, from which each sealed message's own key is derived.
    pairwise: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    urls: BTreeMap<u32, String>,
    http: HttpClient,
    /// Each peer's queue, drained by a task of its own (started on first use).
    queues: Mutex<BTreeMap<u32, mpsc::UnboundedSender<Queued>>>,
}

/// A message waiting for its peer's next request, and who to tell how it went.
struct Queued {
    frame: Frame,
    timeout: Duration,
    done: oneshot::Sender<Result<(), SendError>>,
}

impl Peers {
    pub fn new(me: u32, secret: &CustodianSecretKey, cluster: &Cluster, http: HttpClient) -> Peers {
        let others = || cluster.members().iter().filter(move |m| m.index != me);
        Peers {
            me,
            macs: PeerKeys::new(me, secret, cluster),
            pairwise: others()
                .map(|m| (m.index, secret.pairwise_key(m.sealing_key)))
                .collect(),
            urls: others().map(|m| (m.index, m.url.clone())).collect(),
            http,
            queues: Mutex::default(),
        }
    }

    /// Whether `peer` is one of them: another member of the cluster, or (during a rotation
    /// that brings machines in) of the new membership.
    pub fn knows(&self, peer: u32) -> bool {
        self.pairwise.contains_key(&peer)
    }

    /// This custodian's tag on a message to `peer` (`None` for a stranger).
    pub fn tag(&self, peer: u32, session: &str, layer: u32, body: &[u8]) -> Option<String> {
        self.macs.tag(peer, session, layer, body)
    }

    /// Whether `tag` authenticates this message from `sender`.
    pub fn check(&self, sender: u32, session: &str, layer: u32, body: &[u8], tag: &str) -> bool {
        self.macs.check(sender, session, layer, body, tag)
    }

    /// Sends each `(peer, body)` to its peer, all at once, each within `timeout`; returns when
    /// every peer has taken its message, or with the first failure (the session fails anyway).
    pub async fn send(
        &self,
        session: &str,
        layer: u32,
        messages: Vec<(u32, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let mut pending = Vec::with_capacity(messages.len());
        for (peer, body) in messages {
            let tag = self
                .macs
                .tag(peer, session, layer, &body)
                .ok_or(SendError::Stranger { peer })?;
            let (done, outcome) = oneshot::channel();
            let queued = Queued {
                frame: Frame {
                    session: session.to_string(),
                    layer,
                    tag,
                    body,
                },
                timeout,
                done,
            };
            self.queue(peer)?
                .send(queued)
                .map_err(|_| SendError::Task(format!("the queue to custodian {peer} is closed")))?;
            pending.push((peer, outcome));
        }
        for (peer, outcome) in pending {
            outcome.await.map_err(|_| {
                SendError::Task(format!("the sender to custodian {peer} stopped"))
            })??;
        }
        Ok(())
    }

    fn queue(&self, peer: u32) -> Result<mpsc::UnboundedSender<Queued>, SendError> {
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.get(&peer).filter(|q| !q.is_closed()) {
            return Ok(q.clone());
        }
        let url = self.urls.get(&peer).ok_or(SendError::Stranger { peer })?;
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(drain(
            self.http.clone(),
            format!("{url}/v1/rounds"),
            self.me,
            peer,
            waiting,
        ));
        queues.insert(peer, queue.clone());
        Ok(queue)
    }

    /// Encrypts `plaintext` for `recipient` as this session's `layer` message: a fresh random
    /// nonce, then ChaCha20-Poly1305 under a key of its own (see [`Peers::message_key`]).
    pub fn seal(
        &self,
        recipient: u32,
        session: &str,
        layer: u32,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let cipher = self.cipher(self.me, recipient, session, layer)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut sealed = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &[], (&mut sealed[NONCE_LEN..]).into())
            .map_err(|_| SealError::TooLong(plaintext.len()))?;
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// Decrypts a message [`Peers::seal`]ed by `sender` for this custodian.
    pub fn open(
        &self,
        sender: u32,
        session: &str,
        layer: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let fails = || SealError::DoesNotOpen { sender, layer };
        let cipher = self.cipher(sender, self.me, session, layer)?;
        if sealed.len() < SEAL_OVERHEAD {
            return Err(fails());
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| fails())?;
        let tag = Tag::try_from(tag).map_err(|_| fails())?;
        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        cipher
            .decrypt_inout_detached(&nonce, &[], plaintext.as_mut_slice().into(), &tag)
            .map_err(|_| fails())?;
        Ok(plaintext)
    }

    fn cipher(
        &self,
        sender: u32,
        recipient: u32,
        session: &str,
        layer: u32,
    ) -> Result<ChaCha20Poly1305, SealError> {
        let peer = if sender == self.me { recipient } else { sender };
        let pairwise = self.pairwise.get(&peer).ok_or(SealError::Stranger(peer))?;
        let key = message_key(pairwise, sender, recipient, session, layer);
        Ok(ChaCha20Poly1305::new(&Key::from(*key)))
    }
}

/// The key of one message: HKDF-SHA256 of the pairwise key, bound to direction, session and
/// layer, so that a message cannot be opened as another (and a retried session id with fresh
/// randomness never meets an old key with an old nonce: nonces are random too).
fn message_key(
    pairwise: &[u8; 32],
    sender: u32,
    recipient: u32,
    session: &str,
    layer: u32,
) -> Zeroizing<[u8; 32]> {
    let mut info = Vec::with_capacity(20 + session.len());
    info.extend_from_slice(&sender.to_be_bytes());
    info.extend_from_slice(&recipient.to_be_bytes());
    info.extend_from_slice(&(session.len() as u64).to_be_bytes());
    info.extend_from_slice(session.as_bytes());
    info.extend_from_slice(&layer.to_be_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(SEAL_SALT), pairwise)
        .expand(&info, &mut key[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// Sends what queues for `peer`: whatever waits when a request slot frees goes in one request.
async fn drain(
    http: HttpClient,
    url: String,
    me: u32,
    peer: u32,
    mut waiting: mpsc::UnboundedReceiver<Queued>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            post_batch(&http, &url, me, peer, batch).await;
            drop(slot);
        });
    }
}

async fn post_batch(http: &HttpClient, url: &str, me: u32, peer: u32, batch: Vec<Queued>) {
    let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
    let mut frames = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for q in batch {
        frames.push(q.frame);
        waiting.push(q.done);
    }
    let layers: Vec<u32> = frames.iter().map(|f| f.layer).collect();
    let outcome = async {
        let response = http
            .post(url)
            .header(SENDER_HEADER, me.to_string())
            .timeout(timeout)
            .body(encode_frames(&frames))
            .send()
            .await
            .map_err(|e| SendError::Unreachable {
                peer,
                reason: e.to_string(),
            })?;
        let status = response.status;
        if !status.is_success() {
            let (code, message) = match response.json::<ErrorBody>() {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => ("unknown".to_string(), "no error body".to_string()),
            };
            return Err(SendError::Refused {
                peer,
                layer: layers.first().copied().unwrap_or_default(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        let results: Vec<FrameResult> = response.json().map_err(|e| SendError::Unreachable {
            peer,
            reason: format!("unreadable answer: {e}"),
        })?;
        if results.len() != layers.len() {
            return Err(SendError::Unreachable {
                peer,
                reason: format!("{} answers for {} messages", results.len(), layers.len()),
            });
        }
        Ok(results)
    }
    .await;
    match outcome {
        Ok(results) => {
            for ((done, result), layer) in waiting.into_iter().zip(results).zip(layers) {
                let _ = done.send(match result {
                    None => Ok(()),
                    Some(r) => Err(SendError::Refused {
                        peer,
                        layer,
                        status: r.status,
                        code: r.code,
                        message: r.message,
                    }),
                });
            }
        }
        Err(e) => {
            for done in waiting {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_package::SecretKey;
    use quorumvm_server::Env;
    use quorumvm_wire::config::CustodianEntry;

    fn peers() -> Vec<Peers> {
        let secrets: Vec<CustodianSecretKey> =
            (0..3).map(|_| CustodianSecretKey::generate()).collect();
        let entries: Vec<CustodianEntry> = secrets
            .iter()
            .zip(1..)
            .map(|(s, index)| CustodianEntry {
                index,
                url: format!("http://127.0.0.1:{}", 7000 + index),
                operator_key: SecretKey::generate().public().to_hex(),
                sealing_key: s.public().to_hex(),
                tls_fingerprint: None,
            })
            .collect();
        let cluster = Cluster::new(2, &entries).unwrap();
        secrets
            .iter()
            .zip(1..)
            .map(|(s, me)| Peers::new(me, s, &cluster, Env::system().http()))
            .collect()
    }

    #[test]
    fn session_ids_are_single_plain_path_segments() {
        for ok in ["prep-0123abcd-40", "r_1.2", "a"] {
            assert!(valid_session_id(ok), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", ".", "..", "a/b", "a b", "a%2F", "é", long.as_str()] {
            assert!(!valid_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn sealed_messages_open_only_for_their_recipient_session_and_layer() {
        let p = peers();
        let secret = b"shares of a and b".to_vec();
        let sealed = p[0].seal(2, "prep-1", 1, &secret).unwrap();
        assert_eq!(sealed.len(), secret.len() + SEAL_OVERHEAD);
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_slice()),
            "the plaintext does not show"
        );
        assert_eq!(*p[1].open(1, "prep-1", 1, &sealed).unwrap(), secret);
        // Fresh nonces: the same message seals differently.
        assert_ne!(p[0].seal(2, "prep-1", 1, &secret).unwrap(), sealed);
        let refused = SealError::DoesNotOpen {
            sender: 1,
            layer: 1,
        };
        assert_eq!(p[1].open(1, "prep-2", 1, &sealed).unwrap_err(), refused);
        assert_eq!(
            p[1].open(1, "prep-1", 2, &sealed).unwrap_err().to_string(),
            {
                SealError::DoesNotOpen {
                    sender: 1,
                    layer: 2,
                }
                .to_string()
            }
        );
        // Custodian 3 cannot read it, nor can custodian 2 take it as custodian 3's.
        assert!(p[2].open(1, "prep-1", 1, &sealed).is_err());
        assert!(p[1].open(3, "prep-1", 1, &sealed).is_err());
        let mut altered = sealed.clone();
        altered[NONCE_LEN] ^= 1;
        assert_eq!(p[1].open(1, "prep-1", 1, &altered).unwrap_err(), refused);
        assert_eq!(
            p[1].open(1, "prep-1", 1, &sealed[..10]).unwrap_err(),
            refused
        );
        assert_eq!(
            p[1].open(9, "prep-1", 1, &sealed).unwrap_err(),
            SealError::Stranger(9)
        );
    }
}
