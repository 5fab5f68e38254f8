//! `kill -9` in the middle of a stream of appends loses nothing that was acknowledged.
//!
//! The test re-runs its own binary as the child (selected by an environment variable): the
//! child appends entries as fast as it can and prints each one's seq and hash after `append`
//! returned `Ok`; the parent SIGKILLs it mid-stream, reopens the database and checks that every
//! acknowledged entry is there, unchanged, and that the chain verifies. Three rounds, so that
//! appending after a crash is covered too. (A process kill leaves the OS page cache intact;
//! surviving power loss rests on `synchronous = FULL`, which this test cannot cut the power to
//! prove.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use quorumvm_ledger::{Ledger, NewEntry};

const CHILD_ENV: &str = "QUORUMVM_LEDGER_CRASH_CHILD_DB";
const TEST_NAME: &str = "kill_9_mid_stream_loses_no_acknowledged_append";
const ACKS_BEFORE_KILL: usize = 60;
const ROUNDS: usize = 3;

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_append() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        append_until_killed(&db);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let mut acked: Vec<(u64, String)> = Vec::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
