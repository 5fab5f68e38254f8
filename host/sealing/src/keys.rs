//! Custodian share-receiving keys (X25519) and their files: one line of hex each, with a type
//! prefix so that a public key is never mistaken for a secret one, nor an X25519 key for one of
//! the ed25519 signing keys that `quorumvm-package` writes.

use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

/// The HPKE KEM every sealed share uses.
pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
type HpkeSecretKey = <Kem as hpke::Kem>::PrivateKey;
type HpkePublicKey = <Kem as hpke::Kem>::PublicKey;

const SECRET_PREFIX: &str = "quorumvm-x25519-secret:";
const PUBLIC_PREFIX: &str = "quorumvm-x25519-public:";

/// A custodian's key for opening the shares sealed to it. It is zeroized on drop: hpke's X25519
/// private key wraps x25519-dalek's `StaticSecret`, which wipes itself.
pub struct CustodianSecretKey(pub(crate) HpkeSecretKey);

/// A custodian's public key: publishers seal shares to it. Any 32 bytes are accepted (X25519
/// has no invalid encodings); a low-order point makes sealing fail instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustodianPublicKey(pub(crate) [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a QuorumVM X25519 {0} key: expected a line starting with `{1}`")]
    WrongKind(&'static str, &'static str),
    #[error("the key is not 32 bytes of hex")]
    BadHex,
}

/// Decodes 32 bytes of hex into a buffer that is wiped when dropped, since it may be a secret.
fn decode32(hex_text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text.trim(), &mut out[..]).map_err(|_| KeyError::BadHex)?;
    Ok(out)
}

impl CustodianSecretKey {
    pub fn generate() -> CustodianSecretKey {
        CustodianSecretKey(Kem::gen_keypair().0)
    }

    pub fn public(&self) -> CustodianPublicKey {
        CustodianPublicKey(Kem::sk_to_pk(&self.0).to_bytes().into())
    }

    /// The key file's text. It holds the secret: write it with owner-only permissions.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        self.0.write_exact(&mut bytes[..]);
        let mut hex_text = Zeroizing::new([0u8; 64]);
        hex::encode_to_slice(&bytes[..], &mut hex_text[..]).expect("64 bytes hold 32 in hex");
        let mut text = Zeroizing::new(String::with_capacity(SECRET_PREFIX.len() + 65));
        text.push_str(SECRET_PREFIX);
        text.push_str(std::str::from_utf8(&hex_text[..]).expect("hex is ASCII"));
        text.push('\n');
        text
    }

    pub fn from_file_text(text: &str) -> Result<CustodianSecretKey, KeyError> {
        let body = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::WrongKind("secret", SECRET_PREFIX))?;
        let bytes = decode32(body)?;
        let key = HpkeSecretKey::from_bytes(&bytes[..]).expect("32 bytes are an X25519 secret");
        Ok(CustodianSecretKey(key))
    }
}

impl CustodianSecretKey {
    /// A key shared with one peer custodian and no one else: SHA-256 over a tag, the X25519
    /// shared secret and both public keys in a fixed order, so both ends derive the same key.
    /// Custodians authenticate their round messages with it (an HMAC costs a microsecond where
    /// an ed25519 signature and its verification cost about 60).
    pub fn pairwise_key(&self, peer: CustodianPublicKey) -> Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut secret = Zeroizing::new([0u8; 32]);
        self.0.write_exact(&mut secret[..]);
        let shared = x25519_dalek::StaticSecret::from(*secret)
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        let mine = self.public().0;
        let (lo, hi) = if mine <= peer.0 {
            (mine, peer.0)
        } else {
            (peer.0, mine)
        };
        let mut hasher = Sha256::new();
        hasher.update(b"quorumvm pairwise key v1\0");
        hasher.update(shared.as_bytes());
        hasher.update(lo);
        hasher.update(hi);
        Zeroizing::new(hasher.finalize().into())
    }
}

impl std::fmt::Debug for CustodianSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line through Debug: show whose key it is instead.
        write!(f, "CustodianSecretKey(public: {})", self.public().to_hex())
    }
}

impl CustodianPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> CustodianPublicKey {
        CustodianPublicKey(bytes)
    }

    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn to_file_text(self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", self.to_hex())
    }

    /// Reads a public key file, or a bare 64-character hex key (as a config file would hold it).
    pub fn from_file_text(text: &str) -> Result<CustodianPublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with(SECRET_PREFIX) {
            return Err(KeyError::WrongKind("public", PUBLIC_PREFIX));
        }
        let body = text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text);
        Ok(CustodianPublicKey(*decode32(body)?))
    }

    pub(crate) fn to_hpke(self) -> HpkePublicKey {
        HpkePublicKey::from_bytes(&self.0).expect("32 bytes are an X25519 public key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_keys_agree_and_differ_per_pair() {
        let (a, b, c) = (
            CustodianSecretKey::generate(),
            CustodianSecretKey::generate(),
            CustodianSecretKey::generate(),
        );
        assert_eq!(*a.pairwise_key(b.public()), *b.pairwise_key(a.public()));
        assert_ne!(*a.pairwise_key(b.public()), *a.pairwise_key(c.public()));
        assert_ne!(*a.pairwise_key(b.public()), *c.pairwise_key(b.public()));
    }

    #[test]
    fn key_files_round_trip_and_do_not_mix() {
        let sk = CustodianSecretKey::generate();
        let text = sk.to_file_text();
        assert!(text.starts_with(SECRET_PREFIX));
        let back = CustodianSecretKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), sk.public());

        let pk_text = sk.public().to_file_text();
        assert_eq!(
            CustodianPublicKey::from_file_text(&pk_text).unwrap(),
            sk.public()
        );
        assert_eq!(
            CustodianPublicKey::from_file_text(&sk.public().to_hex()).unwrap(),
            sk.public()
        );
        assert_eq!(
            CustodianSecretKey::from_file_text(&pk_text).unwrap_err(),
            KeyError::WrongKind("secret", SECRET_PREFIX)
        );
        assert_eq!(
            CustodianPublicKey::from_file_text(&text).unwrap_err(),
            KeyError::WrongKind("public", PUBLIC_PREFIX)
        );
        assert_eq!(
            CustodianPublicKey::from_file_text("quorumvm-x25519-public:abcd").unwrap_err(),
            KeyError::BadHex
        );
    }

    #[test]
    fn ed25519_key_files_are_refused() {
        let ed = "quorumvm-ed25519-secret:".to_string() + &"11".repeat(32);
        assert!(CustodianSecretKey::from_file_text(&ed).is_err());
    }

    #[test]
    fn generated_keys_differ_and_debug_hides_the_secret() {
        let a = CustodianSecretKey::generate();
        let b = CustodianSecretKey::generate();
        assert_ne!(a.public(), b.public());
        let secret_hex = a.to_file_text()[SECRET_PREFIX.len()..].trim().to_string();
        let shown = format!("{a:?}");
        assert!(!shown.contains(&secret_hex));
        assert!(shown.contains(&a.public().to_hex()));
    }
}
