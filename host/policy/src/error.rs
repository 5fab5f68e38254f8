use quorumvm_ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "an identity name is 1 to 64 characters of letters, digits, `.`, `_` and `-`, and none of the servers' own names (coordinator, operator, publisher, custodian-N), not {0:?}"
    )]
    BadName(String),
    #[error("the identity `{0}` already exists")]
    IdentityExists(String),
    #[error("the API key is not valid")]
    Unauthenticated,
    #[error("a rate limit needs a positive count and window (got {count} per {window_secs} s)")]
    InvalidRateLimit { count: u32, window_secs: u32 },
    #[error("rate limit reached: retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("budget exhausted: {remaining} units left, an evaluation costs {cost}")]
    BudgetExhausted { remaining: u64, cost: u64 },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}
