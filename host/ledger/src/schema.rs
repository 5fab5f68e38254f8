//! Versioned schema migrations, one sequence per component.
//!
//! Each crate that keeps tables in the ledger owns one [`Schema`]: an ordered list of SQL
//! migrations, where `migrations[i]` brings the component from version `i` to `i + 1`. The
//! `schema_version` table records how far each component's schema has been brought. A migration
//! and its version bump commit in one transaction, so a crash mid-upgrade leaves either the old
//! or the new version, never half of one. Migrations are only ever appended: an applied one is
//! never edited, since databases in the field have already run it.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::LedgerError;

#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The owner's name in `schema_version`, e.g. `"audit"` or `"policy"`.
    pub component: &'static str,
    pub migrations: &'static [&'static str],
}

const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 0)
) STRICT";

impl Schema {
    /// Brings this component's tables up to the newest version; returns how many migrations ran.
    pub(crate) fn apply(&self, conn: &mut Connection) -> Result<usize, LedgerError> {
        conn.execute(SCHEMA_VERSION_TABLE, [])?;
        let known = self.migrations.len() as u64;
        let mut ran = 0;
        loop {
            // Immediate: two processes opening a fresh database at once cannot both run a step.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found: u64 = tx
                .query_row(
                    "SELECT version FROM schema_version WHERE component = ?1",
                    [self.component],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if found > known {
                return Err(LedgerError::SchemaTooNew {
                    component: self.component,
                    found,
                    known,
                });
            }
            let Some(step) = self.migrations.get(found as usize) else {
                return Ok(ran);
            };
            tx.execute_batch(step)?;
            tx.execute(
                "INSERT INTO schema_version (component, version) VALUES (?1, ?2)
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                params![self.component, found + 1],
            )?;
            tx.commit()?;
            ran += 1;
        }
    }
}
