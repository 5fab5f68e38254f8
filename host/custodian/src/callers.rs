//! The caller identities this custodian accepts requests from, in memory: name → the ed25519
//! key k operators approved for it. Loaded from the ledger at start (approvals checked again),
//! extended by `RegisterIdentity` orders that carry k valid approvals.

use std::collections::HashMap;
use std::sync::RwLock;

use quorumvm_package::PublicKey;

#[derive(Default)]
pub(crate) struct Callers {
    by_name: RwLock<HashMap<String, PublicKey>>,
}

impl Callers {
    pub fn key(&self, name: &str) -> Option<PublicKey> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    pub fn insert(&self, name: String, key: PublicKey) {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, key);
    }

    pub fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
