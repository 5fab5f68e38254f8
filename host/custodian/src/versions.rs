//! The versions this custodian serves, in memory: what a session needs without touching the
//! disk (circuit, manifest, opened shares), and how many unused kits it holds for each; and the
//! ids of the versions it retired, which never serve again.
//!
//! Only the highest activated version of a name serves: activating a higher one retires the
//! others (in the same ledger transaction), and a lower one is refused. k operators may also
//! retire any version, active here or not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use quorumvm_core::circuit::{Circuit, Manifest};
use quorumvm_core::field::Fp;
use quorumvm_package::PackageId;
use zeroize::Zeroizing;

/// One active version.
pub(crate) struct Version {
    pub id: PackageId,
    /// `id` in lowercase hex, as orders, tickets and the ledger name it.
    pub id_hex: String,
    pub manifest: Manifest,
    pub circuit: Circuit,
    /// This custodian's shares of the secrets, in the manifest's order; wiped on drop.
    secrets: Zeroizing<Vec<Fp>>,
    /// Unused kits in the ledger: set at load, then moved by every committed store and use.
    kits: AtomicU64,
}

impl Version {
    pub fn new(
        id: PackageId,
        manifest: Manifest,
        circuit: Circuit,
        secrets: Zeroizing<Vec<Fp>>,
        kits: u64,
    ) -> Version {
        Version {
            id_hex: id.to_string(),
            id,
            manifest,
            circuit,
            secrets,
            kits: AtomicU64::new(kits),
        }
    }

    /// A copy of the shares for one session's setup (which wipes it when dropped).
    pub fn secrets(&self) -> Vec<Fp> {
        self.secrets.to_vec()
    }

    pub fn kits(&self) -> u64 {
        self.kits.load(Ordering::Relaxed)
    }

    pub fn kits_stored(&self, count: u64) {
        self.kits.fetch_add(count, Ordering::Relaxed);
    }

    pub fn kit_used(&self) {
        // Saturating: a count that drifted (it cannot, but) must not wrap to 2^64.
        let _ = self
            .kits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                Some(k.saturating_sub(1))
            });
    }
}

/// The active versions by package id, and the retired ones.
#[derive(Default)]
pub(crate) struct Versions {
    by_id: RwLock<BTreeMap<PackageId, Arc<Version>>>,
    retired: RwLock<BTreeSet<PackageId>>,
    /// How many of the retired were retired by k operators (each counted once).
    retirements: AtomicUsize,
}

impl Versions {
    pub fn get(&self, id: &PackageId) -> Option<Arc<Version>> {
        self.read().get(id).cloned()
    }

    /// Adds a version; an already active one is kept (it holds the same package and shares).
    pub fn insert(&self, version: Version) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        map.entry(version.id).or_insert_with(|| Arc::new(version));
    }

    /// The serving versions named `name`.
    pub fn named(&self, name: &str) -> Vec<Arc<Version>> {
        self.read()
            .values()
            .filter(|v| v.manifest.name == name)
            .cloned()
            .collect()
    }

    /// Stops serving `id`, for good (its retirement is already committed).
    pub fn retire(&self, id: PackageId) {
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.retired
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Retires `id` by k operators' decision (committed, and not counted before).
    pub fn retire_for_good(&self, id: PackageId) {
        self.retire(id);
        self.retirements.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retirements(&self) -> usize {
        self.retirements.load(Ordering::Relaxed)
    }

    pub fn is_retired(&self, id: &PackageId) -> bool {
        self.retired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Every version with its unused kit count, by package id.
    pub fn kit_counts(&self) -> Vec<(String, u64)> {
        self.read()
            .values()
            .map(|v| (v.id_hex.clone(), v.kits()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<PackageId, Arc<Version>>> {
        // Each change is one insert or remove: a panic elsewhere cannot leave it half-changed.
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Parses a package id as orders and tickets carry it (64 hex digits).
pub(crate) fn parse_package_id(text: &str) -> Option<PackageId> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(PackageId(id))
}
