//! Approvals: a custodian operator's ed25519 signature over a package version, or over a
//! caller identity.
//!
//! A version's statement binds the package id (the SHA-256 of the signed package, so the code,
//! the circuit and the publisher's signature), the digest of the manifest the operator was shown
//! (name, version, declared inputs and ranges, secrets, outputs and policy) and the digest of
//! the publisher's signed deal of the shares ([`crate::deal`]): an approval for one package can
//! never count for another, nor for other shares, and what was reviewed is on record.
//!
//! An identity's statement binds its name and its ed25519 key: a caller exists for a custodian
//! only once k operators signed exactly that pair, so the coordinator cannot create one.
//!
//! Governance by the same k: a revocation's statement is an identity's name (every key it ever
//! had: a revoked name never serves again), a retirement's is a package id. Each kind of
//! statement has its own [`Domain`], so no approval counts as another kind's. A change of the
//! cluster's membership ([`crate::membership`]) is approved by k operators of the current
//! cluster.

use quorumvm_core::circuit::Manifest;
use quorumvm_package::{Domain, PackageId, PublicKey, SecretKey};
use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::order::ApprovalSignature;

/// What an approval is of: one version (with its deal), one identity and its key, the
/// revocation of an identity, or the retirement of a version.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Version {
        package: &'a PackageId,
        manifest: &'a Manifest,
        /// [`crate::signed::Signed::digest`] of the publisher's deal.
        deal: &'a [u8; 32],
    },
    Identity {
        name: &'a str,
        key: &'a PublicKey,
    },
    Revocation {
        name: &'a str,
    },
    Retirement {
        package: &'a PackageId,
    },
    Unfreeze(&'a crate::freeze::Unfreeze),
    Membership(&'a crate::membership::Change),
}

impl Subject<'_> {
    fn domain(&self) -> Domain {
        match self {
            Subject::Version { .. } => Domain::Approval,
            Subject::Identity { .. } => Domain::Identity,
            Subject::Revocation { .. } => Domain::Revocation,
            Subject::Retirement { .. } => Domain::Retirement,
            Subject::Unfreeze(_) => Domain::Unfreeze,
            Subject::Membership(_) => Domain::Membership,
        }
    }

    /// The bytes an approval signs. A version: package id, SHA-256 of the manifest's JSON,
    /// deal digest. An identity: its key, then its name. A revocation: the name. A retirement:
    /// the package id. An unfreeze: [`crate::freeze::Unfreeze::statement`]. A change of
    /// membership: [`crate::membership::Change::statement`].
    pub fn statement(&self) -> Vec<u8> {
        match self {
            Subject::Version {
                package,
                manifest,
                deal,
            } => {
                let manifest_json = serde_json::to_vec(manifest).expect("manifests serialize");
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(&package.0);
                out.extend_from_slice(&Sha256::digest(&manifest_json));
                out.extend_from_slice(&deal[..]);
                out
            }
            Subject::Identity { name, key } => {
                let mut out = Vec::with_capacity(32 + name.len());
                out.extend_from_slice(&key.to_bytes());
                out.extend_from_slice(name.as_bytes());
                out
            }
            Subject::Revocation { name } => name.as_bytes().to_vec(),
            Subject::Retirement { package } => package.0.to_vec(),
            Subject::Unfreeze(unfreeze) => unfreeze.statement(),
            Subject::Membership(change) => change.statement(),
        }
    }
}

pub fn sign(key: &SecretKey, subject: &Subject<'_>) -> [u8; 64] {
    key.sign_statement(subject.domain(), &subject.statement())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("custodian {0} is not a member of this cluster")]
    UnknownCustodian(u32),
    #[error(
        "custodian {0}'s signature does not verify: forged, or made for another package, deal or identity"
    )]
    BadSignature(u32),
    #[error("custodian {0} has already approved this")]
    Duplicate(u32),
    #[error("{got} valid approval(s) (custodians {approvers:?}); {need} are needed")]
    TooFew {
        got: usize,
        approvers: Vec<u32>,
        need: usize,
    },
}

/// Checks one approval against the cluster's keys.
pub fn check(
    cluster: &Cluster,
    subject: &Subject<'_>,
    approval: &ApprovalSignature,
) -> Result<(), ApprovalError> {
    let member = cluster
        .member(approval.custodian)
        .ok_or(ApprovalError::UnknownCustodian(approval.custodian))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&approval.signature, &mut sig)
        .map_err(|_| ApprovalError::BadSignature(approval.custodian))?;
    if member
        .operator_key
        .verify_statement(subject.domain(), &subject.statement(), &sig)
    {
        Ok(())
    } else {
        Err(ApprovalError::BadSignature(approval.custodian))
    }
}

/// Checks a whole set (as a custodian does at activation): every signature valid, no custodian
/// twice. Returns the approving custodians; the caller compares their number with k.
pub fn check_all(
    cluster: &Cluster,
    subject: &Subject<'_>,
    approvals: &[ApprovalSignature],
) -> Result<Vec<u32>, ApprovalError> {
    let mut seen = Vec::with_capacity(approvals.len());
    for a in approvals {
        if seen.contains(&a.custodian) {
            return Err(ApprovalError::Duplicate(a.custodian));
        }
        check(cluster, subject, a)?;
        seen.push(a.custodian);
    }
    Ok(seen)
}

/// Checks a set as [`check_all`] does, and that it holds the cluster's threshold of distinct
/// approvers: what a custodian requires before it acts on a decision of k operators.
pub fn check_threshold(
    cluster: &Cluster,
    subject: &Subject<'_>,
    approvals: &[ApprovalSignature],
) -> Result<Vec<u32>, ApprovalError> {
    let approvers = check_all(cluster, subject, approvals)?;
    let need = cluster.threshold();
    if approvers.len() < need {
        return Err(ApprovalError::TooFew {
            got: approvers.len(),
            approvers,
            need,
        });
    }
    Ok(approvers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CustodianEntry;
    use quorumvm_core::circuit::Policy;
    use quorumvm_sealing::CustodianSecretKey;

    fn manifest(version: u32) -> Manifest {
        Manifest {
            name: "square".into(),
            version,
            inputs: vec![],
            private_inputs: vec![],
            secrets: vec![],
            outputs: vec![],
            policy: Policy::default(),
            depth: 1,
        }
    }

    #[test]
    fn approvals_count_once_per_custodian_and_only_for_their_package() {
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
        let entries: Vec<CustodianEntry> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| CustodianEntry {
                index: i as u32 + 1,
                url: "http://127.0.0.1:1".into(),
                operator_key: k.public().to_hex(),
                sealing_key: CustodianSecretKey::generate().public().to_hex(),
                tls_fingerprint: None,
            })
            .collect();
        let cluster = Cluster::new(2, &entries).unwrap();
        let (pkg, other) = (PackageId([1; 32]), PackageId([2; 32]));
        let (m, m2) = (manifest(1), manifest(2));
        let (deal, other_deal) = ([5u8; 32], [6u8; 32]);
        let version = |package, manifest, deal| Subject::Version {
            package,
            manifest,
            deal,
        };
        let s = version(&pkg, &m, &deal);
        let approve = |i: usize, subject: &Subject<'_>| ApprovalSignature {
            custodian: i as u32 + 1,
            signature: hex::encode(sign(&keys[i], subject)),
        };
        let good = [approve(0, &s), approve(2, &s)];
        assert_eq!(check_all(&cluster, &s, &good), Ok(vec![1, 3]));
        // Duplicate custodian.
        let dup = [approve(0, &s), approve(0, &s)];
        assert_eq!(
            check_all(&cluster, &s, &dup),
            Err(ApprovalError::Duplicate(1))
        );
        // Made for another package, manifest or deal.
        for wrong in [
            version(&other, &m, &deal),
            version(&pkg, &m2, &deal),
            version(&pkg, &m, &other_deal),
        ] {
            assert_eq!(
                check(&cluster, &s, &approve(1, &wrong)),
                Err(ApprovalError::BadSignature(2))
            );
        }
        // Custodian 2's slot signed by custodian 1's key: forged.
        let mut forged = approve(0, &s);
        forged.custodian = 2;
        assert_eq!(
            check(&cluster, &s, &forged),
            Err(ApprovalError::BadSignature(2))
        );
        forged.custodian = 7;
        assert_eq!(
            check(&cluster, &s, &forged),
            Err(ApprovalError::UnknownCustodian(7))
        );
        // An identity approval counts for that name and key only, never as a version's.
        let (alice, mallory) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let id = Subject::Identity {
            name: "alice",
            key: &alice,
        };
        let approved = approve(0, &id);
        assert_eq!(check(&cluster, &id, &approved), Ok(()));
        for wrong in [
            Subject::Identity {
                name: "alice",
                key: &mallory,
            },
            Subject::Identity {
                name: "alicf",
                key: &alice,
            },
            s,
        ] {
            assert_eq!(
                check(&cluster, &wrong, &approved),
                Err(ApprovalError::BadSignature(1))
            );
        }
        // A revocation or a retirement counts only as itself, for its name or package.
        let revoke = Subject::Revocation { name: "alice" };
        let retire = Subject::Retirement { package: &pkg };
        let revoked = [approve(0, &revoke), approve(1, &revoke)];
        assert_eq!(check_threshold(&cluster, &revoke, &revoked), Ok(vec![1, 2]));
        assert_eq!(
            check_threshold(&cluster, &revoke, &revoked[..1]),
            Err(ApprovalError::TooFew {
                got: 1,
                approvers: vec![1],
                need: 2
            })
        );
        for wrong in [
            Subject::Revocation { name: "alicf" },
            Subject::Retirement { package: &pkg },
            Subject::Identity {
                name: "alice",
                key: &alice,
            },
        ] {
            assert_eq!(
                check(&cluster, &wrong, &revoked[0]),
                Err(ApprovalError::BadSignature(1))
            );
        }
        let retired = approve(2, &retire);
        assert_eq!(check(&cluster, &retire, &retired), Ok(()));
        for wrong in [Subject::Retirement { package: &other }, s] {
            assert_eq!(
                check(&cluster, &wrong, &retired),
                Err(ApprovalError::BadSignature(3))
            );
        }
    }
}
