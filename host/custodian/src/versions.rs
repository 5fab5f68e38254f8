//! The versions this custodian activated, in memory: what a session needs without touching the
//! disk (circuit, manifest, opened shares), how many unused kits it holds for each, and whether
//! their shares passed the custodians' joint check, without which a version does not serve;
//! and the ids of the versions it refused or retired, which never serve.
//!
//! Only the highest version of a name serves: a higher one whose shares pass their check
//! retires the others (in the same ledger transaction), and a lower one is refused. k operators may also
//! retire any version, active here or not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use quorumvm_core::circuit::{Circuit, Manifest};
use quorumvm_core::field::Fp;
use quorumvm_package::PackageId;
use zeroize::Zeroizing;

use crate::activation::retired;
use crate::error::{self, ApiError};

/// One active version.
pub(crate) struct Version {
    pub id: PackageId,
    /// `id` in lowercase hex, as orders, tickets and the ledger name it.
    pub id_hex: String,
    pub manifest: Manifest,
    pub circuit: Circuit,
    /// The digest of the publisher's signed deal, which the joint check of shares hashes.
    pub deal_digest: [u8; 32],
    /// This custodian's shares of the secrets, in the manifest's order; wiped on drop. Read
    /// and replaced only under [`Versions`]' epoch lock ([`Versions::shares`],
    /// [`Versions::refresh`]), so that a reader never pairs one epoch's number with another's
    /// shares.
    secrets: RwLock<Zeroizing<Vec<Fp>>>,
    /// Unused kits in the ledger: set at load, then moved by every committed store and use.
    kits: AtomicU64,
}

impl Version {
    pub fn new(
        id: PackageId,
        manifest: Manifest,
        circuit: Circuit,
        deal_digest: [u8; 32],
        secrets: Zeroizing<Vec<Fp>>,
        kits: u64,
    ) -> Version {
        Version {
            id_hex: id.to_string(),
            id,
            manifest,
            circuit,
            deal_digest,
            secrets: RwLock::new(secrets),
            kits: AtomicU64::new(kits),
        }
    }

    fn secrets(&self) -> Vec<Fp> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .to_vec()
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

/// A version and this custodian's new shares of its secrets, in the manifest's order.
pub(crate) type Refreshed = (Arc<Version>, Zeroizing<Vec<Fp>>);

/// Where a version stands on this custodian.
pub(crate) enum Standing {
    /// Activated (every check of [`crate::activation`] passed), awaiting the custodians' joint
    /// check of its shares ([`crate::share_check`]): it does not serve yet.
    Unchecked(Arc<Version>),
    /// Activated and its shares checked: it serves.
    Serving(Arc<Version>),
    /// The joint check found its shares inconsistent: it never serves.
    Refused,
    /// A higher version of its name superseded it: it never serves again.
    Retired,
}

/// The activated versions by package id (serving or awaiting their check), and the ids of the
/// refused and retired ones; and the share epoch: how many refreshes of the shares
/// ([`crate::reshare`]) this custodian committed.
#[derive(Default)]
pub(crate) struct Versions {
    epoch: RwLock<u64>,
    by_id: RwLock<BTreeMap<PackageId, Held>>,
    ended: RwLock<BTreeMap<PackageId, Ended>>,
    /// How many of the retired were retired by k operators (each counted once).
    retirements: AtomicUsize,
}

/// An activated version in memory, and whether its shares were checked.
struct Held {
    version: Arc<Version>,
    checked: bool,
}

/// Why a version never serves.
#[derive(Clone, Copy)]
enum Ended {
    Refused,
    Retired,
}

impl Versions {
    /// Starts at the committed epoch `epoch` (at load, before anything reads it).
    pub fn set_epoch(&self, epoch: u64) {
        *self.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch;
    }

    pub fn epoch(&self) -> u64 {
        *self.epoch.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch and a copy of `version`'s shares at it, for one session's or batch's setup
    /// (which wipes the copy when dropped).
    pub fn shares(&self, version: &Version) -> (u64, Vec<Fp>) {
        let epoch = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        (*epoch, version.secrets())
    }

    /// Moves to `epoch` with the new shares of the refreshed versions (their commit, which
    /// also deleted every kit, is already in the ledger): from now on no reader sees the old
    /// shares, nor the new ones under the old epoch.
    pub fn refresh(&self, epoch: u64, fresh: Vec<Refreshed>) {
        let mut current = self.epoch.write().unwrap_or_else(|p| p.into_inner());
        for (version, shares) in fresh {
            *version.secrets.write().unwrap_or_else(|p| p.into_inner()) = shares;
        }
        for held in self.read().values() {
            held.version.kits.store(0, Ordering::Relaxed);
        }
        *current = epoch;
    }

    pub fn standing(&self, id: &PackageId) -> Option<Standing> {
        if let Some(held) = self.read().get(id) {
            let version = Arc::clone(&held.version);
            return Some(if held.checked {
                Standing::Serving(version)
            } else {
                Standing::Unchecked(version)
            });
        }
        let ended = self.ended.read().unwrap_or_else(|p| p.into_inner());
        ended.get(id).map(|e| match e {
            Ended::Refused => Standing::Refused,
            Ended::Retired => Standing::Retired,
        })
    }

    /// Adds an activated version, serving if its shares were `checked`; an already held one is
    /// kept (it holds the same package and shares).
    pub fn insert(&self, version: Version, checked: bool) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        map.entry(version.id).or_insert_with(|| Held {
            version: Arc::new(version),
            checked,
        });
    }

    /// The held version `id` serves from now on (its check's pass is already committed).
    pub fn checked(&self, id: &PackageId) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = map.get_mut(id) {
            held.checked = true;
        }
    }

    /// The activated version `id`, serving or not.
    pub fn held(&self, id: &PackageId) -> Option<Arc<Version>> {
        self.read().get(id).map(|h| Arc::clone(&h.version))
    }

    /// The id of every activated version, serving or not, in order.
    pub fn held_ids(&self) -> Vec<String> {
        self.read()
            .values()
            .map(|h| h.version.id_hex.clone())
            .collect()
    }

    /// The activated versions named `name`, serving or not.
    pub fn named(&self, name: &str) -> Vec<Arc<Version>> {
        self.read()
            .values()
            .filter(|h| h.version.manifest.name == name)
            .map(|h| Arc::clone(&h.version))
            .collect()
    }

    /// Stops holding `id`, for good: its shares were refused (already committed).
    pub fn refuse(&self, id: PackageId) {
        self.end(id, Ended::Refused);
    }

    /// Stops serving `id`, for good (its retirement is already committed).
    pub fn retire(&self, id: PackageId) {
        self.end(id, Ended::Retired);
    }

    /// Retires `id` by k operators' decision (committed, and not counted before).
    pub fn retire_for_good(&self, id: PackageId) {
        self.retire(id);
        self.retirements.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retirements(&self) -> usize {
        self.retirements.load(Ordering::Relaxed)
    }

    fn end(&self, id: PackageId, why: Ended) {
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.ended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, why);
    }

    /// The version `package_id` if it serves here, or the error that says why not (unknown,
    /// shares unchecked or refused, retired).
    pub fn serving(&self, package_id: &str) -> Result<Arc<Version>, ApiError> {
        let id = parse_package_id(package_id).ok_or_else(|| {
            ApiError::bad_request("bad_package_id", "a package id is 64 hexadecimal digits")
        })?;
        match self.standing(&id) {
            Some(Standing::Serving(version)) => Ok(version),
            Some(Standing::Unchecked(_)) => Err(error::shares_unchecked(package_id)),
            Some(Standing::Refused) => Err(error::shares_refused(package_id, "")),
            Some(Standing::Retired) => Err(retired(&id)),
            None => Err(error::unknown_version(package_id)),
        }
    }

    pub fn is_retired(&self, id: &PackageId) -> bool {
        matches!(self.standing(id), Some(Standing::Retired))
    }

    /// How many versions serve.
    pub fn len(&self) -> usize {
        self.read().values().filter(|h| h.checked).count()
    }

    /// Every serving version with its unused kit count, by package id.
    pub fn kit_counts(&self) -> Vec<(String, u64)> {
        self.read()
            .values()
            .filter(|h| h.checked)
            .map(|h| (h.version.id_hex.clone(), h.version.kits()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<PackageId, Held>> {
        // Each change is one insert, update or remove: a panic elsewhere cannot leave it
        // half-changed.
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Parses a package id as orders and tickets carry it (64 hex digits).
pub(crate) fn parse_package_id(text: &str) -> Option<PackageId> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(PackageId(id))
}
