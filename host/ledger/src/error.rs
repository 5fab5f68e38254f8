#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage (PostgreSQL): {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A column read back is not what the statement's reader expects of it.
    #[error("column {index} of a stored row: {reason}")]
    Column { index: usize, reason: String },
    #[error("the database could not be put in write-ahead-log mode (it reports `{0}`)")]
    NoWal(String),
    #[error(
        "the `{component}` schema of this database is at version {found}, newer than the {known} this program knows: run a newer QuorumVM"
    )]
    SchemaTooNew {
        component: &'static str,
        found: u64,
        known: u64,
    },
    #[error("audit details must be a JSON object")]
    DetailsNotObject,
    /// The batch a [`crate::Writer`] job ran in did not commit, so neither did the job (see
    /// [`crate::Writer`] for the one exception, a job that commits by itself). The reason is text
    /// because one failure is reported to every job of the batch, and `rusqlite::Error` cannot
    /// be cloned.
    #[error("the write was not committed: {0}")]
    CommitFailed(String),
    /// A [`crate::Writer`] job panicked; what it wrote was rolled back.
    #[error("the write panicked and was rolled back: {0}")]
    JobPanicked(String),
    /// The [`crate::Writer`]'s thread is gone, which only a panic outside any job can cause:
    /// whether this write committed is unknown.
    #[error("the ledger's writer thread has stopped; the write may or may not have committed")]
    WriterStopped,
}

/// The server's own message where there is one: `postgres::Error` alone displays "db error".
fn postgres_message(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}
