//! A change of the cluster's membership, as k current operators approve it: the custodians
//! (index, URL, keys) and the threshold the cluster moves to, from one epoch.
//!
//! Rotation (replace, add or remove a custodian, change k and n) re-deals every secret from
//! the current custodians to the new set ([`quorumvm_core::redeal`]). A custodian takes part
//! only in a change that k operators of the *current* cluster approved
//! ([`crate::approval::Subject::Membership`]): without that, a coordinator could name keys of
//! its own as the new custodians and be dealt shares of every secret. The statement names every
//! member whole (index, URL, operator, sealing and TLS keys) and the threshold, so what the
//! operators approved is what runs; and it is bound to the epoch it moves from, so an approval
//! counts for one rotation only.
//!
//! A custodian is its sealing key: the key its shares are sealed to and its pairwise keys are
//! derived from. A member of the new set whose sealing key a current member holds is that
//! machine, kept (at the same index or another: the re-dealing gives it a share at its new
//! point either way); any other is a machine that joins; a current member whose key is in no
//! entry leaves. [`Change`] says which is which.

use std::collections::{BTreeMap, BTreeSet};

use quorumvm_core::redeal::{Members, Transition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Cluster, ConfigError, CustodianEntry};
use crate::order::ApprovalSignature;

/// The cluster a rotation moves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The epoch the change moves from; the cluster is at `from_epoch + 1` after it.
    pub from_epoch: u64,
    /// k′: how many of the new custodians evaluate and approve.
    pub threshold: usize,
    /// Every custodian of the new set, at indices 1..=n′.
    pub custodians: Vec<CustodianEntry>,
}

impl Membership {
    /// The new cluster, checked as a config's is (indices 1..=n′, n′ ≥ 2k′ − 1, keys well formed).
    pub fn cluster(&self) -> Result<Cluster, ConfigError> {
        Cluster::new(self.threshold, &self.custodians)
    }

    /// `current` at threshold `threshold`: the same machines at the same indices.
    pub fn rethreshold(current: &Cluster, from_epoch: u64, threshold: usize) -> Membership {
        Membership {
            from_epoch,
            threshold,
            custodians: current.entries(),
        }
    }

    /// `current` and the machine `joining` at the next index, n + 1 (whatever `joining.index`
    /// says), at threshold `threshold`: every current custodian keeps its index, as a change
    /// that brings a machine in must.
    pub fn with(
        current: &Cluster,
        from_epoch: u64,
        joining: CustodianEntry,
        threshold: usize,
    ) -> Membership {
        let mut custodians = current.entries();
        custodians.push(CustodianEntry {
            index: current.n() as u32 + 1,
            ..joining
        });
        Membership {
            from_epoch,
            threshold,
            custodians,
        }
    }

    /// `current` without custodian `index`, at threshold `threshold`: the others keep their
    /// order and are numbered 1..=n − 1 (those after `index` move down by one), so every
    /// operator who runs the same removal signs the same statement.
    pub fn without(
        current: &Cluster,
        from_epoch: u64,
        index: u32,
        threshold: usize,
    ) -> Result<Membership, ChangeError> {
        if current.member(index).is_none() {
            return Err(ChangeError::Cluster(ConfigError::Cluster(format!(
                "custodian {index} is not a member (members: {:?})",
                current.indices()
            ))));
        }
        let custodians = current
            .entries()
            .into_iter()
            .filter(|e| e.index != index)
            .zip(1..)
            .map(|(e, index)| CustodianEntry { index, ..e })
            .collect();
        Ok(Membership {
            from_epoch,
            threshold,
            custodians,
        })
    }
}

/// Why a membership statement cannot run from the current cluster.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Cluster(#[from] ConfigError),
    #[error("the new custodians {0:?} have one sealing key: each machine holds one share")]
    SharedSealingKey(Vec<u32>),
    #[error("the new custodians {0:?} have one operator key: each operator's approval counts once")]
    SharedOperatorKey(Vec<u32>),
    #[error("the statement changes nothing: the same custodians, entries and threshold")]
    Nothing,
    #[error(
        "custodians {0:?} would join while others leave or move: machines join only beside every \
         current custodian at its index (to replace one, add the new machine, then remove the old)"
    )]
    JoinWhileMoving(Vec<u32>),
}

/// A rotation as certified: its membership and the k approvals of the cluster before it. The
/// chain of them from the configured cluster is what a joining custodian checks (see
/// [`crate::order::Order::Join`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approved {
    pub membership: Membership,
    pub approvals: Vec<ApprovalSignature>,
}

/// A membership statement seen against the current cluster: made only by [`Change::new`], so
/// every `Change` is one that can run.
#[derive(Debug, Clone)]
pub struct Change {
    from_epoch: u64,
    current: Cluster,
    next: Cluster,
    kept: BTreeMap<u32, u32>,
    joining: Vec<u32>,
    leaving: Vec<u32>,
}

impl Change {
    /// Checks `next` against `current`: a valid cluster, one share per machine and one vote per
    /// operator, something changed.
    pub fn new(current: &Cluster, next: &Membership) -> Result<Change, ChangeError> {
        let new = next.cluster()?;
        if let Some(same) = first_shared(new.members(), |m| m.sealing_key.to_bytes()) {
            return Err(ChangeError::SharedSealingKey(same));
        }
        if let Some(same) = first_shared(new.members(), |m| m.operator_key.to_bytes()) {
            return Err(ChangeError::SharedOperatorKey(same));
        }
        let now: BTreeMap<[u8; 32], u32> = current
            .members()
            .iter()
            .map(|m| (m.sealing_key.to_bytes(), m.index))
            .collect();
        let mut kept = BTreeMap::new();
        let mut joining = Vec::new();
        for m in new.members() {
            match now.get(&m.sealing_key.to_bytes()) {
                Some(&old) => {
                    kept.insert(m.index, old);
                }
                None => joining.push(m.index),
            }
        }
        let staying: BTreeSet<u32> = kept.values().copied().collect();
        let leaving: Vec<u32> = current
            .indices()
            .into_iter()
            .filter(|i| !staying.contains(i))
            .collect();
        // Every entry whole: an operator's new key or a new URL is a change too.
        let unchanged =
            new.entries() == current.entries() && new.threshold() == current.threshold();
        if unchanged {
            return Err(ChangeError::Nothing);
        }
        // A joining machine and a kept one must never share an index during the rotation: the
        // round messages of both sets are addressed by index (see the custodian's `rotation`).
        if !joining.is_empty() && (!leaving.is_empty() || kept.iter().any(|(new, old)| new != old))
        {
            return Err(ChangeError::JoinWhileMoving(joining));
        }
        Ok(Change {
            from_epoch: next.from_epoch,
            current: current.clone(),
            next: new,
            kept,
            joining,
            leaving,
        })
    }

    /// The epoch the change moves from.
    pub fn from_epoch(&self) -> u64 {
        self.from_epoch
    }

    /// The cluster now, whose operators approve the change and whose members deal.
    pub fn current(&self) -> &Cluster {
        &self.current
    }

    /// The cluster after the change.
    pub fn next(&self) -> &Cluster {
        &self.next
    }

    /// Each kept machine: its index in the new set and its index now.
    pub fn kept(&self) -> &BTreeMap<u32, u32> {
        &self.kept
    }

    /// The indices in the new set of the machines that join.
    pub fn joining(&self) -> &[u32] {
        &self.joining
    }

    /// The current indices of the machines that leave.
    pub fn leaving(&self) -> &[u32] {
        &self.leaving
    }

    /// The bytes an operator's approval signs: the epoch, the threshold and every new member
    /// in the order of its index, as the cluster parsed them (so that two spellings of one key,
    /// or a URL with a trailing slash, are one statement), each field of fixed width or
    /// length-prefixed.
    pub fn statement(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"quorumvm membership v1\0");
        h.update(self.from_epoch.to_be_bytes());
        h.update((self.next.threshold() as u64).to_be_bytes());
        h.update((self.next.n() as u64).to_be_bytes());
        for m in self.next.members() {
            h.update(m.index.to_be_bytes());
            h.update((m.url.len() as u64).to_be_bytes());
            h.update(m.url.as_bytes());
            h.update(m.operator_key.to_bytes());
            h.update(m.sealing_key.to_bytes());
            match m.tls {
                Some(pin) => {
                    h.update([1]);
                    h.update(pin.0);
                }
                None => h.update([0]),
            }
        }
        h.finalize().to_vec()
    }

    /// The re-dealing's sets: every current custodian deals, every new one receives.
    pub fn transition(&self) -> Transition {
        // A cluster's indices are 1..=n, distinct, with n >= 2k - 1: what `Members` requires.
        let members = |c: &Cluster| {
            Members::new(c.indices(), c.threshold()).expect("a cluster's members can re-deal")
        };
        Transition {
            old: members(&self.current),
            new: members(&self.next),
        }
    }

    /// The roles of the machine with this sealing key: its index now, and in the new set.
    pub fn roles(&self, sealing_key: &[u8; 32]) -> Roles {
        let find = |c: &Cluster| {
            c.members()
                .iter()
                .find(|m| &m.sealing_key.to_bytes() == sealing_key)
                .map(|m| m.index)
        };
        Roles {
            old: find(&self.current),
            new: find(&self.next),
        }
    }
}

/// What one machine does in a change: it deals if it holds shares now (`old`), and receives
/// if it is in the new set (`new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub old: Option<u32>,
    pub new: Option<u32>,
}

/// The indices of the first group of members with the same `key`, if any.
fn first_shared(
    members: &[crate::config::Member],
    key: impl Fn(&crate::config::Member) -> [u8; 32],
) -> Option<Vec<u32>> {
    let mut by_key: BTreeMap<[u8; 32], Vec<u32>> = BTreeMap::new();
    for m in members {
        by_key.entry(key(m)).or_default().push(m.index);
    }
    by_key.into_values().find(|indices| indices.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_package::SecretKey;
    use quorumvm_sealing::CustodianSecretKey;

    /// A machine: its operator's key and its sealing key.
    #[derive(Clone)]
    struct Machine {
        operator: String,
        sealing: String,
    }

    fn machine() -> Machine {
        machine_of(&SecretKey::generate())
    }

    /// A machine whose operator holds `key`.
    fn machine_of(key: &SecretKey) -> Machine {
        Machine {
            operator: key.public().to_hex(),
            sealing: CustodianSecretKey::generate().public().to_hex(),
        }
    }

    fn entries(machines: &[&Machine]) -> Vec<CustodianEntry> {
        machines
            .iter()
            .enumerate()
            .map(|(i, m)| CustodianEntry {
                index: i as u32 + 1,
                url: format!("http://127.0.0.1:{}", 7101 + i),
                operator_key: m.operator.clone(),
                sealing_key: m.sealing.clone(),
                tls_fingerprint: None,
            })
            .collect()
    }

    fn membership(k: usize, machines: &[&Machine]) -> Membership {
        Membership {
            from_epoch: 3,
            threshold: k,
            custodians: entries(machines),
        }
    }

    fn cluster(k: usize, machines: &[&Machine]) -> Cluster {
        Cluster::new(k, &entries(machines)).expect("a cluster")
    }

    #[test]
    fn a_machine_joins_beside_every_current_one_at_its_index() {
        let [a, b, c, d] = [machine(), machine(), machine(), machine()];
        let now = cluster(2, &[&a, &b, &c]);
        let change = Change::new(&now, &membership(2, &[&a, &b, &c, &d])).expect("a change");
        assert_eq!(change.kept(), &BTreeMap::from([(1, 1), (2, 2), (3, 3)]));
        assert_eq!((change.joining(), change.leaving()), (&[4][..], &[][..]));
        let key = |m: &Machine| {
            quorumvm_sealing::CustodianPublicKey::from_file_text(&m.sealing)
                .expect("a key")
                .to_bytes()
        };
        let roles = |m: &Machine| change.roles(&key(m));
        assert_eq!(
            roles(&a),
            Roles {
                old: Some(1),
                new: Some(1)
            }
        );
        assert_eq!(
            roles(&d),
            Roles {
                old: None,
                new: Some(4)
            }
        );
        let t = change.transition();
        assert_eq!(
            (t.old.xs(), t.new.xs()),
            (&[1, 2, 3][..], &[1, 2, 3, 4][..])
        );
        // A machine joining where another leaves, or while another moves, would share an index
        // with it during the rotation: a replacement is an addition, then a removal.
        for next in [
            membership(2, &[&a, &b, &d]),
            membership(2, &[&a, &c, &d]),
            membership(2, &[&b, &a, &c, &d]),
        ] {
            assert!(matches!(
                Change::new(&now, &next),
                Err(ChangeError::JoinWhileMoving(_))
            ));
        }
    }

    #[test]
    fn growing_shrinking_and_renumbering_are_changes() {
        let m: Vec<Machine> = (0..5).map(|_| machine()).collect();
        let three = cluster(2, &[&m[0], &m[1], &m[2]]);
        let grow = Change::new(&three, &membership(3, &[&m[0], &m[1], &m[2], &m[3], &m[4]]))
            .expect("grow 2-of-3 to 3-of-5");
        assert_eq!((grow.joining(), grow.leaving()), (&[4, 5][..], &[][..]));
        assert_eq!(grow.transition().new.k(), 3);
        // Custodian 2 removed: custodian 3's machine takes index 2.
        let shrink = Change::new(&three, &membership(1, &[&m[0], &m[2]])).expect("remove one");
        assert_eq!(shrink.kept(), &BTreeMap::from([(1, 1), (2, 3)]));
        assert_eq!((shrink.joining(), shrink.leaving()), (&[][..], &[2][..]));
        // Only the indices change.
        let swap = Change::new(&three, &membership(2, &[&m[1], &m[0], &m[2]])).expect("renumber");
        assert_eq!(swap.kept(), &BTreeMap::from([(1, 2), (2, 1), (3, 3)]));
    }

    #[test]
    fn what_cannot_run_is_refused_before_anyone_deals() {
        let [a, b, c, d] = [machine(), machine(), machine(), machine()];
        let now = cluster(2, &[&a, &b, &c]);
        let refused = |next: Membership| Change::new(&now, &next).expect_err("refused");
        assert!(matches!(
            refused(membership(2, &[&a, &b, &c])),
            ChangeError::Nothing
        ));
        // One machine at two indices would hold two shares; one operator would approve twice.
        let twice = Machine {
            operator: d.operator.clone(),
            sealing: a.sealing.clone(),
        };
        assert!(matches!(
            refused(membership(2, &[&a, &b, &twice])),
            ChangeError::SharedSealingKey(ref at) if at == &[1, 3]
        ));
        let same_operator = Machine {
            operator: a.operator.clone(),
            sealing: d.sealing.clone(),
        };
        assert!(matches!(
            refused(membership(2, &[&a, &b, &same_operator])),
            ChangeError::SharedOperatorKey(ref at) if at == &[1, 3]
        ));
        // n′ < 2k′ − 1.
        assert!(matches!(
            refused(membership(3, &[&a, &b, &c, &d])),
            ChangeError::Cluster(_)
        ));
    }

    #[test]
    fn the_statement_binds_every_field_and_not_the_spelling() {
        let [a, b, c, d] = [machine(), machine(), machine(), machine()];
        let base = membership(2, &[&a, &b, &c, &d]);
        let now = cluster(2, &[&a, &b, &c]);
        let statement = |m: &Membership| Change::new(&now, m).expect("a change").statement();
        let mut slash = base.clone();
        slash.custodians[0].url.push('/');
        assert_eq!(statement(&slash), statement(&base));
        let mut variants = vec![];
        let mut epoch = base.clone();
        epoch.from_epoch += 1;
        variants.push(epoch);
        variants.push(membership(1, &[&a, &b, &c, &d]));
        variants.push(membership(1, &[&a, &b]));
        variants.push(membership(2, &[&b, &a, &c]));
        let mut url = base.clone();
        url.custodians[2].url = "http://127.0.0.1:9999".into();
        variants.push(url);
        let mut operator = base.clone();
        operator.custodians[1].operator_key = machine().operator;
        variants.push(operator);
        let mut pin = base.clone();
        pin.custodians[0].tls_fingerprint = Some(crate::config::Fingerprint([7; 32]));
        variants.push(pin);
        for v in &variants {
            assert_ne!(statement(v), statement(&base), "{v:?}");
        }
    }

    #[test]
    fn k_current_operators_approve_a_change_and_only_that_change() {
        use crate::approval::{self, ApprovalError, Subject};
        use crate::order::ApprovalSignature;

        let operators: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
        let m: Vec<Machine> = operators.iter().map(machine_of).collect();
        let now = cluster(2, &[&m[0], &m[1], &m[2]]);
        let next = membership(2, &[&m[0], &m[1], &m[2], &m[3]]);
        let change = Change::new(&now, &next).expect("a change");
        let sign = |change: &Change, by: &[usize]| -> Vec<ApprovalSignature> {
            by.iter()
                .map(|&i| ApprovalSignature {
                    custodian: i as u32 + 1,
                    signature: hex::encode(approval::sign(
                        &operators[i],
                        &Subject::Membership(change),
                    )),
                })
                .collect()
        };
        let check = |approvals: &[ApprovalSignature]| {
            approval::check_threshold(&now, &Subject::Membership(&change), approvals)
        };
        assert_eq!(check(&sign(&change, &[0, 2])), Ok(vec![1, 3]));
        assert!(matches!(
            check(&sign(&change, &[1])),
            Err(ApprovalError::TooFew {
                got: 1,
                need: 2,
                ..
            })
        ));
        // Approvals of the same members from another epoch: a rotation already done, replayed.
        let mut earlier = next.clone();
        earlier.from_epoch -= 1;
        let earlier = Change::new(&now, &earlier).expect("a change");
        assert_eq!(
            check(&sign(&earlier, &[0, 1])),
            Err(ApprovalError::BadSignature(1))
        );
        // The joining machine's operator is not an operator of the cluster yet: signing as a
        // current custodian does not count.
        let mut joining = sign(&change, &[3]);
        joining[0].custodian = 3;
        assert_eq!(
            check(&[sign(&change, &[0])[0].clone(), joining[0].clone()]),
            Err(ApprovalError::BadSignature(3))
        );
        // An approval of something else by the same operators does not count for this.
        let other = approval::sign(&operators[0], &Subject::Revocation { name: "x" });
        let other = ApprovalSignature {
            custodian: 1,
            signature: hex::encode(other),
        };
        assert_eq!(check(&[other]), Err(ApprovalError::BadSignature(1)));
    }
}
