//! Signed program packages.
//!
//! A package is signed by appending one custom section, `quorumvm-signature`, to the component:
//! a format byte, the publisher's ed25519 public key and the signature over every byte before
//! the section (prefixed by a domain-separation tag). Runtimes ignore custom sections, so a
//! signed package is still an ordinary component; any changed byte breaks verification. This is
//! the shape of wasmsign2's embedded signatures, reduced to the one key and one section we need.
//! The package id is the SHA-256 of the signed bytes.

pub mod keys;
pub mod signature;

pub use keys::{Domain, PublicKey, SecretKey, write_secret_file};
pub use signature::{
    PackageId, SignatureError, claimed_signer, package_id, sign, unsigned_part, verify,
};
