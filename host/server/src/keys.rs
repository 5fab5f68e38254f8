//! Secret key files: text, owner-only (0600), written atomically by
//! [`quorumvm_package::write_secret_file`] (temporary file, fsync, rename, fsync of the
//! directory), so a crash while creating a key leaves either no key or the whole key.

use std::fs;
use std::path::Path;

use anyhow::Context as _;
use zeroize::Zeroizing;

/// Writes a key made by `generate` to `path` unless a file is there already.
pub fn create_if_absent(
    path: &Path,
    generate: impl FnOnce() -> Zeroizing<String>,
) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    quorumvm_package::write_secret_file(path, &generate())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The text of the key file at `path`, with a warning in the log if others than its owner
/// may read it.
pub fn read(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    warn_if_shared(path);
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Zeroizing::new(text))
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "a secret key file is readable by others than its owner"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        create_if_absent(&path, || Zeroizing::new("first".into())).unwrap();
        create_if_absent(&path, || Zeroizing::new("second".into())).unwrap();
        assert_eq!(read(&path).unwrap().as_str(), "first");
    }
}
