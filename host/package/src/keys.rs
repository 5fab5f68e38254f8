//! Publisher keys and their files: one line of hex each, with a type prefix so that a public
//! key is never mistaken for a secret one.

use std::fs;
use std::io::Write;
use std::path::Path;

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

impl SecretKey {
    /// Signs `domain || message`. Every kind of statement this key signs (approvals, tickets,
    /// orders) has its own domain, and none can be replayed as another or as a package
    /// signature, whose domain is private to [`crate::signature`].
    pub fn sign_statement(&self, domain: Domain, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(&domain.prefixed(message)).to_bytes()
    }
}

/// The statement kinds a QuorumVM key signs besides packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A custodian operator approves a package version.
    Approval,
    /// The coordinator orders a custodian (a session ticket, an activation, a batch of
    /// preprocessing, an abort).
    Order,
    /// A publisher states which sealed shares it dealt to which custodian.
    Deal,
    /// A custodian operator approves a caller identity and its key.
    Identity,
    /// A caller asks for one evaluation.
    Request,
    /// A custodian operator approves revoking a caller identity, for good.
    Revocation,
    /// A custodian operator approves retiring a package version, for good.
    Retirement,
    /// The coordinator, or one custodian's operator, freezes a caller identity or a version at
    /// itself.
    Freeze,
    /// A custodian operator approves lifting the freezes of an identity or a version.
    Unfreeze,
    /// The coordinator's operator clears a custodian the coordinator holds suspect.
    Clearance,
    /// The coordinator's operator asks for a refresh of the custodians' shares now.
    Reshare,
    /// A custodian operator approves a change of the cluster's membership (who the custodians
    /// are, and k).
    Membership,
}

impl Domain {
    fn prefixed(self, message: &[u8]) -> Vec<u8> {
        let tag: &[u8] = match self {
            Domain::Approval => b"quorumvm approval v1\0",
            Domain::Order => b"quorumvm coordinator order v1\0",
            Domain::Deal => b"quorumvm share deal v1\0",
            Domain::Identity => b"quorumvm identity approval v1\0",
            Domain::Request => b"quorumvm caller request v1\0",
            Domain::Revocation => b"quorumvm identity revocation v1\0",
            Domain::Retirement => b"quorumvm version retirement v1\0",
            Domain::Freeze => b"quorumvm freeze v1\0",
            Domain::Unfreeze => b"quorumvm unfreeze approval v1\0",
            Domain::Clearance => b"quorumvm custodian clearance v1\0",
            Domain::Reshare => b"quorumvm reshare request v1\0",
            Domain::Membership => b"quorumvm membership approval v1\0",
        };
        let mut out = Vec::with_capacity(tag.len() + message.len());
        out.extend_from_slice(tag);
        out.extend_from_slice(message);
        out
    }
}

impl PublicKey {
    /// Checks a [`SecretKey::sign_statement`] signature (strictly: no malleable encodings).
    pub fn verify_statement(&self, domain: Domain, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(
                &domain.prefixed(message),
                &ed25519_dalek::Signature::from_bytes(signature),
            )
            .is_ok()
    }

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

/// Writes a secret key file atomically with owner-only permissions: a temporary file beside it
/// (created new, mode 0600), fsynced, renamed over `path`, and the directory fsynced, since the
/// rename is durable only once the directory entry is. A crash while writing leaves either no
/// key or the whole key, never a truncated one that a restart would refuse or, worse, replace.
pub fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let dir = path
        .parent()
        .ok_or_else(|| invalid("a key file needs a parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| invalid("a key file needs a name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A temporary file left by a crash is incomplete by definition.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_verify_only_in_their_domain_and_unchanged() {
        let sk = SecretKey::generate();
        let sig = sk.sign_statement(Domain::Approval, b"package 1");
        assert!(
            sk.public()
                .verify_statement(Domain::Approval, b"package 1", &sig)
        );
        assert!(
            !sk.public()
                .verify_statement(Domain::Order, b"package 1", &sig)
        );
        assert!(
            !sk.public()
                .verify_statement(Domain::Approval, b"package 2", &sig)
        );
        let other = SecretKey::generate();
        assert!(
            !other
                .public()
                .verify_statement(Domain::Approval, b"package 1", &sig)
        );
    }

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
