//! Opening the database and running transactions on it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::audit::{self, AuditEntry, ChainReport, NewEntry, VerifyError};
use crate::{LedgerError, Schema};

/// How long a writer waits for another connection's write lock before reporting "busy". Commits
/// are short, so this is only ever reached when something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (rusqlite keeps 16 by default).
const STATEMENT_CACHE: usize = 128;

/// One connection to a server's database. It is `Send` but not `Sync`, and every commit waits for
/// an fsync: an async server hands the connection it writes with to a [`crate::Writer`], which
/// commits many writes with one fsync, and reads through another `Ledger` of its own (in WAL mode
/// readers never wait for the writer).
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens (creating if needed) the database at `path`, configures durability and brings the
    /// audit log's schema up to date. Other components then call [`Ledger::apply_schema`].
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger, LedgerError> {
        let conn = Connection::open(path)?;
        // WAL: readers never block the writer, and a commit is one sequential append.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::NoWal(mode));
        }
        // FULL: every commit is fsynced before it returns, so nothing that returned success is
        // lost after a crash, power loss included. (NORMAL would only risk the newest commits on
        // power loss, but "returned success" must mean durable.)
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows are overwritten where that costs no extra I/O (FAST: small rows in
        // b-tree pages, such as sealed shares, not large overflow blobs): a refresh of the
        // shares deletes the old ones, which a copy of the file taken later must not hold.
        conn.pragma_update(None, "secure_delete", "FAST")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Statements go through the cache (`Sql` prepares every one there): room for every
        // statement a server runs, so the hot ones are never parsed again.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut ledger = Ledger { conn };
        ledger.apply_schema(&audit::SCHEMA)?;
        Ok(ledger)
    }

    /// Brings `schema`'s tables up to its newest version; returns how many migrations ran.
    pub fn apply_schema(&mut self, schema: &Schema) -> Result<usize, LedgerError> {
        schema.apply(&mut self.conn)
    }

    /// Runs `f` in one transaction: committed (and fsynced) if `f` returns `Ok`, rolled back if
    /// it returns `Err` or panics. The write lock is taken at the start (`BEGIN IMMEDIATE`), so
    /// a transaction that reads and then writes never fails half-way on a lock upgrade.
    pub fn transaction<T, E>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<LedgerError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(LedgerError::from)?;
        let value = f(&tx)?;
        tx.commit().map_err(LedgerError::from)?;
        Ok(value)
    }

    /// The connection, for reads outside a transaction.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// For the [`crate::Writer`], which manages its batch transactions itself.
    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Appends one audit entry in a transaction of its own. To record an entry together with the
    /// change it describes, call [`audit::append`] inside [`Ledger::transaction`] instead.
    pub fn append_audit(&mut self, entry: &NewEntry<'_>) -> Result<AuditEntry, LedgerError> {
        self.transaction(|tx| audit::append(tx, entry))
    }

    /// Up to `limit` audit entries with `seq > after`, oldest first: a page of the log.
    pub fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        audit::entries(&self.conn, after, limit)
    }

    /// Checks the whole audit chain; see [`audit::verify_chain`].
    pub fn verify_chain(&self) -> Result<ChainReport, VerifyError> {
        audit::verify_chain(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::OptionalExtension;

    const NOTES: Schema = Schema {
        component: "notes",
        migrations: &[
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL) STRICT",
            "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'nobody'",
        ],
    };

    fn version(ledger: &Ledger, component: &str) -> Option<u64> {
        ledger
            .connection()
            .query_row(
                "SELECT version FROM schema_version WHERE component = ?1",
                [component],
                |row| row.get(0),
            )
            .optional()
            .unwrap()
    }

    #[test]
    fn open_sets_durability_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        let conn = ledger.connection();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "2 is FULL");
        assert_eq!(fk, 1);
        assert_eq!(version(&ledger, audit::SCHEMA.component), Some(1));
    }

    #[test]
    fn migrations_run_once_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.apply_schema(&NOTES).unwrap(), 2);
        assert_eq!(ledger.apply_schema(&NOTES).unwrap(), 0);
        assert_eq!(version(&ledger, "notes"), Some(2));
        ledger
            .connection()
            .execute("INSERT INTO notes (body, author) VALUES ('hi', 'ann')", [])
            .unwrap();
        drop(ledger);

        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.apply_schema(&NOTES).unwrap(), 0);
        let author: String = ledger
            .connection()
            .query_row("SELECT author FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(author, "ann");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        ledger.apply_schema(&NOTES).unwrap();
        let older = Schema {
            component: "notes",
            migrations: &NOTES.migrations[..1],
        };
        let err = ledger.apply_schema(&older).unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::SchemaTooNew {
                    component: "notes",
                    found: 2,
                    known: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        let broken = Schema {
            component: "broken",
            migrations: &[
                "CREATE TABLE a (x INTEGER) STRICT",
                "CREATE TABLE b (y INTEGER) STRICT; INSERT INTO missing VALUES (1)",
            ],
        };
        assert!(ledger.apply_schema(&broken).is_err());
        assert_eq!(version(&ledger, "broken"), Some(1));
        let b_exists: i64 = ledger
            .connection()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            b_exists, 0,
            "the failed step's first statement was rolled back"
        );
    }

    #[test]
    fn transactions_commit_on_ok_and_roll_back_on_err() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        ledger.apply_schema(&NOTES).unwrap();
        ledger
            .transaction(|tx| {
                tx.execute("INSERT INTO notes (body) VALUES ('kept')", [])?;
                Ok::<_, LedgerError>(())
            })
            .unwrap();
        let refused: Result<(), LedgerError> = ledger.transaction(|tx| {
            tx.execute("INSERT INTO notes (body) VALUES ('dropped')", [])?;
            Err(LedgerError::DetailsNotObject)
        });
        assert!(refused.is_err());
        let bodies: Vec<String> = ledger
            .connection()
            .prepare("SELECT body FROM notes ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(bodies, ["kept"]);
    }
}
