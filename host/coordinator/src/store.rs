//! The coordinator's tables and the queries on them. Everything here runs inside a writer job
//! (one savepoint of a group commit) or on the read connection at startup.

use quorumvm_core::circuit::Manifest;
use quorumvm_ledger::rusqlite::{self, OptionalExtension, Transaction, params};
use quorumvm_ledger::{NewEntry, Schema, audit};
use std::collections::BTreeMap;

use quorumvm_wire::api::{SealedShares, VersionState};
use quorumvm_wire::freeze::{Target, Unfreeze};
use quorumvm_wire::order::Attestations;
use quorumvm_wire::signed::Signed;

/// Why a query on the coordinator's tables failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{name} version {version} is already installed as package {existing}; a changed program needs a new version number"
    )]
    VersionConflict {
        name: String,
        version: u32,
        existing: String,
    },
    #[error("custodian {custodian} has already approved {noun} {subject}")]
    DuplicateApproval {
        custodian: u32,
        noun: &'static str,
        subject: String,
    },
    #[error("the ledger: {0}")]
    Ledger(#[from] quorumvm_ledger::LedgerError),
    #[error("the database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored {what} of {package_id} does not read: {reason}")]
    Corrupt {
        what: &'static str,
        package_id: String,
        reason: String,
    },
}

pub const SCHEMA: Schema = Schema {
    component: "coordinator",
    migrations: &[
        "
        -- One row per installed package version. `kits_reserved`: every kit id below it may
        -- have been handed out (a restart resumes above it, so no kit is ever used twice);
        -- `next_batch`: the first kit id of the next preprocessing batch.
        CREATE TABLE versions (
            package_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            publisher TEXT NOT NULL,
            package BLOB NOT NULL,
            manifest TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
            installed_ms INTEGER NOT NULL,
            kits_reserved INTEGER NOT NULL DEFAULT 0,
            next_batch INTEGER NOT NULL DEFAULT 0,
            UNIQUE (name, version)
        ) STRICT;
        CREATE TABLE sealed_shares (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian INTEGER NOT NULL,
            secret TEXT NOT NULL,
            sealed BLOB NOT NULL,
            PRIMARY KEY (package_id, custodian, secret)
        ) STRICT;
        CREATE TABLE approvals (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian INTEGER NOT NULL,
            signature TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (package_id, custodian)
        ) STRICT;
        -- The name's current version: moved only to a higher active version.
        CREATE TABLE aliases (
            name TEXT PRIMARY KEY,
            package_id TEXT NOT NULL REFERENCES versions (package_id)
        ) STRICT;
        -- Preprocessing batches: `stored` once all n custodians stored them.
        CREATE TABLE kit_batches (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            first_kit INTEGER NOT NULL,
            count INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ordered', 'stored', 'failed')),
            PRIMARY KEY (package_id, first_kit)
        ) STRICT;
    ",
        "
        -- The publisher's signed deal of the sealed shares (JSON of a wire `Signed`).
        ALTER TABLE versions ADD COLUMN deal TEXT NOT NULL DEFAULT '';
        -- Set when a higher active version of the name superseded it: it serves no more.
        ALTER TABLE versions ADD COLUMN retired_ms INTEGER;
        -- Caller identities: their ed25519 keys (the API key hash is the policy crate's
        -- `identities` table) and the custodian operators' approvals of them.
        CREATE TABLE caller_keys (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE identity_approvals (
            name TEXT NOT NULL REFERENCES caller_keys (name),
            custodian INTEGER NOT NULL,
            signature TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (name, custodian)
        ) STRICT;
        -- Every caller request id admitted: each is served once.
        CREATE TABLE requests (
            identity TEXT NOT NULL,
            request_id TEXT NOT NULL,
            admitted_ms INTEGER NOT NULL,
            PRIMARY KEY (identity, request_id)
        ) STRICT, WITHOUT ROWID;
    ",
        "
        -- Custodian operators' approvals of revoking an identity (at k it never serves again)
        -- and of retiring a version (at k it is retired).
        CREATE TABLE revocation_approvals (
            name TEXT NOT NULL REFERENCES caller_keys (name),
            custodian INTEGER NOT NULL,
            signature TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (name, custodian)
        ) STRICT;
        CREATE TABLE retirement_approvals (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian INTEGER NOT NULL,
            signature TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (package_id, custodian)
        ) STRICT;
        -- The coordinator's own last suspension statement per identity (suspended or lifted):
        -- only a later one counts.
        CREATE TABLE suspensions (
            name TEXT PRIMARY KEY REFERENCES caller_keys (name),
            suspended INTEGER NOT NULL CHECK (suspended IN (0, 1)),
            time_ms INTEGER NOT NULL,
            statement TEXT NOT NULL
        ) STRICT;
    ",
        "
        -- Custodians that failed checks prove deviated (see `suspects`): left out of every
        -- evaluation quorum until the coordinator's operator clears them. `evidence`: the
        -- failing quorums, as JSON.
        CREATE TABLE suspects (
            custodian INTEGER PRIMARY KEY,
            since_ms INTEGER NOT NULL,
            evidence TEXT NOT NULL
        ) STRICT;
    ",
        "
        -- Refreshes of the custodians' shares (see `reshare`), from `from_epoch` to the next.
        -- `attestations` (JSON): every custodian's tags for its peers, set when all n verified
        -- the refresh; from then on the cluster's epoch is the next one, and the row is the
        -- commit any custodian still behind is sent.
        CREATE TABLE reshares (
            session TEXT PRIMARY KEY,
            from_epoch INTEGER NOT NULL,
            packages TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('started', 'attested', 'failed')),
            attestations TEXT,
            started_ms INTEGER NOT NULL
        ) STRICT;
    ",
        "
        -- The coordinator's suspensions of identities are freezes now (quorumvm_server::freeze,
        -- whose schema is applied first).
        INSERT INTO freezes (target, frozen, time_ms, statement)
            SELECT 'identity/' || name, suspended, time_ms, statement FROM suspensions;
        DROP TABLE suspensions;
        -- Operators' approvals of an unfreeze (`unfreeze`: the target's key, `@`, the time).
        CREATE TABLE unfreeze_approvals (
            unfreeze TEXT NOT NULL,
            custodian INTEGER NOT NULL,
            signature TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (unfreeze, custodian)
        ) STRICT;
    ",
    ],
};

/// A version as stored.
pub struct StoredVersion {
    pub package_id: String,
    pub publisher: String,
    pub deal: Signed,
    pub manifest: Manifest,
    pub state: VersionState,
    pub approvals: Vec<(u32, String)>,
    /// Approvals of its retirement (at k it is retired).
    pub retirements: Vec<(u32, String)>,
    pub kits_reserved: u64,
    pub next_batch: u64,
    /// Stored batches at or above `kits_reserved`, in order.
    pub batches: Vec<(u64, u64)>,
}

pub fn audit(
    tx: &Transaction<'_>,
    now_ms: u64,
    actor: &str,
    kind: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor,
            kind,
            details: &details,
        },
    )?;
    Ok(())
}

/// What an install did.
pub enum Installed {
    New,
    AlreadyInstalled,
}

pub struct NewVersion<'a> {
    pub package_id: &'a str,
    pub publisher: &'a str,
    pub package: &'a [u8],
    pub manifest: &'a Manifest,
    pub shares: &'a [SealedShares],
    pub deal: &'a Signed,
    pub now_ms: u64,
}

pub fn install(tx: &Transaction<'_>, v: &NewVersion<'_>) -> Result<Installed, StoreError> {
    let exists: Option<String> = tx
        .query_row(
            "SELECT package_id FROM versions WHERE package_id = ?1 OR (name = ?2 AND version = ?3)",
            params![v.package_id, v.manifest.name, v.manifest.version],
            |r| r.get(0),
        )
        .optional()?;
    match exists {
        Some(id) if id == v.package_id => return Ok(Installed::AlreadyInstalled),
        Some(id) => {
            return Err(StoreError::VersionConflict {
                name: v.manifest.name.clone(),
                version: v.manifest.version,
                existing: id,
            });
        }
        None => {}
    }
    tx.execute(
        "INSERT INTO versions (package_id, name, version, publisher, package, manifest, state,
                               installed_ms, deal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)",
        params![
            v.package_id,
            v.manifest.name,
            v.manifest.version,
            v.publisher,
            v.package,
            serde_json::to_string(v.manifest).expect("manifests serialize"),
            v.now_ms,
            serde_json::to_string(v.deal).expect("deals serialize"),
        ],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO sealed_shares (package_id, custodian, secret, sealed) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for s in v.shares {
        for (secret, sealed) in &s.sealed {
            let bytes = hex::decode(sealed).expect("checked before the job");
            insert.execute(params![v.package_id, s.custodian, secret, bytes])?;
        }
    }
    audit(
        tx,
        v.now_ms,
        "coordinator",
        "package.installed",
        serde_json::json!({
            "package_id": v.package_id,
            "name": v.manifest.name,
            "version": v.manifest.version,
            "publisher": v.publisher,
        }),
    )?;
    Ok(Installed::New)
}

/// What an operator's approval is of; each kind in a table of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approved {
    Version,
    Identity,
    Revocation,
    Retirement,
    Unfreeze,
}

impl Approved {
    /// (table, subject column, audit kind, subject key in the audit entry, subject noun).
    fn names(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        match self {
            Approved::Version => (
                "approvals",
                "package_id",
                "approval.accepted",
                "package_id",
                "package",
            ),
            Approved::Identity => (
                "identity_approvals",
                "name",
                "identity.approved",
                "identity",
                "identity",
            ),
            Approved::Revocation => (
                "revocation_approvals",
                "name",
                "revocation.approved",
                "identity",
                "the revocation of identity",
            ),
            Approved::Retirement => (
                "retirement_approvals",
                "package_id",
                "retirement.approved",
                "package_id",
                "the retirement of package",
            ),
            Approved::Unfreeze => (
                "unfreeze_approvals",
                "unfreeze",
                "unfreeze.approved",
                "unfreeze",
                "the unfreeze",
            ),
        }
    }
}

/// Records one valid approval of `subject` (a package id or an identity name) with its audit
/// entry; returns how many distinct custodians have approved it so far.
pub fn approve(
    tx: &Transaction<'_>,
    kind: Approved,
    subject: &str,
    custodian: u32,
    signature: &str,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let (table, column, entry, key, noun) = kind.names();
    let inserted = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} ({column}, custodian, signature, approved_ms)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
        ))?
        .execute(params![subject, custodian, signature, now_ms])?;
    if inserted == 0 {
        return Err(StoreError::DuplicateApproval {
            custodian,
            noun,
            subject: subject.to_string(),
        });
    }
    audit(
        tx,
        now_ms,
        &format!("custodian-{custodian}"),
        entry,
        serde_json::json!({ key: subject, "custodian": custodian }),
    )?;
    let count: i64 = tx
        .prepare_cached(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"))?
        .query_row([subject], |r| r.get(0))?;
    Ok(count as usize)
}

/// The approvals of `subject` of one kind, by custodian.
pub fn approvals_of(
    conn: &rusqlite::Connection,
    kind: Approved,
    subject: &str,
) -> Result<Vec<(u32, String)>, StoreError> {
    let (table, column, ..) = kind.names();
    Ok(conn
        .prepare_cached(&format!(
            "SELECT custodian, signature FROM {table} WHERE {column} = ?1 ORDER BY custodian"
        ))?
        .query_map([subject], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// What an activation did to the name's versions.
pub enum Activated {
    /// The name moved to this version; these lower versions are retired.
    Current { retired: Vec<String> },
    /// A higher version of the name is active: this one is retired at once, never serving.
    Superseded,
}

/// Marks a version active. If it is the highest active version of its name, the name moves to
/// it and the lower active versions are retired; otherwise it is retired itself.
pub fn activate(
    tx: &Transaction<'_>,
    package_id: &str,
    manifest: &Manifest,
    now_ms: u64,
) -> Result<Activated, StoreError> {
    tx.execute(
        "UPDATE versions SET state = 'active' WHERE package_id = ?1",
        [package_id],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "version.activated",
        serde_json::json!({ "package_id": package_id, "name": manifest.name, "version": manifest.version }),
    )?;
    let current: Option<u32> = tx
        .query_row(
            "SELECT v.version FROM aliases a JOIN versions v ON v.package_id = a.package_id WHERE a.name = ?1",
            [&manifest.name],
            |r| r.get(0),
        )
        .optional()?;
    if current.is_some_and(|c| c >= manifest.version) {
        retire(tx, package_id, now_ms)?;
        return Ok(Activated::Superseded);
    }
    let retired: Vec<String> = tx
        .prepare(
            "SELECT package_id FROM versions
             WHERE name = ?1 AND state = 'active' AND retired_ms IS NULL AND package_id != ?2",
        )?
        .query_map(params![manifest.name, package_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for old in &retired {
        retire(tx, old, now_ms)?;
    }
    tx.execute(
        "INSERT INTO aliases (name, package_id) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET package_id = excluded.package_id",
        params![manifest.name, package_id],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "alias.moved",
        serde_json::json!({ "name": manifest.name, "package_id": package_id, "version": manifest.version }),
    )?;
    Ok(Activated::Current { retired })
}

/// Marks a version retired, for good (superseded, or retired by k operators).
pub fn retire(tx: &Transaction<'_>, package_id: &str, now_ms: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE versions SET retired_ms = ?2 WHERE package_id = ?1",
        params![package_id, now_ms],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "version.retired",
        serde_json::json!({ "package_id": package_id }),
    )
}

/// Records a proposed caller identity's key (its API key hash is stored beside it by
/// `quorumvm_policy::add_identity`, in the same transaction).
pub fn propose_identity(
    tx: &Transaction<'_>,
    name: &str,
    public_key: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO caller_keys (name, public_key, created_ms) VALUES (?1, ?2, ?3)",
        params![name, public_key, now_ms],
    )?;
    audit(
        tx,
        now_ms,
        "operator",
        "identity.proposed",
        serde_json::json!({ "identity": name, "public_key": public_key }),
    )
}

/// A caller identity as stored: its key, approvals, and approvals of its revocation.
pub struct StoredIdentity {
    pub name: String,
    pub public_key: String,
    pub approvals: Vec<(u32, String)>,
    pub revocations: Vec<(u32, String)>,
}

pub fn load_identities(conn: &rusqlite::Connection) -> Result<Vec<StoredIdentity>, StoreError> {
    let keys: Vec<(String, String)> = conn
        .prepare("SELECT name, public_key FROM caller_keys ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(keys.len());
    for (name, public_key) in keys {
        out.push(StoredIdentity {
            approvals: approvals_of(conn, Approved::Identity, &name)?,
            revocations: approvals_of(conn, Approved::Revocation, &name)?,
            name,
            public_key,
        });
    }
    Ok(out)
}

/// The key an unfreeze's approvals are stored under: the target's key, `@`, the time.
pub fn unfreeze_key(unfreeze: &Unfreeze) -> String {
    format!("{}@{}", unfreeze.target.key(), unfreeze.time_ms)
}

/// An unfreeze and its approvals, by custodian.
pub type CertifiedUnfreeze = (Unfreeze, Vec<(u32, String)>);

/// Every unfreeze that k operators approved, with the approvals: the latest per target.
pub fn load_unfreezes(
    conn: &rusqlite::Connection,
    threshold: usize,
) -> Result<Vec<CertifiedUnfreeze>, StoreError> {
    let keys: Vec<String> = conn
        .prepare("SELECT unfreeze FROM unfreeze_approvals GROUP BY unfreeze HAVING COUNT(*) >= ?1")?
        .query_map([threshold as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut latest: BTreeMap<Target, Unfreeze> = BTreeMap::new();
    for key in keys {
        let parsed = key.rsplit_once('@').and_then(|(target, time)| {
            Some(Unfreeze {
                target: Target::from_key(target)?,
                time_ms: time.parse().ok()?,
            })
        });
        let u = parsed.ok_or_else(|| StoreError::Corrupt {
            what: "unfreeze approvals",
            package_id: key.clone(),
            reason: "not a target's key, `@`, and a time".into(),
        })?;
        if latest
            .get(&u.target)
            .is_none_or(|held| u.time_ms > held.time_ms)
        {
            latest.insert(u.target.clone(), u);
        }
    }
    let mut out = Vec::with_capacity(latest.len());
    for u in latest.into_values() {
        let approvals = approvals_of(conn, Approved::Unfreeze, &unfreeze_key(&u))?;
        out.push((u, approvals));
    }
    Ok(out)
}

/// Marks `custodian` suspect with the failing quorums that prove it (`custodian.suspected`);
/// `false` if it was suspect already.
pub fn mark_suspect(
    tx: &Transaction<'_>,
    custodian: u32,
    evidence: &[Vec<u32>],
    now_ms: u64,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(evidence).expect("lists serialize");
    let added = tx.execute(
        "INSERT INTO suspects (custodian, since_ms, evidence) VALUES (?1, ?2, ?3)
         ON CONFLICT (custodian) DO NOTHING",
        params![custodian, now_ms, text],
    )?;
    if added > 0 {
        let details = serde_json::json!({ "custodian": custodian, "failing_quorums": evidence });
        audit(tx, now_ms, "coordinator", "custodian.suspected", details)?;
    }
    Ok(added > 0)
}

/// Clears `custodian` (`custodian.cleared`, with the operator's statement) if it was suspected
/// before `signed_ms`, when the statement was signed; `false` otherwise.
pub fn clear_suspect(
    tx: &Transaction<'_>,
    custodian: u32,
    signed_ms: u64,
    statement: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let removed = tx.execute(
        "DELETE FROM suspects WHERE custodian = ?1 AND since_ms < ?2",
        params![custodian, signed_ms],
    )?;
    if removed > 0 {
        let details = serde_json::json!({ "custodian": custodian, "statement": statement });
        audit(tx, now_ms, "operator", "custodian.cleared", details)?;
    }
    Ok(removed > 0)
}

pub fn load_suspects(conn: &rusqlite::Connection) -> Result<Vec<u32>, StoreError> {
    let mut stmt = conn.prepare("SELECT custodian FROM suspects ORDER BY custodian")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A refresh every custodian verified: what its commit order carries.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub session: String,
    pub from_epoch: u64,
    pub packages: Vec<String>,
    pub attestations: Attestations,
}

/// Records a refresh as started (`reshare.started`), before any custodian hears of it.
pub fn start_reshare(
    tx: &Transaction<'_>,
    session: &str,
    from_epoch: u64,
    packages: &[String],
    now_ms: u64,
) -> Result<(), StoreError> {
    let list = serde_json::to_string(packages).expect("ids serialize");
    tx.execute(
        "INSERT INTO reshares (session, from_epoch, packages, state, started_ms)
         VALUES (?1, ?2, ?3, 'started', ?4)",
        params![session, from_epoch as i64, list, now_ms as i64],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "reshare.started",
        serde_json::json!({"session": session, "from_epoch": from_epoch, "packages": packages}),
    )
}

/// Records that every custodian verified the refresh (`reshare.attested`): the cluster moves to
/// the next epoch, and every preprocessing batch stored so far is given up (the custodians
/// delete their kits when they commit).
pub fn attest_reshare(
    tx: &Transaction<'_>,
    certificate: &Certificate,
    now_ms: u64,
) -> Result<(), StoreError> {
    let attestations =
        serde_json::to_string(&certificate.attestations).expect("attestations serialize");
    tx.execute(
        "UPDATE reshares SET state = 'attested', attestations = ?2 WHERE session = ?1",
        params![certificate.session, attestations],
    )?;
    let discarded = tx.execute(
        "UPDATE kit_batches SET state = 'failed' WHERE state IN ('stored', 'ordered')",
        [],
    )?;
    // The publisher's ciphertexts are shares of the old epoch: every custodian serves these
    // versions already, so none needs them again, and kept they would outlive the refresh.
    for package in &certificate.packages {
        tx.execute("DELETE FROM sealed_shares WHERE package_id = ?1", [package])?;
    }
    audit(
        tx,
        now_ms,
        "coordinator",
        "reshare.attested",
        serde_json::json!({
            "session": certificate.session,
            "epoch": certificate.from_epoch + 1,
            "batches_discarded": discarded,
        }),
    )
}

/// Records that a refresh did not complete (`reshare.failed`): the cluster stays on its epoch.
pub fn fail_reshare(
    tx: &Transaction<'_>,
    session: &str,
    reason: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE reshares SET state = 'failed' WHERE session = ?1 AND state = 'started'",
        [session],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "reshare.failed",
        serde_json::json!({"session": session, "reason": reason}),
    )
}

/// Refreshes left `started` by a crash never reached their attestations: failed (every
/// custodian stays on, or is told to stay on, the epoch it had).
pub fn fail_unfinished_reshares(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "UPDATE reshares SET state = 'failed' WHERE state = 'started'",
        [],
    )?)
}

/// Every attested refresh, by starting epoch: the cluster's epoch is one past the last.
pub fn load_certificates(conn: &rusqlite::Connection) -> Result<Vec<Certificate>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT session, from_epoch, packages, attestations FROM reshares
         WHERE state = 'attested' ORDER BY from_epoch",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (session, from_epoch, packages, attestations) = row?;
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "reshare",
            package_id: session.clone(),
            reason,
        };
        out.push(Certificate {
            packages: serde_json::from_str(&packages).map_err(|e| corrupt(e.to_string()))?,
            attestations: serde_json::from_str(&attestations)
                .map_err(|e| corrupt(e.to_string()))?,
            session,
            from_epoch,
        });
    }
    Ok(out)
}

/// Records a caller's request id; `false` if it was admitted before (a replay).
pub fn record_request(
    tx: &Transaction<'_>,
    identity: &str,
    request_id: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(
            "INSERT INTO requests (identity, request_id, admitted_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![identity, request_id, now_ms])?
        == 1)
}

pub fn reserve_kits(tx: &Transaction<'_>, package_id: &str, up_to: u64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE versions SET kits_reserved = max(kits_reserved, ?2) WHERE package_id = ?1",
    )?
    .execute(params![package_id, up_to as i64])?;
    Ok(())
}

/// Records a batch as ordered and moves `next_batch` past it, before any custodian hears of it.
pub fn order_batch(
    tx: &Transaction<'_>,
    package_id: &str,
    first_kit: u64,
    count: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO kit_batches (package_id, first_kit, count, state) VALUES (?1, ?2, ?3, 'ordered')",
        params![package_id, first_kit as i64, count as i64],
    )?;
    tx.execute(
        "UPDATE versions SET next_batch = ?2 WHERE package_id = ?1",
        params![package_id, (first_kit + count) as i64],
    )?;
    Ok(())
}

pub fn finish_batch(
    tx: &Transaction<'_>,
    package_id: &str,
    first_kit: u64,
    stored: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE kit_batches SET state = ?3 WHERE package_id = ?1 AND first_kit = ?2",
        params![
            package_id,
            first_kit as i64,
            if stored { "stored" } else { "failed" }
        ],
    )?;
    Ok(())
}

pub fn package_bytes(
    conn: &rusqlite::Connection,
    package_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT package FROM versions WHERE package_id = ?1",
            [package_id],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn sealed_shares(
    conn: &rusqlite::Connection,
    package_id: &str,
    custodian: u32,
) -> Result<SealedShares, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT secret, sealed FROM sealed_shares WHERE package_id = ?1 AND custodian = ?2",
    )?;
    let sealed = stmt
        .query_map(params![package_id, custodian], |r| {
            Ok((r.get::<_, String>(0)?, hex::encode(r.get::<_, Vec<u8>>(1)?)))
        })?
        .collect::<Result<_, _>>()?;
    Ok(SealedShares { custodian, sealed })
}

/// Every version, for the registry at startup.
pub fn load_versions(conn: &rusqlite::Connection) -> Result<Vec<StoredVersion>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT package_id, publisher, manifest, state, kits_reserved, next_batch, deal,
                retired_ms IS NOT NULL
         FROM versions ORDER BY installed_ms",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ),
            (
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, bool>(7)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((package_id, publisher, manifest, state), (reserved, next_batch, deal, retired)) =
            row?;
        let manifest: Manifest =
            serde_json::from_str(&manifest).map_err(|e| StoreError::Corrupt {
                what: "manifest",
                package_id: package_id.clone(),
                reason: e.to_string(),
            })?;
        let deal: Signed = serde_json::from_str(&deal).map_err(|e| StoreError::Corrupt {
            what: "deal",
            package_id: package_id.clone(),
            reason: e.to_string(),
        })?;
        let state = match (state.as_str(), retired) {
            (_, true) => VersionState::Retired,
            ("active", false) => VersionState::Active,
            _ => VersionState::Pending,
        };
        let approvals = approvals_of(conn, Approved::Version, &package_id)?;
        let retirements = approvals_of(conn, Approved::Retirement, &package_id)?;
        let batches = conn
            .prepare_cached(
                "SELECT first_kit, count FROM kit_batches
                 WHERE package_id = ?1 AND state = 'stored' AND first_kit + count > ?2
                 ORDER BY first_kit",
            )?
            .query_map(params![package_id, reserved], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        out.push(StoredVersion {
            package_id,
            publisher,
            deal,
            manifest,
            state,
            approvals,
            retirements,
            kits_reserved: reserved as u64,
            next_batch: next_batch as u64,
            batches,
        });
    }
    Ok(out)
}

pub fn aliases(conn: &rusqlite::Connection) -> Result<Vec<(String, String)>, StoreError> {
    Ok(conn
        .prepare("SELECT name, package_id FROM aliases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Batches left `ordered` by a crash are failed: some custodians may hold them, but the
/// coordinator never hands their kits out.
pub fn fail_unfinished_batches(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "UPDATE kit_batches SET state = 'failed' WHERE state = 'ordered'",
        [],
    )?)
}
