//! The caller identities this custodian accepts requests from, in memory: name → the ed25519
//! key k operators approved for it, and the names k operators revoked. Loaded from the ledger at start (approvals checked again), changed
//! only after the change committed.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use quorumvm_package::PublicKey;

use crate::error::ApiError;
use quorumvm_wire::code::ErrorCode;

#[derive(Default)]
pub(crate) struct Callers {
    by_name: RwLock<HashMap<String, PublicKey>>,
    /// Revoked by k operators: never served nor registered again, under any key.
    revoked: RwLock<HashSet<String>>,
}

impl Callers {
    pub fn key(&self, name: &str) -> Option<PublicKey> {
        read(&self.by_name).get(name).copied()
    }

    pub fn insert(&self, name: String, key: PublicKey) {
        write(&self.by_name).insert(name, key);
    }

    /// Forgets the name's key and bars the name for good (its revocation is committed).
    pub fn revoke(&self, name: String) {
        write(&self.by_name).remove(&name);
        write(&self.revoked).insert(name);
    }

    pub fn is_revoked(&self, name: &str) -> bool {
        read(&self.revoked).contains(name)
    }

    /// Refuses a request in `name`'s name if the name is revoked.
    pub fn admit(&self, name: &str) -> Result<(), ApiError> {
        if self.is_revoked(name) {
            return Err(ApiError::of(
                ErrorCode::IdentityRevoked,
                format!(
                    "identity `{name}` is revoked by k custodian operators: never served again"
                ),
            ));
        }
        Ok(())
    }

    /// Registered identities, revoked ones excluded.
    pub fn len(&self) -> usize {
        read(&self.by_name).len()
    }

    pub fn revocations(&self) -> usize {
        read(&self.revoked).len()
    }
}

// Each change is one insert or remove: a panic elsewhere cannot leave a map half-changed.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
