//! Who may evaluate what, how much and how often: the coordinator's governance, kept in the
//! ledger so that it survives restarts and every decision is audited.
//!
//! - [`identity`]: API keys (`quorumvm identity add NAME`), stored only as hashes.
//! - [`budget`]: units spent per (identity, program version) against the policy's budget.
//! - [`rate`]: a token bucket per (identity, program version), with an exact `Retry-After`.
//! - [`admission`]: [`admit_eval`] applies both and appends the audit entry in one transaction,
//!   so a crash can never leave a charge without its entry, or an entry without its charge;
//!   [`admit_in`] does the same inside a caller's transaction, e.g. a batched
//!   [`quorumvm_ledger::Writer`] job.
//! - [`anomaly`]: the manifest's `policy watch` rules over each identity's recent queries
//!   (sweeps, edge probing, near-duplicates, bursts), in memory: a [`Watcher`] says which fire.
//!
//! The budget and bucket arithmetic is pure (time is passed in as milliseconds), so it is tested
//! exhaustively without a clock; only [`admission`] and [`identity`] touch the ledger.

pub mod admission;
pub mod anomaly;
pub mod budget;
mod error;
pub mod identity;
pub mod rate;

pub use admission::{Admitted, EvalRequest, admit_eval, admit_in};
pub use anomaly::{Firing, Watcher};
pub use budget::Budget;
pub use error::PolicyError;
pub use identity::{IdentityKey, KeyHash, add_identity, authenticate, check_name};
pub use rate::{RateLimit, TokenBucket};

/// The tables this crate keeps: apply with `ledger.apply_schema(&quorumvm_policy::SCHEMA)`.
///
/// The budget and bucket tables name identities without a foreign key: a custodian keeps its own
/// counters for the identities named in the coordinator's tickets, without an identity table.
pub const SCHEMA: quorumvm_ledger::Schema = quorumvm_ledger::Schema {
    component: "policy",
    migrations: &["
        CREATE TABLE identities (
            name TEXT PRIMARY KEY,
            key_hash BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE budget_spent (
            identity TEXT NOT NULL,
            program TEXT NOT NULL,
            spent INTEGER NOT NULL CHECK (spent >= 0),
            PRIMARY KEY (identity, program)
        ) STRICT;
        -- `level` is a u128 in decimal: see rate::TokenBucket for its unit.
        CREATE TABLE rate_buckets (
            identity TEXT NOT NULL,
            program TEXT NOT NULL,
            level TEXT NOT NULL,
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (identity, program)
        ) STRICT;
    "],
};

/// [`SCHEMA`] for PostgreSQL, where a coordinator's replicas share these tables.
pub const POSTGRES_SCHEMA: quorumvm_ledger::Schema = quorumvm_ledger::Schema {
    component: "policy",
    migrations: &["
        CREATE TABLE identities (
            name TEXT PRIMARY KEY,
            key_hash BYTEA NOT NULL UNIQUE CHECK (length(key_hash) = 32),
            created_ms BIGINT NOT NULL
        );
        CREATE TABLE budget_spent (
            identity TEXT NOT NULL,
            program TEXT NOT NULL,
            spent BIGINT NOT NULL CHECK (spent >= 0),
            PRIMARY KEY (identity, program)
        );
        CREATE TABLE rate_buckets (
            identity TEXT NOT NULL,
            program TEXT NOT NULL,
            level TEXT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (identity, program)
        );
    "],
};
