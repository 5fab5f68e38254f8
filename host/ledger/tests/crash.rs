//! `kill -9` in the middle of a stream of writes loses nothing that was acknowledged.
//!
//! Each test re-runs its own binary as the child (selected by an environment variable): the
//! child writes as fast as it can and prints an acknowledgement after each write returned `Ok`;
//! the parent SIGKILLs it mid-stream, reopens the database and checks that every acknowledged
//! write is there, unchanged, and that the chain verifies. Three rounds, so that writing after a
//! crash is covered too. (A process kill leaves the OS page cache intact; surviving power loss
//! rests on `synchronous = FULL`, which this test cannot cut the power to prove.)
//!
//! One child appends through [`Ledger::append_audit`], one transaction per entry; the other
//! writes from many tasks at once through a [`Writer`], whose batches commit many writes with
//! one fsync and must still acknowledge none before its batch committed.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_ledger::{Ledger, LedgerError, NewEntry, Schema, Writer, audit};

const CHILD_ENV: &str = "QUORUMVM_LEDGER_CRASH_CHILD_DB";
const TEST_NAME: &str = "kill_9_mid_stream_loses_no_acknowledged_append";
const WRITER_CHILD_ENV: &str = "QUORUMVM_LEDGER_CRASH_WRITER_CHILD_DB";
const WRITER_TEST_NAME: &str = "kill_9_mid_batch_loses_no_acknowledged_writer_job";
const ACKS_BEFORE_KILL: usize = 60;
const ROUNDS: usize = 3;

/// Starts this very test as a child process writing to `db`, its stdout read line by line.
fn spawn_child(test_name: &str, env: &str, db: &Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_append() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        append_until_killed(&db);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let mut acked: Vec<(u64, String)> = Vec::new();

    for round in 0..ROUNDS {
        let (mut child, mut lines) = spawn_child(TEST_NAME, CHILD_ENV, &db);
        let mut parse = |line: String| {
            if let Some(rest) = line.strip_prefix("acked ") {
                let (seq, hash) = rest.split_once(' ').unwrap();
                acked.push((seq.parse().unwrap(), hash.to_owned()));
                true
            } else {
                false
            }
        };
        let mut this_round = 0;
        while this_round < ACKS_BEFORE_KILL {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: the child stopped on its own"))
                .unwrap();
            this_round += usize::from(parse(line));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        // Acknowledgements written between our last read and the kill are still in the pipe.
        for line in lines {
            parse(line.unwrap());
        }

        let ledger = Ledger::open(&db).unwrap();
        let report = ledger.verify_chain().unwrap();
        let stored = ledger.audit_entries(0, u32::MAX).unwrap();
        assert_eq!(report.entries as usize, stored.len());
        for (seq, hash) in &acked {
            let entry = &stored[*seq as usize - 1];
            assert_eq!(entry.seq, *seq);
            assert_eq!(&hex::encode(entry.hash), hash, "entry {seq} changed");
        }
        let last_acked = acked.last().unwrap().0;
        // At most the one append in flight at the kill may have committed unacknowledged.
        assert!(
            report.entries == last_acked || report.entries == last_acked + 1,
            "{} stored, {last_acked} acknowledged",
            report.entries
        );
    }
    assert!(acked.len() >= ROUNDS * ACKS_BEFORE_KILL);
}

/// The child: appends until it is killed, acknowledging each append that returned `Ok`.
fn append_until_killed(db: &str) -> ! {
    let mut ledger = Ledger::open(db).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let entry = ledger
            .append_audit(&NewEntry {
                timestamp_ms: i,
                actor: "crash-test",
                kind: "eval.accepted",
                details: &serde_json::json!({ "i": i }),
            })
            .unwrap();
        writeln!(out, "acked {} {}", entry.seq, hex::encode(entry.hash)).unwrap();
        out.flush().unwrap();
    }
    unreachable!("u64 appends")
}

/// The writer child's table: one row per acknowledged job, written with its audit entry.
const ACKS: Schema = Schema {
    component: "crash_test",
    migrations: &["CREATE TABLE acks (n INTEGER PRIMARY KEY) STRICT"],
};

#[test]
fn kill_9_mid_batch_loses_no_acknowledged_writer_job() {
    if let Ok(db) = std::env::var(WRITER_CHILD_ENV) {
        write_through_writer_until_killed(&db);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let mut acked: Vec<u64> = Vec::new();

    for round in 0..ROUNDS {
        let (mut child, mut lines) = spawn_child(WRITER_TEST_NAME, WRITER_CHILD_ENV, &db);
        let mut parse = |line: String| match line.strip_prefix("committed ") {
            Some(n) => {
                acked.push(n.parse().unwrap());
                true
            }
            None => false,
        };
        // More than one batch's worth, so that the kill lands among full batches.
        let mut this_round = 0;
        while this_round < 10 * ACKS_BEFORE_KILL {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: the child stopped on its own"))
                .unwrap();
            this_round += usize::from(parse(line));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        for line in lines {
            parse(line.unwrap());
        }

        let mut ledger = Ledger::open(&db).unwrap();
        ledger.apply_schema(&ACKS).unwrap();
        let report = ledger.verify_chain().unwrap();
        let stored: Vec<u64> = ledger
            .connection()
            .prepare("SELECT n FROM acks ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Each job's row and audit entry committed together or not at all.
        assert_eq!(report.entries as usize, stored.len());
        for n in &acked {
            assert!(stored.binary_search(n).is_ok(), "acknowledged job {n} lost");
        }
    }
    assert!(acked.len() >= ROUNDS * 10 * ACKS_BEFORE_KILL);
}

/// The writer child: 16 tasks write through one [`Writer`] until it is killed, each printing
/// `committed N` once its job `N` returned `Ok`.
fn write_through_writer_until_killed(db: &str) -> ! {
    let mut ledger = Ledger::open(db).unwrap();
    ledger.apply_schema(&ACKS).unwrap();
    // Above every number a killed child may have committed without acknowledging it.
    let first: u64 = ledger
        .connection()
        .query_row("SELECT coalesce(max(n), 0) + 1 FROM acks", [], |r| r.get(0))
        .unwrap();
    let writer = Writer::spawn(ledger, "crash-writer");
    let next = Arc::new(AtomicU64::new(first));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let ended = runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let writer = writer.clone();
            let next = Arc::clone(&next);
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let written = writer
                        .run(move |tx| {
                            tx.execute("INSERT INTO acks (n) VALUES (?1)", [n])?;
                            audit::append(
                                tx,
                                &NewEntry {
                                    timestamp_ms: n,
                                    actor: "crash-test",
                                    kind: "eval.accepted",
                                    details: &serde_json::json!({ "n": n }),
                                },
                            )?;
                            Ok::<_, LedgerError>(())
                        })
                        .await;
                    if let Err(err) = written {
                        break err;
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "committed {n}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        tasks.join_next().await
    });
    panic!("a writing task ended, which only a failure can cause: {ended:?}")
}
