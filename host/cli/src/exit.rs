//! Failures with the exit code they map to.

use std::fmt;
use std::path::Path;

/// The exit codes of `quorumvm` (sysexits.h where one fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// A check said no: the signature does not verify.
    Rejected = 1,
    /// Invalid data: source, package or values.
    DataErr = 65,
    /// A server cannot be reached, or answered that it cannot serve now (503).
    Unavailable = 69,
    /// An input file cannot be read.
    NoInput = 66,
    /// An output cannot be written, or a server cannot start.
    IoErr = 74,
}

#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn data(message: impl fmt::Display) -> Failure {
        Failure::new(Code::DataErr, message.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quorumvm: {}", self.message)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Failure::new(
            Code::NoInput,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read(path)?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::data(format!("{} is not UTF-8 text", path.display())))
}

/// Writes a file atomically: a temporary file beside it, synced, then renamed over it, so a
/// crash never leaves a half-written package or key. `private` files get mode 0600.
pub fn write(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| {
        Failure::new(Code::IoErr, format!("cannot write {}: {e}", path.display()))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
