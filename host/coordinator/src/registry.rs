//! The installed versions in memory: state, approvals, the name → current version aliases and
//! each version's pool of preprocessed kits. The database is the truth; this is loaded from it
//! at startup and changed only after the change committed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use quorumvm_core::circuit::Manifest;
use quorumvm_wire::api::{VersionInfo, VersionState};
use quorumvm_wire::order::ApprovalSignature;
use quorumvm_wire::signed::Signed;

use crate::error::ApiError;
use crate::store::StoredVersion;

/// Kit ids are reserved this many at a time, so handing one out rarely costs a write.
pub const RESERVE_STEP: u64 = 4096;

pub struct Version {
    pub package_id: String,
    pub manifest: Manifest,
    pub publisher: String,
    /// The publisher's signed deal of the sealed shares; approvals sign its digest.
    pub deal: Signed,
    pub state: Mutex<VersionState>,
    pub approvals: Mutex<Vec<(u32, String)>>,
    /// Approvals of its retirement: at k it is retired.
    pub retirements: Mutex<Vec<(u32, String)>>,
    pub kits: Mutex<KitPool>,
    /// Woken when a batch of kits is added to the pool.
    pub kits_added: tokio::sync::Notify,
    pub checks: ShareChecks,
}

/// The custodians' joint check of a version's shares, as the coordinator starts it (each
/// custodian decides for itself whether it passes).
#[derive(Default)]
pub struct ShareChecks {
    /// Held while a check (with the activations before it) is under way: one at a time.
    pub running: tokio::sync::Mutex<()>,
    /// A custodian refused the shares: checking again would find the same.
    pub refused: AtomicBool,
}

/// Approvals as the coordinator keeps them, (custodian, signature hex), as orders carry them.
pub fn signatures(approvals: &Mutex<Vec<(u32, String)>>) -> Vec<ApprovalSignature> {
    signature_list(&approvals.lock().expect("approvals lock"))
}

/// Adds a committed approval to the list held in memory, unless it is there already (a
/// replica may have loaded it from the database meanwhile).
pub fn hold_approval(approvals: &Mutex<Vec<(u32, String)>>, custodian: u32, signature: String) {
    let mut held = approvals.lock().expect("approvals lock");
    if held.iter().all(|(c, _)| *c != custodian) {
        held.push((custodian, signature));
    }
}

/// [`signatures`] of a list held outside a lock (as the store returns it).
pub fn signature_list(approvals: &[(u32, String)]) -> Vec<ApprovalSignature> {
    approvals
        .iter()
        .map(|(custodian, signature)| ApprovalSignature {
            custodian: *custodian,
            signature: signature.clone(),
        })
        .collect()
}

impl Version {
    pub fn is_active(&self) -> bool {
        *self.state.lock().expect("state lock") == VersionState::Active
    }

    /// k custodian operators approved its retirement.
    pub fn is_retired_by_operators(&self, threshold: usize) -> bool {
        self.retirements.lock().expect("retirements lock").len() >= threshold
    }
}

/// The kits of one version that all custodians stored and nobody used yet.
///
/// Kits are handed out in increasing order. `reserved` is persisted before any kit at or above
/// it is handed out; after a restart the pool resumes at `reserved`, so a kit whose hand-out was
/// not recorded is skipped rather than risked twice (a Beaver triple used twice leaks).
#[derive(Debug, Default)]
pub struct KitPool {
    next: u64,
    reserved: u64,
    /// Stored batches `[start, end)` not yet used up, in order.
    ranges: VecDeque<(u64, u64)>,
    /// A batch is being generated (at most one per version at a time).
    pub generating: bool,
}

impl KitPool {
    /// The pool after a restart. (New batches start at the watermark too: see
    /// [`crate::store::order_batch`].)
    pub fn resume(reserved: u64, batches: &[(u64, u64)]) -> KitPool {
        KitPool {
            next: reserved,
            reserved,
            ranges: batches.iter().map(|&(s, c)| (s, s + c)).collect(),
            generating: false,
        }
    }

    pub fn available(&self) -> u64 {
        self.ranges
            .iter()
            .map(|&(s, e)| e.saturating_sub(s.max(self.next)))
            .sum()
    }

    /// The kit id [`KitPool::take`] would hand out next, if any. Batches are only ever
    /// appended, so the next take returns this id.
    pub fn peek(&self) -> Option<u64> {
        self.ranges
            .iter()
            .map(|&(s, e)| (s.max(self.next), e))
            .find(|(kit, end)| kit < end)
            .map(|(kit, _)| kit)
    }

    /// The next kit id, and the new reservation watermark to persist first if it moved.
    pub fn take(&mut self) -> Option<(u64, Option<u64>)> {
        while let Some(&(start, end)) = self.ranges.front() {
            let kit = start.max(self.next);
            if kit >= end {
                self.ranges.pop_front();
                continue;
            }
            self.next = kit + 1;
            let reserve = (self.next > self.reserved).then(|| {
                self.reserved = kit + RESERVE_STEP;
                self.reserved
            });
            return Some((kit, reserve));
        }
        None
    }

    pub fn add_batch(&mut self, first: u64, count: u64) {
        self.ranges.push_back((first, first + count));
    }

    /// Gives up every kit not handed out yet: a refresh of the shares made them useless (the
    /// custodians delete theirs as they commit it). Ids are never reused: the database allocates
    /// new batches' ids after every id allocated before.
    pub fn discard(&mut self) {
        self.ranges.clear();
    }
}

#[derive(Default)]
struct Inner {
    versions: HashMap<String, Arc<Version>>,
    aliases: HashMap<String, String>,
}

#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl Version {
    fn from_stored(v: StoredVersion) -> Version {
        Version {
            kits: Mutex::new(KitPool::resume(v.kits_reserved, &v.batches)),
            package_id: v.package_id,
            manifest: v.manifest,
            publisher: v.publisher,
            deal: v.deal,
            state: Mutex::new(v.state),
            approvals: Mutex::new(v.approvals),
            retirements: Mutex::new(v.retirements),
            kits_added: Default::default(),
            checks: ShareChecks::default(),
        }
    }
}

impl Registry {
    pub fn load(versions: Vec<StoredVersion>, aliases: Vec<(String, String)>) -> Registry {
        let registry = Registry::default();
        registry.refresh(versions, aliases);
        registry
    }

    /// Takes the stored versions' states, approvals and aliases (what another replica may have
    /// changed), adding the versions not held yet; the kit pools held stay as they are (this
    /// replica's own, and newer here than in the database).
    pub fn refresh(&self, versions: Vec<StoredVersion>, aliases: Vec<(String, String)>) {
        let mut inner = self.inner.write().expect("registry lock");
        for v in versions {
            match inner.versions.get(&v.package_id) {
                Some(held) => {
                    *held.state.lock().expect("state lock") = v.state;
                    *held.approvals.lock().expect("approvals lock") = v.approvals;
                    *held.retirements.lock().expect("retirements lock") = v.retirements;
                }
                None => {
                    let id = v.package_id.clone();
                    inner.versions.insert(id, Arc::new(Version::from_stored(v)));
                }
            }
        }
        inner.aliases = aliases.into_iter().collect();
    }

    pub fn insert(&self, version: Version) -> Arc<Version> {
        let version = Arc::new(version);
        self.inner
            .write()
            .expect("registry lock")
            .versions
            .insert(version.package_id.clone(), Arc::clone(&version));
        version
    }

    pub fn get(&self, package_id: &str) -> Option<Arc<Version>> {
        self.inner
            .read()
            .expect("registry lock")
            .versions
            .get(package_id)
            .cloned()
    }

    pub fn set_alias(&self, name: &str, package_id: &str) {
        self.inner
            .write()
            .expect("registry lock")
            .aliases
            .insert(name.to_string(), package_id.to_string());
    }

    /// The version a caller's request names (its package id and the program's name), if it
    /// serves: 404 for an unknown package or another program's, 409 while pending, 410 once
    /// retired.
    pub fn serving(&self, package_id: &str, name: &str) -> Result<Arc<Version>, ApiError> {
        let version = self
            .get(package_id)
            .filter(|v| v.manifest.name == name)
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_program",
                    format!("no package {package_id} of program `{name}` is installed"),
                )
            })?;
        match *version.state.lock().expect("state lock") {
            VersionState::Active => Ok(Arc::clone(&version)),
            VersionState::Retired => Err(ApiError::new(
                axum::http::StatusCode::GONE,
                "retired",
                format!(
                    "package {package_id} ({name} version {}) is retired: superseded by a \
                     higher version, or retired by k custodian operators",
                    version.manifest.version
                ),
            )),
            VersionState::Pending => {
                let approvals = version.approvals.lock().expect("approvals lock").len();
                Err(ApiError::conflict(
                    "pending",
                    format!(
                        "package {package_id} ({name} version {}) is pending: {approvals} \
                         approval(s) so far",
                        version.manifest.version
                    ),
                ))
            }
        }
    }

    pub fn all(&self) -> Vec<Arc<Version>> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .expect("registry lock")
            .versions
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (&a.manifest.name, a.manifest.version).cmp(&(&b.manifest.name, b.manifest.version))
        });
        all
    }

    pub fn info(&self, v: &Version, threshold: usize) -> VersionInfo {
        let current = self
            .inner
            .read()
            .expect("registry lock")
            .aliases
            .get(&v.manifest.name)
            .is_some_and(|id| id == &v.package_id);
        VersionInfo {
            package_id: v.package_id.clone(),
            name: v.manifest.name.clone(),
            version: v.manifest.version,
            state: *v.state.lock().expect("state lock"),
            approvals: v
                .approvals
                .lock()
                .expect("approvals lock")
                .iter()
                .map(|(c, _)| *c)
                .collect(),
            threshold,
            current,
            publisher: v.publisher.clone(),
            manifest: v.manifest.clone(),
            retirements: v
                .retirements
                .lock()
                .expect("retirements lock")
                .iter()
                .map(|(c, _)| *c)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kits_are_handed_out_once_in_order_skipping_gaps() {
        let mut pool = KitPool::resume(0, &[(0, 3), (10, 2)]);
        assert_eq!(pool.available(), 5);
        assert_eq!(pool.take(), Some((0, Some(RESERVE_STEP))));
        assert_eq!(pool.take(), Some((1, None)));
        assert_eq!(pool.take(), Some((2, None)));
        assert_eq!(pool.take(), Some((10, None)));
        assert_eq!(pool.take(), Some((11, None)));
        assert_eq!(pool.take(), None);
        assert_eq!(pool.available(), 0);
    }

    #[test]
    fn a_restart_resumes_above_the_reservation() {
        // Kits 0..4096 may have been handed out before the crash: none is handed out again.
        let mut pool = KitPool::resume(RESERVE_STEP, &[(0, 5000)]);
        assert_eq!(pool.available(), 5000 - RESERVE_STEP);
        assert_eq!(pool.take(), Some((RESERVE_STEP, Some(2 * RESERVE_STEP))));
    }

    #[test]
    fn a_restart_hands_out_no_kit_below_the_reservation() {
        let pool = KitPool::resume(RESERVE_STEP, &[(0, 24)]);
        assert_eq!(pool.peek(), None);
    }

    #[test]
    fn peek_names_the_kit_take_hands_out() {
        let mut pool = KitPool::resume(0, &[(0, 2), (10, 1)]);
        for _ in 0..3 {
            let next = pool.peek();
            assert_eq!(pool.take().map(|(kit, _)| kit), next);
        }
        assert_eq!(pool.peek(), None);
    }
}
