//! The SQL a server's storage speaks on either engine: SQLite, embedded (every server's default),
//! or PostgreSQL (`crate::postgres`), which several replicas of a coordinator can share.
//!
//! Code that must run on both is written against [`Sql`]: statements in the subset both engines
//! read alike, with SQLite's numbered placeholders (`?1`, `?2`, …, which the PostgreSQL side
//! rewrites to `$1`, `$2`, …), parameters as [`Param`]s and rows as [`Row`]s of [`Value`]s. Only
//! three column types exist here, integers (SQLite `INTEGER`, PostgreSQL `BIGINT`), text and
//! bytes (`BLOB`, `BYTEA`), so a value reads back the same from either engine. Where the engines
//! differ (schemas, locking), code asks [`Sql::dialect`].
//!
//! A `rusqlite::Transaction` (or `Connection`) is an [`Sql`] as it is, so a function that takes
//! `&dyn Sql` is called with the transaction a [`crate::Writer`] job receives.

use rusqlite::types::ValueRef;

use crate::LedgerError;

/// Which engine runs the statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// What ends a `SELECT` of rows the transaction will change: on PostgreSQL, `FOR UPDATE`
    /// (the rows stay locked to the end of the transaction, and a transaction that waited for
    /// them reads them as last committed); on SQLite nothing, as a writing transaction there
    /// holds the database's only write lock.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// One parameter of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl From<u32> for Param<'_> {
    fn from(v: u32) -> Self {
        Param::Int(v.into())
    }
}

impl From<u64> for Param<'_> {
    /// # Panics
    ///
    /// Above `i64::MAX`, which no count, time or sequence number here reaches.
    fn from(v: u64) -> Self {
        Param::Int(i64::try_from(v).expect("a stored integer fits in 63 bits"))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Param<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Param::Bytes(v)
    }
}

/// `sql_params![a, b, c]`: the `&[Param]` of a statement.
#[macro_export]
macro_rules! sql_params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::sql::Param::from($value)),*] as &[$crate::sql::Param<'_>]
    };
}

/// One column of a row read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One row read back, its columns in the statement's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn column(&self, i: usize) -> Result<&Value, LedgerError> {
        self.0.get(i).ok_or_else(|| LedgerError::Column {
            index: i,
            reason: "the row has no such column".into(),
        })
    }

    fn mismatch(&self, i: usize, want: &str) -> LedgerError {
        LedgerError::Column {
            index: i,
            reason: format!("expected {want}, found {:?}", self.0.get(i)),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, LedgerError> {
        match self.column(i)? {
            Value::Int(v) => Ok(*v),
            _ => Err(self.mismatch(i, "an integer")),
        }
    }

    /// A non-negative integer: a count, a time, a sequence number.
    pub fn uint(&self, i: usize) -> Result<u64, LedgerError> {
        u64::try_from(self.int(i)?).map_err(|_| self.mismatch(i, "a non-negative integer"))
    }

    pub fn text(&self, i: usize) -> Result<String, LedgerError> {
        match self.column(i)? {
            Value::Text(v) => Ok(v.clone()),
            _ => Err(self.mismatch(i, "text")),
        }
    }

    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, LedgerError> {
        match self.column(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            _ => Err(self.mismatch(i, "bytes")),
        }
    }

    /// Exactly 32 bytes: a hash.
    pub fn bytes32(&self, i: usize) -> Result<[u8; 32], LedgerError> {
        self.bytes(i)?
            .try_into()
            .map_err(|_| self.mismatch(i, "32 bytes"))
    }
}

/// Statements run in one transaction (or on one connection), on either engine.
pub trait Sql {
    fn dialect(&self) -> Dialect;

    /// Runs a statement that returns no rows; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError>;

    /// Runs statements separated by `;`, without parameters (a migration).
    fn execute_batch(&self, sql: &str) -> Result<(), LedgerError>;

    /// Runs a query and returns every row.
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError>;

    /// The first row of a query, if any.
    fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, LedgerError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// What processes sharing one PostgreSQL database take turns at: a transaction-scoped advisory
/// lock, held until it commits or rolls back. On SQLite a writing transaction already holds the
/// database's only write lock, so taking one is a no-op there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Schema migrations: one process runs them, the others then find them done.
    Schema,
    /// The audit chain's tip: one transaction at a time links an entry to it.
    AuditChain,
    /// Freezes and unfreezes, where only a later statement about a target counts and the
    /// target may have no row yet to lock: rare, so taken in turns as a whole.
    Freezes,
}

impl Lock {
    pub fn take(self, tx: &dyn Sql) -> Result<(), LedgerError> {
        if tx.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        // One key space of this program's own: "qvm" and the lock's number.
        let key: i64 = match self {
            Lock::Schema => 0x71_76_6d_01,
            Lock::AuditChain => 0x71_76_6d_02,
            Lock::Freezes => 0x71_76_6d_03,
        };
        tx.query(&format!("SELECT pg_advisory_xact_lock({key})"), &[])?;
        Ok(())
    }
}

fn sqlite_param<'a>(p: &Param<'a>) -> rusqlite::types::ToSqlOutput<'a> {
    use rusqlite::types::ToSqlOutput;
    ToSqlOutput::Borrowed(match *p {
        Param::Int(v) => ValueRef::Integer(v),
        Param::Text(v) => ValueRef::Text(v.as_bytes()),
        Param::Bytes(v) => ValueRef::Blob(v),
    })
}

fn sqlite_value(v: ValueRef<'_>, index: usize) -> Result<Value, LedgerError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| LedgerError::Column {
                    index,
                    reason: e.to_string(),
                })?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        ValueRef::Real(_) => {
            return Err(LedgerError::Column {
                index,
                reason: "a floating-point value, which no table here holds".into(),
            });
        }
    })
}

impl Sql for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute_batch(&self, sql: &str) -> Result<(), LedgerError> {
        Ok(rusqlite::Connection::execute_batch(self, sql)?)
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError> {
        let mut stmt = self.prepare_cached(sql)?;
        let params: Vec<_> = params.iter().map(sqlite_param).collect();
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let params: Vec<_> = params.iter().map(sqlite_param).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let values = (0..columns)
                .map(|i| sqlite_value(row.get_ref(i)?, i))
                .collect::<Result<_, LedgerError>>()?;
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl Sql for rusqlite::Transaction<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError> {
        Sql::execute(&**self, sql, params)
    }

    fn execute_batch(&self, sql: &str) -> Result<(), LedgerError> {
        Sql::execute_batch(&**self, sql)
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError> {
        Sql::query(&**self, sql, params)
    }
}

/// `sql` with SQLite's `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_quoted_text() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $12"
        );
    }

    #[test]
    fn rows_read_back_as_written_on_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n INTEGER) STRICT")
            .unwrap();
        let changed = Sql::execute(
            &conn,
            "INSERT INTO t (i, s, b) VALUES (?1, ?2, ?3)",
            sql_params![-5i64, "héllo", &[1u8, 2, 3]],
        )
        .unwrap();
        assert_eq!(changed, 1);
        let row = Sql::query_opt(&conn, "SELECT i, s, b, n FROM t", &[])
            .unwrap()
            .unwrap();
        assert_eq!(row.int(0).unwrap(), -5);
        assert!(row.uint(0).is_err(), "a negative number is no count");
        assert_eq!(row.text(1).unwrap(), "héllo");
        assert_eq!(row.bytes(2).unwrap(), [1, 2, 3]);
        assert_eq!(row.0[3], Value::Null);
        assert!(row.text(0).is_err() && row.int(5).is_err());
    }
}
