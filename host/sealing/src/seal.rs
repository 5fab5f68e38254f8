//! Sealing one Shamir share to one custodian, bound to where it belongs.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use quorumvm_core::Fp;
use quorumvm_core::shamir::Share;
use quorumvm_package::PackageId;
use zeroize::Zeroizing;

use crate::keys::{CustodianPublicKey, CustodianSecretKey, Kem};

type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// The first byte of every sealed share: the format and cipher suite, so that a later suite can
/// be told apart instead of failing as a corrupt ciphertext.
const FORMAT_V1: u8 = 1;
/// Domain separation: these keys are derived for QuorumVM shares and nothing else.
const INFO_TAG: &[u8] = b"quorumvm sealed share v1";
const ENC_LEN: usize = 32;
const SHARE_LEN: usize = 16;
const TAG_LEN: usize = 16;
const CIPHERTEXT_LEN: usize = SHARE_LEN + TAG_LEN;
/// The length of a sealed share in bytes.
pub const SEALED_LEN: usize = 1 + ENC_LEN + CIPHERTEXT_LEN;

/// What a sealed share belongs to. Every field is public; binding them into the seal makes a
/// ciphertext useless anywhere else. `custodian` is also the share's x-coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareBinding<'a> {
    pub package: PackageId,
    pub custodian: u32,
    pub secret: &'a str,
    /// 0 for a share as its publisher dealt it; the epoch of the custodians' refresh
    /// ([`quorumvm_core::reshare`]) that made it otherwise, so that a share of one epoch never
    /// opens as another's.
    pub epoch: u64,
}

impl ShareBinding<'_> {
    /// HPKE's `info`: a tag, then each field with a fixed width or a length prefix, so that no
    /// two bindings encode alike (`("ab", …)` and `("a", "b…")` cannot collide).
    fn info(&self) -> Vec<u8> {
        let name = self.secret.as_bytes();
        let mut info = Vec::with_capacity(INFO_TAG.len() + 32 + 4 + 8 + name.len());
        info.extend_from_slice(INFO_TAG);
        info.extend_from_slice(&self.package.0);
        info.extend_from_slice(&self.custodian.to_be_bytes());
        info.extend_from_slice(&(name.len() as u64).to_be_bytes());
        info.extend_from_slice(name);
        // Epoch 0 encodes as the first format did, so dealt shares sealed before epochs existed
        // still open.
        if self.epoch > 0 {
            info.extend_from_slice(&self.epoch.to_be_bytes());
        }
        info
    }
}

/// A share sealed to one custodian: format byte, HPKE encapsulated key, ciphertext with tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShare {
    enc: [u8; ENC_LEN],
    ciphertext: [u8; CIPHERTEXT_LEN],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("a share for custodian {share_x} cannot be sealed as custodian {custodian}'s")]
    WrongCustodian { share_x: u32, custodian: u32 },
    #[error("the custodian's public key is not usable (a low-order X25519 point)")]
    UnusableKey,
    #[error("a sealed share is {SEALED_LEN} bytes starting with format {FORMAT_V1}")]
    Malformed,
    #[error(
        "the sealed share does not open: another recipient, package, custodian or secret, or altered bytes"
    )]
    DoesNotOpen,
}

impl SealedShare {
    pub fn to_bytes(&self) -> [u8; SEALED_LEN] {
        let mut out = [0u8; SEALED_LEN];
        out[0] = FORMAT_V1;
        out[1..1 + ENC_LEN].copy_from_slice(&self.enc);
        out[1 + ENC_LEN..].copy_from_slice(&self.ciphertext);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SealedShare, SealError> {
        if bytes.len() != SEALED_LEN || bytes[0] != FORMAT_V1 {
            return Err(SealError::Malformed);
        }
        Ok(SealedShare {
            enc: bytes[1..1 + ENC_LEN].try_into().expect("length checked"),
            ciphertext: bytes[1 + ENC_LEN..].try_into().expect("length checked"),
        })
    }
}

/// Seals `share` to `recipient`, bound to `binding`. Runs on the publisher's machine.
pub fn seal_share(
    recipient: CustodianPublicKey,
    binding: &ShareBinding<'_>,
    share: &Share,
) -> Result<SealedShare, SealError> {
    if share.x != binding.custodian {
        return Err(SealError::WrongCustodian {
            share_x: share.x,
            custodian: binding.custodian,
        });
    }
    let plaintext = Zeroizing::new(share.y.to_le_bytes());
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &recipient.to_hpke(),
        &binding.info(),
        &plaintext[..],
        &[],
    )
    .map_err(|_| SealError::UnusableKey)?;
    Ok(SealedShare {
        enc: enc.to_bytes().into(),
        ciphertext: ciphertext
            .as_slice()
            .try_into()
            .expect("ChaCha20-Poly1305 adds a 16-byte tag to the 16-byte share"),
    })
}

/// Opens a share sealed to `key` under exactly `binding`; the result is the custodian's point
/// `(binding.custodian, y)`, wiped from memory when dropped.
pub fn open_share(
    key: &CustodianSecretKey,
    binding: &ShareBinding<'_>,
    sealed: &SealedShare,
) -> Result<Share, SealError> {
    let enc = EncappedKey::from_bytes(&sealed.enc).map_err(|_| SealError::Malformed)?;
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &key.0,
            &enc,
            &binding.info(),
            &sealed.ciphertext,
            &[],
        )
        .map_err(|_| SealError::DoesNotOpen)?,
    );
    let bytes: Zeroizing<[u8; SHARE_LEN]> = Zeroizing::new(
        plaintext
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Malformed)?,
    );
    // Authenticated bytes that are not a canonical element can only come from a publisher bug.
    let y = Fp::from_le_bytes(*bytes).ok_or(SealError::Malformed)?;
    Ok(Share {
        x: binding.custodian,
        y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_core::shamir::{self, Threshold};

    fn binding(secret: &str) -> ShareBinding<'_> {
        ShareBinding {
            package: PackageId([7u8; 32]),
            custodian: 2,
            secret,
            epoch: 0,
        }
    }

    fn share_for(x: u32, y: u128) -> Share {
        Share {
            x,
            y: Fp::from_u128(y),
        }
    }

    #[test]
    fn a_share_opens_only_at_its_own_epoch() {
        let key = CustodianSecretKey::generate();
        let share = share_for(2, 77);
        let at = |epoch| ShareBinding {
            epoch,
            ..binding("w")
        };
        let sealed = seal_share(key.public(), &at(1), &share).unwrap();
        assert_eq!(open_share(&key, &at(1), &sealed).unwrap(), share);
        for other in [0, 2, u64::MAX] {
            assert_eq!(
                open_share(&key, &at(other), &sealed),
                Err(SealError::DoesNotOpen)
            );
        }
    }

    #[test]
    fn round_trip_through_bytes() {
        let key = CustodianSecretKey::generate();
        let b = binding("w1");
        let share = share_for(2, 0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let sealed = seal_share(key.public(), &b, &share).unwrap();
        let bytes = sealed.to_bytes();
        let back = SealedShare::from_bytes(&bytes).unwrap();
        assert_eq!(open_share(&key, &b, &back).unwrap(), share);
    }

    #[test]
    fn every_custodian_opens_only_its_own_share_of_a_real_sharing() {
        let keys: Vec<_> = (0..3).map(|_| CustodianSecretKey::generate()).collect();
        let secret = Fp::from_i128(-350);
        let shares = shamir::share(
            secret,
            Threshold::new(2, 3).unwrap(),
            &mut rand::rngs::OsRng,
        );
        let package = PackageId([9u8; 32]);
        let sealed: Vec<_> = shares
            .iter()
            .zip(&keys)
            .map(|(s, k)| {
                let b = ShareBinding {
                    package,
                    custodian: s.x,
                    secret: "w1",
                    epoch: 0,
                };
                seal_share(k.public(), &b, s).unwrap()
            })
            .collect();
        let opened: Vec<_> = sealed
            .iter()
            .zip(&keys)
            .zip(&shares)
            .map(|((c, k), s)| {
                let b = ShareBinding {
                    package,
                    custodian: s.x,
                    secret: "w1",
                    epoch: 0,
                };
                open_share(k, &b, c).unwrap()
            })
            .collect();
        assert_eq!(opened, shares);
        assert_eq!(
            shamir::reconstruct(&opened[..2], Threshold::new(2, 3).unwrap()).unwrap(),
            secret
        );
    }

    #[test]
    fn sealing_is_randomized() {
        let key = CustodianSecretKey::generate();
        let share = share_for(2, 42);
        let a = seal_share(key.public(), &binding("w1"), &share).unwrap();
        let b = seal_share(key.public(), &binding("w1"), &share).unwrap();
        assert_ne!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn another_recipient_cannot_open() {
        let key = CustodianSecretKey::generate();
        let other = CustodianSecretKey::generate();
        let sealed = seal_share(key.public(), &binding("w1"), &share_for(2, 42)).unwrap();
        assert_eq!(
            open_share(&other, &binding("w1"), &sealed).unwrap_err(),
            SealError::DoesNotOpen
        );
    }

    #[test]
    fn changing_any_bound_field_fails() {
        let key = CustodianSecretKey::generate();
        let b = binding("w1");
        let sealed = seal_share(key.public(), &b, &share_for(2, 42)).unwrap();
        let mut other_package = b;
        other_package.package.0[31] ^= 1;
        let mut other_custodian = b;
        other_custodian.custodian = 3;
        let mut other_secret = b;
        other_secret.secret = "w2";
        let mut prefix_secret = b;
        prefix_secret.secret = "w";
        for wrong in [other_package, other_custodian, other_secret, prefix_secret] {
            assert_eq!(
                open_share(&key, &wrong, &sealed).unwrap_err(),
                SealError::DoesNotOpen,
                "{wrong:?}"
            );
        }
        assert!(open_share(&key, &b, &sealed).is_ok());
    }

    #[test]
    fn flipping_any_byte_fails() {
        let key = CustodianSecretKey::generate();
        let b = binding("w1");
        let bytes = seal_share(key.public(), &b, &share_for(2, 42))
            .unwrap()
            .to_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = bytes;
                tampered[i] ^= bit;
                let opened = SealedShare::from_bytes(&tampered)
                    .and_then(|sealed| open_share(&key, &b, &sealed));
                assert!(opened.is_err(), "byte {i} bit {bit:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn malformed_lengths_and_formats_are_refused() {
        assert_eq!(
            SealedShare::from_bytes(&[]).unwrap_err(),
            SealError::Malformed
        );
        let mut bytes = [0u8; SEALED_LEN];
        assert_eq!(
            SealedShare::from_bytes(&bytes).unwrap_err(),
            SealError::Malformed
        );
        bytes[0] = FORMAT_V1;
        assert!(SealedShare::from_bytes(&bytes).is_ok());
        assert_eq!(
            SealedShare::from_bytes(&bytes[..SEALED_LEN - 1]).unwrap_err(),
            SealError::Malformed
        );
    }

    #[test]
    fn a_share_is_sealed_only_under_its_own_index() {
        let key = CustodianSecretKey::generate();
        assert_eq!(
            seal_share(key.public(), &binding("w1"), &share_for(3, 42)).unwrap_err(),
            SealError::WrongCustodian {
                share_x: 3,
                custodian: 2
            }
        );
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        // The all-zero point gives an all-zero Diffie-Hellman output, which HPKE rejects.
        let zero = CustodianPublicKey::from_bytes([0u8; 32]);
        assert_eq!(
            seal_share(zero, &binding("w1"), &share_for(2, 42)).unwrap_err(),
            SealError::UnusableKey
        );
    }
}
