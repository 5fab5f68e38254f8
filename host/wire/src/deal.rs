//! The deal: the publisher's signed record of which sealed share of which secret it dealt to
//! which custodian (under which sealing key).
//!
//! HPKE Base mode lets anyone who knows a custodian's public key seal a share to it, so a sealed
//! share alone says nothing about who made it. The deal closes that gap: the publisher signs,
//! with the same ed25519 key that signs the package, the SHA-256 of every sealed share, and the
//! custodian operators' approvals cover the deal's digest. A custodian opens a share only if the
//! deal of the version, signed by the package's own publisher, lists exactly that ciphertext for
//! it under its own key; a share substituted by whoever relays it (the coordinator) is refused.
//! This is sign-then-encrypt with the ciphertext bound into the signature, the "equivalent" of
//! HPKE's Auth mode that needs no second (X25519) publisher key.

use std::collections::BTreeMap;

use quorumvm_package::PackageId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the publisher signs (in [`quorumvm_package::Domain::Deal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deal {
    pub package_id: String,
    pub threshold: usize,
    pub custodians: Vec<Dealt>,
}

/// What one custodian was dealt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dealt {
    pub custodian: u32,
    /// The X25519 key (hex) the shares were sealed to.
    pub sealing_key: String,
    /// Secret name → SHA-256 (hex) of the sealed share's bytes.
    pub shares: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    #[error("the deal is for package {0}, not this one")]
    OtherPackage(String),
    #[error("the deal is for threshold {got}, the cluster's is {expected}")]
    Threshold { got: usize, expected: usize },
    #[error("the deal deals nothing to custodian {0}, or deals to it twice")]
    NotDealt(u32),
    #[error("the deal sealed custodian {0}'s shares to another key than its configured one")]
    OtherKey(u32),
    #[error("the sealed share of `{0}` is not the one the publisher dealt")]
    Substituted(String),
    #[error("the deal and the manifest disagree on the secrets: {0}")]
    Secrets(String),
}

/// The SHA-256 (hex) of a sealed share, as a deal lists it.
pub fn share_digest(sealed: &[u8]) -> String {
    hex::encode(Sha256::digest(sealed))
}

impl Deal {
    /// What custodian `me` (whose sealing key is `key`, hex) must check before opening
    /// `sealed` (secret name → sealed bytes): the deal is for this package and threshold, names
    /// `me` once under its own key, and lists exactly these ciphertexts for exactly the
    /// manifest's secrets.
    pub fn check_mine(
        &self,
        package: &PackageId,
        threshold: usize,
        me: u32,
        key: &str,
        secrets: &[&str],
        sealed: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), DealError> {
        if self.package_id != package.to_string() {
            return Err(DealError::OtherPackage(self.package_id.clone()));
        }
        if self.threshold != threshold {
            return Err(DealError::Threshold {
                got: self.threshold,
                expected: threshold,
            });
        }
        let mut mine = self.custodians.iter().filter(|d| d.custodian == me);
        let (Some(dealt), None) = (mine.next(), mine.next()) else {
            return Err(DealError::NotDealt(me));
        };
        if !dealt.sealing_key.eq_ignore_ascii_case(key) {
            return Err(DealError::OtherKey(me));
        }
        let listed: Vec<&str> = dealt.shares.keys().map(String::as_str).collect();
        let mut declared = secrets.to_vec();
        declared.sort_unstable();
        if listed != declared {
            return Err(DealError::Secrets(format!(
                "dealt {listed:?}, declared {declared:?}"
            )));
        }
        for (name, digest) in &dealt.shares {
            let given = sealed
                .get(name)
                .ok_or_else(|| DealError::Substituted(name.clone()))?;
            if share_digest(given) != *digest {
                return Err(DealError::Substituted(name.clone()));
            }
        }
        if let Some(extra) = sealed.keys().find(|n| !dealt.shares.contains_key(*n)) {
            return Err(DealError::Secrets(format!("`{extra}` was not dealt")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custodian_accepts_only_the_ciphertexts_dealt_to_it_under_its_key() {
        let id = PackageId([3; 32]);
        let deal = Deal {
            package_id: id.to_string(),
            threshold: 2,
            custodians: vec![Dealt {
                custodian: 1,
                sealing_key: "ab".into(),
                shares: BTreeMap::from([("w".to_string(), share_digest(b"sealed-w"))]),
            }],
        };
        let sealed = BTreeMap::from([("w".to_string(), b"sealed-w".to_vec())]);
        assert_eq!(deal.check_mine(&id, 2, 1, "AB", &["w"], &sealed), Ok(()));
        let swapped = BTreeMap::from([("w".to_string(), b"sealed-x".to_vec())]);
        assert_eq!(
            deal.check_mine(&id, 2, 1, "ab", &["w"], &swapped),
            Err(DealError::Substituted("w".into()))
        );
        assert_eq!(
            deal.check_mine(&id, 2, 1, "cd", &["w"], &sealed),
            Err(DealError::OtherKey(1))
        );
        assert_eq!(
            deal.check_mine(&id, 2, 2, "ab", &["w"], &sealed),
            Err(DealError::NotDealt(2))
        );
        assert!(matches!(
            deal.check_mine(&PackageId([4; 32]), 2, 1, "ab", &["w"], &sealed),
            Err(DealError::OtherPackage(_))
        ));
        assert!(matches!(
            deal.check_mine(&id, 2, 1, "ab", &["w", "v"], &sealed),
            Err(DealError::Secrets(_))
        ));
    }
}
