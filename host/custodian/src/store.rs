//! The custodian's tables in its ledger (`custodian.db`), and the writes it makes: each one a
//! job of the group-commit [`quorumvm_ledger::Writer`], together with its audit entry.
//!
//! - `versions`: every version this custodian activated, with the signed package (so a restart
//!   reads it again in the sandbox instead of trusting a stored circuit) and the approvals it
//!   checked (checked again at every start).
//! - `sealed_shares`: this custodian's shares of each version's secrets, still sealed to its
//!   X25519 key as the publisher sealed them. A copy of the database alone reveals nothing;
//!   shares are opened into memory only.
//! - `kits`: preprocessed kits by (version, kit id). A kit is deleted in the same transaction as
//!   the audit entry of the evaluation that uses it, so it is used at most once, even across a
//!   crash.
//!
//! The per-(identity, version) budget counters are the policy crate's `budget_spent` table.

use std::collections::BTreeMap;

use quorumvm_core::circuit::Policy;
use quorumvm_ledger::rusqlite::{self, ErrorCode, OptionalExtension, Transaction, params};
use quorumvm_ledger::{Ledger, LedgerError, NewEntry, Schema, audit};
use quorumvm_policy::Budget;
use quorumvm_wire::order::ApprovalSignature;
use serde_json::json;
use zeroize::Zeroizing;

pub(crate) const SCHEMA: Schema = Schema {
    component: "custodian",
    migrations: &["
        CREATE TABLE versions (
            package_id TEXT PRIMARY KEY,
            package BLOB NOT NULL,
            manifest TEXT NOT NULL,
            approvals TEXT NOT NULL,
            activated_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE sealed_shares (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            secret TEXT NOT NULL,
            sealed BLOB NOT NULL,
            PRIMARY KEY (package_id, secret)
        ) STRICT;
        CREATE TABLE kits (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            kit INTEGER NOT NULL CHECK (kit >= 0),
            material BLOB NOT NULL,
            PRIMARY KEY (package_id, kit)
        ) STRICT, WITHOUT ROWID;
    "],
};

/// Who the audit entries of coordinator orders name as their actor.
const COORDINATOR: &str = "coordinator";

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("kit {kit} of {package_id} is not here: never generated here, or already used")]
    KitUnavailable { package_id: String, kit: u64 },
    #[error(
        "kit {kit} of {package_id} already exists: kit ids are never reused, the batch is refused"
    )]
    KitExists { package_id: String, kit: u64 },
    #[error("the ledger holds a version it cannot read back: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        StoreError::Ledger(err.into())
    }
}

/// A version as stored, before it is checked and opened again at startup.
pub(crate) struct StoredVersion {
    pub package_id: String,
    pub package: Vec<u8>,
    pub approvals: Vec<ApprovalSignature>,
    /// Secret name → sealed share bytes.
    pub sealed: BTreeMap<String, Vec<u8>>,
    pub kits: u64,
}

/// Every stored version with its sealed shares and unused kit count.
pub(crate) fn load_versions(ledger: &Ledger) -> Result<Vec<StoredVersion>, StoreError> {
    let conn = ledger.connection();
    let mut versions = Vec::new();
    let mut rows = conn.prepare(
        "SELECT package_id, package, approvals FROM versions ORDER BY activated_ms, package_id",
    )?;
    let listed = rows.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in listed {
        let (package_id, package, approvals) = row?;
        let approvals: Vec<ApprovalSignature> = serde_json::from_str(&approvals)
            .map_err(|e| StoreError::Corrupt(format!("approvals of {package_id}: {e}")))?;
        let mut shares =
            conn.prepare_cached("SELECT secret, sealed FROM sealed_shares WHERE package_id = ?1")?;
        let sealed = shares
            .query_map([&package_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<BTreeMap<String, Vec<u8>>, _>>()?;
        let kits: u64 = conn.query_row(
            "SELECT COUNT(*) FROM kits WHERE package_id = ?1",
            [&package_id],
            |row| row.get(0),
        )?;
        versions.push(StoredVersion {
            package_id,
            package,
            approvals,
            sealed,
            kits,
        });
    }
    Ok(versions)
}

/// What [`insert_version`] records.
pub(crate) struct NewVersion {
    pub package_id: String,
    pub name: String,
    pub version: u32,
    pub package: Vec<u8>,
    pub manifest_json: String,
    pub approvals: Vec<ApprovalSignature>,
    pub sealed: BTreeMap<String, Vec<u8>>,
    pub now_ms: u64,
}

/// Records an activated version, its sealed shares and `version.activated`. Returns `false`
/// (writing nothing) if the version is already stored: activation is idempotent.
pub(crate) fn insert_version(tx: &Transaction<'_>, v: &NewVersion) -> Result<bool, StoreError> {
    let known = tx
        .query_row(
            "SELECT 1 FROM versions WHERE package_id = ?1",
            [&v.package_id],
            |_| Ok(()),
        )
        .optional()?;
    if known.is_some() {
        return Ok(false);
    }
    let approvals = serde_json::to_string(&v.approvals)
        .map_err(|e| StoreError::Corrupt(format!("approvals do not serialize: {e}")))?;
    tx.execute(
        "INSERT INTO versions (package_id, package, manifest, approvals, activated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            v.package_id,
            v.package,
            v.manifest_json,
            approvals,
            v.now_ms
        ],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO sealed_shares (package_id, secret, sealed) VALUES (?1, ?2, ?3)",
    )?;
    for (secret, sealed) in &v.sealed {
        insert.execute(params![v.package_id, secret, sealed])?;
    }
    let approvers: Vec<u32> = v.approvals.iter().map(|a| a.custodian).collect();
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: v.now_ms,
            actor: COORDINATOR,
            kind: "version.activated",
            details: &json!({
                "package_id": v.package_id,
                "name": v.name,
                "version": v.version,
                "approvals": approvers,
            }),
        },
    )?;
    Ok(true)
}

/// Stores a batch of kits `first_kit ..` with its `kits.stored` entry. A kit id that exists
/// already fails the whole batch (the job's savepoint is rolled back): an id names one kit
/// across the cluster, and keeping either copy would pair mismatched shares.
pub(crate) fn insert_kits(
    tx: &Transaction<'_>,
    session: &str,
    package_id: &str,
    first_kit: u64,
    kits: &[Zeroizing<Vec<u8>>],
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut insert =
        tx.prepare_cached("INSERT INTO kits (package_id, kit, material) VALUES (?1, ?2, ?3)")?;
    for (kit, material) in (first_kit..).zip(kits) {
        match insert.execute(params![package_id, kit, &material[..]]) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::KitExists {
                    package_id: package_id.to_string(),
                    kit,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind: "kits.stored",
            details: &json!({
                "session": session,
                "package_id": package_id,
                "first_kit": first_kit,
                "count": kits.len(),
            }),
        },
    )?;
    Ok(())
}

/// One evaluation as the ticket describes it.
pub(crate) struct Admission {
    pub session: String,
    pub request_id: String,
    pub identity: String,
    pub package_id: String,
    pub kit: u64,
    pub policy: Policy,
    pub now_ms: u64,
}

/// What [`admit`] decided. A refusal is an outcome, not an error: its audit entry commits.
pub(crate) enum Admitted {
    /// The kit's material (this custodian's shares of its triples), now deleted from the ledger.
    Kit(Zeroizing<Vec<u8>>),
    BudgetExhausted {
        remaining: u64,
        cost: u64,
    },
}

/// Charges this custodian's own budget counter for (identity, version), takes the kit and
/// appends `eval.accepted`, all in the caller's transaction; or appends `eval.denied` and
/// changes nothing else when the budget is spent. A missing kit (a replayed ticket, or an id
/// this custodian never stored) is an error, so the job rolls back and nothing is charged.
///
/// The entries name session, request, identity, version and kit: never inputs, outputs or
/// shares.
pub(crate) fn admit(tx: &Transaction<'_>, a: &Admission) -> Result<Admitted, StoreError> {
    let mut budget = Budget::load(tx, &a.identity, &a.package_id, a.policy.budget_per_identity)?;
    let mut details = json!({
        "session": a.session,
        "request_id": a.request_id,
        "identity": a.identity,
        "package_id": a.package_id,
        "kit": a.kit,
    });
    let cost = a.policy.cost_per_eval;
    if budget.charge(cost).is_err() {
        let remaining = budget.remaining();
        details["reason"] = json!("budget");
        details["remaining_budget"] = json!(remaining);
        append(tx, a, "eval.denied", &details)?;
        return Ok(Admitted::BudgetExhausted { remaining, cost });
    }
    budget.save(tx, &a.identity, &a.package_id)?;
    let material: Option<Vec<u8>> = tx
        .prepare_cached("DELETE FROM kits WHERE package_id = ?1 AND kit = ?2 RETURNING material")?
        .query_row(params![a.package_id, a.kit], |row| row.get(0))
        .optional()?;
    let material = material
        .map(Zeroizing::new)
        .ok_or_else(|| StoreError::KitUnavailable {
            package_id: a.package_id.clone(),
            kit: a.kit,
        })?;
    details["remaining_budget"] = json!(budget.remaining());
    append(tx, a, "eval.accepted", &details)?;
    Ok(Admitted::Kit(material))
}

fn append(
    tx: &Transaction<'_>,
    a: &Admission,
    kind: &str,
    details: &serde_json::Value,
) -> Result<(), StoreError> {
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: a.now_ms,
            actor: &a.identity,
            kind,
            details,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(dir: &std::path::Path) -> Ledger {
        let mut ledger = Ledger::open(dir.join("custodian.db")).unwrap();
        ledger.apply_schema(&SCHEMA).unwrap();
        ledger.apply_schema(&quorumvm_policy::SCHEMA).unwrap();
        ledger
    }

    fn version(id: &str) -> NewVersion {
        NewVersion {
            package_id: id.into(),
            name: "square".into(),
            version: 1,
            package: vec![1, 2, 3],
            manifest_json: "{}".into(),
            approvals: vec![ApprovalSignature {
                custodian: 2,
                signature: "00".into(),
            }],
            sealed: BTreeMap::from([("w".to_string(), vec![9; 4])]),
            now_ms: 5,
        }
    }

    fn admission(kit: u64, budget: u64) -> Admission {
        Admission {
            session: "s".into(),
            request_id: "r".into(),
            identity: "alice".into(),
            package_id: "p".into(),
            kit,
            policy: Policy {
                cost_per_eval: 2,
                budget_per_identity: budget,
                ..Policy::default()
            },
            now_ms: 6,
        }
    }

    #[test]
    fn versions_kits_and_budgets_round_trip_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ledger(dir.path());
        assert!(
            db.transaction(|tx| insert_version(tx, &version("p")))
                .unwrap()
        );
        assert!(
            !db.transaction(|tx| insert_version(tx, &version("p")))
                .unwrap()
        );
        let kits: Vec<_> = (0..3u8).map(|i| Zeroizing::new(vec![i; 16])).collect();
        db.transaction(|tx| insert_kits(tx, "b", "p", 10, &kits, 6))
            .unwrap();
        // Kit 12 exists: the whole second batch is refused.
        let clash = db
            .transaction(|tx| insert_kits(tx, "b2", "p", 12, &kits, 6))
            .unwrap_err();
        assert!(
            matches!(clash, StoreError::KitExists { kit: 12, .. }),
            "{clash}"
        );

        let stored = load_versions(&db).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].kits, stored[0].package.clone()),
            (3, vec![1, 2, 3])
        );
        assert_eq!(stored[0].sealed["w"], vec![9; 4]);

        match db.transaction(|tx| admit(tx, &admission(11, 4))).unwrap() {
            Admitted::Kit(m) => assert_eq!(*m, vec![1; 16]),
            Admitted::BudgetExhausted { .. } => panic!("budget left"),
        }
        // Replayed: no kit, and the charge rolls back with the job.
        let replay = db
            .transaction(|tx| admit(tx, &admission(11, 4)))
            .err()
            .unwrap();
        assert!(matches!(replay, StoreError::KitUnavailable { kit: 11, .. }));
        assert!(matches!(
            db.transaction(|tx| admit(tx, &admission(12, 4))).unwrap(),
            Admitted::Kit(_)
        ));
        assert!(matches!(
            db.transaction(|tx| admit(tx, &admission(10, 4))).unwrap(),
            Admitted::BudgetExhausted {
                remaining: 0,
                cost: 2
            }
        ));
        assert_eq!(
            load_versions(&db).unwrap()[0].kits,
            1,
            "kit 10 is still there"
        );
        let kinds: Vec<String> = db
            .audit_entries(0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "version.activated",
                "kits.stored",
                "eval.accepted",
                "eval.accepted",
                "eval.denied"
            ]
        );
        db.verify_chain().unwrap();
    }
}
