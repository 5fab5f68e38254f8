//! The publisher's and the custodian operator's side of a cluster: `install` (share and seal
//! the secrets on this machine, upload ciphertexts) and `approve` (review and sign a version).

use std::path::Path;

use quorumvm_core::circuit::Manifest;
use quorumvm_core::eval::encode_values;
use quorumvm_core::shamir::{self, Threshold};
use quorumvm_package::{PackageId, SecretKey, package_id};
use quorumvm_sandbox::Sandbox;
use quorumvm_sealing::{CustodianPublicKey, ShareBinding, seal_share};
use quorumvm_wire::api::{ApproveRequest, InstallRequest, SealedShares, VersionInfo, encode_bytes};
use quorumvm_wire::config::{Cluster, CoordinatorConfig, CustodianConfig};

use crate::client::Client;
use crate::exit::{Code, Failure, Result, read_text};

pub fn read_manifest(bytes: &[u8]) -> Result<Manifest> {
    let sandbox = Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?;
    let (manifest, _) = sandbox
        .read_package(bytes, quorumvm_sandbox::package_limits())
        .map_err(Failure::data)?;
    Ok(manifest)
}

/// Shares every secret k-of-n here, seals share `i` to custodian `i`'s X25519 key (bound to
/// the package id, `i` and the secret's name) and uploads the package with the ciphertexts.
/// The plaintext values and shares never leave this process.
///
/// The custodians' keys come from the coordinator unless `pinned` gives them: with `pinned`,
/// a coordinator that names other keys (to have shares sealed to itself) is refused.
pub async fn install(
    client: &Client,
    signed: &[u8],
    secrets: &[(String, String)],
    pinned: Option<&Cluster>,
) -> Result<VersionInfo> {
    let manifest = read_manifest(signed)?;
    let values = encode_values("secret", &manifest.secrets, secrets).map_err(Failure::data)?;
    let id = package_id(signed);
    let cluster = client.cluster().await?;
    if let Some(pinned) = pinned {
        let same = pinned.threshold() == cluster.threshold
            && pinned.n() == cluster.custodians.len()
            && cluster.custodians.iter().all(|c| {
                pinned
                    .member(c.index)
                    .is_some_and(|m| m.sealing_key.to_hex() == c.sealing_key)
            });
        if !same {
            return Err(Failure::new(
                Code::Rejected,
                "the coordinator describes other custodians or keys than the pinned cluster \
                 configuration: not sealing any share",
            ));
        }
    }
    let threshold = Threshold::new(cluster.threshold, cluster.custodians.len())
        .map_err(|e| Failure::data(format!("the coordinator describes an invalid cluster: {e}")))?;
    let mut shares: Vec<SealedShares> = cluster
        .custodians
        .iter()
        .map(|c| SealedShares {
            custodian: c.index,
            sealed: Default::default(),
        })
        .collect();
    let mut rng = rand::rngs::OsRng;
    for (decl, value) in manifest.secrets.iter().zip(values) {
        let points = shamir::share(value, threshold, &mut rng);
        for (c, out) in cluster.custodians.iter().zip(shares.iter_mut()) {
            let key = CustodianPublicKey::from_file_text(&c.sealing_key)
                .map_err(|e| Failure::data(format!("custodian {}'s sealing key: {e}", c.index)))?;
            let point = points.iter().find(|p| p.x == c.index).ok_or_else(|| {
                Failure::data(format!("custodian index {} is out of range", c.index))
            })?;
            let binding = ShareBinding {
                package: id,
                custodian: c.index,
                secret: &decl.name,
            };
            let sealed = seal_share(key, &binding, point).map_err(Failure::data)?;
            out.sealed
                .insert(decl.name.clone(), hex::encode(sealed.to_bytes()));
        }
    }
    let request = InstallRequest {
        package: encode_bytes(signed),
        shares,
    };
    Ok(client.install(&request).await?)
}

/// The cluster a config file describes (a coordinator's or a custodian's: both list every
/// custodian with its keys), for `install --cluster-config`.
pub fn pinned_cluster(path: &Path) -> Result<Cluster> {
    let cluster = match CoordinatorConfig::load(path) {
        Ok(c) => c.cluster(),
        Err(_) => CustodianConfig::load(path)
            .map_err(Failure::data)?
            .cluster(),
    };
    cluster.map_err(Failure::data)
}

/// A custodian operator's approval: fetch the version, check that its bytes are the id, read
/// the manifest here (not the coordinator's description of it), sign, submit.
pub async fn approve(
    config: &CustodianConfig,
    client: &Client,
    package: &str,
) -> Result<(Manifest, VersionInfo)> {
    let key_path = config.data_dir.join("signing.key");
    let key = SecretKey::from_file_text(&read_text(&key_path)?).map_err(Failure::data)?;
    let bytes = client
        .get_bytes(&format!("/v1/packages/{package}/wasm"))
        .await?;
    let id = package_id(&bytes);
    if id.to_string() != package {
        return Err(Failure::new(
            Code::Rejected,
            format!("the coordinator served bytes whose id is {id}, not {package}: not approving"),
        ));
    }
    let manifest = read_manifest(&bytes)?;
    let signature = quorumvm_wire::approval::sign(&key, &id, &manifest);
    let info = client
        .approve(
            package,
            &ApproveRequest {
                custodian: config.index,
                signature: hex::encode(signature),
            },
        )
        .await?;
    Ok((manifest, info))
}

/// Signs an approval without submitting it (the demo uses it to show a forged one refused).
pub fn approval_signature(key_file: &Path, id: &PackageId, manifest: &Manifest) -> Result<String> {
    let key = SecretKey::from_file_text(&read_text(key_file)?).map_err(Failure::data)?;
    Ok(hex::encode(quorumvm_wire::approval::sign(
        &key, id, manifest,
    )))
}

pub fn describe(manifest: &Manifest) -> String {
    let decls = |d: &[quorumvm_core::circuit::ValueDecl]| {
        d.iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let p = &manifest.policy;
    format!(
        "{} version {}: inputs [{}], secrets [{}], outputs [{}], depth {}; policy: cost {}, budget {} per identity, {} per {} s",
        manifest.name,
        manifest.version,
        decls(&manifest.inputs),
        decls(&manifest.secrets),
        decls(&manifest.outputs),
        manifest.depth,
        p.cost_per_eval,
        p.budget_per_identity,
        p.rate_limit,
        p.rate_window_secs
    )
}
