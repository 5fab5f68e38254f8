//! The hash-chained, append-only audit log.
//!
//! Entry `n` stores `hash_n = SHA-256(encode(n, timestamp, actor, kind, details, hash_{n-1}))`,
//! with 32 zero bytes before the first entry. Changing any stored field of an entry breaks its
//! own hash; removing or moving an entry breaks the link to the next one, so
//! [`verify_chain`] names the first entry at which the log stops being the one that was written.
//! Triggers also refuse `UPDATE` and `DELETE` on the table, which stops mistakes; the chain is
//! what catches someone who drops the triggers.
//!
//! A chain cannot show that entries were cut off its *end*: compare [`ChainReport::head`] with a
//! head recorded elsewhere (by a peer, an operator, an earlier verification) for that.
//!
//! **Never put plaintext inputs, outputs, shares or secrets in an entry.** The log is meant to be
//! read by auditors and copied off the machine; record identities, program ids, request ids,
//! counts and decisions. Nothing here can tell a secret from an id, so this is the caller's duty.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sql::{Lock, Row, Sql};
use crate::{LedgerError, Schema, sql_params};

pub(crate) const SCHEMA: Schema = Schema {
    component: "audit",
    migrations: &["
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY CHECK (seq >= 1),
            timestamp_ms INTEGER NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
            hash BLOB NOT NULL CHECK (length(hash) = 32)
        ) STRICT;
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    "],
};

/// [`SCHEMA`] for PostgreSQL: the same columns, and one trigger function that refuses changes
/// (`TRUNCATE` too, which row triggers do not see).
pub(crate) const POSTGRES_SCHEMA: Schema = Schema {
    component: "audit",
    migrations: &["
        CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY CHECK (seq >= 1),
            timestamp_ms BIGINT NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
            hash BYTEA NOT NULL CHECK (length(hash) = 32)
        );
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
        CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
    "],
};

/// The `prev_hash` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Separates these hashes from every other SHA-256 use, and versions the encoding.
const DOMAIN: &[u8] = b"quorumvm audit entry v1\0";

/// What a caller records. It must never hold plaintext inputs, outputs or secrets.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    /// Milliseconds since the Unix epoch, from the caller's clock (the log does not read one).
    pub timestamp_ms: u64,
    /// Who acted: an identity, a custodian, `"coordinator"`.
    pub actor: &'a str,
    /// What happened, e.g. `"install"`, `"approve"`, `"eval.accepted"`, `"eval.denied"`.
    pub kind: &'a str,
    /// The particulars, as a JSON object (ids, counts, reasons).
    pub details: &'a serde_json::Value,
}

/// One stored entry. `details` is the exact JSON text that was hashed: it is kept as text, not
/// re-serialized, so verification never depends on how a JSON library orders or spaces things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub timestamp_ms: u64,
    pub actor: String,
    pub kind: String,
    pub details: String,
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// A chain that verified: how many entries it holds and the newest hash ([`GENESIS`] if empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    pub entries: u64,
    #[serde(with = "hex32")]
    pub head: [u8; 32],
}

/// The first place where the chain breaks: `seq` is the sequence number that should have been
/// there (for a missing entry) or the entry that fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit chain breaks at entry {seq}: {reason}")]
pub struct BrokenLink {
    pub seq: u64,
    pub reason: BreakReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    #[error("the entry is missing (the next one present is {next})")]
    Missing { next: u64 },
    #[error("its content no longer matches its hash (changed after it was written)")]
    ContentChanged,
    #[error("it does not point to the hash of the entry before it (entries removed or moved)")]
    PrevHashMismatch,
    #[error("a stored field is unreadable: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] BrokenLink),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The entry hash over a canonical encoding: fixed-width integers, every variable-length field
/// preceded by its length, so no two different entries encode alike.
pub fn entry_hash(
    seq: u64,
    timestamp_ms: u64,
    actor: &str,
    kind: &str,
    details: &str,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(timestamp_ms.to_be_bytes());
    for field in [actor, kind, details] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev_hash);
    h.finalize().into()
}

/// Appends an entry inside the caller's transaction, so that it commits with the change it
/// describes or not at all.
///
/// Processes that share a PostgreSQL database append to one chain: each append first takes the
/// chain's lock ([`Lock::AuditChain`], held to the end of the transaction), so the tip it reads is
/// the last committed one and no two transactions link to the same entry. On SQLite the
/// database's write lock already does that.
pub fn append(tx: &dyn Sql, entry: &NewEntry<'_>) -> Result<AuditEntry, LedgerError> {
    if !entry.details.is_object() {
        return Err(LedgerError::DetailsNotObject);
    }
    let details = entry.details.to_string();
    Lock::AuditChain.take(tx)?;
    let tip = tx.query_opt(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        &[],
    )?;
    let (seq, prev_hash) = match tip {
        None => (1, GENESIS),
        Some(row) => (row.uint(0)? + 1, row.bytes32(1)?),
    };
    let hash = entry_hash(
        seq,
        entry.timestamp_ms,
        entry.actor,
        entry.kind,
        &details,
        &prev_hash,
    );
    tx.execute(
        "INSERT INTO audit_log (seq, timestamp_ms, actor, kind, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        sql_params![
            seq,
            entry.timestamp_ms,
            entry.actor,
            entry.kind,
            &details,
            &prev_hash,
            &hash
        ],
    )?;
    Ok(AuditEntry {
        seq,
        timestamp_ms: entry.timestamp_ms,
        actor: entry.actor.to_owned(),
        kind: entry.kind.to_owned(),
        details,
        prev_hash,
        hash,
    })
}

/// Checks entries one by one, oldest first, wherever they come from: the database, or a page of
/// entries fetched from a server by `quorumvm audit verify`.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    head: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> ChainVerifier {
        ChainVerifier {
            next_seq: 1,
            head: GENESIS,
        }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), BrokenLink> {
        let broken = |reason| BrokenLink {
            seq: self.next_seq,
            reason,
        };
        if entry.seq > self.next_seq {
            return Err(broken(BreakReason::Missing { next: entry.seq }));
        }
        if entry.seq < self.next_seq {
            return Err(broken(BreakReason::Malformed(format!(
                "sequence number {} out of order",
                entry.seq
            ))));
        }
        let recomputed = entry_hash(
            entry.seq,
            entry.timestamp_ms,
            &entry.actor,
            &entry.kind,
            &entry.details,
            &entry.prev_hash,
        );
        if recomputed != entry.hash {
            return Err(broken(BreakReason::ContentChanged));
        }
        if entry.prev_hash != self.head {
            return Err(broken(BreakReason::PrevHashMismatch));
        }
        self.next_seq += 1;
        self.head = entry.hash;
        Ok(())
    }

    pub fn finish(self) -> ChainReport {
        ChainReport {
            entries: self.next_seq - 1,
            head: self.head,
        }
    }
}

const SELECT_ENTRIES: &str =
    "SELECT seq, timestamp_ms, actor, kind, details, prev_hash, hash FROM audit_log";

fn read_row(row: &Row) -> Result<AuditEntry, LedgerError> {
    Ok(AuditEntry {
        seq: row.uint(0)?,
        timestamp_ms: row.uint(1)?,
        actor: row.text(2)?,
        kind: row.text(3)?,
        details: row.text(4)?,
        prev_hash: row.bytes32(5)?,
        hash: row.bytes32(6)?,
    })
}

/// The rows of up to `limit` entries with `seq > after`, oldest first.
fn page(conn: &dyn Sql, after: u64, limit: u32) -> Result<Vec<Row>, LedgerError> {
    conn.query(
        &format!("{SELECT_ENTRIES} WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
        sql_params![after, limit],
    )
}

/// Up to `limit` entries with `seq > after`, oldest first.
pub fn entries(conn: &dyn Sql, after: u64, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
    page(conn, after, limit)?.iter().map(read_row).collect()
}

/// Entries read per statement while verifying: the log may be far larger than memory.
const VERIFY_PAGE: u32 = 4096;

/// Walks the whole log, oldest first, and reports the first broken link. The log is read in
/// pages; since entries are only ever appended, a page read later only sees more of them.
pub fn verify_chain(conn: &dyn Sql) -> Result<ChainReport, VerifyError> {
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let rows = page(conn, after, VERIFY_PAGE)?;
        let Some(last) = rows.last() else {
            return Ok(verifier.finish());
        };
        // The page's last sequence number, read as an integer whatever else is wrong with it.
        after = last.uint(0).map_err(|e| malformed(&verifier, e))?;
        for row in &rows {
            let entry = read_row(row).map_err(|e| malformed(&verifier, e))?;
            verifier.push(&entry)?;
        }
    }
}

/// A row that does not read (a negative number, a hash of the wrong length, a wrong type),
/// which only happens if someone rewrote the table: the chain breaks where it stands.
fn malformed(verifier: &ChainVerifier, err: LedgerError) -> VerifyError {
    match err {
        LedgerError::Column { .. } => BrokenLink {
            seq: verifier.next_seq,
            reason: BreakReason::Malformed(err.to_string()),
        }
        .into(),
        other => other.into(),
    }
}

/// Hashes travel as hex in JSON, as everywhere else in QuorumVM.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ledger;
    use serde_json::json;

    /// A ledger with `n` entries whose details are `{"n": i}`.
    fn ledger_with(n: u64) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        for i in 1..=n {
            ledger
                .append_audit(&NewEntry {
                    timestamp_ms: 1_700_000_000_000 + i,
                    actor: "coordinator",
                    kind: "eval.accepted",
                    details: &json!({ "n": i, "request": format!("r{i}") }),
                })
                .unwrap();
        }
        (dir, ledger)
    }

    /// Runs raw SQL as someone with write access to the file would: triggers dropped first.
    fn tamper(ledger: &Ledger, sql: &str) {
        ledger
            .connection()
            .execute_batch(&format!(
                "DROP TRIGGER IF EXISTS audit_log_no_update;
                 DROP TRIGGER IF EXISTS audit_log_no_delete;
                 {sql}"
            ))
            .unwrap();
    }

    fn broken_at(ledger: &Ledger) -> BrokenLink {
        match ledger.verify_chain() {
            Err(VerifyError::Broken(link)) => link,
            other => panic!("expected a broken link, got {other:?}"),
        }
    }

    #[test]
    fn appended_entries_chain_and_verify() {
        let (_dir, ledger) = ledger_with(5);
        let entries = ledger.audit_entries(0, 100).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].prev_hash, GENESIS);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
        let report = ledger.verify_chain().unwrap();
        assert_eq!(
            report,
            ChainReport {
                entries: 5,
                head: entries[4].hash
            }
        );
        assert_eq!(ledger.audit_entries(3, 1).unwrap(), entries[3..4]);
    }

    #[test]
    fn an_empty_log_verifies_with_the_genesis_head() {
        let (_dir, ledger) = ledger_with(0);
        assert_eq!(
            ledger.verify_chain().unwrap(),
            ChainReport {
                entries: 0,
                head: GENESIS
            }
        );
    }

    #[test]
    fn append_returns_what_was_stored() {
        let (_dir, mut ledger) = ledger_with(2);
        let appended = ledger
            .transaction(|tx| {
                append(
                    tx,
                    &NewEntry {
                        timestamp_ms: 5,
                        actor: "alice",
                        kind: "install",
                        details: &json!({ "package": "ab12" }),
                    },
                )
            })
            .unwrap();
        assert_eq!(appended.seq, 3);
        assert_eq!(ledger.audit_entries(2, 10).unwrap(), [appended]);
    }

    #[test]
    fn the_table_refuses_updates_and_deletes() {
        let (_dir, ledger) = ledger_with(2);
        let conn = ledger.connection();
        assert!(
            conn.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 1", [])
                .is_err()
        );
        assert!(
            conn.execute("DELETE FROM audit_log WHERE seq = 2", [])
                .is_err()
        );
        assert_eq!(ledger.verify_chain().unwrap().entries, 2);
    }

    #[test]
    fn changed_details_are_reported_at_their_entry() {
        let (_dir, ledger) = ledger_with(5);
        tamper(
            &ledger,
            r#"UPDATE audit_log SET details = '{"n":3,"request":"forged"}' WHERE seq = 3"#,
        );
        assert_eq!(
            broken_at(&ledger),
            BrokenLink {
                seq: 3,
                reason: BreakReason::ContentChanged
            }
        );
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let edits = [
            "UPDATE audit_log SET timestamp_ms = timestamp_ms + 1 WHERE seq = 2",
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
            "UPDATE audit_log SET kind = 'eval.denied' WHERE seq = 2",
            "UPDATE audit_log SET details = details || ' ' WHERE seq = 2",
            "UPDATE audit_log SET prev_hash = zeroblob(32) WHERE seq = 2",
            "UPDATE audit_log SET hash = zeroblob(32) WHERE seq = 2",
        ];
        for edit in edits {
            let (_dir, ledger) = ledger_with(3);
            tamper(&ledger, edit);
            assert_eq!(
                broken_at(&ledger),
                BrokenLink {
                    seq: 2,
                    reason: BreakReason::ContentChanged
                },
                "{edit}"
            );
        }
    }

    #[test]
    fn a_deleted_middle_entry_is_reported() {
        let (_dir, ledger) = ledger_with(5);
        tamper(&ledger, "DELETE FROM audit_log WHERE seq = 3");
        assert_eq!(
            broken_at(&ledger),
            BrokenLink {
                seq: 3,
                reason: BreakReason::Missing { next: 4 }
            }
        );
    }

    #[test]
    fn a_deleted_and_renumbered_entry_is_reported() {
        // Closing the gap by renumbering does not help: the next entry's link is broken.
        let (_dir, ledger) = ledger_with(5);
        tamper(
            &ledger,
            "DELETE FROM audit_log WHERE seq = 3;
             UPDATE audit_log SET seq = seq - 1 WHERE seq > 3",
        );
        assert_eq!(
            broken_at(&ledger),
            BrokenLink {
                seq: 3,
                reason: BreakReason::ContentChanged
            }
        );
    }

    #[test]
    fn reordered_entries_are_reported() {
        let (_dir, ledger) = ledger_with(5);
        // Swap entries 2 and 4 whole, hashes included.
        tamper(
            &ledger,
            "UPDATE audit_log SET seq = 1000 WHERE seq = 2;
             UPDATE audit_log SET seq = 2 WHERE seq = 4;
             UPDATE audit_log SET seq = 4 WHERE seq = 1000;",
        );
        assert_eq!(
            broken_at(&ledger),
            BrokenLink {
                seq: 2,
                reason: BreakReason::ContentChanged
            }
        );
    }

    #[test]
    fn a_rehashed_forgery_breaks_the_next_link() {
        let (_dir, ledger) = ledger_with(4);
        let e = &ledger.audit_entries(2, 1).unwrap()[0];
        let forged_details = r#"{"n":3,"request":"forged"}"#;
        let rehashed = entry_hash(
            e.seq,
            e.timestamp_ms,
            &e.actor,
            &e.kind,
            forged_details,
            &e.prev_hash,
        );
        tamper(
            &ledger,
            &format!(
                "UPDATE audit_log SET details = '{forged_details}', hash = x'{}' WHERE seq = 3",
                hex::encode(rehashed)
            ),
        );
        assert_eq!(
            broken_at(&ledger),
            BrokenLink {
                seq: 4,
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[test]
    fn entries_verify_after_a_trip_through_json() {
        let (_dir, ledger) = ledger_with(3);
        let text = serde_json::to_string(&ledger.audit_entries(0, 10).unwrap()).unwrap();
        let mut entries: Vec<AuditEntry> = serde_json::from_str(&text).unwrap();
        let mut verifier = ChainVerifier::default();
        for e in &entries {
            verifier.push(e).unwrap();
        }
        assert_eq!(verifier.finish(), ledger.verify_chain().unwrap());

        entries[1].actor.push('!');
        let mut verifier = ChainVerifier::default();
        verifier.push(&entries[0]).unwrap();
        assert_eq!(
            verifier.push(&entries[1]).unwrap_err(),
            BrokenLink {
                seq: 2,
                reason: BreakReason::ContentChanged
            }
        );
    }

    #[test]
    fn details_must_be_an_object() {
        let (_dir, mut ledger) = ledger_with(0);
        let err = ledger
            .append_audit(&NewEntry {
                timestamp_ms: 1,
                actor: "a",
                kind: "k",
                details: &json!([1, 2]),
            })
            .unwrap_err();
        assert!(matches!(err, LedgerError::DetailsNotObject));
        assert_eq!(ledger.verify_chain().unwrap().entries, 0);
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let a = entry_hash(1, 2, "ab", "c", "{}", &GENESIS);
        let b = entry_hash(1, 2, "a", "bc", "{}", &GENESIS);
        assert_ne!(a, b);
    }
}
