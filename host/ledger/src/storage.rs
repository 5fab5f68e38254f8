//! A server's storage as code written against [`Sql`] sees it, on either engine: a
//! [`Writer`] for its changes and a connection of its own for reads.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::{Engine, Ledger, LedgerError, Postgres, Sql, Writer, WriterStats};

/// Runs jobs written against [`Sql`] in a group commit: a [`Writer`] of either engine, or a
/// [`Storage`].
pub trait Commit: Send + Sync {
    /// Runs `job` in the next batch and returns its result once the batch has committed (see
    /// [`Writer`]).
    fn commit<T, Err>(
        &self,
        job: impl FnOnce(&dyn Sql) -> Result<T, Err> + Send + 'static,
    ) -> impl Future<Output = Result<T, Err>> + Send
    where
        T: Send + 'static,
        Err: From<LedgerError> + Send + 'static;
}

impl<E: Engine> Commit for Writer<E>
where
    for<'c> E::Tx<'c>: Sql,
{
    fn commit<T, Err>(
        &self,
        job: impl FnOnce(&dyn Sql) -> Result<T, Err> + Send + 'static,
    ) -> impl Future<Output = Result<T, Err>> + Send
    where
        T: Send + 'static,
        Err: From<LedgerError> + Send + 'static,
    {
        self.run(move |tx| job(tx))
    }
}

/// A writer and a reader on one database, SQLite or PostgreSQL.
///
/// Reads block the calling thread: call [`Storage::read`] at startup or from blocking work.
#[derive(Clone)]
pub enum Storage {
    Sqlite {
        writer: Writer<Ledger>,
        reader: Arc<Mutex<Ledger>>,
    },
    Postgres {
        writer: Writer<Postgres>,
        reader: Arc<Mutex<Postgres>>,
    },
}

impl Storage {
    /// Runs `read` on the reader connection; it sees only committed changes.
    pub fn read<T: Send>(&self, read: impl FnOnce(&dyn Sql) -> T + Send) -> T {
        match self {
            Storage::Sqlite { reader, .. } => {
                read(reader.lock().expect("reader lock").connection())
            }
            Storage::Postgres { reader, .. } => {
                crate::postgres::off_runtime(|| read(&*reader.lock().expect("reader lock")))
            }
        }
    }

    pub fn stats(&self) -> WriterStats {
        match self {
            Storage::Sqlite { writer, .. } => writer.stats(),
            Storage::Postgres { writer, .. } => writer.stats(),
        }
    }
}

impl Commit for Storage {
    async fn commit<T, Err>(
        &self,
        job: impl FnOnce(&dyn Sql) -> Result<T, Err> + Send + 'static,
    ) -> Result<T, Err>
    where
        T: Send + 'static,
        Err: From<LedgerError> + Send + 'static,
    {
        match self {
            Storage::Sqlite { writer, .. } => writer.commit(job).await,
            Storage::Postgres { writer, .. } => writer.commit(job).await,
        }
    }
}
