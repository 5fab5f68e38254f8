//! Field elements sealed for one evaluation: a caller's private inputs to each custodian, and a
//! custodian's output shares back to the caller.
//!
//! Both use the suite of [`crate::seal`] (HPKE, RFC 9180, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305) with a fresh ephemeral key per seal and the binding in HPKE's
//! `info`, so an envelope opens only for the request and custodian it was made for.
//!
//! - **Inputs** go from the caller's client to custodian `i` in base mode: the caller's
//!   signature over the whole request (envelopes included) already says who sent them, and the
//!   coordinator, which relays the request, can neither read nor replace them.
//! - **Outputs** go from custodian `i` to the one-time reply key the caller put in its signed
//!   request, in **auth mode** under custodian `i`'s own X25519 key: the caller knows each share
//!   came from that custodian, so the coordinator that relays them can neither read nor forge
//!   one.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use quorumvm_core::Fp;
use quorumvm_package::PackageId;
use zeroize::Zeroizing;

use crate::keys::{CustodianPublicKey, CustodianSecretKey, Kem};
use crate::seal::SealError;

type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

const FORMAT_V1: u8 = 1;
const ENC_LEN: usize = 32;
const ELEMENT_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// A request carries a few inputs and outputs; this bounds what one envelope may hold.
pub const MAX_ELEMENTS: usize = 4096;

/// Custodian `custodian`'s shares of the private inputs of request `request_id` of `package`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputsBinding<'a> {
    pub request_id: &'a str,
    pub package: PackageId,
    pub custodian: u32,
}

/// Custodian `custodian`'s output shares for the request whose signed form has digest
/// `request` ([`quorumvm_wire`]'s `Signed::digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputsBinding {
    pub request: [u8; 32],
    pub custodian: u32,
}

impl InputsBinding<'_> {
    fn info(&self) -> Vec<u8> {
        let id = self.request_id.as_bytes();
        let mut info = Vec::with_capacity(64 + id.len());
        info.extend_from_slice(b"quorumvm private inputs v1\0");
        info.extend_from_slice(&self.package.0);
        info.extend_from_slice(&self.custodian.to_be_bytes());
        info.extend_from_slice(&(id.len() as u64).to_be_bytes());
        info.extend_from_slice(id);
        info
    }
}

impl OutputsBinding {
    fn info(&self) -> Vec<u8> {
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(b"quorumvm output shares v1\0");
        info.extend_from_slice(&self.request);
        info.extend_from_slice(&self.custodian.to_be_bytes());
        info
    }
}

/// Seals `values` (a caller's shares for custodian `binding.custodian`) to that custodian.
pub fn seal_inputs(
    custodian: CustodianPublicKey,
    binding: &InputsBinding<'_>,
    values: &[Fp],
) -> Result<Vec<u8>, SealError> {
    seal(&OpModeS::Base, custodian, &binding.info(), values)
}

/// Opens the private-input shares sealed to this custodian for exactly `binding`.
pub fn open_inputs(
    key: &CustodianSecretKey,
    binding: &InputsBinding<'_>,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<Fp>>, SealError> {
    open(&OpModeR::Base, key, &binding.info(), sealed)
}

/// Seals this custodian's output shares to the caller's reply key, authenticated as sent by the
/// holder of `sender` (the custodian's own sealing key).
pub fn seal_outputs(
    reply: CustodianPublicKey,
    sender: &CustodianSecretKey,
    binding: &OutputsBinding,
    values: &[Fp],
) -> Result<Vec<u8>, SealError> {
    let mode = OpModeS::Auth((sender.0.clone(), sender.public().to_hpke()));
    seal(&mode, reply, &binding.info(), values)
}

/// Opens output shares with the caller's one-time reply key, refusing any not sealed by the
/// custodian whose public key is `sender`.
pub fn open_outputs(
    reply: &CustodianSecretKey,
    sender: CustodianPublicKey,
    binding: &OutputsBinding,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<Fp>>, SealError> {
    open(
        &OpModeR::Auth(sender.to_hpke()),
        reply,
        &binding.info(),
        sealed,
    )
}

/// Format byte, encapsulated key, then the elements (16 bytes each, little-endian) encrypted.
fn seal(
    mode: &OpModeS<'_, Kem>,
    recipient: CustodianPublicKey,
    info: &[u8],
    values: &[Fp],
) -> Result<Vec<u8>, SealError> {
    if values.len() > MAX_ELEMENTS {
        return Err(SealError::Malformed);
    }
    let mut plaintext = Zeroizing::new(Vec::with_capacity(values.len() * ELEMENT_LEN));
    for v in values {
        plaintext.extend_from_slice(&v.to_le_bytes());
    }
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(mode, &recipient.to_hpke(), info, &plaintext, &[])
            .map_err(|_| SealError::UnusableKey)?;
    let mut out = Vec::with_capacity(1 + ENC_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(
    mode: &OpModeR<'_, Kem>,
    key: &CustodianSecretKey,
    info: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<Fp>>, SealError> {
    let body_len = sealed
        .len()
        .checked_sub(1 + ENC_LEN + TAG_LEN)
        .ok_or(SealError::Malformed)?;
    if sealed[0] != FORMAT_V1
        || body_len % ELEMENT_LEN != 0
        || body_len / ELEMENT_LEN > MAX_ELEMENTS
    {
        return Err(SealError::Malformed);
    }
    let enc = EncappedKey::from_bytes(&sealed[1..1 + ENC_LEN]).map_err(|_| SealError::Malformed)?;
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            mode,
            &key.0,
            &enc,
            info,
            &sealed[1 + ENC_LEN..],
            &[],
        )
        .map_err(|_| SealError::DoesNotOpen)?,
    );
    let mut values = Zeroizing::new(Vec::with_capacity(body_len / ELEMENT_LEN));
    for chunk in plaintext.chunks_exact(ELEMENT_LEN) {
        let bytes: [u8; ELEMENT_LEN] = chunk.try_into().expect("exact chunks");
        // Authenticated bytes that are not canonical can only come from a broken sender.
        values.push(Fp::from_le_bytes(bytes).ok_or(SealError::Malformed)?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<Fp> {
        vec![
            Fp::from(3),
            Fp::from_i128(-7),
            Fp::from_u128(u128::MAX >> 2),
        ]
    }

    #[test]
    fn inputs_open_only_for_their_custodian_and_request() {
        let key = CustodianSecretKey::generate();
        let binding = InputsBinding {
            request_id: "0123456789abcdef",
            package: PackageId([1; 32]),
            custodian: 2,
        };
        let sealed = seal_inputs(key.public(), &binding, &values()).unwrap();
        assert_eq!(*open_inputs(&key, &binding, &sealed).unwrap(), values());
        let other = CustodianSecretKey::generate();
        assert_eq!(
            open_inputs(&other, &binding, &sealed),
            Err(SealError::DoesNotOpen)
        );
        for wrong in [
            InputsBinding {
                custodian: 3,
                ..binding
            },
            InputsBinding {
                request_id: "0123456789abcdeg",
                ..binding
            },
            InputsBinding {
                package: PackageId([2; 32]),
                ..binding
            },
        ] {
            assert_eq!(
                open_inputs(&key, &wrong, &sealed),
                Err(SealError::DoesNotOpen)
            );
        }
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_inputs(&key, &binding, &flipped),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            open_inputs(&key, &binding, &sealed[..20]),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn outputs_open_only_from_the_custodian_that_sealed_them() {
        let reply = CustodianSecretKey::generate();
        let custodian = CustodianSecretKey::generate();
        let binding = OutputsBinding {
            request: [5; 32],
            custodian: 1,
        };
        let sealed = seal_outputs(reply.public(), &custodian, &binding, &values()).unwrap();
        assert_eq!(
            *open_outputs(&reply, custodian.public(), &binding, &sealed).unwrap(),
            values()
        );
        // Sealed to the same reply key by anyone else (the coordinator, say): refused.
        let forger = CustodianSecretKey::generate();
        let forged = seal_outputs(reply.public(), &forger, &binding, &values()).unwrap();
        assert_eq!(
            open_outputs(&reply, custodian.public(), &binding, &forged),
            Err(SealError::DoesNotOpen)
        );
        let wrong = OutputsBinding {
            custodian: 2,
            ..binding
        };
        assert_eq!(
            open_outputs(&reply, custodian.public(), &wrong, &sealed),
            Err(SealError::DoesNotOpen)
        );
    }
}
