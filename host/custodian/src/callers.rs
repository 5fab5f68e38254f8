//! The caller identities this custodian accepts requests from, in memory: name → the ed25519
//! key k operators approved for it; the names k operators revoked; and this custodian's
//! operator's suspensions. Loaded from the ledger at start (approvals checked again), changed
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
    /// This custodian's operator's last statement per name: (suspended, its time).
    suspensions: RwLock<HashMap<String, (bool, u64)>>,
}

/// Why a named identity is refused here before anything else is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Barred {
    Revoked,
    Suspended,
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

    /// Records the operator's statement about `name` if it is later than the one held (the
    /// ledger applied it under the same rule; this keeps memory in that order under races).
    pub fn set_suspension(&self, name: String, suspended: bool, time_ms: u64) {
        let mut held = write(&self.suspensions);
        if held.get(&name).is_none_or(|&(_, last)| time_ms > last) {
            held.insert(name, (suspended, time_ms));
        }
    }

    pub fn barred(&self, name: &str) -> Option<Barred> {
        if self.is_revoked(name) {
            Some(Barred::Revoked)
        } else if read(&self.suspensions)
            .get(name)
            .is_some_and(|&(suspended, _)| suspended)
        {
            Some(Barred::Suspended)
        } else {
            None
        }
    }

    /// Refuses a request in `name`'s name if the name is revoked, or suspended here.
    pub fn admit(&self, name: &str, me: u32) -> Result<(), ApiError> {
        match self.barred(name) {
            None => Ok(()),
            Some(Barred::Revoked) => Err(ApiError::of(
                ErrorCode::IdentityRevoked,
                format!(
                    "identity `{name}` is revoked by k custodian operators: never served again"
                ),
            )),
            Some(Barred::Suspended) => Err(ApiError::of(
                ErrorCode::IdentitySuspended,
                format!("identity `{name}` is suspended at custodian {me} by its operator"),
            )),
        }
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
