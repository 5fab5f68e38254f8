//! The embedded storage of a QuorumVM server and its hash-chained audit log.
//!
//! Every coordinator and custodian keeps its state in one SQLite file, opened by [`Ledger::open`]:
//! write-ahead log, a full fsync on every commit (what returned success survives `kill -9` and
//! power loss), foreign keys enforced, and schema migrations applied in order and recorded. Other
//! crates add their own tables through a [`Schema`] of their own, and change state through
//! [`Ledger::transaction`] so that a change and its audit entry commit together or not at all.
//!
//! A server does its writes through a [`Writer`]: a thread that owns the connection and commits
//! the writes queued meanwhile in one transaction, so that one fsync serves many requests.
//!
//! The audit log ([`audit`]) is append-only and hash-chained: each entry commits to the one
//! before it, so [`Ledger::verify_chain`] finds the first entry that was changed, removed or
//! moved.

pub mod audit;
mod database;
mod error;
pub mod postgres;
mod schema;
pub mod sql;
mod storage;
mod writer;

pub use audit::{
    AuditEntry, BreakReason, BrokenLink, ChainReport, ChainVerifier, NewEntry, VerifyError,
};
pub use database::Ledger;
pub use error::LedgerError;
pub use postgres::{PgTx, Postgres};
/// The SQLite binding our transactions are made of, re-exported so that dependent crates use the
/// very same version.
pub use rusqlite;
pub use schema::Schema;
pub use sql::{Dialect, Sql};
pub use storage::{Commit, Storage};
pub use writer::{Engine, MAX_BATCH, Writer, WriterStats};
