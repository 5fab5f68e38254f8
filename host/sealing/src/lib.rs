//! Shamir shares sealed, on the publisher's machine, to one custodian's X25519 key.
//!
//! `quorumvm install` shares each secret coefficient locally and seals share `i` to custodian
//! `i`'s public key; the coordinator only forwards the sealed bytes, so it never sees a share.
//! Sealing is HPKE (RFC 9180) in base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305, through the `hpke` crate: a standard, test-vectored construction instead of a
//! hand-assembled X25519 + HKDF + AEAD one. Every seal uses a fresh ephemeral key.
//!
//! A sealed share is bound to its [`ShareBinding`] (package id, custodian index, secret name)
//! through HPKE's `info`, which enters the key schedule: opening it under any other binding fails,
//! so a ciphertext cannot be replayed into another package, custodian or secret.
//!
//! [`envelope`] seals, with the same suite, a caller's private inputs to each custodian and a
//! custodian's output shares back to the caller.

pub mod envelope;
pub mod keys;
pub mod seal;

pub use envelope::{
    InputsBinding, OutputsBinding, open_inputs, open_outputs, seal_inputs, seal_outputs,
};
pub use keys::{CustodianPublicKey, CustodianSecretKey, KeyError};
pub use seal::{SEALED_LEN, SealError, SealedShare, ShareBinding, open_share, seal_share};
