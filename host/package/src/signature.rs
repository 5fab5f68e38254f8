//! The signature section: format, signing and verification.

use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, SecretKey};

/// The custom section's name.
pub const SECTION_NAME: &str = "quorumvm-signature";
/// Version of the section's payload layout.
const FORMAT: u8 = 1;
/// Signed messages are `DOMAIN || unsigned bytes`, so a package signature can never be replayed
/// as a signature over anything else this key signs (approvals, tickets).
const DOMAIN: &[u8] = b"quorumvm program package v1\0";

/// The payload: format byte, public key, signature.
const PAYLOAD_LEN: usize = 1 + 32 + 64;
/// Section contents: the name (a one-byte length, then the name) and the payload.
const CONTENTS_LEN: usize = 1 + SECTION_NAME.len() + PAYLOAD_LEN;
/// The whole section: id 0, a one-byte LEB128 size (the contents are below 128 bytes), contents.
const SECTION_LEN: usize = 2 + CONTENTS_LEN;

/// The 8-byte preamble of a component (magic, version 0x0d, layer 1).
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A package's id: the SHA-256 of its signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageId(pub [u8; 32]);

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

pub fn package_id(signed: &[u8]) -> PackageId {
    PackageId(Sha256::digest(signed).into())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("not a WebAssembly component (the component preamble is missing)")]
    NotAComponent,
    #[error("the package is already signed")]
    AlreadySigned,
    #[error("the package is not signed (no `{SECTION_NAME}` section at its end)")]
    Unsigned,
    #[error("the signature section has an unknown format {0}")]
    UnknownFormat(u8),
    #[error("the package is signed by {found}, not by the expected publisher {expected}")]
    WrongSigner { found: String, expected: String },
    #[error("the signature does not verify: the package was modified after signing")]
    BadSignature,
}

fn section_header() -> [u8; 3 + SECTION_NAME.len()] {
    let mut h = [0u8; 3 + SECTION_NAME.len()];
    h[0] = 0; // custom section id
    h[1] = CONTENTS_LEN as u8;
    h[2] = SECTION_NAME.len() as u8;
    h[3..].copy_from_slice(SECTION_NAME.as_bytes());
    h
}

/// Splits a signed package into the bytes the signature covers and the signature payload.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), SignatureError> {
    if !bytes.starts_with(&COMPONENT_PREAMBLE) {
        return Err(SignatureError::NotAComponent);
    }
    if bytes.len() < COMPONENT_PREAMBLE.len() + SECTION_LEN {
        return Err(SignatureError::Unsigned);
    }
    let (body, section) = bytes.split_at(bytes.len() - SECTION_LEN);
    let header = section_header();
    if !section.starts_with(&header) {
        return Err(SignatureError::Unsigned);
    }
    Ok((body, &section[header.len()..]))
}

/// The unsigned component inside a signed package.
pub fn unsigned_part(signed: &[u8]) -> Result<&[u8], SignatureError> {
    split(signed).map(|(body, _)| body)
}

/// The public key a signed package names as its signer, without checking the signature (for
/// display: only [`verify`] says whether the claim is true).
pub fn claimed_signer(signed: &[u8]) -> Option<[u8; 32]> {
    let (_, payload) = split(signed).ok()?;
    payload[1..33].try_into().ok()
}

fn message(body: &[u8]) -> Vec<u8> {
    [DOMAIN, body].concat()
}

/// Signs an unsigned package, returning the signed bytes.
pub fn sign(unsigned: &[u8], key: &SecretKey) -> Result<Vec<u8>, SignatureError> {
    if !unsigned.starts_with(&COMPONENT_PREAMBLE) {
        return Err(SignatureError::NotAComponent);
    }
    if split(unsigned).is_ok() {
        return Err(SignatureError::AlreadySigned);
    }
    let signature = key.0.sign(&message(unsigned));
    let mut out = Vec::with_capacity(unsigned.len() + SECTION_LEN);
    out.extend_from_slice(unsigned);
    out.extend_from_slice(&section_header());
    out.push(FORMAT);
    out.extend_from_slice(&key.public().to_bytes());
    out.extend_from_slice(&signature.to_bytes());
    Ok(out)
}

/// Verifies a signed package against the publisher's public key; returns the package id.
pub fn verify(signed: &[u8], expected: &PublicKey) -> Result<PackageId, SignatureError> {
    let (body, payload) = split(signed)?;
    if payload[0] != FORMAT {
        return Err(SignatureError::UnknownFormat(payload[0]));
    }
    let key_bytes: [u8; 32] = payload[1..33].try_into().expect("fixed layout");
    if key_bytes != expected.to_bytes() {
        return Err(SignatureError::WrongSigner {
            found: hex::encode(key_bytes),
            expected: expected.to_hex(),
        });
    }
    let sig_bytes: [u8; 64] = payload[33..].try_into().expect("fixed layout");
    expected
        .0
        .verify_strict(&message(body), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(package_id(signed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package() -> Vec<u8> {
        let src = "input x\nconst seven = 7\nadd t = x seven\nmul y = t t\noutput y\n";
        quorumvm_compiler::compile_to_package(src, "square")
            .unwrap()
            .1
    }

    #[test]
    fn every_flipped_byte_breaks_verification() {
        let key = SecretKey::generate();
        let signed = sign(&package(), &key).unwrap();
        let id = verify(&signed, &key.public()).unwrap();
        assert_eq!(id, package_id(&signed));
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x01;
            assert!(
                verify(&bad, &key.public()).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn signed_package_is_still_a_valid_component() {
        let key = SecretKey::generate();
        let signed = sign(&package(), &key).unwrap();
        let mut validator =
            wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        validator.validate_all(&signed).unwrap();
        let sandbox = quorumvm_sandbox::Sandbox::new().unwrap();
        let (manifest, _) = sandbox
            .read_package(&signed, quorumvm_sandbox::package_limits())
            .unwrap();
        assert_eq!(manifest.name, "square");
    }

    #[test]
    fn misuse_is_refused() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let unsigned = package();
        assert_eq!(
            verify(&unsigned, &key.public()),
            Err(SignatureError::Unsigned)
        );
        let signed = sign(&unsigned, &key).unwrap();
        assert_eq!(sign(&signed, &key), Err(SignatureError::AlreadySigned));
        assert!(matches!(
            verify(&signed, &other.public()),
            Err(SignatureError::WrongSigner { .. })
        ));
        assert_eq!(sign(b"not wasm", &key), Err(SignatureError::NotAComponent));
        assert_eq!(unsigned_part(&signed).unwrap(), &unsigned[..]);
        // Appending anything after the signature section unsigns the package.
        let mut extended = signed.clone();
        extended.extend_from_slice(&[0, 1, 0]);
        assert_eq!(
            verify(&extended, &key.public()),
            Err(SignatureError::Unsigned)
        );
    }
}
