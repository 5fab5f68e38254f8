//! What is frozen at one party (the coordinator or a custodian), kept the same way at both: per
//! target (an identity or a version, [`Target`]) the last statement applied, a freeze or an
//! unfreeze, with its time. Only a later statement counts (see [`quorumvm_wire::freeze`]).
//!
//! [`SCHEMA`] holds the `freezes` table; [`apply`] writes a statement with its audit entry in
//! the caller's transaction; [`Freezes`] is the same record in memory, loaded at start and
//! changed only after a change committed, which every request is checked against.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::http::StatusCode;
use quorumvm_ledger::sql::Lock;
use quorumvm_ledger::{Commit, LedgerError, NewEntry, Schema, Sql, audit, sql_params};
use quorumvm_wire::api::Frozen;
use quorumvm_wire::code::ErrorCode;
use quorumvm_wire::freeze::{FreezeError, Target};

use crate::ApiError;

/// Apply with `ledger.apply_schema(&quorumvm_server::freeze::SCHEMA)` before a component's own
/// schema (which may move older records into it).
pub const SCHEMA: Schema = Schema {
    component: "freeze",
    migrations: &["
        -- `target`: `identity/NAME` or `version/ID` (wire::freeze::Target::key); `statement`:
        -- what decided it (JSON): the signed freeze, the unfreeze with its approvals, or the
        -- anomaly rule that fired.
        CREATE TABLE freezes (
            target TEXT PRIMARY KEY,
            frozen INTEGER NOT NULL CHECK (frozen IN (0, 1)),
            time_ms INTEGER NOT NULL,
            statement TEXT NOT NULL
        ) STRICT;
    "],
};

/// [`SCHEMA`] for PostgreSQL (a coordinator's replicas).
pub const POSTGRES_SCHEMA: Schema = Schema {
    component: "freeze",
    migrations: &["
        CREATE TABLE freezes (
            target TEXT PRIMARY KEY,
            frozen BIGINT NOT NULL CHECK (frozen IN (0, 1)),
            time_ms BIGINT NOT NULL,
            statement TEXT NOT NULL
        );
    "],
};

/// A freeze or an unfreeze that passed its checks, to apply if it is the latest.
pub struct NewFreeze {
    pub target: Target,
    pub frozen: bool,
    pub time_ms: u64,
    /// What decided it, for the record (JSON).
    pub statement: String,
    /// Who the audit entry names: an operator, the coordinator, a rule.
    pub actor: &'static str,
    pub now_ms: u64,
}

/// Applies a freeze or an unfreeze (`frozen` or `unfrozen` in the audit log) if it is later
/// than the last statement applied about its target; otherwise returns that last time and
/// changes nothing.
pub fn apply(tx: &dyn Sql, f: &NewFreeze) -> Result<Result<(), u64>, LedgerError> {
    let key = f.target.key();
    // Replicas sharing a database apply statements in turns (the target may have no row yet
    // to lock), so that only a later one counts.
    Lock::Freezes.take(tx)?;
    let last = tx
        .query_opt(
            "SELECT time_ms FROM freezes WHERE target = ?1",
            sql_params![&key],
        )?
        .map(|row| row.uint(0))
        .transpose()?;
    if let Some(last) = last.filter(|&last| f.time_ms <= last) {
        return Ok(Err(last));
    }
    tx.execute(
        "INSERT INTO freezes (target, frozen, time_ms, statement) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (target) DO UPDATE SET frozen = excluded.frozen,
             time_ms = excluded.time_ms, statement = excluded.statement",
        sql_params![&key, u64::from(f.frozen), f.time_ms, &f.statement],
    )?;
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: f.now_ms,
            actor: f.actor,
            kind: if f.frozen { "frozen" } else { "unfrozen" },
            details: &serde_json::json!({ "target": key, "statement_ms": f.time_ms }),
        },
    )?;
    Ok(Ok(()))
}

/// Applies a freeze or an unfreeze durably if it is the latest about its target, then in
/// `freezes`; one older than the last statement applied is answered 409
/// `superseded_statement` and changes nothing.
pub async fn commit(
    writer: &impl Commit,
    freezes: &Freezes,
    record: NewFreeze,
) -> Result<(), ApiError> {
    let (target, frozen, time_ms) = (record.target.clone(), record.frozen, record.time_ms);
    if let Err(last_ms) = writer
        .commit(move |tx| apply(tx, &record).map_err(ApiError::from))
        .await?
    {
        return Err(ApiError::conflict(
            "superseded_statement",
            format!(
                "a statement about {target} dated {last_ms} ms was applied here already; only a \
                 later one counts (this one: {time_ms} ms)"
            ),
        ));
    }
    freezes.set(target, frozen, time_ms);
    Ok(())
}

/// A freeze or an unfreeze this party does not take; `not_ours` is the code of one signed
/// with another key or addressed to another party (`not_the_operator`, `not_the_coordinator`).
pub fn refused(err: FreezeError, not_ours: &'static str) -> ApiError {
    let (status, code) = match err {
        FreezeError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_statement"),
        FreezeError::BadSignature(_) | FreezeError::Elsewhere { .. } => {
            (StatusCode::FORBIDDEN, not_ours)
        }
        FreezeError::Stale(_) => (StatusCode::UNAUTHORIZED, "stale_statement"),
    };
    ApiError::new(status, code, err.to_string())
}

/// What is frozen at this party, in memory.
#[derive(Default)]
pub struct Freezes {
    /// Target → (frozen, the time of the statement that said so).
    last: RwLock<HashMap<Target, (bool, u64)>>,
}

impl Freezes {
    /// Every target's last statement, from the ledger.
    pub fn load(conn: &dyn Sql) -> Result<Freezes, LedgerError> {
        let freezes = Freezes::default();
        for row in conn.query("SELECT target, frozen, time_ms FROM freezes", &[])? {
            let key = row.text(0)?;
            let target = Target::from_key(&key).ok_or_else(|| LedgerError::Column {
                index: 0,
                reason: format!("`{key}` is not a frozen target"),
            })?;
            freezes.set(target, row.int(1)? != 0, row.uint(2)?);
        }
        Ok(freezes)
    }

    /// Takes every statement `other` holds that is later than the one held here (another
    /// replica's, loaded from the database they share).
    pub fn merge(&self, other: &Freezes) {
        for (target, &(frozen, time_ms)) in other.read().iter() {
            self.set(target.clone(), frozen, time_ms);
        }
    }

    /// Records a statement about `target` if it is later than the one held (the ledger applied
    /// it under the same rule; this keeps memory in that order under races).
    pub fn set(&self, target: Target, frozen: bool, time_ms: u64) {
        let mut last = self.last.write().unwrap_or_else(|p| p.into_inner());
        if last.get(&target).is_none_or(|&(_, t)| time_ms > t) {
            last.insert(target, (frozen, time_ms));
        }
    }

    pub fn is_frozen(&self, target: &Target) -> bool {
        self.read().get(target).is_some_and(|&(frozen, _)| frozen)
    }

    /// Refuses a request of a frozen target, saying where it is frozen (`at`, e.g. "custodian
    /// 2") and how a freeze is lifted.
    pub fn admit(&self, target: &Target, at: &str) -> Result<(), ApiError> {
        if self.is_frozen(target) {
            return Err(ApiError::of(
                ErrorCode::Frozen,
                format!(
                    "{target} is frozen at {at}; lifting it takes k operators' approvals \
                     (quorumvm unfreeze)"
                ),
            ));
        }
        Ok(())
    }

    /// Every frozen target and the time of its freeze.
    pub fn frozen(&self) -> Vec<Frozen> {
        let mut out: Vec<Frozen> = self
            .read()
            .iter()
            .filter(|(_, (frozen, _))| *frozen)
            .map(|(target, &(_, since_ms))| Frozen {
                target: target.clone(),
                since_ms,
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Target, (bool, u64)>> {
        self.last.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_ledger::Ledger;

    #[test]
    fn only_a_later_statement_counts_in_the_ledger_and_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("l.db")).unwrap();
        ledger.apply_schema(&SCHEMA).unwrap();
        let alice = Target::Identity("alice".into());
        let statement = |frozen, time_ms| NewFreeze {
            target: alice.clone(),
            frozen,
            time_ms,
            statement: "{}".into(),
            actor: "operator",
            now_ms: time_ms,
        };
        let mut run = |f: NewFreeze| {
            ledger
                .transaction(|tx| apply(tx, &f))
                .expect("a transaction")
        };
        assert_eq!(run(statement(true, 10)), Ok(()));
        assert_eq!(
            run(statement(false, 5)),
            Err(10),
            "an older unfreeze is superseded"
        );
        assert_eq!(
            run(statement(false, 10)),
            Err(10),
            "so is one of the same time"
        );
        assert_eq!(run(statement(false, 20)), Ok(()));
        assert_eq!(
            run(statement(true, 15)),
            Err(20),
            "an older freeze is superseded"
        );
        let loaded = Freezes::load(ledger.connection()).unwrap();
        assert!(!loaded.is_frozen(&alice));
        loaded.set(alice.clone(), true, 19);
        assert!(!loaded.is_frozen(&alice), "memory keeps the same order");
        loaded.set(alice.clone(), true, 21);
        assert!(loaded.is_frozen(&alice));
        assert_eq!(
            loaded.admit(&alice, "custodian 1").unwrap_err().code,
            "frozen"
        );
        assert_eq!(
            loaded.frozen(),
            vec![Frozen {
                target: alice,
                since_ms: 21
            }]
        );
    }

    /// Two replicas of a coordinator sharing a PostgreSQL database apply statements about one
    /// target at once, the later one first: the earlier one, arriving while the later one's
    /// transaction is still open, is superseded rather than written over it.
    #[test]
    fn replicas_applying_at_once_keep_only_the_later_statement() {
        use quorumvm_ledger::Postgres;
        use quorumvm_ledger::postgres::testing::Server;
        use std::time::Duration;

        let server = Server::start();
        let connect = |url: &str| {
            let mut db = Postgres::connect(url).unwrap();
            db.apply_schema(&POSTGRES_SCHEMA).unwrap();
            db
        };
        connect(&server.url());
        let statement = |frozen, time_ms| NewFreeze {
            target: Target::Identity("alice".into()),
            frozen,
            time_ms,
            statement: "{}".into(),
            actor: "operator",
            now_ms: time_ms,
        };
        let later = {
            let mut db = connect(&server.url());
            std::thread::spawn(move || {
                db.transaction(|tx| {
                    let applied = apply(tx, &statement(true, 20))?;
                    std::thread::sleep(Duration::from_millis(500));
                    Ok::<_, LedgerError>(applied)
                })
                .unwrap()
            })
        };
        std::thread::sleep(Duration::from_millis(150));
        let mut db = connect(&server.url());
        let earlier = db
            .transaction(|tx| apply(tx, &statement(false, 10)))
            .unwrap();
        assert_eq!(later.join().unwrap(), Ok(()));
        assert_eq!(earlier, Err(20), "the earlier statement is superseded");
        let held = Freezes::load(&db).unwrap();
        assert!(held.is_frozen(&Target::Identity("alice".into())));
    }
}
