//! The custodian server's own key file in its data directory: `sealing.key` (X25519,
//! [`quorumvm_sealing::CustodianSecretKey`]). Publishers seal this custodian's shares to it, and
//! the pairwise keys that authenticate (and, for preprocessing, encrypt) round messages with the
//! other custodians derive from it.
//!
//! The operator's approval key is **not** here: it lives on the operator's machine (`quorumvm
//! keygen`), and the server knows only its public half, from the config (`operator_key`). So a
//! copy of a data directory, or the server's whole disk, approves nothing. A data directory that
//! still holds one (`signing.key`, where earlier versions kept it) is refused at start, so the
//! key is moved off the server rather than forgotten on it.
//!
//! The key is created once, owner-only (0600 in a 0700 directory), and written atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash while creating it leaves
//! either no key or the whole key, never a truncated one that a restart would refuse or, worse,
//! replace.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use quorumvm_sealing::{CustodianPublicKey, CustodianSecretKey};
use quorumvm_server::keys;
use zeroize::Zeroizing;

const SEALING_FILE: &str = "sealing.key";
/// Where earlier versions kept the operator's key, on the server.
const OPERATOR_FILE: &str = "signing.key";

/// Creates `sealing.key` in `data_dir` (and the directory) if absent, loads it if present, and
/// returns its public half: the `sealing_key` of this custodian's entry in every config.
pub fn init_key(data_dir: &Path) -> anyhow::Result<CustodianPublicKey> {
    create_private_dir(data_dir)?;
    keys::create_if_absent(&data_dir.join(SEALING_FILE), || {
        CustodianSecretKey::generate().to_file_text()
    })?;
    Ok(load_key(data_dir)?.public())
}

/// Loads the sealing key; never creates one (a server that made up a new key would not match
/// its config, and the operator should learn that from `server-keys`, not from a refusal
/// later).
/// Refuses a data directory that holds an operator key.
pub(crate) fn load_key(data_dir: &Path) -> anyhow::Result<CustodianSecretKey> {
    let operator = data_dir.join(OPERATOR_FILE);
    if operator.exists() {
        bail!(
            "{} is an operator's approval key on the custodian's server: whoever copies this \
             data directory could approve versions and callers. Move it to the operator's \
             machine (it signs there: `quorumvm approve --key FILE`), then start again",
            operator.display()
        );
    }
    let path = data_dir.join(SEALING_FILE);
    let text = read_secret(&path)?;
    CustodianSecretKey::from_file_text(&text).with_context(|| format!("{}", path.display()))
}

fn read_secret(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    if !path.exists() {
        bail!(
            "{} does not exist: create this custodian's key first (`quorumvm server-keys \
             custodian --data-dir DIR` on its machine, or `quorumvm dev --init-only` for a local \
             cluster)",
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
    fn the_key_is_created_once_private_and_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("custodian-1");
        let first = init_key(&data).unwrap();
        let again = init_key(&data).unwrap();
        assert_eq!(first, again, "a present key is loaded, not replaced");
        assert_eq!(load_key(&data).unwrap().public(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(SEALING_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&data).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert!(!data.join(".sealing.key.tmp").exists());
        let names: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [SEALING_FILE],
            "no operator key is made on the server"
        );
    }

    #[test]
    fn a_missing_or_foreign_key_or_an_operator_key_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_key(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("sealing.key") && err.contains("server-keys"),
            "{err}"
        );
        init_key(dir.path()).unwrap();
        fs::write(
            dir.path().join(OPERATOR_FILE),
            quorumvm_package::SecretKey::generate().to_file_text(),
        )
        .unwrap();
        let err = load_key(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("signing.key") && err.contains("operator"),
            "{err}"
        );
        fs::remove_file(dir.path().join(OPERATOR_FILE)).unwrap();
        // An ed25519 key where the X25519 one belongs.
        fs::write(
            dir.path().join(SEALING_FILE),
            quorumvm_package::SecretKey::generate().to_file_text(),
        )
        .unwrap();
        let err = format!("{:#}", load_key(dir.path()).err().unwrap());
        assert!(err.contains("sealing.key"), "{err}");
    }
}
