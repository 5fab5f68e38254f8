//! The custodian's two key files in its data directory.
//!
//! - `signing.key` (ed25519, [`quorumvm_package::SecretKey`]): the operator approves versions
//!   with it (`quorumvm approve`); the server itself only checks that it matches the config.
//! - `sealing.key` (X25519, [`quorumvm_sealing::CustodianSecretKey`]): publishers seal this
//!   custodian's shares to it, and the pairwise keys that authenticate (and, for
//!   preprocessing, encrypt) round messages with the other custodians derive from it.
//!
//! Both are created once, owner-only (0600 in a 0700 directory), and written atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash while creating a key leaves
//! either no key or the whole key, never a truncated one that a restart would refuse or, worse,
//! replace.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_server::keys;
use serde::Serialize;
use zeroize::Zeroizing;

const SIGNING_FILE: &str = "signing.key";
const SEALING_FILE: &str = "sealing.key";

/// A custodian's public keys, as its `[[custodians]]` entry in every config lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustodianPublicKeys {
    /// ed25519 (hex): approvals.
    pub signing_key: String,
    /// X25519 (hex): sealed shares and pairwise keys.
    pub sealing_key: String,
}

/// The keys a running custodian uses.
pub(crate) struct Keys {
    pub signing: PublicKey,
    pub sealing: CustodianSecretKey,
}

/// Creates `signing.key` and `sealing.key` in `data_dir` (and the directory) where they are
/// absent, loads them where present, and returns their public halves.
pub fn init_keys(data_dir: &Path) -> anyhow::Result<CustodianPublicKeys> {
    create_private_dir(data_dir)?;
    keys::create_if_absent(&data_dir.join(SIGNING_FILE), || {
        SecretKey::generate().to_file_text()
    })?;
    keys::create_if_absent(&data_dir.join(SEALING_FILE), || {
        CustodianSecretKey::generate().to_file_text()
    })?;
    let keys = load_keys(data_dir)?;
    Ok(CustodianPublicKeys {
        signing_key: keys.signing.to_hex(),
        sealing_key: keys.sealing.public().to_hex(),
    })
}

/// Loads both keys; never creates one (a server that made up new keys would not match its
/// config, and the operator should learn that from `init`, not from a refusal later).
pub(crate) fn load_keys(data_dir: &Path) -> anyhow::Result<Keys> {
    let signing_text = read_secret(&data_dir.join(SIGNING_FILE))?;
    let signing = SecretKey::from_file_text(&signing_text)
        .with_context(|| format!("{}", data_dir.join(SIGNING_FILE).display()))?
        .public();
    let sealing_text = read_secret(&data_dir.join(SEALING_FILE))?;
    let sealing = CustodianSecretKey::from_file_text(&sealing_text)
        .with_context(|| format!("{}", data_dir.join(SEALING_FILE).display()))?;
    Ok(Keys { signing, sealing })
}

fn read_secret(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    if !path.exists() {
        bail!(
            "{} does not exist: create this custodian's keys first (`init_keys`, which \
             `quorumvm dev --init-only` runs for a local cluster)",
            path.display()
        );
    }
    keys::read(path)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_private_and_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("custodian-1");
        let first = init_keys(&data).unwrap();
        let again = init_keys(&data).unwrap();
        assert_eq!(first, again, "present keys are loaded, not replaced");
        let keys = load_keys(&data).unwrap();
        assert_eq!(keys.signing.to_hex(), first.signing_key);
        assert_eq!(keys.sealing.public().to_hex(), first.sealing_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [SIGNING_FILE, SEALING_FILE] {
                let mode = fs::metadata(data.join(name)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
            let mode = fs::metadata(&data).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert!(!data.join(".signing.key.tmp").exists());
    }

    #[test]
    fn a_missing_or_foreign_key_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_keys(dir.path()).err().unwrap().to_string();
        assert!(err.contains("signing.key") && err.contains("init"), "{err}");
        init_keys(dir.path()).unwrap();
        // An X25519 key where the ed25519 one belongs.
        let sealing = fs::read_to_string(dir.path().join(SEALING_FILE)).unwrap();
        fs::write(dir.path().join(SIGNING_FILE), sealing).unwrap();
        let err = format!("{:#}", load_keys(dir.path()).err().unwrap());
        assert!(err.contains("signing.key"), "{err}");
    }
}
