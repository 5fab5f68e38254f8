//! The custodian's tables in its ledger (`custodian.db`), and the writes it makes: each one a
//! job of the group-commit [`quorumvm_ledger::Writer`], together with its audit entry.
//!
//! - `versions`: every version this custodian activated, with the signed package (so a restart
//!   reads it again in the sandbox instead of trusting a stored circuit), the approvals it
//!   checked (checked again at every start), and when the custodians' joint check of its shares
//!   passed or refused it (a restart does not check again).
//! - `sealed_shares`: this custodian's shares of each version's secrets, still sealed to its
//!   X25519 key as the publisher sealed them. A copy of the database alone reveals nothing;
//!   shares are opened into memory only. A refresh ([`crate::reshare`]) deletes them.
//! - `refreshed_shares`: the shares of the last refresh that covered each version, sealed to
//!   this custodian's own key and bound to their epoch; `pending_shares`: those of refreshes
//!   verified but not committed, by reshare session; `epoch`: the share epoch this custodian
//!   committed last (no row: epoch 0, the publisher's deal).
//! - `kits`: preprocessed kits by (version, kit id), with the share epoch they were made at. A
//!   kit is deleted in the same transaction as the audit entry of the evaluation that uses it,
//!   so it is used at most once, even across a crash; a refresh's commit deletes them all.
//!
//! - `callers`: the caller identities k operators approved, with their keys and the approvals
//!   (checked again at every start).
//! - `requests`: every caller request id this custodian took part in, with the highest attempt
//!   it served: a request is charged once, on its first attempt here, and served again only in
//!   a later attempt (the coordinator's retries, at most [`MAX_ATTEMPTS`] in all).
//! - `sessions`: every session id this custodian started, so that no restart reopens one.
//! - `revocations`, `retirements`: identities and versions k operators decided to stop for
//!   good, with their approvals (checked again at every start).
//! - `freezes` (`quorumvm_server::freeze`): the last freeze or unfreeze of each identity or
//!   version, with its time: only a later one counts.
//!
//! The per-(identity, program name) budget counters and rate buckets are the policy crate's
//! `budget_spent` and `rate_buckets` tables.

use std::collections::BTreeMap;

use quorumvm_core::circuit::Policy;
use quorumvm_ledger::rusqlite::{self, ErrorCode, OptionalExtension, Transaction, params};
use quorumvm_ledger::{Ledger, LedgerError, NewEntry, Schema, audit};
use quorumvm_policy::PolicyError;
use quorumvm_wire::membership::Membership;
use quorumvm_wire::order::ApprovalSignature;
use quorumvm_wire::signed::Signed;
use serde_json::json;
use zeroize::Zeroizing;

pub(crate) const SCHEMA: Schema = Schema {
    component: "custodian",
    migrations: &[
        "
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
    ",
        "
        ALTER TABLE versions ADD COLUMN deal TEXT NOT NULL DEFAULT '';
        ALTER TABLE versions ADD COLUMN name TEXT NOT NULL DEFAULT '';
        ALTER TABLE versions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE versions ADD COLUMN retired_ms INTEGER;
        CREATE TABLE callers (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            approvals TEXT NOT NULL,
            registered_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE requests (
            identity TEXT NOT NULL,
            request_id TEXT NOT NULL,
            last_attempt INTEGER NOT NULL CHECK (last_attempt >= 0),
            first_ms INTEGER NOT NULL,
            PRIMARY KEY (identity, request_id)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE sessions (
            session TEXT PRIMARY KEY,
            identity TEXT NOT NULL,
            request_id TEXT NOT NULL,
            kit INTEGER NOT NULL,
            started_ms INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
    ",
        "
        CREATE TABLE revocations (
            name TEXT PRIMARY KEY,
            approvals TEXT NOT NULL,
            revoked_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE retirements (
            package_id TEXT PRIMARY KEY,
            approvals TEXT NOT NULL,
            retired_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE suspensions (
            name TEXT PRIMARY KEY,
            suspended INTEGER NOT NULL CHECK (suspended IN (0, 1)),
            time_ms INTEGER NOT NULL,
            statement TEXT NOT NULL
        ) STRICT;
    ",
        "
        ALTER TABLE versions ADD COLUMN shares_checked_ms INTEGER;
        ALTER TABLE versions ADD COLUMN shares_refused_ms INTEGER;
    ",
        "
        ALTER TABLE kits ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE epoch (
            only INTEGER PRIMARY KEY CHECK (only = 0),
            epoch INTEGER NOT NULL CHECK (epoch > 0),
            reshare TEXT NOT NULL,
            committed_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE refreshed_shares (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            secret TEXT NOT NULL,
            epoch INTEGER NOT NULL CHECK (epoch > 0),
            sealed BLOB NOT NULL,
            PRIMARY KEY (package_id, secret)
        ) STRICT;
        CREATE TABLE pending_shares (
            reshare TEXT NOT NULL,
            from_epoch INTEGER NOT NULL,
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            secret TEXT NOT NULL,
            sealed BLOB NOT NULL,
            PRIMARY KEY (reshare, package_id, secret)
        ) STRICT;
    ",
        "
        -- The operator's suspensions of identities are freezes now (quorumvm_server::freeze,
        -- whose schema is applied first).
        INSERT INTO freezes (target, frozen, time_ms, statement)
            SELECT 'identity/' || name, suspended, time_ms, statement FROM suspensions;
        DROP TABLE suspensions;
    ",
        "
        -- Rotations committed here (crate::rotation), in order: generation g is the cluster
        -- after the g-th; 0 is the configured one. Each decision records the generation whose
        -- operators approved it, against which it is checked again at start.
        CREATE TABLE memberships (
            generation INTEGER PRIMARY KEY CHECK (generation > 0),
            session TEXT NOT NULL,
            membership TEXT NOT NULL,
            approvals TEXT NOT NULL,
            committed_ms INTEGER NOT NULL
        ) STRICT;
        ALTER TABLE versions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE callers ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE revocations ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE retirements ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ",
    ],
};

/// How many attempts (the coordinator's first try and its retries on other quorums, numbered
/// from 0) one request may have. Each serves the same signed inputs, so a coordinator that
/// replays a request within them learns the same answer again and nothing else; it is charged
/// once.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// Who the audit entries of coordinator orders name as their actor.
pub(crate) const COORDINATOR: &str = "coordinator";
/// Who the audit entries of this custodian's operator's own statements name as their actor.
pub(crate) const OPERATOR: &str = "operator";

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
    #[error("session {0} was started here before: a session id is used once")]
    SessionUsed(String),
    #[error("this custodian is at share epoch {at}, not {expected}")]
    EpochMoved { expected: u64, at: u64 },
    #[error("reshare {0} was not verified here: there are no new shares of it to commit")]
    NotVerified(String),
    #[error(
        "the cluster changed (rotation {now}) since this was checked against rotation {checked}: \
         ask again"
    )]
    GenerationMoved { checked: u64, now: u64 },
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        StoreError::Ledger(err.into())
    }
}

/// What the custodians' joint check of a version's shares found, as recorded here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharesChecked {
    /// Not checked yet (or not to completion).
    Not,
    Passed,
    Refused,
}

/// A version as stored, before it is checked and opened again at startup.
pub(crate) struct StoredVersion {
    pub package_id: String,
    pub package: Vec<u8>,
    pub approvals: Vec<ApprovalSignature>,
    pub deal: Signed,
    pub retired: bool,
    pub shares: SharesChecked,
    /// Secret name → sealed share bytes, as dealt (none once a refresh replaced them).
    pub sealed: BTreeMap<String, Vec<u8>>,
    /// Secret name → (epoch, sealed share bytes) of the last refresh that covered it.
    pub refreshed: BTreeMap<String, (u64, Vec<u8>)>,
    pub kits: u64,
    /// The cluster generation whose operators approved it.
    pub generation: u64,
}

/// Every stored version with its sealed shares and unused kit count.
pub(crate) fn load_versions(conn: &rusqlite::Connection) -> Result<Vec<StoredVersion>, StoreError> {
    let mut versions = Vec::new();
    let mut rows = conn.prepare(
        "SELECT package_id, package, approvals, deal, retired_ms IS NOT NULL,
                shares_checked_ms IS NOT NULL, shares_refused_ms IS NOT NULL, generation
         FROM versions ORDER BY activated_ms, package_id",
    )?;
    let listed = rows.query_map([], |row| {
        let checked = match (row.get::<_, bool>(5)?, row.get::<_, bool>(6)?) {
            (_, true) => SharesChecked::Refused,
            (true, false) => SharesChecked::Passed,
            (false, false) => SharesChecked::Not,
        };
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, bool>(4)?,
            checked,
            row.get::<_, u64>(7)?,
        ))
    })?;
    for row in listed {
        let (package_id, package, approvals, deal, retired, checked, generation) = row?;
        let approvals: Vec<ApprovalSignature> = serde_json::from_str(&approvals)
            .map_err(|e| StoreError::Corrupt(format!("approvals of {package_id}: {e}")))?;
        let deal: Signed = serde_json::from_str(&deal)
            .map_err(|e| StoreError::Corrupt(format!("deal of {package_id}: {e}")))?;
        let mut shares =
            conn.prepare_cached("SELECT secret, sealed FROM sealed_shares WHERE package_id = ?1")?;
        let sealed = shares
            .query_map([&package_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<BTreeMap<String, Vec<u8>>, _>>()?;
        let mut shares = conn.prepare_cached(
            "SELECT secret, epoch, sealed FROM refreshed_shares WHERE package_id = ?1",
        )?;
        let refreshed = shares
            .query_map([&package_id], |row| {
                Ok((row.get(0)?, (row.get(1)?, row.get(2)?)))
            })?
            .collect::<Result<BTreeMap<String, (u64, Vec<u8>)>, _>>()?;
        let kits: u64 = conn.query_row(
            "SELECT COUNT(*) FROM kits WHERE package_id = ?1",
            [&package_id],
            |row| row.get(0),
        )?;
        versions.push(StoredVersion {
            package_id,
            package,
            approvals,
            deal,
            retired,
            shares: checked,
            sealed,
            refreshed,
            kits,
            generation,
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
    pub deal: Signed,
    pub sealed: BTreeMap<String, Vec<u8>>,
    /// The cluster generation its approvals were checked against.
    pub generation: u64,
    pub now_ms: u64,
}

/// Records an activated version, its sealed shares and `version.activated` (it serves once its
/// shares pass their check: [`record_check`]). Returns `false` (writing nothing) if the version
/// is already stored: activation is idempotent.
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
    // A version checked against the cluster before a rotation was dealt for that cluster: its
    // shares do not fit the one that serves now.
    let now = current_generation(tx)?;
    if now != v.generation {
        return Err(StoreError::GenerationMoved {
            checked: v.generation,
            now,
        });
    }
    let approvals = serde_json::to_string(&v.approvals)
        .map_err(|e| StoreError::Corrupt(format!("approvals do not serialize: {e}")))?;
    let deal = serde_json::to_string(&v.deal)
        .map_err(|e| StoreError::Corrupt(format!("the deal does not serialize: {e}")))?;
    tx.execute(
        "INSERT INTO versions (package_id, package, manifest, approvals, activated_ms, deal,
                               name, version, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            v.package_id,
            v.package,
            v.manifest_json,
            approvals,
            v.now_ms,
            deal,
            v.name,
            v.version,
            v.generation
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

/// What [`record_joining`] records.
pub(crate) struct Joining<'a> {
    pub session: &'a str,
    /// The chain of rotations from the configured cluster, checked.
    pub rotations: &'a [StoredMembership],
    /// The epoch the rotation moves from.
    pub from_epoch: u64,
    /// The versions it is to hold, checked against the approvals of the cluster the chain ends
    /// at (their generation), without shares: those come from the re-dealing.
    pub versions: &'a [NewVersion],
    /// The generation the chain ends at.
    pub generation: u64,
}

/// Records what a machine that is not a member yet checked before a rotation that brings it
/// in: the rotations it did not know of, the epoch it starts from, and the versions it is to
/// hold, without shares (each once, however many times it is told). `membership.joining` in
/// the audit log.
pub(crate) fn record_joining(
    tx: &Transaction<'_>,
    j: &Joining<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let recorded = current_generation(tx)?;
    for m in j.rotations.iter().filter(|m| m.generation > recorded) {
        let rotation = (m.generation, j.session);
        insert_membership(tx, rotation, (&m.membership, &m.approvals), now_ms)?;
    }
    // Epoch 0 is no row.
    if j.from_epoch > 0 {
        tx.execute(
            "INSERT OR REPLACE INTO epoch (only, epoch, reshare, committed_ms)
             VALUES (0, ?1, ?2, ?3)",
            params![j.from_epoch, format!("join-{}", j.session), now_ms],
        )?;
    }
    for v in j.versions {
        insert_version(tx, v)?;
    }
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind: "membership.joining",
            details: &json!({
                "session": j.session,
                "generation": j.generation,
                "from_epoch": j.from_epoch,
                "packages": j.versions.iter().map(|v| &v.package_id).collect::<Vec<_>>(),
            }),
        },
    )?;
    Ok(())
}

/// The manifests (as stored, JSON) of `packages`, in that order; `None` for one not stored.
pub(crate) fn manifests(
    conn: &rusqlite::Connection,
    packages: &[String],
) -> Result<Vec<Option<String>>, StoreError> {
    let mut query = conn.prepare_cached("SELECT manifest FROM versions WHERE package_id = ?1")?;
    packages
        .iter()
        .map(|p| Ok(query.query_row([p], |row| row.get(0)).optional()?))
        .collect()
}

/// A completed joint check of a version's shares ([`crate::share_check`]).
pub(crate) struct CheckRecord<'a> {
    pub package_id: &'a str,
    pub session: &'a str,
    /// `None`: the shares passed. `Some(culprits)`: refused, naming the custodians whose
    /// values were proven off (possibly none).
    pub refused: Option<&'a [u32]>,
    pub now_ms: u64,
}

/// Records the outcome of a version's check, once: a pass (`shares.checked`) retires the lower
/// versions of its name, which it supersedes, and returns their ids; a refusal
/// (`shares.refused`, with the culprits) means the version never serves. A version whose
/// outcome is recorded already (or one not stored) changes nothing.
pub(crate) fn record_check(
    tx: &Transaction<'_>,
    check: &CheckRecord<'_>,
) -> Result<Vec<String>, StoreError> {
    let column = match check.refused {
        None => "shares_checked_ms",
        Some(_) => "shares_refused_ms",
    };
    let changed = tx.execute(
        &format!(
            "UPDATE versions SET {column} = ?2 WHERE package_id = ?1 AND retired_ms IS NULL
             AND shares_checked_ms IS NULL AND shares_refused_ms IS NULL"
        ),
        params![check.package_id, check.now_ms],
    )?;
    if changed == 0 {
        return Ok(Vec::new());
    }
    let (kind, details) = match check.refused {
        None => (
            "shares.checked",
            json!({ "session": check.session, "package_id": check.package_id }),
        ),
        Some(culprits) => (
            "shares.refused",
            json!({
                "session": check.session,
                "package_id": check.package_id,
                "culprits": culprits,
            }),
        ),
    };
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: check.now_ms,
            actor: COORDINATOR,
            kind,
            details: &details,
        },
    )?;
    if check.refused.is_some() {
        return Ok(Vec::new());
    }
    let superseded: Vec<String> = tx
        .prepare(
            "SELECT old.package_id FROM versions AS old JOIN versions AS new
             ON old.name = new.name AND old.version < new.version
             WHERE new.package_id = ?1 AND old.retired_ms IS NULL",
        )?
        .query_map([check.package_id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for old in &superseded {
        retire(tx, old, check.package_id, check.now_ms)?;
    }
    Ok(superseded)
}

/// Marks `package_id` retired (superseded by `by`), with its `version.retired` entry, and drops
/// its unused kits: a retired version never serves again.
pub(crate) fn retire(
    tx: &Transaction<'_>,
    package_id: &str,
    by: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    if !stop_serving(tx, package_id, now_ms)? {
        return Ok(());
    }
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind: "version.retired",
            details: &json!({ "package_id": package_id, "superseded_by": by }),
        },
    )?;
    Ok(())
}

/// Marks a stored version retired and drops its unused kits; `false` if it is not stored here
/// or was retired already.
fn stop_serving(tx: &Transaction<'_>, package_id: &str, now_ms: u64) -> Result<bool, StoreError> {
    let changed = tx.execute(
        "UPDATE versions SET retired_ms = ?2 WHERE package_id = ?1 AND retired_ms IS NULL",
        params![package_id, now_ms],
    )?;
    if changed > 0 {
        tx.execute("DELETE FROM kits WHERE package_id = ?1", [package_id])?;
    }
    Ok(changed > 0)
}

/// What k operators may decide to stop for good: an identity, or a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Of an identity's name: it is never served again, under any key.
    Revocation,
    /// Of a version's package id: it never serves nor activates again.
    Retirement,
}

impl Decision {
    fn insert_sql(self) -> &'static str {
        match self {
            Decision::Revocation => {
                "INSERT INTO revocations (name, approvals, revoked_ms, generation)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING"
            }
            Decision::Retirement => {
                "INSERT INTO retirements (package_id, approvals, retired_ms, generation)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (package_id) DO NOTHING"
            }
        }
    }

    fn load_sql(self) -> &'static str {
        match self {
            Decision::Revocation => "SELECT name, approvals, generation FROM revocations",
            Decision::Retirement => "SELECT package_id, approvals, generation FROM retirements",
        }
    }

    fn entry(self, subject: &str, approvers: Vec<u32>) -> (&'static str, serde_json::Value) {
        match self {
            Decision::Revocation => (
                "identity.revoked",
                json!({ "identity": subject, "approvals": approvers }),
            ),
            Decision::Retirement => (
                "version.retired",
                json!({ "package_id": subject, "approvals": approvers }),
            ),
        }
    }
}

/// A decision of k operators as stored: its subject (identity name or package id) and the
/// approvals this custodian checked.
pub(crate) struct StoredDecision {
    pub subject: String,
    pub approvals: Vec<ApprovalSignature>,
    /// The cluster generation whose operators approved it.
    pub generation: u64,
}

/// Records a decision with its audit entry (`identity.revoked`, `version.retired`); `false` if
/// it was recorded already. A retired version stored here stops serving in the same
/// transaction and its kits are dropped; one not stored here yet never activates. A revoked
/// caller's row stays, for the record.
pub(crate) fn insert_decision(
    tx: &Transaction<'_>,
    decision: Decision,
    stored: &StoredDecision,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let approvals = serde_json::to_string(&stored.approvals)
        .map_err(|e| StoreError::Corrupt(format!("approvals do not serialize: {e}")))?;
    let added = tx.execute(
        decision.insert_sql(),
        params![stored.subject, approvals, now_ms, stored.generation],
    )?;
    if added == 0 {
        return Ok(false);
    }
    if decision == Decision::Retirement {
        stop_serving(tx, &stored.subject, now_ms)?;
    }
    let approvers = stored.approvals.iter().map(|a| a.custodian).collect();
    let (kind, details) = decision.entry(&stored.subject, approvers);
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind,
            details: &details,
        },
    )?;
    Ok(true)
}

pub(crate) fn load_decisions(
    ledger: &Ledger,
    decision: Decision,
) -> Result<Vec<StoredDecision>, StoreError> {
    let conn = ledger.connection();
    let mut rows = conn.prepare(decision.load_sql())?;
    let listed = rows.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u64>(2)?,
        ))
    })?;
    let mut decisions = Vec::new();
    for row in listed {
        let (subject, approvals, generation) = row?;
        let approvals = serde_json::from_str(&approvals)
            .map_err(|e| StoreError::Corrupt(format!("approvals of {subject}: {e}")))?;
        decisions.push(StoredDecision {
            subject,
            approvals,
            generation,
        });
    }
    Ok(decisions)
}

/// A caller identity as stored.
pub(crate) struct StoredCaller {
    pub name: String,
    pub public_key: String,
    pub approvals: Vec<ApprovalSignature>,
    /// The cluster generation whose operators approved it.
    pub generation: u64,
}

/// Records a caller identity that passed its approvals (`identity.registered`); `false` if it
/// was registered already (with the same key: a different key for a known name is refused by
/// the caller of this function before it gets here).
pub(crate) fn insert_caller(
    tx: &Transaction<'_>,
    caller: &StoredCaller,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let approvals = serde_json::to_string(&caller.approvals)
        .map_err(|e| StoreError::Corrupt(format!("approvals do not serialize: {e}")))?;
    let added = tx.execute(
        "INSERT INTO callers (name, public_key, approvals, registered_ms, generation)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
        params![
            caller.name,
            caller.public_key,
            approvals,
            now_ms,
            caller.generation
        ],
    )?;
    if added == 0 {
        return Ok(false);
    }
    let approvers: Vec<u32> = caller.approvals.iter().map(|a| a.custodian).collect();
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind: "identity.registered",
            details: &json!({
                "identity": caller.name,
                "public_key": caller.public_key,
                "approvals": approvers,
            }),
        },
    )?;
    Ok(true)
}

pub(crate) fn load_callers(ledger: &Ledger) -> Result<Vec<StoredCaller>, StoreError> {
    let conn = ledger.connection();
    let mut rows = conn.prepare("SELECT name, public_key, approvals, generation FROM callers")?;
    let listed = rows.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, u64>(3)?,
        ))
    })?;
    let mut callers = Vec::new();
    for row in listed {
        let (name, public_key, approvals, generation) = row?;
        let approvals = serde_json::from_str(&approvals)
            .map_err(|e| StoreError::Corrupt(format!("approvals of identity {name}: {e}")))?;
        callers.push(StoredCaller {
            name,
            public_key,
            approvals,
            generation,
        });
    }
    Ok(callers)
}

/// Stores a batch of kits `first_kit ..` with its `kits.stored` entry. A kit id that exists
/// already fails the whole batch (the job's savepoint is rolled back): an id names one kit
/// across the cluster, and keeping either copy would pair mismatched shares.
pub(crate) fn insert_kits(
    tx: &Transaction<'_>,
    session: &str,
    (package_id, epoch): (&str, u64),
    first_kit: u64,
    kits: &[Zeroizing<Vec<u8>>],
    now_ms: u64,
) -> Result<(), StoreError> {
    // Made from shares a refresh committed meanwhile replaced: refused, like the old kits.
    let at = current_epoch(tx)?;
    if at != epoch {
        return Err(StoreError::EpochMoved {
            expected: epoch,
            at,
        });
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO kits (package_id, kit, material, epoch) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (kit, material) in (first_kit..).zip(kits) {
        match insert.execute(params![package_id, kit, &material[..], epoch]) {
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
                "epoch": epoch,
            }),
        },
    )?;
    Ok(())
}

/// One attempt at a caller's request, as ticket and signed request describe it (both checked).
pub(crate) struct Admission {
    pub session: String,
    pub request_id: String,
    pub identity: String,
    /// The program's name: budgets and rate limits are kept per (identity, name).
    pub program: String,
    pub package_id: String,
    pub kit: u64,
    /// The share epoch of the session (checked against this custodian's): the kit must be of it.
    pub epoch: u64,
    /// The ticket's attempt number.
    pub attempt: u32,
    pub policy: Policy,
    pub now_ms: u64,
}

/// What [`admit`] decided. A refusal is an outcome, not an error: its audit entry commits.
pub(crate) enum Admitted {
    /// The kit's material (this custodian's shares of its triples), now deleted from the ledger.
    Kit(Zeroizing<Vec<u8>>),
    /// The rate limit or the budget said no ([`PolicyError::RateLimited`],
    /// [`PolicyError::BudgetExhausted`]).
    Refused(PolicyError),
    /// This custodian served the request in this attempt or a later one already, or the
    /// attempt is beyond [`MAX_ATTEMPTS`].
    Replayed { last_attempt: Option<u32> },
}

/// Admits one attempt, all in the caller's transaction: the session id is recorded (a reused
/// one is an error); the request's first attempt passes this custodian's own rate limit and
/// budget for (identity, program name) and is charged (`eval.accepted`, or `eval.denied`
/// committed with nothing else); a later attempt is not charged again (`eval.retried`); an
/// attempt no later than one served here, or beyond [`MAX_ATTEMPTS`], is refused
/// (`eval.replayed`). Then the kit is taken: a missing kit (a replayed ticket, or an id this
/// custodian never stored) is an error, so the job rolls back and nothing is charged.
///
/// The entries name session, request, identity, program, version and kit: never inputs,
/// outputs or shares.
pub(crate) fn admit(tx: &Transaction<'_>, a: &Admission) -> Result<Admitted, StoreError> {
    let started = tx
        .prepare_cached(
            "INSERT INTO sessions (session, identity, request_id, kit, started_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (session) DO NOTHING",
        )?
        .execute(params![
            a.session,
            a.identity,
            a.request_id,
            a.kit,
            a.now_ms
        ])?;
    if started == 0 {
        return Err(StoreError::SessionUsed(a.session.clone()));
    }
    let details = json!({
        "session": a.session,
        "request_id": a.request_id,
        "identity": a.identity,
        "program": a.program,
        "package_id": a.package_id,
        "kit": a.kit,
    });
    let seen: Option<u32> = tx
        .prepare_cached(
            "SELECT last_attempt FROM requests WHERE identity = ?1 AND request_id = ?2",
        )?
        .query_row(params![a.identity, a.request_id], |row| row.get(0))
        .optional()?;
    let mut details = details;
    details["attempt"] = json!(a.attempt);
    match seen {
        _ if a.attempt >= MAX_ATTEMPTS => {
            return replayed(tx, a, &details, seen);
        }
        Some(last) if a.attempt <= last => {
            return replayed(tx, a, &details, seen);
        }
        Some(_) => {
            tx.prepare_cached(
                "UPDATE requests SET last_attempt = ?3 WHERE identity = ?1 AND request_id = ?2",
            )?
            .execute(params![a.identity, a.request_id, a.attempt])?;
            append(tx, a, "eval.retried", &details)?;
        }
        None => {
            let admitted = quorumvm_policy::admit_in(
                tx,
                &quorumvm_policy::EvalRequest {
                    identity: &a.identity,
                    program: &a.program,
                    request_id: &a.request_id,
                    context: &details,
                    policy: &a.policy,
                    now_ms: a.now_ms,
                },
            )
            .map_err(policy_failure)?;
            if let Err(refusal) = admitted {
                return Ok(Admitted::Refused(refusal));
            }
            tx.prepare_cached(
                "INSERT INTO requests (identity, request_id, last_attempt, first_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![a.identity, a.request_id, a.attempt, a.now_ms])?;
        }
    }
    let material: Option<Vec<u8>> = tx
        .prepare_cached(
            "DELETE FROM kits WHERE package_id = ?1 AND kit = ?2 AND epoch = ?3
             RETURNING material",
        )?
        .query_row(params![a.package_id, a.kit, a.epoch], |row| row.get(0))
        .optional()?;
    let material = material
        .map(Zeroizing::new)
        .ok_or_else(|| StoreError::KitUnavailable {
            package_id: a.package_id.clone(),
            kit: a.kit,
        })?;
    Ok(Admitted::Kit(material))
}

/// A kit's material, left in place: only [`quorumvm_server::Bug::AnswerBeforeCommit`] reads a
/// kit without taking it.
pub(crate) fn peek_kit(
    tx: &Transaction<'_>,
    package_id: &str,
    kit: u64,
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    tx.prepare_cached("SELECT material FROM kits WHERE package_id = ?1 AND kit = ?2")?
        .query_row(params![package_id, kit], |row| row.get(0))
        .optional()?
        .map(Zeroizing::new)
        .ok_or_else(|| StoreError::KitUnavailable {
            package_id: package_id.to_string(),
            kit,
        })
}

/// The share epoch this custodian committed last (0 before any refresh).
pub(crate) fn current_epoch(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    Ok(conn
        .query_row("SELECT epoch FROM epoch", [], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// A refresh verified here ([`crate::reshare`]): this custodian's new shares, sealed to itself
/// and bound to `from_epoch + 1`.
pub(crate) struct Pending<'a> {
    /// `reshare.verified` or `membership.verified`.
    pub kind: &'static str,
    pub reshare: &'a str,
    pub from_epoch: u64,
    pub packages: &'a [String],
    /// (package id, secret name, sealed share).
    pub shares: Vec<(String, String, Vec<u8>)>,
    pub now_ms: u64,
}

/// Keeps a verified refresh's new shares aside (`reshare.verified`), if this custodian is still
/// at its starting epoch and never kept shares of this session before (a session run twice
/// could leave custodians holding shares of different runs under one set of attestations);
/// they replace the current ones only at [`commit_reshare`].
pub(crate) fn insert_pending(tx: &Transaction<'_>, p: &Pending<'_>) -> Result<(), StoreError> {
    let ran = tx
        .query_row(
            "SELECT 1 FROM pending_shares WHERE reshare = ?1 LIMIT 1",
            [p.reshare],
            |_| Ok(()),
        )
        .optional()?;
    if ran.is_some() {
        return Err(StoreError::SessionUsed(p.reshare.to_string()));
    }
    let at = current_epoch(tx)?;
    if at != p.from_epoch {
        return Err(StoreError::EpochMoved {
            expected: p.from_epoch,
            at,
        });
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO pending_shares (reshare, from_epoch, package_id, secret, sealed)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (package, secret, sealed) in &p.shares {
        insert.execute(params![p.reshare, p.from_epoch, package, secret, sealed])?;
    }
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: p.now_ms,
            actor: COORDINATOR,
            kind: p.kind,
            details: &json!({
                "session": p.reshare,
                "from_epoch": p.from_epoch,
                "packages": p.packages,
                "shares": p.shares.len(),
            }),
        },
    )?;
    Ok(())
}

/// What [`commit_reshare`] did.
pub(crate) enum Committed {
    /// This custodian moved to the refresh's epoch: the new shares, (package id, secret name,
    /// sealed share), to open into memory.
    Now(Vec<(String, String, Vec<u8>)>),
    /// It had committed this refresh before: nothing changed.
    Already,
}

/// A rotation committed here ([`crate::rotation`]).
pub(crate) struct NewMembership<'a> {
    pub session: &'a str,
    pub from_epoch: u64,
    /// One more than the generation the rotation was checked against.
    pub generation: u64,
    pub membership: &'a Membership,
    pub approvals: &'a [ApprovalSignature],
    /// The versions re-dealt: every other version here stops serving.
    pub packages: &'a [String],
    /// Whether this custodian is in the new set (it kept new shares aside) or leaves it.
    pub stays: bool,
}

/// Moves to the new shares of a verified refresh, all in one transaction with its
/// `shares.refreshed` entry: each replaces the share it refreshes (the dealt one is deleted),
/// the epoch moves up by one, and every kit is deleted (kits hold shares of the old epoch's
/// material: kept, they would let old and new shares be combined through them). Pending
/// shares of every refresh from the old epoch go too.
pub(crate) fn commit_reshare(
    tx: &Transaction<'_>,
    reshare: &str,
    from_epoch: u64,
    now_ms: u64,
) -> Result<Committed, StoreError> {
    commit(tx, reshare, from_epoch, None, now_ms)
}

/// Moves to a rotation's membership and new shares, as [`commit_reshare`] moves to a refresh's,
/// in one transaction with its `membership.changed` entry; besides, the membership is recorded
/// as the next generation, a version the rotation did not re-deal stops serving here for good
/// (its shares belong to the old cluster), and a custodian that leaves deletes every share it
/// holds.
pub(crate) fn commit_membership(
    tx: &Transaction<'_>,
    m: &NewMembership<'_>,
    now_ms: u64,
) -> Result<Committed, StoreError> {
    commit(tx, m.session, m.from_epoch, Some(m), now_ms)
}

fn commit(
    tx: &Transaction<'_>,
    reshare: &str,
    from_epoch: u64,
    rotation: Option<&NewMembership<'_>>,
    now_ms: u64,
) -> Result<Committed, StoreError> {
    let at = current_epoch(tx)?;
    if at == from_epoch + 1 {
        let last: Option<String> = tx
            .query_row("SELECT reshare FROM epoch", [], |row| row.get(0))
            .optional()?;
        if last.as_deref() == Some(reshare) {
            return Ok(Committed::Already);
        }
    }
    if at != from_epoch {
        return Err(StoreError::EpochMoved {
            expected: from_epoch,
            at,
        });
    }
    let shares = tx
        .prepare_cached(
            "SELECT package_id, secret, sealed FROM pending_shares
             WHERE reshare = ?1 AND from_epoch = ?2 ORDER BY package_id, secret",
        )?
        .query_map(params![reshare, from_epoch], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<Vec<(String, String, Vec<u8>)>, _>>()?;
    if shares.is_empty() && rotation.is_none_or(|m| m.stays) {
        return Err(StoreError::NotVerified(reshare.to_string()));
    }
    let epoch = from_epoch + 1;
    let mut refused = 0;
    if let Some(m) = rotation {
        let now = current_generation(tx)?;
        if now + 1 != m.generation {
            return Err(StoreError::GenerationMoved {
                checked: m.generation - 1,
                now,
            });
        }
        let live: Vec<String> = tx
            .prepare(
                "SELECT package_id FROM versions
                 WHERE retired_ms IS NULL AND shares_refused_ms IS NULL",
            )?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut refuse =
            tx.prepare_cached("UPDATE versions SET shares_refused_ms = ?2 WHERE package_id = ?1")?;
        for package in live.iter().filter(|p| !m.packages.contains(p)) {
            refused += refuse.execute(params![package, now_ms])?;
        }
        if m.stays {
            // The re-dealing checked every new share (a joining machine's versions have had
            // no check before).
            let mut checked = tx.prepare_cached(
                "UPDATE versions SET shares_checked_ms = ?2
                 WHERE package_id = ?1 AND shares_checked_ms IS NULL",
            )?;
            for package in m.packages {
                checked.execute(params![package, now_ms])?;
            }
        } else {
            tx.execute("DELETE FROM sealed_shares", [])?;
            tx.execute("DELETE FROM refreshed_shares", [])?;
        }
        insert_membership(
            tx,
            (m.generation, reshare),
            (m.membership, m.approvals),
            now_ms,
        )?;
    }
    let mut dealt =
        tx.prepare_cached("DELETE FROM sealed_shares WHERE package_id = ?1 AND secret = ?2")?;
    let mut refreshed = tx.prepare_cached(
        "INSERT OR REPLACE INTO refreshed_shares (package_id, secret, epoch, sealed)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut packages: Vec<&str> = Vec::new();
    for (package, secret, sealed) in &shares {
        dealt.execute(params![package, secret])?;
        refreshed.execute(params![package, secret, epoch, sealed])?;
        if packages.last() != Some(&package.as_str()) {
            packages.push(package);
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO epoch (only, epoch, reshare, committed_ms) VALUES (0, ?1, ?2, ?3)",
        params![epoch, reshare, now_ms],
    )?;
    let kits = tx.execute("DELETE FROM kits", [])?;
    tx.execute(
        "DELETE FROM pending_shares WHERE from_epoch <= ?1",
        [from_epoch],
    )?;
    let (kind, mut details) = match rotation {
        None => ("shares.refreshed", json!({})),
        Some(m) => (
            "membership.changed",
            json!({
                "generation": m.generation,
                "threshold": m.membership.threshold,
                "custodians": m.membership.custodians.iter().map(|c| c.index).collect::<Vec<_>>(),
                "approvals": m.approvals.iter().map(|a| a.custodian).collect::<Vec<_>>(),
                "stays": m.stays,
                "versions_refused": refused,
            }),
        ),
    };
    details["session"] = json!(reshare);
    details["epoch"] = json!(epoch);
    details["packages"] = json!(packages);
    details["shares"] = json!(shares.len());
    details["kits_discarded"] = json!(kits);
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor: COORDINATOR,
            kind,
            details: &details,
        },
    )?;
    Ok(Committed::Now(shares))
}

/// Records rotation `generation` (made by `session`): its membership and the approvals that
/// made it, checked again at every start.
fn insert_membership(
    tx: &Transaction<'_>,
    (generation, session): (u64, &str),
    (membership, approvals): (&Membership, &[ApprovalSignature]),
    now_ms: u64,
) -> Result<(), StoreError> {
    let membership = serde_json::to_string(membership)
        .map_err(|e| StoreError::Corrupt(format!("the membership does not serialize: {e}")))?;
    let approvals = serde_json::to_string(approvals)
        .map_err(|e| StoreError::Corrupt(format!("approvals do not serialize: {e}")))?;
    tx.execute(
        "INSERT INTO memberships (generation, session, membership, approvals, committed_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![generation, session, membership, approvals, now_ms],
    )?;
    Ok(())
}

/// Whether this custodian committed refresh or rotation `session` from `from_epoch` last.
pub(crate) fn committed(
    conn: &rusqlite::Connection,
    session: &str,
    from_epoch: u64,
) -> Result<bool, StoreError> {
    let last: Option<(u64, String)> = conn
        .query_row("SELECT epoch, reshare FROM epoch", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    Ok(last.is_some_and(|(epoch, last)| epoch == from_epoch + 1 && last == session))
}

/// How many rotations were committed here: the generation of the cluster in force.
pub(crate) fn current_generation(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(generation), 0) FROM memberships",
        [],
        |row| row.get(0),
    )?)
}

/// A rotation as recorded, to be checked again at start.
#[derive(Clone)]
pub(crate) struct StoredMembership {
    pub generation: u64,
    pub membership: Membership,
    pub approvals: Vec<ApprovalSignature>,
}

/// Every rotation committed here, in order.
pub(crate) fn load_memberships(ledger: &Ledger) -> Result<Vec<StoredMembership>, StoreError> {
    let conn = ledger.connection();
    let mut rows = conn
        .prepare("SELECT generation, membership, approvals FROM memberships ORDER BY generation")?;
    let listed = rows.query_map([], |row| {
        Ok((
            row.get::<_, u64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in listed {
        let (generation, membership, approvals) = row?;
        let corrupt =
            |e: serde_json::Error| StoreError::Corrupt(format!("rotation {generation}: {e}"));
        out.push(StoredMembership {
            generation,
            membership: serde_json::from_str(&membership).map_err(corrupt)?,
            approvals: serde_json::from_str(&approvals).map_err(corrupt)?,
        });
    }
    Ok(out)
}

/// Refuses a replayed attempt, with its `eval.replayed` entry (committed; nothing else is).
fn replayed(
    tx: &Transaction<'_>,
    a: &Admission,
    details: &serde_json::Value,
    last_attempt: Option<u32>,
) -> Result<Admitted, StoreError> {
    let mut details = details.clone();
    details["last_attempt"] = json!(last_attempt);
    append(tx, a, "eval.replayed", &details)?;
    Ok(Admitted::Replayed { last_attempt })
}

/// The policy crate's storage failures are this module's; its refusals never reach here.
pub(crate) fn policy_failure(err: PolicyError) -> StoreError {
    match err {
        PolicyError::Ledger(e) => StoreError::Ledger(e),
        other => StoreError::Corrupt(format!("the version's policy is unusable: {other}")),
    }
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
        ledger
            .apply_schema(&quorumvm_server::freeze::SCHEMA)
            .unwrap();
        ledger.apply_schema(&SCHEMA).unwrap();
        ledger.apply_schema(&quorumvm_policy::SCHEMA).unwrap();
        ledger
    }

    fn version(id: &str, version: u32) -> NewVersion {
        NewVersion {
            package_id: id.into(),
            name: "square".into(),
            version,
            package: vec![1, 2, 3],
            manifest_json: "{}".into(),
            approvals: vec![ApprovalSignature {
                custodian: 2,
                signature: "00".into(),
            }],
            deal: Signed {
                body: "{}".into(),
                signature: "00".into(),
            },
            sealed: BTreeMap::from([("w".to_string(), vec![9; 4])]),
            generation: 0,
            now_ms: 5,
        }
    }

    fn admission(session: &str, request: &str, kit: u64, budget: u64) -> Admission {
        attempt(session, request, kit, budget, 0)
    }

    fn attempt(session: &str, request: &str, kit: u64, budget: u64, attempt: u32) -> Admission {
        Admission {
            attempt,
            session: session.into(),
            request_id: request.into(),
            identity: "alice".into(),
            program: "square".into(),
            package_id: "p".into(),
            kit,
            epoch: 0,
            policy: Policy {
                cost_per_eval: 2,
                budget_per_identity: budget,
                ..Policy::default()
            },
            now_ms: 6,
        }
    }

    fn spent(db: &Ledger) -> u64 {
        db.connection()
            .query_row(
                "SELECT spent FROM budget_spent WHERE identity = 'alice' AND program = 'square'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A version checked against the cluster before a rotation was dealt for that cluster:
    /// recorded after the rotation committed, it is refused, and nothing is written.
    #[test]
    fn a_version_checked_before_a_rotation_is_refused_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ledger(dir.path());
        db.transaction(|tx| {
            tx.execute(
                "INSERT INTO memberships (generation, session, membership, approvals, committed_ms)
                 VALUES (1, 'r', '{}', '[]', 1)",
                [],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
        assert_eq!(current_generation(db.connection()).unwrap(), 1);
        let refused = db.transaction(|tx| insert_version(tx, &version("p", 1)));
        assert!(
            matches!(
                refused,
                Err(StoreError::GenerationMoved { checked: 0, now: 1 })
            ),
            "{refused:?}"
        );
        let stored: i64 = db
            .connection()
            .query_row("SELECT COUNT(*) FROM versions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
        let checked = NewVersion {
            generation: 1,
            ..version("p", 1)
        };
        assert!(db.transaction(|tx| insert_version(tx, &checked)).unwrap());
    }

    #[test]
    fn versions_kits_and_budgets_round_trip_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ledger(dir.path());
        assert!(
            db.transaction(|tx| insert_version(tx, &version("p", 1)))
                .unwrap()
        );
        assert!(
            !db.transaction(|tx| insert_version(tx, &version("p", 1)))
                .unwrap()
        );
        let kits: Vec<_> = (0..3u8).map(|i| Zeroizing::new(vec![i; 16])).collect();
        db.transaction(|tx| insert_kits(tx, "b", ("p", 0), 10, &kits, 6))
            .unwrap();
        // Kit 12 exists: the whole second batch is refused.
        let clash = db
            .transaction(|tx| insert_kits(tx, "b2", ("p", 0), 12, &kits, 6))
            .unwrap_err();
        assert!(
            matches!(clash, StoreError::KitExists { kit: 12, .. }),
            "{clash}"
        );

        let stored = load_versions(db.connection()).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].kits, stored[0].package.clone(), stored[0].retired),
            (3, vec![1, 2, 3], false)
        );
        assert_eq!(stored[0].sealed["w"], vec![9; 4]);

        match db
            .transaction(|tx| admit(tx, &admission("s1", "r1", 11, 4)))
            .unwrap()
        {
            Admitted::Kit(m) => assert_eq!(*m, vec![1; 16]),
            _ => panic!("admitted"),
        }
        assert_eq!(spent(&db), 2);
        // The same session again: refused, nothing recorded.
        let reused = db
            .transaction(|tx| admit(tx, &admission("s1", "r1", 12, 4)))
            .err()
            .unwrap();
        assert!(matches!(reused, StoreError::SessionUsed(_)), "{reused}");
        // A ticket replayed in a new session: no kit, and everything rolls back.
        let replay = db
            .transaction(|tx| admit(tx, &admission("s2", "r2", 11, 4)))
            .err()
            .unwrap();
        assert!(matches!(replay, StoreError::KitUnavailable { kit: 11, .. }));
        assert_eq!(spent(&db), 2);
        // A retry of request r1 (a later attempt, another kit) is not charged again...
        assert!(matches!(
            db.transaction(|tx| admit(tx, &attempt("s3", "r1", 12, 4, 1)))
                .unwrap(),
            Admitted::Kit(_)
        ));
        assert_eq!(spent(&db), 2);
        // ...and attempt 1 again, or one beyond the last, is a replay.
        for (session, n) in [("s4", 1), ("s4b", 0), ("s4c", MAX_ATTEMPTS)] {
            assert!(matches!(
                db.transaction(|tx| admit(tx, &attempt(session, "r1", 10, 4, n)))
                    .unwrap(),
                Admitted::Replayed {
                    last_attempt: Some(1)
                }
            ));
        }
        assert!(matches!(
            db.transaction(|tx| admit(tx, &admission("s5", "r3", 10, 4)))
                .unwrap(),
            Admitted::Kit(_)
        ));
        // Budget 4 at cost 2: a third request is denied, and its denial commits.
        kits_again(&mut db);
        assert!(matches!(
            db.transaction(|tx| admit(tx, &admission("s6", "r4", 20, 4)))
                .unwrap(),
            Admitted::Refused(PolicyError::BudgetExhausted {
                remaining: 0,
                cost: 2
            })
        ));
        assert_eq!(
            load_versions(db.connection()).unwrap()[0].kits,
            1,
            "kit 20 is still there"
        );
        // Version 2 retires version 1, and drops its kits, once its shares pass their check;
        // version 3's are refused, which changes nothing else. Each outcome is recorded once.
        let check = |id: &'static str, refused: Option<&'static [u32]>| CheckRecord {
            package_id: id,
            session: "check-1",
            refused,
            now_ms: 7,
        };
        for id in ["p2", "p3"] {
            let number = if id == "p2" { 2 } else { 3 };
            assert!(
                db.transaction(|tx| insert_version(tx, &version(id, number)))
                    .unwrap()
            );
        }
        assert_eq!(
            load_versions(db.connection()).unwrap()[0].kits,
            1,
            "not retired yet"
        );
        let retired = db
            .transaction(|tx| record_check(tx, &check("p2", None)))
            .unwrap();
        assert_eq!(retired, ["p"]);
        for again in [check("p2", None), check("p2", Some(&[1]))] {
            assert!(
                db.transaction(|tx| record_check(tx, &again))
                    .unwrap()
                    .is_empty()
            );
        }
        assert!(
            db.transaction(|tx| record_check(tx, &check("p3", Some(&[2]))))
                .unwrap()
                .is_empty()
        );
        let stored = load_versions(db.connection()).unwrap();
        let shown: Vec<_> = stored
            .iter()
            .map(|v| (v.package_id.as_str(), v.retired, v.kits, v.shares))
            .collect();
        assert_eq!(
            shown,
            [
                ("p", true, 0, SharesChecked::Not),
                ("p2", false, 0, SharesChecked::Passed),
                ("p3", false, 0, SharesChecked::Refused),
            ]
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
                "eval.retried",
                "eval.replayed",
                "eval.replayed",
                "eval.replayed",
                "eval.accepted",
                "kits.stored",
                "eval.denied",
                "version.activated",
                "version.activated",
                "shares.checked",
                "version.retired",
                "shares.refused",
            ]
        );
        db.verify_chain().unwrap();
    }

    fn kits_again(db: &mut Ledger) {
        let kits = vec![Zeroizing::new(vec![7u8; 16])];
        db.transaction(|tx| insert_kits(tx, "b3", ("p", 0), 20, &kits, 6))
            .unwrap();
    }
}
