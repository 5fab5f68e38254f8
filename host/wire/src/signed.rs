//! A statement as it travels: the exact JSON text that was signed, and an ed25519 signature
//! over it under one [`Domain`]. Verification covers the bytes received, so nothing is
//! re-serialized before checking, and a statement of one kind never verifies as another.

use quorumvm_package::{Domain, PublicKey, SecretKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The statement's JSON, exactly as signed.
    pub body: String,
    /// ed25519 signature (hex) over `body` in the statement's domain.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("the signature does not verify under the expected key")]
    BadSignature,
    #[error("the signed statement is malformed: {0}")]
    Malformed(String),
}

impl Signed {
    pub fn sign<T: Serialize>(value: &T, domain: Domain, key: &SecretKey) -> Signed {
        let body = serde_json::to_string(value).expect("statements serialize");
        let signature = hex::encode(key.sign_statement(domain, body.as_bytes()));
        Signed { body, signature }
    }

    /// Checks the signature first, and only then parses the statement.
    pub fn open<T: DeserializeOwned>(
        &self,
        domain: Domain,
        key: &PublicKey,
    ) -> Result<T, SignedError> {
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| SignedError::BadSignature)?;
        if !key.verify_statement(domain, self.body.as_bytes(), &sig) {
            return Err(SignedError::BadSignature);
        }
        self.parse_unverified()
    }

    /// The statement without checking who signed it: only to learn which key to check it
    /// with (a request names its identity), never to act on.
    pub fn parse_unverified<T: DeserializeOwned>(&self) -> Result<T, SignedError> {
        serde_json::from_str(&self.body).map_err(|e| SignedError::Malformed(e.to_string()))
    }

    /// SHA-256 of body and signature: what approvals and session terms bind.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.body.len() as u64).to_be_bytes());
        h.update(self.body.as_bytes());
        h.update(self.signature.as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_open_only_unchanged_in_their_domain_under_their_key() {
        let key = SecretKey::generate();
        let signed = Signed::sign(&vec![1u32, 2], Domain::Request, &key);
        assert_eq!(
            signed.open::<Vec<u32>>(Domain::Request, &key.public()),
            Ok(vec![1, 2])
        );
        assert_eq!(
            signed.open::<Vec<u32>>(Domain::Deal, &key.public()),
            Err(SignedError::BadSignature)
        );
        let other = SecretKey::generate();
        assert_eq!(
            signed.open::<Vec<u32>>(Domain::Request, &other.public()),
            Err(SignedError::BadSignature)
        );
        let mut altered = signed.clone();
        altered.body = "[1,3]".into();
        assert_eq!(
            altered.open::<Vec<u32>>(Domain::Request, &key.public()),
            Err(SignedError::BadSignature)
        );
        assert_ne!(altered.digest(), signed.digest());
    }
}
