//! API keys: `quorumvm identity add NAME` creates one, callers present it as
//! `Authorization: Bearer qvm_…`, and the server keeps only its SHA-256.
//!
//! A fast hash is right here, unlike for passwords: a key is 32 random bytes, so even with the
//! stored hashes in hand nobody can search the 2^256 keys, however fast each guess is. Slow
//! password hashes (argon2, scrypt) only help keys a person chose; here they would only slow
//! down every request.

use quorumvm_ledger::{Ledger, NewEntry, Sql, audit, sql_params};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::PolicyError;

/// Makes a leaked key recognizable to secret scanners and to people.
const PREFIX: &str = "qvm_";
const NAME_MAX: usize = 64;

/// An API key, as shown to its owner exactly once. Wiped from memory when dropped.
pub struct IdentityKey(Zeroizing<String>);

/// The SHA-256 of an API key: all the server stores. Compared in constant time only.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl IdentityKey {
    /// A fresh key (`qvm_` and 32 random bytes in hex) and the hash to store for it.
    pub fn generate() -> (IdentityKey, KeyHash) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut bytes[..]);
        let mut hex_text = Zeroizing::new([0u8; 64]);
        hex::encode_to_slice(&bytes[..], &mut hex_text[..]).expect("64 bytes hold 32 in hex");
        let mut token = Zeroizing::new(String::with_capacity(PREFIX.len() + 64));
        token.push_str(PREFIX);
        token.push_str(std::str::from_utf8(&hex_text[..]).expect("hex is ASCII"));
        let hash = KeyHash::of(&token);
        (IdentityKey(token), hash)
    }

    /// The bearer token to hand to the identity's owner.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

impl KeyHash {
    pub fn of(token: &str) -> KeyHash {
        KeyHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }
}

impl ConstantTimeEq for KeyHash {
    fn ct_eq(&self, other: &KeyHash) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

/// Names the servers' own audit entries use as their actor: no caller may take one, so an
/// entry's actor always says whether a caller or a server acted.
const RESERVED: [&str; 4] = ["coordinator", "operator", "publisher", "custodian"];

/// Whether `name` may name a caller identity: 1 to 64 of `[A-Za-z0-9._-]`, and none of the
/// servers' actor names (`coordinator`, `operator`, `publisher`, `custodian`, `custodian-N`).
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    let lower = name.to_ascii_lowercase();
    let reserved = RESERVED
        .iter()
        .any(|r| lower == *r || (lower.starts_with(r) && lower[r.len()..].starts_with('-')));
    let ok = !reserved
        && (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName(name.to_owned()))
    }
}

/// Creates identity `name` with a fresh key and audits it (the name, never the key), in one
/// transaction. Returns the key, which exists nowhere else: show it to the owner once.
pub fn add_identity(
    ledger: &mut Ledger,
    actor: &str,
    name: &str,
    now_ms: u64,
) -> Result<IdentityKey, PolicyError> {
    check_name(name)?;
    let (key, hash) = IdentityKey::generate();
    ledger.transaction(|tx| insert(tx, actor, name, &hash, now_ms))?;
    Ok(key)
}

/// Creates identity `name` with the key whose hash is `hash`, audited, in the caller's
/// transaction.
pub fn insert(
    tx: &dyn Sql,
    actor: &str,
    name: &str,
    hash: &KeyHash,
    now_ms: u64,
) -> Result<(), PolicyError> {
    check_name(name)?;
    let added = tx.execute(
        "INSERT INTO identities (name, key_hash, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO NOTHING",
        sql_params![name, &hash.0, now_ms],
    )?;
    if added == 0 {
        return Err(PolicyError::IdentityExists(name.to_owned()));
    }
    audit::append(
        tx,
        &NewEntry {
            timestamp_ms: now_ms,
            actor,
            kind: "identity.added",
            details: &serde_json::json!({ "identity": name }),
        },
    )?;
    Ok(())
}

/// The identity whose key `bearer` is. Every stored hash is compared, each in constant time, so
/// the time taken does not reveal how much of a stored hash a guess matched. (Identities are
/// few; were there many, an indexed lookup by hash would also be safe, since the hash of a
/// 256-bit random key gives nothing away, but it would no longer be constant-time.)
pub fn authenticate(conn: &dyn Sql, bearer: &str) -> Result<String, PolicyError> {
    let presented = KeyHash::of(bearer);
    let mut found = None;
    for row in conn.query("SELECT name, key_hash FROM identities", &[])? {
        let stored = KeyHash(row.bytes32(1)?);
        if bool::from(stored.ct_eq(&presented)) {
            found = Some(row.text(0)?);
        }
    }
    found.ok_or(PolicyError::Unauthenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path().join("db.sqlite")).unwrap();
        ledger.apply_schema(&crate::SCHEMA).unwrap();
        (dir, ledger)
    }

    #[test]
    fn keys_are_prefixed_random_and_hash_to_their_stored_hash() {
        let (a, ha) = IdentityKey::generate();
        let (b, _) = IdentityKey::generate();
        assert!(a.as_str().starts_with("qvm_"));
        assert_eq!(a.as_str().len(), 4 + 64);
        assert_ne!(a.as_str(), b.as_str());
        assert!(bool::from(KeyHash::of(a.as_str()).ct_eq(&ha)));
        assert!(!bool::from(KeyHash::of(b.as_str()).ct_eq(&ha)));
        assert!(!format!("{a:?}").contains(&a.as_str()[4..]));
    }

    #[test]
    fn added_identities_authenticate_by_their_own_key_only() {
        let (_dir, mut ledger) = ledger();
        let alice = add_identity(&mut ledger, "operator", "alice", 1).unwrap();
        let bob = add_identity(&mut ledger, "operator", "bob.s-2", 2).unwrap();
        let conn = ledger.connection();
        assert_eq!(authenticate(conn, alice.as_str()).unwrap(), "alice");
        assert_eq!(authenticate(conn, bob.as_str()).unwrap(), "bob.s-2");
        let mut wrong = alice.as_str().to_owned();
        wrong.pop();
        wrong.push('x');
        for bad in [wrong.as_str(), "", "qvm_", "alice"] {
            assert!(matches!(
                authenticate(conn, bad),
                Err(PolicyError::Unauthenticated)
            ));
        }
    }

    #[test]
    fn only_the_hash_is_stored_and_the_addition_is_audited() {
        let (_dir, mut ledger) = ledger();
        let key = add_identity(&mut ledger, "operator", "alice", 1).unwrap();
        let stored: Vec<u8> = ledger
            .connection()
            .query_row("SELECT key_hash FROM identities", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, KeyHash::of(key.as_str()).to_bytes());
        let entries = ledger.audit_entries(0, 10).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, "identity.added");
        assert_eq!(entries[0].actor, "operator");
        assert!(!entries[0].details.contains(&key.as_str()[4..]));
        assert!(entries[0].details.contains("alice"));
    }

    #[test]
    fn duplicate_and_malformed_names_are_refused_without_a_trace() {
        let (_dir, mut ledger) = ledger();
        add_identity(&mut ledger, "operator", "alice", 1).unwrap();
        assert!(matches!(
            add_identity(&mut ledger, "operator", "alice", 2),
            Err(PolicyError::IdentityExists(name)) if name == "alice"
        ));
        let long = "a".repeat(NAME_MAX + 1);
        for bad in [
            "",
            "has space",
            "semi;colon",
            "ünï",
            long.as_str(),
            "coordinator",
            "Operator",
            "custodian-2",
        ] {
            assert!(
                matches!(
                    add_identity(&mut ledger, "operator", bad, 3),
                    Err(PolicyError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(add_identity(&mut ledger, "operator", &"a".repeat(NAME_MAX), 4).is_ok());
        assert_eq!(ledger.verify_chain().unwrap().entries, 2);
    }
}
