//! PostgreSQL, for state that several processes share: a coordinator's replicas keep theirs in
//! one database. SQLite stays every server's default ([`crate::Ledger`]).
//!
//! What holds here as in [`crate::Ledger`]: a change and its audit entry commit in one
//! transaction; a commit that returned is durable (PostgreSQL's `synchronous_commit`, on by
//! default, waits for the write-ahead log's flush); schema migrations run in order, each in its
//! own transaction. What is new is that several processes write at once: migrations and the
//! audit chain's tip are taken in turns ([`Lock`]), and the rest of a job's read-modify-writes
//! must lock what they read (`SELECT … FOR UPDATE`) or be written as one statement.
//!
//! Connections are made without TLS: the database is meant to be reached on the loopback or a
//! private network of the coordinator's own organization.

use std::cell::RefCell;

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls};

use crate::schema::Step;
use crate::sql::{Dialect, Lock, Param, Row, Sql, Value, numbered_placeholders};
use crate::{LedgerError, Schema, audit};

/// One connection to a PostgreSQL database, with the audit log's schema applied.
pub struct Postgres {
    /// Always `Some` but while it is dropped (see the `Drop` impl).
    client: RefCell<Option<Client>>,
}

impl Postgres {
    /// Connects to `url` (`postgresql://user@host:port/database`, or libpq's `key=value`
    /// form) and brings the audit log's schema up to date.
    pub fn connect(url: &str) -> Result<Postgres, LedgerError> {
        Postgres::connect_with_password(url, None)
    }

    /// As [`Postgres::connect`], with the user's password given apart from the URL (read from
    /// a secret's file, say), when there is one.
    pub fn connect_with_password(
        url: &str,
        password: Option<&str>,
    ) -> Result<Postgres, LedgerError> {
        let client = off_runtime(|| {
            let mut config: postgres::Config = url.parse()?;
            if let Some(password) = password {
                config.password(password);
            }
            let mut client = config.connect(NoTls)?;
            // Not the notices of `CREATE TABLE IF NOT EXISTS` at every start: warnings only.
            client.batch_execute("SET client_min_messages TO warning")?;
            Ok::<_, postgres::Error>(client)
        })?;
        let mut db = Postgres {
            client: RefCell::new(Some(client)),
        };
        db.apply_schema(&audit::POSTGRES_SCHEMA)?;
        Ok(db)
    }

    /// Brings `schema` (PostgreSQL's migrations of a component) up to date; returns how many
    /// migrations ran here. Processes starting together take turns: one runs them.
    pub fn apply_schema(&mut self, schema: &Schema) -> Result<usize, LedgerError> {
        let client = self.client_mut();
        off_runtime(move || {
            let mut ran = 0;
            loop {
                let tx = PgTx::begin(client)?;
                Lock::Schema.take(&tx)?;
                match schema.step(&tx)? {
                    Step::Migrated => tx.commit()?,
                    Step::UpToDate => return Ok(ran),
                }
                ran += 1;
            }
        })
    }

    /// Begins a transaction (what a [`crate::Writer`]'s batch runs in).
    pub(crate) fn begin(&mut self) -> Result<PgTx<'_>, LedgerError> {
        PgTx::begin(self.client_mut())
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T, E>(
        &mut self,
        f: impl FnOnce(&PgTx<'_>) -> Result<T, E> + Send,
    ) -> Result<T, E>
    where
        T: Send,
        E: From<LedgerError> + Send,
    {
        let client = self.client_mut();
        off_runtime(move || {
            let tx = PgTx::begin(client)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }
}

impl Postgres {
    fn client(&self) -> std::cell::RefMut<'_, Client> {
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut().expect("a connection until dropped")
        })
    }

    fn client_mut(&mut self) -> &mut Client {
        self.client
            .get_mut()
            .as_mut()
            .expect("a connection until dropped")
    }
}

/// Closing the connection blocks on the client's own runtime too: done off any async task, so
/// that a `Postgres` may be dropped anywhere.
impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            off_runtime(move || drop(client));
        }
    }
}

/// Runs `f` on a thread of its own and waits for it. The synchronous client drives a runtime of
/// its own, which cannot start inside an async task: what a server calls from one goes through
/// here (a writer's thread and blocking work are plain threads already).
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Statements outside a transaction: each commits on its own. They block on the client's own
/// runtime: from an async task, go through [`crate::Storage::read`].
impl Sql for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute_batch(&self, sql: &str) -> Result<(), LedgerError> {
        Ok(self.client().batch_execute(sql)?)
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError> {
        execute(&mut *self.client(), sql, params)
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError> {
        query(&mut *self.client(), sql, params)
    }
}

/// A transaction in progress on a [`Postgres`] connection: rolled back if dropped uncommitted.
pub struct PgTx<'c> {
    tx: RefCell<postgres::Transaction<'c>>,
}

impl<'c> PgTx<'c> {
    pub(crate) fn begin(client: &'c mut Client) -> Result<PgTx<'c>, LedgerError> {
        Ok(PgTx {
            tx: RefCell::new(client.transaction()?),
        })
    }

    pub fn commit(self) -> Result<(), LedgerError> {
        Ok(self.tx.into_inner().commit()?)
    }
}

impl Sql for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute_batch(&self, sql: &str) -> Result<(), LedgerError> {
        Ok(self.tx.borrow_mut().batch_execute(sql)?)
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, LedgerError> {
        execute(&mut *self.tx.borrow_mut(), sql, params)
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, LedgerError> {
        query(&mut *self.tx.borrow_mut(), sql, params)
    }
}

/// [`Sql::execute`] on a connection or a transaction.
fn execute(
    on: &mut impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, LedgerError> {
    Ok(on.execute_typed(&numbered_placeholders(sql), &typed(params))?)
}

/// [`Sql::query`] on a connection or a transaction.
fn query(
    on: &mut impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, LedgerError> {
    let rows = on.query_typed(&numbered_placeholders(sql), &typed(params))?;
    rows.iter().map(read_row).collect()
}

/// The parameters with the types they are sent as: every integer as `BIGINT`, so that no
/// statement depends on PostgreSQL inferring one.
fn typed<'p>(params: &'p [Param<'p>]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| match p {
            Param::Int(v) => (v as &(dyn ToSql + Sync), Type::INT8),
            Param::Text(v) => (v as &(dyn ToSql + Sync), Type::TEXT),
            Param::Bytes(v) => (v as &(dyn ToSql + Sync), Type::BYTEA),
        })
        .collect()
}

fn read_row(row: &postgres::Row) -> Result<Row, LedgerError> {
    let column = |index: usize| -> Result<Value, LedgerError> {
        let ty = row.columns()[index].type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(index)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Bytes)
        } else if *ty == Type::VOID {
            None
        } else {
            return Err(LedgerError::Column {
                index,
                reason: format!("PostgreSQL type {ty}, which no table here holds"),
            });
        };
        Ok(value.unwrap_or(Value::Null))
    };
    (0..row.len())
        .map(column)
        .collect::<Result<_, _>>()
        .map(Row)
}

/// A real PostgreSQL server for tests (the `test-server` feature).
#[cfg(any(test, feature = "test-server"))]
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A PostgreSQL server of Debian's `postgresql` package, made by `initdb` in a temporary
    /// directory and listening on a free port of the loopback, stopped when dropped. PostgreSQL
    /// refuses to run as root: as root, it runs as the package's `postgres` user.
    pub struct Server {
        dir: tempfile::TempDir,
        bin: PathBuf,
        port: u16,
    }

    impl Server {
        /// A server that trusts every connection from the loopback.
        pub fn start() -> Server {
            Server::launch(None)
        }

        /// A server whose user `quorumvm` must give `password` (SCRAM-SHA-256).
        pub fn start_with_password(password: &str) -> Server {
            Server::launch(Some(password))
        }

        fn launch(password: Option<&str>) -> Server {
            let bin = binaries();
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let server = Server { dir, bin, port };
            let pwfile = server.dir.path().join("password");
            if let Some(password) = password {
                std::fs::write(&pwfile, password).unwrap();
            }
            if is_root() {
                run(Command::new("chown")
                    .arg("-R")
                    .arg("postgres")
                    .arg(server.dir.path()));
            }
            let data = server.data();
            let mut initdb = server.command("initdb");
            initdb.args(["--username=quorumvm", "--encoding=UTF8"]);
            match password {
                None => initdb.arg("--auth=trust"),
                Some(_) => initdb
                    .arg("--auth=scram-sha-256")
                    .arg(format!("--pwfile={}", pwfile.display())),
            };
            run(initdb.arg("--pgdata").arg(&data));
            let options = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={}",
                server.dir.path().display()
            );
            run(server
                .command("pg_ctl")
                .args(["--wait", "--silent", "--pgdata"])
                .arg(&data)
                .arg("--log")
                .arg(server.dir.path().join("log"))
                .args(["--options", &options, "start"]));
            server
        }

        pub fn url(&self) -> String {
            format!("postgresql://quorumvm@127.0.0.1:{}/postgres", self.port)
        }

        fn data(&self) -> PathBuf {
            self.dir.path().join("data")
        }

        fn command(&self, program: &str) -> Command {
            let program = self.bin.join(program);
            if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self
                .command("pg_ctl")
                .args(["--wait", "--silent", "--mode=immediate", "--pgdata"])
                .arg(self.data())
                .arg("stop")
                .status();
        }
    }

    fn run(command: &mut Command) {
        let out = command.output().expect("cannot run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn is_root() -> bool {
        let out = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    }

    /// Where `initdb` and `pg_ctl` are: on the `PATH`, or in Debian's versioned directory.
    fn binaries() -> PathBuf {
        if let Ok(path) = std::env::var("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                    return dir;
                }
            }
        }
        let debian = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(debian)
            .unwrap_or_else(|_| {
                panic!("no PostgreSQL: install Debian's `postgresql` (scripts/setup.sh does)")
            })
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("no PostgreSQL under /usr/lib/postgresql")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Server;
    use super::*;
    use crate::audit::{BreakReason, NewEntry, VerifyError};

    fn entry(n: u64, actor: &str) -> serde_json::Value {
        serde_json::json!({ "n": n, "actor": actor })
    }

    #[test]
    fn a_password_given_apart_from_the_url_is_the_one_sent() {
        let server = Server::start_with_password("s3cret pass");
        let url = server.url();
        for refused in [None, Some("wrong")] {
            assert!(
                Postgres::connect_with_password(&url, refused).is_err(),
                "{refused:?} admitted"
            );
        }
        let mut db = Postgres::connect_with_password(&url, Some("s3cret pass")).unwrap();
        assert_eq!(db.apply_schema(&audit::POSTGRES_SCHEMA).unwrap(), 0);
    }

    #[test]
    fn the_audit_chain_reads_back_and_verifies_as_on_sqlite() {
        let server = Server::start();
        let mut db = Postgres::connect(&server.url()).unwrap();
        assert_eq!(
            db.apply_schema(&audit::POSTGRES_SCHEMA).unwrap(),
            0,
            "connect applied it"
        );
        let mut appended = Vec::new();
        for n in 1..=5 {
            let details = entry(n, "coordinator");
            let e = db
                .transaction(|tx| {
                    audit::append(
                        tx,
                        &NewEntry {
                            timestamp_ms: 1_700_000_000_000 + n,
                            actor: "coordinator",
                            kind: "eval.accepted",
                            details: &details,
                        },
                    )
                })
                .unwrap();
            appended.push(e);
        }
        assert_eq!(audit::entries(&db, 0, 100).unwrap(), appended);
        assert_eq!(audit::entries(&db, 3, 1).unwrap(), appended[3..4]);
        let report = audit::verify_chain(&db).unwrap();
        assert_eq!((report.entries, report.head), (5, appended[4].hash));

        // The same entries hash the same on SQLite: one chain format whatever holds it.
        let dir = tempfile::tempdir().unwrap();
        let mut lite = crate::Ledger::open(dir.path().join("db")).unwrap();
        for e in &appended {
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            let again = lite
                .append_audit(&NewEntry {
                    timestamp_ms: e.timestamp_ms,
                    actor: &e.actor,
                    kind: &e.kind,
                    details: &details,
                })
                .unwrap();
            assert_eq!(&again, e);
        }
    }

    #[test]
    fn the_log_refuses_changes_and_a_rewritten_entry_is_found() {
        let server = Server::start();
        let mut db = Postgres::connect(&server.url()).unwrap();
        for n in 1..=3 {
            let details = entry(n, "c");
            db.transaction(|tx| {
                audit::append(
                    tx,
                    &NewEntry {
                        timestamp_ms: n,
                        actor: "c",
                        kind: "k",
                        details: &details,
                    },
                )
            })
            .unwrap();
        }
        for change in [
            "UPDATE audit_log SET actor = 'x' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 3",
            "TRUNCATE audit_log",
        ] {
            let err = db.execute_batch(change).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{change}: {err}");
        }
        db.execute_batch(
            "ALTER TABLE audit_log DISABLE TRIGGER USER;
             UPDATE audit_log SET details = '{\"n\":20}' WHERE seq = 2",
        )
        .unwrap();
        match audit::verify_chain(&db) {
            Err(VerifyError::Broken(link)) => {
                assert_eq!((link.seq, link.reason), (2, BreakReason::ContentChanged))
            }
            other => panic!("expected a broken link, got {other:?}"),
        }
    }

    /// Two processes sharing the database (two connections, each appending from a thread of its
    /// own, as two coordinator replicas do) write one chain: no entry links to a tip another
    /// transaction already extended.
    #[test]
    fn two_writers_append_to_one_chain() {
        let server = Server::start();
        Postgres::connect(&server.url()).unwrap();
        let writers: Vec<_> = ["replica-a", "replica-b"]
            .into_iter()
            .map(|actor| {
                let url = server.url();
                std::thread::spawn(move || {
                    let mut db = Postgres::connect(&url).unwrap();
                    for n in 0..200 {
                        let details = entry(n, actor);
                        db.transaction(|tx| {
                            for kind in ["eval.accepted", "eval.answered"] {
                                audit::append(
                                    tx,
                                    &NewEntry {
                                        timestamp_ms: n,
                                        actor,
                                        kind,
                                        details: &details,
                                    },
                                )?;
                            }
                            Ok::<_, LedgerError>(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a writer failed");
        }
        let db = Postgres::connect(&server.url()).unwrap();
        let report = audit::verify_chain(&db).unwrap();
        assert_eq!(report.entries, 800);
        let by_actor = db
            .query(
                "SELECT actor, COUNT(*) FROM audit_log GROUP BY actor ORDER BY actor",
                &[],
            )
            .unwrap();
        assert_eq!(
            by_actor,
            [
                Row(vec![Value::Text("replica-a".into()), Value::Int(400)]),
                Row(vec![Value::Text("replica-b".into()), Value::Int(400)]),
            ]
        );
    }

    /// Two replicas' writers whose batches lock the same row and append to the chain in
    /// opposite orders: batch a appends, then waits (up to a second) for batch b to lock the row
    /// before locking it itself; batch b locks the row, then appends. Were batches to take the
    /// chain only at their first entry, each would wait for the other and PostgreSQL would fail
    /// one of them as a deadlock; they take turns from their start, and both commit.
    #[test]
    fn writers_whose_batches_lock_in_opposite_orders_both_commit() {
        use std::sync::mpsc;
        use std::time::Duration;

        let server = Server::start();
        let setup = Postgres::connect(&server.url()).unwrap();
        setup
            .execute_batch(
                "CREATE TABLE counters (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
                 INSERT INTO counters VALUES (1, 0)",
            )
            .unwrap();
        let writer =
            |name: &str| crate::Writer::spawn(Postgres::connect(&server.url()).unwrap(), name);
        let (a, b) = (writer("replica-a"), writer("replica-b"));
        let (chain_taken, on_chain) = mpsc::channel::<()>();
        let (row_taken, on_row) = mpsc::channel::<()>();
        let bump = |tx: &dyn Sql| {
            tx.execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[])
                .map(drop)
        };
        let append = |tx: &dyn Sql, actor: &str| {
            let details = entry(1, actor);
            audit::append(
                tx,
                &NewEntry {
                    timestamp_ms: 1,
                    actor,
                    kind: "k",
                    details: &details,
                },
            )
            .map(drop)
        };
        let first = std::thread::spawn(move || {
            a.run_blocking(move |tx| {
                append(tx, "a")?;
                chain_taken.send(()).unwrap();
                let _ = on_row.recv_timeout(Duration::from_secs(1));
                bump(tx)
            })
        });
        on_chain.recv().unwrap();
        let second = std::thread::spawn(move || {
            b.run_blocking(move |tx| {
                bump(tx)?;
                let _ = row_taken.send(());
                append(tx, "b")
            })
        });
        let results: Vec<Result<(), LedgerError>> = [first, second]
            .into_iter()
            .map(|t| t.join().expect("a writer's thread"))
            .collect();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let n = setup
            .query("SELECT n FROM counters WHERE id = 1", &[])
            .unwrap();
        assert_eq!(n, [Row(vec![Value::Int(2)])]);
        assert_eq!(audit::verify_chain(&setup).unwrap().entries, 2);
    }

    /// Processes that start together on a fresh database: one runs each migration, the others
    /// find it done.
    #[test]
    fn migrations_run_once_when_processes_start_together() {
        const NOTES: Schema = Schema {
            component: "notes",
            migrations: &[
                "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
                "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'nobody'",
            ],
        };
        let server = Server::start();
        let starters: Vec<_> = (0..4)
            .map(|_| {
                let url = server.url();
                std::thread::spawn(move || {
                    let mut db = Postgres::connect(&url).unwrap();
                    db.apply_schema(&NOTES).unwrap()
                })
            })
            .collect();
        let ran: usize = starters.into_iter().map(|s| s.join().unwrap()).sum();
        assert_eq!(ran, 2);
        let db = Postgres::connect(&server.url()).unwrap();
        let version = db
            .query_opt(
                "SELECT version FROM schema_version WHERE component = ?1",
                crate::sql_params!["notes"],
            )
            .unwrap()
            .unwrap();
        assert_eq!(version.int(0).unwrap(), 2);
        let too_old = Schema {
            component: "notes",
            migrations: &NOTES.migrations[..1],
        };
        let mut db = Postgres::connect(&server.url()).unwrap();
        assert!(matches!(
            db.apply_schema(&too_old),
            Err(LedgerError::SchemaTooNew {
                found: 2,
                known: 1,
                ..
            })
        ));
    }

    /// The group-commit writer on PostgreSQL: concurrent jobs share transactions, and a job
    /// that fails (here on a constraint, which aborts PostgreSQL's transaction until its
    /// savepoint is rolled back) loses only its own writes and audit entry.
    ///
    /// (The synchronous client runs a runtime of its own: it is used from the writer's thread
    /// and from plain threads, never from inside an async task.)
    #[test]
    fn the_writer_batches_jobs_and_rolls_back_only_a_failing_one() {
        const NOTES: Schema = Schema {
            component: "notes",
            migrations: &["CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)"],
        };
        let server = Server::start();
        let mut db = Postgres::connect(&server.url()).unwrap();
        db.apply_schema(&NOTES).unwrap();
        let writer = crate::Writer::spawn(db, "pg-writer");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let failed = runtime.block_on(async {
            let jobs: Vec<_> = (0..100i64)
                .map(|n| {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        writer
                            .run(move |tx| {
                                // Every tenth job reuses the id of the one before it.
                                let id = if n % 10 == 9 { n - 1 } else { n };
                                let details = entry(n as u64, "writer");
                                audit::append(
                                    tx,
                                    &NewEntry {
                                        timestamp_ms: n as u64,
                                        actor: "writer",
                                        kind: "note",
                                        details: &details,
                                    },
                                )?;
                                tx.execute(
                                    "INSERT INTO notes (id, body) VALUES (?1, ?2)",
                                    crate::sql_params![id, "note"],
                                )?;
                                Ok::<_, LedgerError>(n)
                            })
                            .await
                    })
                })
                .collect();
            let mut failed = Vec::new();
            for job in jobs {
                if let Err(err) = job.await.unwrap() {
                    assert!(err.to_string().contains("duplicate key"), "{err}");
                    failed.push(err);
                }
            }
            failed
        });
        let stats = writer.stats();
        assert!(stats.commits < stats.jobs, "batched: {stats:?}");
        drop(writer);
        let db = Postgres::connect(&server.url()).unwrap();
        let notes = db.query("SELECT COUNT(*) FROM notes", &[]).unwrap();
        assert_eq!(notes[0].int(0).unwrap() as usize, 100 - failed.len());
        assert!(!failed.is_empty() && failed.len() <= 10);
        let report = audit::verify_chain(&db).unwrap();
        assert_eq!(report.entries as usize, 100 - failed.len());
    }

    /// A server opens, uses and drops connections from inside its async tasks (a coordinator
    /// at start, `quorumvm bench` adding an identity): none of it may block the task's runtime.
    #[test]
    fn a_connection_is_opened_used_and_dropped_inside_an_async_task() {
        let server = Server::start();
        let url = server.url();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut db = Postgres::connect(&url).unwrap();
            db.transaction(|tx| tx.execute_batch("CREATE TABLE t (x BIGINT)"))
                .unwrap();
            let rows = db
                .transaction(|tx| tx.query("SELECT x FROM t", &[]))
                .unwrap();
            assert!(rows.is_empty());
            drop(db);
        });
    }
}
