//! The coordinator's tables and the queries on them. Everything here runs inside a writer job
//! (one savepoint of a group commit) or on the read connection at startup.

use quorumvm_core::circuit::Manifest;
use quorumvm_ledger::rusqlite::{self, OptionalExtension, Transaction, params};
use quorumvm_ledger::{NewEntry, Schema, audit};
use quorumvm_wire::api::{SealedShares, VersionState};

use crate::error::ApiError;

pub const SCHEMA: Schema = Schema {
    component: "coordinator",
    migrations: &["
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
    "],
};

/// A version as stored.
pub struct StoredVersion {
    pub package_id: String,
    pub publisher: String,
    pub manifest: Manifest,
    pub state: VersionState,
    pub approvals: Vec<(u32, String)>,
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
) -> Result<(), ApiError> {
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
    pub now_ms: u64,
}

pub fn install(tx: &Transaction<'_>, v: &NewVersion<'_>) -> Result<Installed, ApiError> {
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
            return Err(ApiError::conflict(
                "version_conflict",
                format!(
                    "{} version {} is already installed as package {id}; a changed program needs a new version number",
                    v.manifest.name, v.manifest.version
                ),
            ));
        }
        None => {}
    }
    tx.execute(
        "INSERT INTO versions (package_id, name, version, publisher, package, manifest, state, installed_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        params![
            v.package_id,
            v.manifest.name,
            v.manifest.version,
            v.publisher,
            v.package,
            serde_json::to_string(v.manifest).expect("manifests serialize"),
            v.now_ms
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

/// Records one valid approval; returns how many distinct custodians have approved.
pub fn approve(
    tx: &Transaction<'_>,
    package_id: &str,
    custodian: u32,
    signature: &str,
    now_ms: u64,
) -> Result<usize, ApiError> {
    let inserted = tx.execute(
        "INSERT INTO approvals (package_id, custodian, signature, approved_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![package_id, custodian, signature, now_ms],
    )?;
    if inserted == 0 {
        return Err(ApiError::conflict(
            "duplicate_approval",
            format!("custodian {custodian} has already approved package {package_id}"),
        ));
    }
    audit(
        tx,
        now_ms,
        &format!("custodian-{custodian}"),
        "approval.accepted",
        serde_json::json!({ "package_id": package_id, "custodian": custodian }),
    )?;
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM approvals WHERE package_id = ?1",
        [package_id],
        |r| r.get(0),
    )?;
    Ok(count as usize)
}

/// Marks a version active and moves its name to it if it is the highest active version.
/// Returns whether the name moved.
pub fn activate(
    tx: &Transaction<'_>,
    package_id: &str,
    manifest: &Manifest,
    now_ms: u64,
) -> Result<bool, ApiError> {
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
        return Ok(false);
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
    Ok(true)
}

pub fn reserve_kits(tx: &Transaction<'_>, package_id: &str, up_to: u64) -> Result<(), ApiError> {
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
) -> Result<(), ApiError> {
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
) -> Result<(), ApiError> {
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
) -> Result<Option<Vec<u8>>, ApiError> {
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
) -> Result<SealedShares, ApiError> {
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
pub fn load_versions(conn: &rusqlite::Connection) -> Result<Vec<StoredVersion>, ApiError> {
    let mut stmt = conn.prepare(
        "SELECT package_id, publisher, manifest, state, kits_reserved, next_batch
         FROM versions ORDER BY installed_ms",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (package_id, publisher, manifest, state, reserved, next_batch) = row?;
        let manifest: Manifest = serde_json::from_str(&manifest)
            .map_err(|e| ApiError::internal(format!("stored manifest of {package_id}: {e}")))?;
        let state = if state == "active" {
            VersionState::Active
        } else {
            VersionState::Pending
        };
        let approvals = conn
            .prepare_cached(
                "SELECT custodian, signature FROM approvals WHERE package_id = ?1 ORDER BY custodian",
            )?
            .query_map([&package_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
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
            manifest,
            state,
            approvals,
            kits_reserved: reserved as u64,
            next_batch: next_batch as u64,
            batches,
        });
    }
    Ok(out)
}

pub fn aliases(conn: &rusqlite::Connection) -> Result<Vec<(String, String)>, ApiError> {
    Ok(conn
        .prepare("SELECT name, package_id FROM aliases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Batches left `ordered` by a crash are failed: some custodians may hold them, but the
/// coordinator never hands their kits out.
pub fn fail_unfinished_batches(tx: &Transaction<'_>) -> Result<usize, ApiError> {
    Ok(tx.execute(
        "UPDATE kit_batches SET state = 'failed' WHERE state = 'ordered'",
        [],
    )?)
}
