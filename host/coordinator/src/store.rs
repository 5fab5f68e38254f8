//! The coordinator's tables and the queries on them. Everything here runs inside a writer job
//! (one savepoint of a group commit) or on the read connection at startup.

use quorumvm_core::circuit::Manifest;
use quorumvm_ledger::sql::Row;
use quorumvm_ledger::{LedgerError, NewEntry, Schema, Sql, audit, sql_params};
use std::collections::BTreeMap;

use quorumvm_wire::api::{SealedShares, VersionState};
use quorumvm_wire::freeze::{Target, Unfreeze};
use quorumvm_wire::order::{Attestations, Order};
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
    #[error(
        "a refresh from epoch {from_epoch} was started already (by another replica of this coordinator, or it is done)"
    )]
    ReshareUnderWay { from_epoch: u64 },
    #[error("the ledger: {0}")]
    Ledger(#[from] quorumvm_ledger::LedgerError),
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
        "
        -- Replicas sharing a database (PostgreSQL): who ordered a batch or started a refresh
        -- ('' for a coordinator of its own). A replica hands out only its own batches' kits, and
        -- at its start gives up only what it had left unfinished.
        ALTER TABLE kit_batches ADD COLUMN owner TEXT NOT NULL DEFAULT '';
        ALTER TABLE reshares ADD COLUMN owner TEXT NOT NULL DEFAULT '';
        UPDATE reshares SET state = 'failed' WHERE state = 'started';
        -- One refresh per epoch, whichever replica starts it.
        CREATE UNIQUE INDEX one_reshare_per_epoch ON reshares (from_epoch)
            WHERE state != 'failed';
    ",
        ROTATIONS,
    ],
};

/// Rotations (see `rotation`), in both databases: a rotation is a refresh that also moves the
/// membership, so it is a row of `reshares` whose `rotation` (JSON: the membership and the
/// operators' approvals) is set. `membership_approvals`: one row per operator's approval of a
/// membership statement (`statement`: its digest, hex). Written for both engines, so the new
/// table is not `STRICT` (SQLite's strict tables know no `BIGINT`).
const ROTATIONS: &str = "
        ALTER TABLE reshares ADD COLUMN rotation TEXT NOT NULL DEFAULT '';
        CREATE TABLE membership_approvals (
            statement TEXT NOT NULL,
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (statement, custodian)
        );
    ";

/// [`SCHEMA`] for PostgreSQL, where a coordinator's replicas share it: the same tables as
/// SQLite's migrations make, in one step.
pub const POSTGRES_SCHEMA: Schema = Schema {
    component: "coordinator",
    migrations: &[
        "
        CREATE TABLE versions (
            package_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            publisher TEXT NOT NULL,
            package BYTEA NOT NULL,
            manifest TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
            installed_ms BIGINT NOT NULL,
            kits_reserved BIGINT NOT NULL DEFAULT 0,
            next_batch BIGINT NOT NULL DEFAULT 0,
            deal TEXT NOT NULL DEFAULT '',
            retired_ms BIGINT,
            UNIQUE (name, version)
        );
        CREATE TABLE sealed_shares (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian BIGINT NOT NULL,
            secret TEXT NOT NULL,
            sealed BYTEA NOT NULL,
            PRIMARY KEY (package_id, custodian, secret)
        );
        CREATE TABLE approvals (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (package_id, custodian)
        );
        CREATE TABLE aliases (
            name TEXT PRIMARY KEY,
            package_id TEXT NOT NULL REFERENCES versions (package_id)
        );
        CREATE TABLE kit_batches (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            first_kit BIGINT NOT NULL,
            count BIGINT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ordered', 'stored', 'failed')),
            owner TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (package_id, first_kit)
        );
        CREATE TABLE caller_keys (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        );
        CREATE TABLE identity_approvals (
            name TEXT NOT NULL REFERENCES caller_keys (name),
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (name, custodian)
        );
        CREATE TABLE requests (
            identity TEXT NOT NULL,
            request_id TEXT NOT NULL,
            admitted_ms BIGINT NOT NULL,
            PRIMARY KEY (identity, request_id)
        );
        CREATE TABLE revocation_approvals (
            name TEXT NOT NULL REFERENCES caller_keys (name),
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (name, custodian)
        );
        CREATE TABLE retirement_approvals (
            package_id TEXT NOT NULL REFERENCES versions (package_id),
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (package_id, custodian)
        );
        CREATE TABLE suspects (
            custodian BIGINT PRIMARY KEY,
            since_ms BIGINT NOT NULL,
            evidence TEXT NOT NULL
        );
        CREATE TABLE reshares (
            session TEXT PRIMARY KEY,
            from_epoch BIGINT NOT NULL,
            packages TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('started', 'attested', 'failed')),
            attestations TEXT,
            started_ms BIGINT NOT NULL,
            owner TEXT NOT NULL DEFAULT ''
        );
        CREATE UNIQUE INDEX one_reshare_per_epoch ON reshares (from_epoch)
            WHERE state != 'failed';
        CREATE TABLE unfreeze_approvals (
            unfreeze TEXT NOT NULL,
            custodian BIGINT NOT NULL,
            signature TEXT NOT NULL,
            approved_ms BIGINT NOT NULL,
            PRIMARY KEY (unfreeze, custodian)
        );
    ",
        ROTATIONS,
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
    /// Stored batches at or above `kits_reserved`, in order.
    pub batches: Vec<(u64, u64)>,
}

pub fn audit(
    tx: &dyn Sql,
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

pub fn install(tx: &dyn Sql, v: &NewVersion<'_>) -> Result<Installed, StoreError> {
    let exists = tx
        .query_opt(
            "SELECT package_id FROM versions WHERE package_id = ?1 OR (name = ?2 AND version = ?3)",
            sql_params![v.package_id, &v.manifest.name, v.manifest.version],
        )?
        .map(|r| r.text(0))
        .transpose()?;
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
        sql_params![
            v.package_id,
            &v.manifest.name,
            v.manifest.version,
            v.publisher,
            v.package,
            &serde_json::to_string(v.manifest).expect("manifests serialize"),
            v.now_ms,
            &serde_json::to_string(v.deal).expect("deals serialize"),
        ],
    )?;
    for s in v.shares {
        for (secret, sealed) in &s.sealed {
            let bytes = hex::decode(sealed).expect("checked before the job");
            tx.execute(
                "INSERT INTO sealed_shares (package_id, custodian, secret, sealed)
                 VALUES (?1, ?2, ?3, ?4)",
                sql_params![v.package_id, s.custodian, secret, &bytes],
            )?;
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
    Membership,
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
            Approved::Membership => (
                "membership_approvals",
                "statement",
                "membership.approved",
                "statement",
                "the membership",
            ),
        }
    }
}

/// Records one valid approval of `subject` (a package id or an identity name) with its audit
/// entry; returns how many distinct custodians have approved it so far.
pub fn approve(
    tx: &dyn Sql,
    kind: Approved,
    subject: &str,
    custodian: u32,
    signature: &str,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let (table, column, entry, key, noun) = kind.names();
    let inserted = tx.execute(
        &format!(
            "INSERT INTO {table} ({column}, custodian, signature, approved_ms)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
        ),
        sql_params![subject, custodian, signature, now_ms],
    )?;
    if inserted == 0 {
        return Err(StoreError::DuplicateApproval {
            custodian,
            noun,
            subject: subject.to_string(),
        });
    }
    // The audit entry first: appending it takes the chain's tip, which replicas sharing a
    // database take in turns to the end of their transactions, so the count below sees every
    // approval committed before, and of two replicas recording the k-th approvals at once, the
    // second counts both.
    audit(
        tx,
        now_ms,
        &format!("custodian-{custodian}"),
        entry,
        serde_json::json!({ key: subject, "custodian": custodian }),
    )?;
    let count = tx.query(
        &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"),
        sql_params![subject],
    )?;
    Ok(count[0].uint(0)? as usize)
}

/// The approvals of `subject` of one kind, by custodian.
pub fn approvals_of(
    conn: &dyn Sql,
    kind: Approved,
    subject: &str,
) -> Result<Vec<(u32, String)>, StoreError> {
    let (table, column, ..) = kind.names();
    conn.query(
        &format!("SELECT custodian, signature FROM {table} WHERE {column} = ?1 ORDER BY custodian"),
        sql_params![subject],
    )?
    .iter()
    .map(|r| Ok((custodian(r, 0)?, r.text(1)?)))
    .collect()
}

/// What an activation did to the name's versions.
pub enum Activated {
    /// The name moved to this version; these lower versions are retired.
    Current { retired: Vec<String> },
    /// A higher version of the name is active: this one is retired at once, never serving.
    Superseded,
}

/// Marks a pending version active. If it is the highest active version of its name, the name
/// moves to it and the lower active versions are retired; otherwise it is retired itself.
/// `None` if it was not pending (another replica activated it).
pub fn activate(
    tx: &dyn Sql,
    package_id: &str,
    manifest: &Manifest,
    now_ms: u64,
) -> Result<Option<Activated>, StoreError> {
    let pending = tx.execute(
        "UPDATE versions SET state = 'active' WHERE package_id = ?1 AND state = 'pending'",
        sql_params![package_id],
    )?;
    if pending == 0 {
        return Ok(None);
    }
    audit(
        tx,
        now_ms,
        "coordinator",
        "version.activated",
        serde_json::json!({ "package_id": package_id, "name": manifest.name, "version": manifest.version }),
    )?;
    let current = tx
        .query_opt(
            "SELECT v.version FROM aliases a JOIN versions v ON v.package_id = a.package_id WHERE a.name = ?1",
            sql_params![&manifest.name],
        )?
        .map(|r| r.uint(0))
        .transpose()?;
    if current.is_some_and(|c| c >= u64::from(manifest.version)) {
        retire(tx, package_id, now_ms)?;
        return Ok(Some(Activated::Superseded));
    }
    let retired = tx
        .query(
            "SELECT package_id FROM versions
             WHERE name = ?1 AND state = 'active' AND retired_ms IS NULL AND package_id != ?2",
            sql_params![&manifest.name, package_id],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<_>, _>>()?;
    for old in &retired {
        retire(tx, old, now_ms)?;
    }
    tx.execute(
        "INSERT INTO aliases (name, package_id) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET package_id = excluded.package_id",
        sql_params![&manifest.name, package_id],
    )?;
    audit(
        tx,
        now_ms,
        "coordinator",
        "alias.moved",
        serde_json::json!({ "name": manifest.name, "package_id": package_id, "version": manifest.version }),
    )?;
    Ok(Some(Activated::Current { retired }))
}

/// Marks a version retired, for good (superseded, or retired by k operators).
pub fn retire(tx: &dyn Sql, package_id: &str, now_ms: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE versions SET retired_ms = ?2 WHERE package_id = ?1",
        sql_params![package_id, now_ms],
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
    tx: &dyn Sql,
    name: &str,
    public_key: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO caller_keys (name, public_key, created_ms) VALUES (?1, ?2, ?3)",
        sql_params![name, public_key, now_ms],
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

pub fn load_identities(conn: &dyn Sql) -> Result<Vec<StoredIdentity>, StoreError> {
    let keys = conn
        .query(
            "SELECT name, public_key FROM caller_keys ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
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
    conn: &dyn Sql,
    threshold: usize,
) -> Result<Vec<CertifiedUnfreeze>, StoreError> {
    let keys = conn
        .query(
            "SELECT unfreeze FROM unfreeze_approvals GROUP BY unfreeze HAVING COUNT(*) >= ?1",
            sql_params![threshold as u64],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<_>, _>>()?;
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
    tx: &dyn Sql,
    custodian: u32,
    evidence: &[Vec<u32>],
    now_ms: u64,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(evidence).expect("lists serialize");
    let added = tx.execute(
        "INSERT INTO suspects (custodian, since_ms, evidence) VALUES (?1, ?2, ?3)
         ON CONFLICT (custodian) DO NOTHING",
        sql_params![custodian, now_ms, &text],
    )?;
    if added > 0 {
        let details = serde_json::json!({ "custodian": custodian, "failing_quorums": evidence });
        audit(tx, now_ms, "coordinator", "custodian.suspected", details)?;
    }
    Ok(added > 0)
}

/// Moves the suspects to their indices after a rotation (`kept`: each kept machine's new
/// index and its index before); a machine that left is suspect no more, being in no quorum.
pub fn renumber_suspects(tx: &dyn Sql, kept: &BTreeMap<u32, u32>) -> Result<(), StoreError> {
    let rows = tx.query("SELECT custodian, since_ms, evidence FROM suspects", &[])?;
    tx.execute("DELETE FROM suspects", &[])?;
    for r in rows {
        let old = custodian(&r, 0)?;
        if let Some((&new, _)) = kept.iter().find(|(_, o)| **o == old) {
            tx.execute(
                "INSERT INTO suspects (custodian, since_ms, evidence) VALUES (?1, ?2, ?3)",
                sql_params![new, r.uint(1)?, &r.text(2)?],
            )?;
        }
    }
    Ok(())
}

/// Clears `custodian` (`custodian.cleared`, with the operator's statement) if it was suspected
/// before `signed_ms`, when the statement was signed; `false` otherwise.
pub fn clear_suspect(
    tx: &dyn Sql,
    custodian: u32,
    signed_ms: u64,
    statement: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let removed = tx.execute(
        "DELETE FROM suspects WHERE custodian = ?1 AND since_ms < ?2",
        sql_params![custodian, signed_ms],
    )?;
    if removed > 0 {
        let details = serde_json::json!({ "custodian": custodian, "statement": statement });
        audit(tx, now_ms, "operator", "custodian.cleared", details)?;
    }
    Ok(removed > 0)
}

pub fn load_suspects(conn: &dyn Sql) -> Result<Vec<u32>, StoreError> {
    conn.query("SELECT custodian FROM suspects ORDER BY custodian", &[])?
        .iter()
        .map(|r| custodian(r, 0))
        .collect()
}

/// A refresh or rotation every custodian verified: what its commit order carries.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub session: String,
    pub from_epoch: u64,
    pub packages: Vec<String>,
    pub attestations: Attestations,
    /// The membership a rotation moved to; `None` for a refresh (stored as '').
    pub rotation: Option<Rotation>,
}

/// What k operators approved of a rotation, as every custodian is sent it.
pub use quorumvm_wire::membership::Approved as Rotation;

impl Certificate {
    /// The order that moves a custodian that verified this refresh or rotation.
    pub fn commit(&self) -> Order {
        let (session, packages) = (self.session.clone(), self.packages.clone());
        let attestations = self.attestations.clone();
        match &self.rotation {
            None => Order::CommitReshare {
                session,
                epoch: self.from_epoch,
                packages,
                attestations,
            },
            Some(r) => Order::CommitRedeal {
                session,
                membership: r.membership.clone(),
                approvals: r.approvals.clone(),
                packages,
                attestations,
            },
        }
    }
}

/// Records a refresh (or, with `rotation`, a rotation) as started (`reshare.started`), before
/// any custodian hears of it.
///
/// One refresh per epoch: a replica sharing the database that started one from the same
/// epoch, unfinished or attested, makes this one [`StoreError::ReshareUnderWay`].
pub fn start_reshare(
    tx: &dyn Sql,
    session: &str,
    from_epoch: u64,
    packages: &[String],
    rotation: Option<&Rotation>,
    (owner, now_ms): (&str, u64),
) -> Result<(), StoreError> {
    let list = serde_json::to_string(packages).expect("ids serialize");
    let rotation = rotation.map_or_else(String::new, |r| {
        serde_json::to_string(r).expect("rotations serialize")
    });
    let started = tx.execute(
        "INSERT INTO reshares (session, from_epoch, packages, state, started_ms, owner, rotation)
         VALUES (?1, ?2, ?3, 'started', ?4, ?5, ?6)
         ON CONFLICT (from_epoch) WHERE state != 'failed' DO NOTHING",
        sql_params![session, from_epoch, &list, now_ms, owner, &rotation],
    )?;
    if started == 0 {
        return Err(StoreError::ReshareUnderWay { from_epoch });
    }
    audit(
        tx,
        now_ms,
        "coordinator",
        "reshare.started",
        serde_json::json!({
            "session": session,
            "from_epoch": from_epoch,
            "packages": packages,
            "rotation": !rotation.is_empty(),
        }),
    )
}

/// Records that every custodian verified the refresh (`reshare.attested`): the cluster moves to
/// the next epoch, and every preprocessing batch stored so far is given up (the custodians
/// delete their kits when they commit).
pub fn attest_reshare(
    tx: &dyn Sql,
    certificate: &Certificate,
    now_ms: u64,
) -> Result<(), StoreError> {
    let attestations =
        serde_json::to_string(&certificate.attestations).expect("attestations serialize");
    tx.execute(
        "UPDATE reshares SET state = 'attested', attestations = ?2 WHERE session = ?1",
        sql_params![&certificate.session, &attestations],
    )?;
    let discarded = tx.execute(
        "UPDATE kit_batches SET state = 'failed' WHERE state IN ('stored', 'ordered')",
        &[],
    )?;
    // The publisher's ciphertexts are shares of the old epoch: every custodian serves these
    // versions already, so none needs them again, and kept they would outlive the refresh.
    for package in &certificate.packages {
        tx.execute(
            "DELETE FROM sealed_shares WHERE package_id = ?1",
            sql_params![package],
        )?;
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
    tx: &dyn Sql,
    session: &str,
    reason: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE reshares SET state = 'failed' WHERE session = ?1 AND state = 'started'",
        sql_params![session],
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
pub fn fail_unfinished_reshares(tx: &dyn Sql, owner: &str) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "UPDATE reshares SET state = 'failed' WHERE state = 'started' AND owner = ?1",
        sql_params![owner],
    )? as usize)
}

/// Every attested refresh, by starting epoch: the cluster's epoch is one past the last.
pub fn load_certificates(conn: &dyn Sql) -> Result<Vec<Certificate>, StoreError> {
    let rows = conn.query(
        "SELECT session, from_epoch, packages, attestations, rotation FROM reshares
         WHERE state = 'attested' ORDER BY from_epoch",
        &[],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let (session, from_epoch, packages, attestations) =
            (r.text(0)?, r.uint(1)?, r.text(2)?, r.text(3)?);
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "reshare",
            package_id: session.clone(),
            reason,
        };
        out.push(Certificate {
            packages: serde_json::from_str(&packages).map_err(|e| corrupt(e.to_string()))?,
            attestations: serde_json::from_str(&attestations)
                .map_err(|e| corrupt(e.to_string()))?,
            rotation: match r.text(4)?.as_str() {
                "" => None,
                text => Some(serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?),
            },
            session,
            from_epoch,
        });
    }
    Ok(out)
}

/// Records a caller's request id; `false` if it was admitted before (a replay).
pub fn record_request(
    tx: &dyn Sql,
    identity: &str,
    request_id: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "INSERT INTO requests (identity, request_id, admitted_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        sql_params![identity, request_id, now_ms],
    )? == 1)
}

pub fn reserve_kits(tx: &dyn Sql, package_id: &str, up_to: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE versions SET kits_reserved = ?2 WHERE package_id = ?1 AND kits_reserved < ?2",
        sql_params![package_id, up_to],
    )?;
    Ok(())
}

/// Allocates the kit ids of a batch of `count` and records it as ordered by `owner` (this
/// replica), before any custodian hears of it; returns its first kit id. Ids are allocated in
/// the database, so replicas sharing it never order the same ids, and at or above the
/// reservation watermark: kits below it are never handed out, so generating them would only fill
/// the custodians' disks (found by the simulation, whose small batches made a restarted
/// coordinator generate hundreds of batches before it had one kit to hand out).
pub fn order_batch(
    tx: &dyn Sql,
    package_id: &str,
    count: u64,
    owner: &str,
) -> Result<u64, StoreError> {
    let end = tx
        .query(
            "UPDATE versions SET next_batch =
                 CASE WHEN next_batch > kits_reserved THEN next_batch ELSE kits_reserved END + ?2
             WHERE package_id = ?1 RETURNING next_batch",
            sql_params![package_id, count],
        )?
        .first()
        .ok_or_else(|| StoreError::Corrupt {
            what: "version",
            package_id: package_id.to_string(),
            reason: "not stored".into(),
        })?
        .uint(0)?;
    let first_kit = end - count;
    tx.execute(
        "INSERT INTO kit_batches (package_id, first_kit, count, state, owner)
         VALUES (?1, ?2, ?3, 'ordered', ?4)",
        sql_params![package_id, first_kit, count, owner],
    )?;
    Ok(first_kit)
}

pub fn finish_batch(
    tx: &dyn Sql,
    package_id: &str,
    first_kit: u64,
    stored: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE kit_batches SET state = ?3 WHERE package_id = ?1 AND first_kit = ?2",
        sql_params![
            package_id,
            first_kit,
            if stored { "stored" } else { "failed" }
        ],
    )?;
    Ok(())
}

pub fn package_bytes(conn: &dyn Sql, package_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT package FROM versions WHERE package_id = ?1",
            sql_params![package_id],
        )?
        .map(|r| r.bytes(0))
        .transpose()?)
}

pub fn sealed_shares(
    conn: &dyn Sql,
    package_id: &str,
    custodian: u32,
) -> Result<SealedShares, StoreError> {
    let sealed = conn
        .query(
            "SELECT secret, sealed FROM sealed_shares WHERE package_id = ?1 AND custodian = ?2",
            sql_params![package_id, custodian],
        )?
        .iter()
        .map(|r| Ok((r.text(0)?, hex::encode(r.bytes(1)?))))
        .collect::<Result<_, StoreError>>()?;
    Ok(SealedShares { custodian, sealed })
}

/// Every version, for the registry at startup, with the stored batches `owner` (this replica)
/// ordered.
pub fn load_versions(conn: &dyn Sql, owner: &str) -> Result<Vec<StoredVersion>, StoreError> {
    let rows = conn.query(
        "SELECT package_id, publisher, manifest, state, kits_reserved, deal,
                retired_ms IS NOT NULL
         FROM versions ORDER BY installed_ms",
        &[],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let (package_id, publisher, manifest, state) =
            (r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?);
        let (reserved, deal, retired) = (r.uint(4)?, r.text(5)?, r.int(6)? != 0);
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
            .query(
                "SELECT first_kit, count FROM kit_batches
                 WHERE package_id = ?1 AND state = 'stored' AND first_kit + count > ?2
                   AND owner = ?3
                 ORDER BY first_kit",
                sql_params![&package_id, reserved, owner],
            )?
            .iter()
            .map(|r| Ok((r.uint(0)?, r.uint(1)?)))
            .collect::<Result<_, StoreError>>()?;
        out.push(StoredVersion {
            package_id,
            publisher,
            deal,
            manifest,
            state,
            approvals,
            retirements,
            kits_reserved: reserved,
            batches,
        });
    }
    Ok(out)
}

pub fn aliases(conn: &dyn Sql) -> Result<Vec<(String, String)>, StoreError> {
    conn.query("SELECT name, package_id FROM aliases", &[])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect()
}

/// Batches left `ordered` by a crash are failed: some custodians may hold them, but the
/// coordinator never hands their kits out.
pub fn fail_unfinished_batches(tx: &dyn Sql, owner: &str) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "UPDATE kit_batches SET state = 'failed' WHERE state = 'ordered' AND owner = ?1",
        sql_params![owner],
    )? as usize)
}

/// What a coordinator holds in memory, as stored: what it loads at start, and what a replica
/// loads again when another replica changed it.
pub struct Shared {
    /// With the stored batches `owner` ordered.
    pub versions: Vec<StoredVersion>,
    pub aliases: Vec<(String, String)>,
    pub identities: Vec<StoredIdentity>,
    pub suspects: Vec<u32>,
    pub certificates: Vec<Certificate>,
    pub freezes: quorumvm_server::freeze::Freezes,
    /// The unfreezes k operators approved (k of the last rotation's membership, or
    /// `configured`'s).
    pub unfreezes: Vec<CertifiedUnfreeze>,
}

pub fn load_shared(conn: &dyn Sql, owner: &str, configured: usize) -> Result<Shared, StoreError> {
    let certificates = load_certificates(conn)?;
    let threshold = certificates
        .iter()
        .rev()
        .find_map(|c| c.rotation.as_ref())
        .map_or(configured, |r| r.membership.threshold);
    Ok(Shared {
        versions: load_versions(conn, owner)?,
        aliases: aliases(conn)?,
        identities: load_identities(conn)?,
        suspects: load_suspects(conn)?,
        certificates,
        freezes: quorumvm_server::freeze::Freezes::load(conn)?,
        unfreezes: load_unfreezes(conn, threshold)?,
    })
}

/// A custodian's index as stored.
fn custodian(row: &Row, i: usize) -> Result<u32, StoreError> {
    u32::try_from(row.uint(i)?).map_err(|_| {
        LedgerError::Column {
            index: i,
            reason: "not a custodian's index".into(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use quorumvm_ledger::postgres::testing::Server;
    use quorumvm_ledger::{Ledger, Postgres};

    use super::*;

    fn postgres(url: &str) -> Postgres {
        let mut db = Postgres::connect(url).unwrap();
        db.apply_schema(&quorumvm_policy::POSTGRES_SCHEMA).unwrap();
        db.apply_schema(&quorumvm_server::freeze::POSTGRES_SCHEMA)
            .unwrap();
        db.apply_schema(&POSTGRES_SCHEMA).unwrap();
        db
    }

    /// A coordinator's SQLite ledger, with every schema it applies, in a fresh directory.
    fn sqlite() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("c.db")).unwrap();
        ledger.apply_schema(&quorumvm_policy::SCHEMA).unwrap();
        ledger
            .apply_schema(&quorumvm_server::freeze::SCHEMA)
            .unwrap();
        ledger.apply_schema(&SCHEMA).unwrap();
        (dir, ledger)
    }

    /// Two replicas record the two approvals an identity needs (k = 2) at the same moment, each
    /// in a transaction that stays open a while: the approvals are counted in turns, so one of
    /// them counts 2 and the identity is approved. (Counted side by side, each would see only
    /// its own approval and count 1, and nobody would ever act on the second.)
    #[test]
    fn approvals_recorded_at_once_by_two_replicas_reach_k() {
        let server = Server::start();
        let mut db = postgres(&server.url());
        db.transaction(|tx| propose_identity(tx, "alice", "key", 1))
            .unwrap();
        let start = Arc::new(Barrier::new(2));
        let replicas: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|custodian| {
                let (url, start) = (server.url(), Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut db = postgres(&url);
                    start.wait();
                    db.transaction(|tx| {
                        let count = approve(tx, Approved::Identity, "alice", custodian, "sig", 2)?;
                        std::thread::sleep(Duration::from_millis(300));
                        Ok::<_, StoreError>(count)
                    })
                    .unwrap()
                })
            })
            .collect();
        let mut counts: Vec<usize> = replicas.into_iter().map(|r| r.join().unwrap()).collect();
        counts.sort_unstable();
        assert_eq!(counts, [1, 2]);
    }

    /// Batches' kit ids come from the database, after every id allocated before and at or
    /// above the reservation watermark: after a restart no batch generates kits that are never
    /// handed out.
    #[test]
    fn batches_are_allocated_above_every_id_before_and_the_watermark() {
        let (_dir, mut ledger) = sqlite();
        ledger
            .connection()
            .execute_batch(
                "INSERT INTO versions (package_id, name, version, publisher, package, manifest,
                                       state, installed_ms)
                 VALUES ('p', 'n', 1, 'k', x'00', '{}', 'active', 0)",
            )
            .unwrap();
        let order = |ledger: &mut Ledger, count, owner| {
            ledger
                .transaction(|tx| order_batch(tx, "p", count, owner))
                .unwrap()
        };
        assert_eq!(order(&mut ledger, 24, "a"), 0);
        assert_eq!(order(&mut ledger, 10, "b"), 24);
        ledger
            .transaction(|tx| reserve_kits(tx, "p", 4096))
            .unwrap();
        let above = order(&mut ledger, 5, "a");
        assert_eq!(above, 4096, "nothing below the watermark");
        assert_eq!(order(&mut ledger, 5, "a"), 4101);
        let owners = ledger
            .connection()
            .query("SELECT owner FROM kit_batches ORDER BY first_kit", &[])
            .unwrap();
        let owners: Vec<String> = owners.iter().map(|r| r.text(0).unwrap()).collect();
        assert_eq!(owners, ["a", "b", "a", "a"]);
    }

    /// A rotation that removes custodian 2 and moves 3 to index 2: the suspect that was 3 is
    /// suspect at 2, and the one that left is suspect nowhere.
    #[test]
    fn suspects_follow_their_machines_through_a_renumbering() {
        let (_dir, mut ledger) = sqlite();
        ledger
            .transaction(|tx| {
                mark_suspect(tx, 2, &[vec![1, 2]], 0)?;
                mark_suspect(tx, 3, &[vec![1, 3]], 0)?;
                renumber_suspects(tx, &BTreeMap::from([(1, 1), (2, 3)]))
            })
            .unwrap();
        assert_eq!(load_suspects(ledger.connection()).unwrap(), [2]);
    }
}
