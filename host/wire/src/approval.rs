//! Approvals: a custodian operator's ed25519 signature over a package version.
//!
//! The statement binds the package id (the SHA-256 of the signed package, so the code, the
//! circuit and the publisher's signature) and, explicitly, the digest of the manifest the
//! operator was shown (name, version, declared inputs and ranges, secrets, outputs and policy):
//! an approval for one package can never count for another, and what was reviewed is on record.

use quorumvm_core::circuit::Manifest;
use quorumvm_package::{Domain, PackageId, SecretKey};
use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::order::ApprovalSignature;

/// The bytes an approval signs: the package id, then the SHA-256 of the manifest's JSON.
pub fn statement(package: &PackageId, manifest: &Manifest) -> Vec<u8> {
    let manifest_json = serde_json::to_vec(manifest).expect("manifests serialize");
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&package.0);
    out.extend_from_slice(&Sha256::digest(&manifest_json));
    out
}

pub fn sign(key: &SecretKey, package: &PackageId, manifest: &Manifest) -> [u8; 64] {
    key.sign_statement(Domain::Approval, &statement(package, manifest))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("custodian {0} is not a member of this cluster")]
    UnknownCustodian(u32),
    #[error(
        "custodian {0}'s signature does not verify for this package: forged, or made for another package"
    )]
    BadSignature(u32),
    #[error("custodian {0} has already approved this package")]
    Duplicate(u32),
}

/// Checks one approval against the cluster's keys.
pub fn check(
    cluster: &Cluster,
    package: &PackageId,
    manifest: &Manifest,
    approval: &ApprovalSignature,
) -> Result<(), ApprovalError> {
    let member = cluster
        .member(approval.custodian)
        .ok_or(ApprovalError::UnknownCustodian(approval.custodian))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&approval.signature, &mut sig)
        .map_err(|_| ApprovalError::BadSignature(approval.custodian))?;
    if member
        .signing_key
        .verify_statement(Domain::Approval, &statement(package, manifest), &sig)
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
    package: &PackageId,
    manifest: &Manifest,
    approvals: &[ApprovalSignature],
) -> Result<Vec<u32>, ApprovalError> {
    let mut seen = Vec::with_capacity(approvals.len());
    for a in approvals {
        if seen.contains(&a.custodian) {
            return Err(ApprovalError::Duplicate(a.custodian));
        }
        check(cluster, package, manifest, a)?;
        seen.push(a.custodian);
    }
    Ok(seen)
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
                signing_key: k.public().to_hex(),
                sealing_key: CustodianSecretKey::generate().public().to_hex(),
            })
            .collect();
        let cluster = Cluster::new(2, &entries).unwrap();
        let (pkg, other) = (PackageId([1; 32]), PackageId([2; 32]));
        let m = manifest(1);
        let approve = |i: usize, p: &PackageId, m: &Manifest| ApprovalSignature {
            custodian: i as u32 + 1,
            signature: hex::encode(sign(&keys[i], p, m)),
        };
        let good = [approve(0, &pkg, &m), approve(2, &pkg, &m)];
        assert_eq!(check_all(&cluster, &pkg, &m, &good), Ok(vec![1, 3]));
        // Duplicate custodian.
        let dup = [approve(0, &pkg, &m), approve(0, &pkg, &m)];
        assert_eq!(
            check_all(&cluster, &pkg, &m, &dup),
            Err(ApprovalError::Duplicate(1))
        );
        // Made for another package, or another manifest.
        let wrong = approve(1, &other, &m);
        assert_eq!(
            check(&cluster, &pkg, &m, &wrong),
            Err(ApprovalError::BadSignature(2))
        );
        let wrong_manifest = approve(1, &pkg, &manifest(2));
        assert_eq!(
            check(&cluster, &pkg, &m, &wrong_manifest),
            Err(ApprovalError::BadSignature(2))
        );
        // Custodian 2's slot signed by custodian 1's key: forged.
        let mut forged = approve(0, &pkg, &m);
        forged.custodian = 2;
        assert_eq!(
            check(&cluster, &pkg, &m, &forged),
            Err(ApprovalError::BadSignature(2))
        );
        forged.custodian = 7;
        assert_eq!(
            check(&cluster, &pkg, &m, &forged),
            Err(ApprovalError::UnknownCustodian(7))
        );
    }
}
