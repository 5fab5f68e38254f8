//! Group commit: many concurrent writes, one transaction and one fsync per batch.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::{Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::postgres::{PgTx, Postgres};
use crate::sql::Lock;
use crate::{Ledger, LedgerError};

/// At most this many jobs share a transaction, which bounds how long the first job of a batch
/// waits for the others and how much one commit appends to the write-ahead log.
pub const MAX_BATCH: usize = 512;

/// Jobs that may wait in the queue. Beyond that, [`Writer::run`] waits for room: a server under
/// more load than its disk can take slows its callers down instead of queueing without bound.
/// Twice a batch, so that the next batch fills up while one commits.
const QUEUE_CAPACITY: usize = 2 * MAX_BATCH;

/// An unusual name, so that a savepoint a job opens itself cannot be mistaken for the job's own.
const SAVEPOINT: &str = "SAVEPOINT quorumvm_writer_job";
const RELEASE: &str = "RELEASE quorumvm_writer_job";
const ROLL_BACK: &str = "ROLLBACK TO quorumvm_writer_job; RELEASE quorumvm_writer_job";

/// Group commit: a thread that owns a [`Ledger`] and commits the writes sent to it in batches.
///
/// With `synchronous = FULL` every commit waits for an fsync, so committing each write on its
/// own caps a server at one write per fsync however many requests are waiting. The writer's
/// thread takes the first waiting job and whatever else is
/// queued by then (up to [`MAX_BATCH`]), runs them one after the other in one `BEGIN IMMEDIATE`
/// transaction, each inside a savepoint of its own, and commits once: one fsync for the batch.
///
/// To a caller, a job behaves as if it had run in [`Ledger::transaction`] of its own:
///
/// - A job that returns `Err` or panics has its savepoint rolled back: nothing it wrote commits,
///   and the other jobs of its batch are not affected. A panic reaches its own caller only, as
///   [`LedgerError::JobPanicked`].
/// - `Ok` is sent to the caller only once the batch's `COMMIT` has returned, so a success a
///   caller sees is durable. If the batch does not commit, every job in it that succeeded gets
///   [`LedgerError::CommitFailed`] instead, never `Ok`.
/// - Jobs run in the order they were queued, each seeing what the jobs before it wrote. The audit
///   chain stays valid across rolled-back savepoints because [`crate::audit::append`] reads the
///   chain's tip inside the transaction each time and caches nothing.
///
/// Jobs must not end the transaction themselves (`COMMIT`, `ROLLBACK`, `RAISE(ROLLBACK)`,
/// `INSERT OR ROLLBACK`) nor leave a check to the commit (a deferred foreign key): either fails
/// the other jobs of the batch. When the transaction ends before the whole batch has run, ended
/// by a job or by SQLite itself (as after a full disk or an I/O error), the jobs that already ran
/// get [`LedgerError::CommitFailed`] and the rest run in a new transaction; when the final
/// `COMMIT` fails, every job gets it. (A job that runs `COMMIT` itself does commit the jobs
/// before it, which are told that they failed: a false failure, never a false success.)
///
/// Reads do not go through the writer: open a second [`Ledger`] for them. In WAL mode readers
/// never wait for the writer, and they see only committed batches.
///
/// Clones share the thread, which finishes the queued jobs and exits once every clone has been
/// dropped.
///
/// [`Writer::inline`] is the same writer without the thread, for a deterministic simulation:
/// each job runs in the task that calls [`Writer::run`], as a batch of one.
pub struct Writer<E: Engine = Ledger> {
    queue: Queue<E>,
    counters: Arc<Counters>,
}

impl<E: Engine> Clone for Writer<E> {
    fn clone(&self) -> Self {
        Writer {
            queue: self.queue.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

enum Queue<E: Engine> {
    /// Jobs for the writer thread.
    Thread(mpsc::Sender<Box<dyn Job<E>>>),
    /// No thread: the caller commits, one job at a time.
    Inline(Arc<Mutex<E>>),
}

impl<E: Engine> Clone for Queue<E> {
    fn clone(&self) -> Self {
        match self {
            Queue::Thread(jobs) => Queue::Thread(jobs.clone()),
            Queue::Inline(engine) => Queue::Inline(Arc::clone(engine)),
        }
    }
}

/// A database a [`Writer`] commits batches to: a SQLite [`Ledger`] (every server's default) or
/// a [`Postgres`] connection (a coordinator's replicas). A batch is one transaction, each job in
/// a savepoint of its own.
pub trait Engine: Send + Sized + 'static {
    /// What a job is handed: the batch's transaction.
    type Tx<'c>;

    /// Begins a batch's transaction, taking the write lock at once where the engine has one.
    fn begin(&mut self) -> Result<Self::Tx<'_>, String>;

    /// Runs statements without parameters in `tx`: the savepoints of the jobs.
    fn statements(tx: &Self::Tx<'_>, sql: &str) -> Result<(), String>;

    fn commit(tx: Self::Tx<'_>) -> Result<(), String>;
}

impl Engine for Ledger {
    type Tx<'c> = Transaction<'c>;

    fn begin(&mut self) -> Result<Transaction<'_>, String> {
        self.connection_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())
    }

    fn statements(tx: &Transaction<'_>, sql: &str) -> Result<(), String> {
        tx.execute_batch(sql).map_err(|e| e.to_string())
    }

    fn commit(tx: Transaction<'_>) -> Result<(), String> {
        tx.commit().map_err(|e| e.to_string())
    }
}

impl Engine for Postgres {
    type Tx<'c> = PgTx<'c>;

    /// Begins a batch holding the audit chain's lock ([`Lock::AuditChain`]), so that the
    /// batches of processes sharing the database run one at a time. A batch holds every row
    /// lock its jobs took until it commits, and the jobs of two processes' batches take them in
    /// whatever order their requests came: taken in turns only from a batch's first audit entry
    /// on, as before, a batch that locked a row and then waited for the chain could deadlock with
    /// one that held the chain and then wanted the row, and PostgreSQL would fail one of their
    /// jobs. Almost every job appends to the chain, so batches already took turns for most of
    /// their length: this costs two replicas no concurrency they had.
    fn begin(&mut self) -> Result<PgTx<'_>, String> {
        let tx = self.begin().map_err(|e| e.to_string())?;
        Lock::AuditChain.take(&tx).map_err(|e| e.to_string())?;
        Ok(tx)
    }

    fn statements(tx: &PgTx<'_>, sql: &str) -> Result<(), String> {
        crate::Sql::execute_batch(tx, sql).map_err(|e| e.to_string())
    }

    fn commit(tx: PgTx<'_>) -> Result<(), String> {
        tx.commit().map_err(|e| e.to_string())
    }
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
}

/// What a [`Writer`] has done so far, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Batches committed (each one fsync).
    pub commits: u64,
    /// Jobs run, whatever their outcome. While nothing fails, `jobs / commits` is the mean
    /// batch size.
    pub jobs: u64,
    /// Jobs waiting in the queue for a batch to start: the backlog.
    pub queued: u64,
}

impl<E: Engine> Writer<E> {
    /// Starts the thread, named `name`, that owns `ledger` (whose schemas the caller has already
    /// applied) and runs every job sent to it.
    ///
    /// # Panics
    ///
    /// As [`std::thread::spawn`] does, if the operating system cannot start a thread, and if
    /// `name` contains a NUL byte.
    pub fn spawn(ledger: E, name: &str) -> Writer<E> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(ledger, queue, &thread_counters))
            .expect("the operating system could not start the ledger's writer thread");
        Writer {
            queue: Queue::Thread(jobs),
            counters,
        }
    }

    /// A writer without a thread: every job commits on its own, in the task that runs it, so a
    /// simulation that drives every task on one thread schedules the commits too. Same
    /// guarantees as [`Writer::spawn`], batches of one. (For a [`Ledger`]: PostgreSQL's
    /// synchronous client cannot run inside an async task.)
    pub fn inline(ledger: E) -> Writer<E> {
        Writer {
            queue: Queue::Inline(Arc::new(Mutex::new(ledger))),
            counters: Arc::default(),
        }
    }

    /// Runs `job` in the next batch and returns its result once the batch has committed; see
    /// [`Writer`] for what a job may rely on.
    ///
    /// Dropping the returned future once the job is queued does not withdraw the job: it still
    /// runs and may commit, and nobody is told.
    pub async fn run<T, Err>(
        &self,
        job: impl FnOnce(&E::Tx<'_>) -> Result<T, Err> + Send + 'static,
    ) -> Result<T, Err>
    where
        T: Send + 'static,
        Err: From<LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job<E>> = Box::new(Queued { job, reply });
        match &self.queue {
            Queue::Thread(jobs) => jobs
                .send(job)
                .await
                .map_err(|_| LedgerError::WriterStopped)?,
            Queue::Inline(ledger) => commit_alone(ledger, job, &self.counters),
        }
        answer.await.map_err(|_| LedgerError::WriterStopped)?
    }

    /// [`Writer::run`] for callers outside an async runtime, such as the command line: blocks
    /// the calling thread until the batch has committed.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime, where blocking would stall one of its worker
    /// threads: use [`Writer::run`] there.
    pub fn run_blocking<T, Err>(
        &self,
        job: impl FnOnce(&E::Tx<'_>) -> Result<T, Err> + Send + 'static,
    ) -> Result<T, Err>
    where
        T: Send + 'static,
        Err: From<LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job<E>> = Box::new(Queued { job, reply });
        match &self.queue {
            Queue::Thread(jobs) => jobs
                .blocking_send(job)
                .map_err(|_| LedgerError::WriterStopped)?,
            Queue::Inline(ledger) => commit_alone(ledger, job, &self.counters),
        }
        answer
            .blocking_recv()
            .map_err(|_| LedgerError::WriterStopped)?
    }

    /// The counters shared by this writer and its clones, for a server's `/metrics`: a few
    /// atomic loads, so it may be called on every scrape.
    pub fn stats(&self) -> WriterStats {
        // The queue's free room is what the channel can tell; the rest of it is occupied.
        let queued = match &self.queue {
            Queue::Thread(jobs) => jobs.max_capacity() - jobs.capacity(),
            Queue::Inline(_) => 0,
        };
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            queued: queued as u64,
        }
    }
}

/// A job as it waits in the queue, its result type erased so that one queue holds them all.
trait Job<E: Engine>: Send {
    /// Runs the job (catching a panic) and keeps its result until the batch's outcome is known.
    fn run(self: Box<Self>, tx: &E::Tx<'_>) -> Box<dyn Ran>;

    /// Tells the caller that the job will not run, as no transaction could be started for it.
    fn abandon(self: Box<Self>, reason: &str);
}

/// A job that has run, and whose caller waits for the batch to end.
trait Ran {
    fn succeeded(&self) -> bool;

    /// Sends the caller its result: the job's own if the batch committed or the job failed, else
    /// (a success that did not commit) [`LedgerError::CommitFailed`].
    fn answer(self: Box<Self>, batch: &Result<(), String>);
}

struct Queued<F, T, E> {
    job: F,
    reply: oneshot::Sender<Result<T, E>>,
}

struct Done<T, E> {
    result: Result<T, E>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<En, F, T, E> Job<En> for Queued<F, T, E>
where
    En: Engine,
    F: FnOnce(&En::Tx<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<LedgerError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &En::Tx<'_>) -> Box<dyn Ran> {
        let Queued { job, reply } = *self;
        // Asserting unwind safety is sound: what a panicking job wrote through `tx` is rolled
        // back with its savepoint, and nothing else it could have left half-changed outlives it.
        let result = panic::catch_unwind(AssertUnwindSafe(|| job(tx))).unwrap_or_else(|payload| {
            Err(LedgerError::JobPanicked(panic_message(payload.as_ref())).into())
        });
        Box::new(Done { result, reply })
    }

    fn abandon(self: Box<Self>, reason: &str) {
        // A caller that stopped waiting has nobody to tell: ignore a failed send.
        let _ = self
            .reply
            .send(Err(LedgerError::CommitFailed(reason.to_owned()).into()));
    }
}

impl<T, E> Ran for Done<T, E>
where
    T: Send + 'static,
    E: From<LedgerError> + Send + 'static,
{
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn answer(self: Box<Self>, batch: &Result<(), String>) {
        let result = match (self.result, batch) {
            (Ok(_), Err(reason)) => Err(LedgerError::CommitFailed(reason.clone()).into()),
            (result, _) => result,
        };
        // A caller that stopped waiting has nobody to tell: ignore a failed send.
        let _ = self.reply.send(result);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Commits `job` as a batch of its own, in the calling thread ([`Writer::inline`]).
fn commit_alone<E: Engine>(ledger: &Mutex<E>, job: Box<dyn Job<E>>, counters: &Counters) {
    // A job that panicked was caught inside the batch: the lock is never poisoned by one.
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    commit_batch(&mut *ledger, &mut VecDeque::from([job]), counters);
}

/// The writer thread: batch after batch until every [`Writer`] is gone and the queue is empty.
fn serve<E: Engine>(
    mut ledger: E,
    mut queue: mpsc::Receiver<Box<dyn Job<E>>>,
    counters: &Counters,
) {
    let mut batch = VecDeque::with_capacity(MAX_BATCH);
    loop {
        if batch.is_empty() {
            match queue.blocking_recv() {
                Some(job) => batch.push_back(job),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut ledger, &mut batch, counters);
    }
}

/// Runs the jobs of `batch`, front first, in one transaction, commits it and answers every job
/// that ran. If the transaction ends before every job ran, the jobs not yet run are left in
/// `batch` for the next one.
fn commit_batch<E: Engine>(
    engine: &mut E,
    batch: &mut VecDeque<Box<dyn Job<E>>>,
    counters: &Counters,
) {
    let tx = match engine.begin() {
        Ok(tx) => tx,
        Err(err) => {
            let reason = format!("the batch's transaction could not begin: {err}");
            for job in batch.drain(..) {
                job.abandon(&reason);
            }
            return;
        }
    };
    let mut ran: Vec<Box<dyn Ran>> = Vec::with_capacity(batch.len());
    let mut ended_early = None;
    while let Some(job) = batch.pop_front() {
        if let Err(err) = E::statements(&tx, SAVEPOINT) {
            let reason = format!("the job's savepoint could not be opened: {err}");
            job.abandon(&reason);
            ended_early = Some(reason);
            break;
        }
        let done = job.run(&tx);
        let closed = E::statements(&tx, if done.succeeded() { RELEASE } else { ROLL_BACK });
        ran.push(done);
        // The savepoint is gone only if the transaction is: the job ended it, or SQLite rolled
        // it back on its own.
        if let Err(err) = closed {
            ended_early = Some(format!(
                "the batch's transaction ended before it could commit: {err}"
            ));
            break;
        }
    }
    counters.jobs.fetch_add(ran.len() as u64, Ordering::Relaxed);
    let outcome = match ended_early {
        Some(reason) => {
            drop(tx); // Rolls back whatever is left of the transaction.
            Err(reason)
        }
        // A failed COMMIT leaves the transaction open; dropping it rolls it back.
        None => E::commit(tx).map_err(|err| format!("the batch's COMMIT failed: {err}")),
    };
    if outcome.is_ok() {
        counters.commits.fetch_add(1, Ordering::Relaxed);
    }
    for done in ran {
        done.answer(&outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, NewEntry};
    use crate::{Ledger, Schema};
    use serde_json::json;
    use std::path::Path;
    use std::time::{Duration, Instant};
    use tokio::task::JoinHandle;

    const NOTES: Schema = Schema {
        component: "notes",
        migrations: &["
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL) STRICT;
            CREATE TABLE parents (id INTEGER PRIMARY KEY) STRICT;
            CREATE TABLE children (
                id INTEGER PRIMARY KEY,
                parent INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
            ) STRICT;
        "],
    };

    fn open(path: &Path) -> Ledger {
        let mut ledger = Ledger::open(path).unwrap();
        ledger.apply_schema(&NOTES).unwrap();
        ledger
    }

    fn spawn(path: &Path) -> Writer {
        Writer::spawn(open(path), "test-writer")
    }

    fn bodies(path: &Path) -> Vec<String> {
        open(path)
            .connection()
            .prepare("SELECT body FROM notes ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn note(tx: &Transaction<'_>, body: &str) -> Result<(), LedgerError> {
        tx.execute("INSERT INTO notes (body) VALUES (?1)", [body])?;
        Ok(())
    }

    fn audited_note(tx: &Transaction<'_>, body: &str) -> Result<u64, LedgerError> {
        note(tx, body)?;
        let entry = audit::append(
            tx,
            &NewEntry {
                timestamp_ms: 1,
                actor: "test",
                kind: "note",
                details: &json!({ "body": body }),
            },
        )?;
        Ok(entry.seq)
    }

    /// Keeps the writer thread busy in a job of its own until the returned sender is dropped,
    /// so that the jobs queued meanwhile form the next batch.
    async fn hold(writer: &Writer) -> std::sync::mpsc::Sender<()> {
        let (started, running) = oneshot::channel();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .run(move |_| {
                    started.send(()).unwrap();
                    // Err once `release` is dropped: the cue to go on.
                    let _ = gate.recv();
                    Ok::<_, LedgerError>(())
                })
                .await
        });
        running.await.unwrap();
        release
    }

    /// Queues `job` and returns once it waits in the queue, so that jobs queued one after the
    /// other are queued in that order.
    async fn queue<T: Send + 'static>(
        writer: &Writer,
        job: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError> + Send + 'static,
    ) -> JoinHandle<Result<T, LedgerError>> {
        let before = writer.stats().queued;
        let handle = tokio::spawn({
            let writer = writer.clone();
            async move { writer.run(job).await }
        });
        while writer.stats().queued == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_writes_share_commits_and_every_success_survives_reopening() {
        const TASKS: u64 = 64;
        const WRITES: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..WRITES {
                        let body = format!("{task}/{i}");
                        seqs.push(writer.run(move |tx| audited_note(tx, &body)).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut acknowledged = Vec::new();
        for (task, handle) in tasks.into_iter().enumerate() {
            let seqs = handle.await.unwrap();
            // Each task waited for one write before the next: their order is the chain's.
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "task {task}: {seqs:?}"
            );
            acknowledged.extend(seqs.into_iter().enumerate().map(|(i, s)| (task, i, s)));
        }
        let stats = writer.stats();
        assert_eq!(stats.jobs, TASKS * WRITES);
        assert_eq!(stats.queued, 0);
        assert!(
            stats.commits < stats.jobs,
            "no batch formed: {} commits for {} jobs",
            stats.commits,
            stats.jobs
        );
        drop(writer);

        let ledger = open(&path);
        assert_eq!(ledger.verify_chain().unwrap().entries, TASKS * WRITES);
        let entries = ledger.audit_entries(0, u32::MAX).unwrap();
        for (task, i, seq) in acknowledged {
            let details: serde_json::Value =
                serde_json::from_str(&entries[seq as usize - 1].details).unwrap();
            assert_eq!(details["body"], format!("{task}/{i}"));
        }
        assert_eq!(bodies(&path).len() as u64, TASKS * WRITES);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_job_rolls_back_only_its_own_writes_and_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let release = hold(&writer).await;
        let first = queue(&writer, |tx| audited_note(tx, "one")).await;
        let second = queue(&writer, |tx| {
            audited_note(tx, "two")?;
            Err::<u64, _>(LedgerError::DetailsNotObject)
        })
        .await;
        let third = queue(&writer, |tx| audited_note(tx, "three")).await;
        drop(release);

        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert!(matches!(
            second.await.unwrap(),
            Err(LedgerError::DetailsNotObject)
        ));
        assert_eq!(third.await.unwrap().unwrap(), 2, "the chain skips job 2");
        assert_eq!(
            writer.stats().commits,
            2,
            "the held job's batch, then one for all three"
        );
        drop(writer);

        assert_eq!(bodies(&path), ["one", "three"]);
        let ledger = open(&path);
        assert_eq!(ledger.verify_chain().unwrap().entries, 2);
        let details: Vec<_> = ledger
            .audit_entries(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.details)
            .collect();
        assert_eq!(details, [r#"{"body":"one"}"#, r#"{"body":"three"}"#]);
    }

    /// The simulation's writer: each job commits before `run` returns, in the calling task,
    /// with the thread's guarantees (a failed or panicking job leaves nothing behind).
    #[tokio::test(flavor = "current_thread")]
    async fn an_inline_writer_commits_each_job_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = Writer::inline(open(&path));
        let thread = std::thread::current().id();
        let ran_on = writer
            .run(move |tx| {
                audited_note(tx, "one")?;
                Ok::<_, LedgerError>(std::thread::current().id())
            })
            .await
            .unwrap();
        assert_eq!(ran_on, thread, "the job ran in the calling thread");
        assert_eq!(bodies(&path), ["one"], "committed before run returned");
        let failed = writer
            .run(|tx| {
                audited_note(tx, "two")?;
                Err::<u64, _>(LedgerError::DetailsNotObject)
            })
            .await;
        assert!(matches!(failed, Err(LedgerError::DetailsNotObject)));
        let panicked = writer
            .run(|tx| -> Result<u64, LedgerError> {
                audited_note(tx, "three")?;
                panic!("a bug")
            })
            .await;
        assert!(matches!(panicked, Err(LedgerError::JobPanicked(_))));
        assert_eq!(writer.run(|tx| audited_note(tx, "four")).await.unwrap(), 2);
        assert_eq!(bodies(&path), ["one", "four"]);
        assert_eq!(
            writer.stats(),
            WriterStats {
                commits: 4,
                jobs: 4,
                queued: 0
            }
        );
        drop(writer);
        assert_eq!(open(&path).verify_chain().unwrap().entries, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_job_is_rolled_back_and_reported_to_its_caller_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let release = hold(&writer).await;
        let first = queue(&writer, |tx| note(tx, "one")).await;
        let second = queue::<()>(&writer, |tx| {
            note(tx, "two")?;
            panic!("job two gives up");
        })
        .await;
        let third = queue(&writer, |tx| note(tx, "three")).await;
        drop(release);

        first.await.unwrap().unwrap();
        match second.await.unwrap() {
            Err(LedgerError::JobPanicked(message)) => assert_eq!(message, "job two gives up"),
            other => panic!("expected the panic to be reported, got {other:?}"),
        }
        third.await.unwrap().unwrap();
        // The thread survived.
        writer.run(|tx| note(tx, "four")).await.unwrap();
        drop(writer);
        assert_eq!(bodies(&path), ["one", "three", "four"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_that_fails_to_commit_reports_no_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let release = hold(&writer).await;
        let first = queue(&writer, |tx| note(tx, "one")).await;
        // A deferred foreign key is checked only by COMMIT, which then fails.
        let orphan = queue(&writer, |tx| {
            tx.execute("INSERT INTO children (parent) VALUES (42)", [])?;
            Ok(())
        })
        .await;
        let third = queue(&writer, |tx| note(tx, "three")).await;
        drop(release);

        for handle in [first, orphan, third] {
            let result = handle.await.unwrap();
            assert!(
                matches!(result, Err(LedgerError::CommitFailed(_))),
                "{result:?}"
            );
        }
        assert_eq!(writer.stats().commits, 1, "only the held job's batch");
        writer.run(|tx| note(tx, "four")).await.unwrap();
        drop(writer);
        assert_eq!(bodies(&path), ["four"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_that_ends_the_transaction_fails_the_jobs_before_it_not_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let release = hold(&writer).await;
        let first = queue(&writer, |tx| {
            tx.execute("INSERT INTO notes (id, body) VALUES (1, 'one')", [])?;
            Ok(())
        })
        .await;
        // The conflict makes SQLite roll back the whole transaction, job one's note included.
        let second = queue(&writer, |tx| {
            tx.execute(
                "INSERT OR ROLLBACK INTO notes (id, body) VALUES (1, 'two')",
                [],
            )?;
            Ok(())
        })
        .await;
        let third = queue(&writer, |tx| note(tx, "three")).await;
        drop(release);

        let first = first.await.unwrap();
        assert!(
            matches!(first, Err(LedgerError::CommitFailed(_))),
            "{first:?}"
        );
        assert!(matches!(second.await.unwrap(), Err(LedgerError::Sqlite(_))));
        third.await.unwrap().unwrap();
        drop(writer);
        assert_eq!(bodies(&path), ["three"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn queued_jobs_still_run_once_their_caller_and_every_writer_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let release = hold(&writer).await;
        let abandoned = queue(&writer, |tx| note(tx, "orphan")).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        drop(writer);
        drop(release);

        let deadline = Instant::now() + Duration::from_secs(10);
        while bodies(&path).is_empty() {
            assert!(Instant::now() < deadline, "the queued job never committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(bodies(&path), ["orphan"]);
    }

    #[test]
    fn run_blocking_serves_callers_outside_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = spawn(&path);
        let seq = writer.run_blocking(|tx| audited_note(tx, "cli")).unwrap();
        assert_eq!(seq, 1);
        let refused: Result<(), LedgerError> = writer.run_blocking(|tx| {
            note(tx, "refused")?;
            Err(LedgerError::DetailsNotObject)
        });
        assert!(refused.is_err());
        assert_eq!(
            writer.stats(),
            WriterStats {
                commits: 2,
                jobs: 2,
                queued: 0
            }
        );
        drop(writer);
        assert_eq!(bodies(&path), ["cli"]);
    }
}
