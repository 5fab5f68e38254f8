//! Publisher keys and their files: one line of hex each, with a type prefix so that a public
//! key is never mistaken for a secret one.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;

const SECRET_PREFIX: &str = "quorumvm-ed25519-secret:";
const PUBLIC_PREFIX: &str = "quorumvm-ed25519-public:";

/// A publisher's signing key (zeroized on drop by ed25519-dalek).
pub struct SecretKey(pub(crate) SigningKey);

/// A publisher's verifying key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a QuorumVM {0} key: expected a line starting with `{1}`")]
    WrongKind(&'static str, &'static str),
    #[error("the key is not 32 bytes of hex")]
    BadHex,
    #[error("the bytes are not a valid ed25519 public key")]
    Invalid,
}

fn decode32(hex_text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| KeyError::BadHex)?;
    bytes.try_into().map_err(|_| KeyError::BadHex)
}

impl SecretKey {
    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::generate(&mut OsRng))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key file's text. It holds the secret: write it with owner-only permissions.
    pub fn to_file_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!(
            "{SECRET_PREFIX}{}\n",
            hex::encode(self.0.to_bytes())
        ))
    }

    pub fn from_file_text(text: &str) -> Result<SecretKey, KeyError> {
        let body = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::WrongKind("secret", SECRET_PREFIX))?;
        let mut seed = decode32(body)?;
        let key = SigningKey::from_bytes(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(SecretKey(key))
    }
}

impl PublicKey {
    pub fn to_bytes(self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::Invalid)
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.to_bytes())
    }

    pub fn to_file_text(self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", self.to_hex())
    }

    /// Reads a public key file, or a bare 64-character hex key.
    pub fn from_file_text(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with(SECRET_PREFIX) {
            return Err(KeyError::WrongKind("public", PUBLIC_PREFIX));
        }
        let body = text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text);
        PublicKey::from_bytes(&decode32(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_do_not_mix() {
        let sk = SecretKey::generate();
        let text = sk.to_file_text();
        let back = SecretKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), sk.public());
        let pk_text = sk.public().to_file_text();
        assert_eq!(PublicKey::from_file_text(&pk_text).unwrap(), sk.public());
        assert!(SecretKey::from_file_text(&pk_text).is_err());
        assert!(PublicKey::from_file_text(&text).is_err());
        assert_eq!(
            PublicKey::from_file_text("quorumvm-ed25519-public:abcd"),
            Err(KeyError::BadHex)
        );
    }
}
