//! A layer of round messages that must stay secret, as the custodian's protocols among all n
//! (preprocessing, the joint check of shares) send them: field elements for each peer, sealed
//! to it ([`Peers::seal`]) before they leave, and opened and decoded when they arrive.

use quorumvm_core::field::Fp;
use quorumvm_core::rounds::Outgoing;
use quorumvm_wire::elements;
use zeroize::{Zeroize, Zeroizing};

use crate::error::ApiError;
use crate::peers::Peers;
use quorumvm_wire::code::ErrorCode;

/// Seals each of a layer's messages to its recipient.
pub(crate) fn seal_layer(
    peers: &Peers,
    session: &str,
    layer: u32,
    out: &Outgoing,
) -> Result<Vec<(u32, Vec<u8>)>, ApiError> {
    seal_layer_to(peers, session, layer, out, |x| x)
}

/// [`seal_layer`] for a protocol whose parties are numbered otherwise than the peers: the
/// message for party `x` goes to peer `peer_of(x)` (a rotation that renumbers custodians).
pub(crate) fn seal_layer_to(
    peers: &Peers,
    session: &str,
    layer: u32,
    out: &Outgoing,
    peer_of: impl Fn(u32) -> u32,
) -> Result<Vec<(u32, Vec<u8>)>, ApiError> {
    out.messages()
        .iter()
        .map(|(to, values)| {
            let plain = Zeroizing::new(elements::to_bytes(values));
            let to = peer_of(*to);
            peers
                .seal(to, session, layer, &plain)
                .map(|sealed| (to, sealed))
                .map_err(|e| ApiError::internal(e.to_string()))
        })
        .collect()
}

/// Opens and decodes each of a layer's messages.
pub(crate) fn open_layer(
    peers: &Peers,
    session: &str,
    layer: u32,
    received: Vec<(u32, Vec<u8>)>,
) -> Result<Vec<(u32, Vec<Fp>)>, ApiError> {
    let bad = |why: String| ApiError::of(ErrorCode::BadPeerMessage, why);
    let mut opened: Vec<(u32, Vec<Fp>)> = Vec::with_capacity(received.len());
    for (sender, sealed) in received {
        let plain = peers
            .open(sender, session, layer, &sealed)
            .map_err(|e| bad(e.to_string()));
        let values = plain.and_then(|plain| {
            elements::from_bytes(&plain)
                .map_err(|e| bad(format!("custodian {sender}'s layer {layer} message: {e}")))
        });
        match values {
            // The vector moves out whole (no copy); the core step that takes it wipes it.
            Ok(mut values) => opened.push((sender, std::mem::take(&mut *values))),
            Err(e) => {
                for (_, values) in &mut opened {
                    values.zeroize();
                }
                return Err(e);
            }
        }
    }
    Ok(opened)
}
