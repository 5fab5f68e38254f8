#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
}
