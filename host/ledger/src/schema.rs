//! Versioned schema migrations, one sequence per component.
//!
//! Each crate that keeps tables in the ledger owns one [`Schema`]: an ordered list of SQL
//! migrations, where `migrations[i]` brings the component from version `i` to `i + 1`. The
//! `schema_version` table records how far each component's schema has been brought. A migration
//! and its version bump commit in one transaction, so a crash mid-upgrade leaves either the old
//! or the new version, never half of one. Migrations are only ever appended: an applied one is
//! never edited, since databases in the field have already run it.

use rusqlite::{Connection, TransactionBehavior};

use crate::LedgerError;
use crate::sql::{Dialect, Sql};

#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The owner's name in `schema_version`, e.g. `"audit"` or `"policy"`.
    pub component: &'static str,
    /// In the dialect of the engine the schema is for: a component kept on both engines has
    /// one `Schema` for each.
    pub migrations: &'static [&'static str],
}

fn version_table(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "CREATE TABLE IF NOT EXISTS schema_version (
                component TEXT PRIMARY KEY,
                version INTEGER NOT NULL CHECK (version >= 0)
            ) STRICT"
        }
        Dialect::Postgres => {
            "CREATE TABLE IF NOT EXISTS schema_version (
                component TEXT PRIMARY KEY,
                version BIGINT NOT NULL CHECK (version >= 0)
            )"
        }
    }
}

/// What one [`Schema::step`] did.
pub(crate) enum Step {
    /// A migration ran: commit, and step again.
    Migrated,
    UpToDate,
}

impl Schema {
    /// Brings this component's tables up to the newest version; returns how many migrations ran.
    pub(crate) fn apply(&self, conn: &mut Connection) -> Result<usize, LedgerError> {
        let mut ran = 0;
        loop {
            // Immediate: two processes opening a fresh database at once cannot both run a step.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match self.step(&tx)? {
                Step::Migrated => tx.commit()?,
                Step::UpToDate => return Ok(ran),
            }
            ran += 1;
        }
    }

    /// Inside a transaction that no other process can run a step beside (the caller's lock):
    /// runs the migration after the version `schema_version` records, and records it.
    pub(crate) fn step(&self, tx: &dyn Sql) -> Result<Step, LedgerError> {
        tx.execute_batch(version_table(tx.dialect()))?;
        let known = self.migrations.len() as u64;
        let found = match tx.query_opt(
            "SELECT version FROM schema_version WHERE component = ?1",
            crate::sql_params![self.component],
        )? {
            Some(row) => row.uint(0)?,
            None => 0,
        };
        if found > known {
            return Err(LedgerError::SchemaTooNew {
                component: self.component,
                found,
                known,
            });
        }
        let Some(step) = self.migrations.get(found as usize) else {
            return Ok(Step::UpToDate);
        };
        tx.execute_batch(step)?;
        tx.execute(
            "INSERT INTO schema_version (component, version) VALUES (?1, ?2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            crate::sql_params![self.component, found + 1],
        )?;
        Ok(Step::Migrated)
    }
}
