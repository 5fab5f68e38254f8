//! The publisher's and the custodian operator's side of a cluster: `install` (share and seal
//! the secrets on this machine, sign the deal of the ciphertexts, upload) and `approve` (review
//! and sign a version, or a caller identity).

use std::path::{Path, PathBuf};

use quorumvm_core::circuit::Manifest;
use quorumvm_core::eval::encode_values;
use quorumvm_core::shamir::{self, Threshold};
use quorumvm_package::{Domain, PackageId, PublicKey, SecretKey, claimed_signer, package_id};
use quorumvm_sandbox::Sandbox;
use quorumvm_sealing::{CustodianPublicKey, ShareBinding, seal_share};
use quorumvm_wire::api::{
    ClusterInfo, IdentityInfo, InstallRequest, MembershipInfo, SealedShares, VersionInfo,
    encode_bytes,
};
use quorumvm_wire::approval::Subject;
use quorumvm_wire::config::{Cluster, CoordinatorConfig, CustodianConfig, Fingerprint};
use quorumvm_wire::deal::{Deal, Dealt, share_digest};
use quorumvm_wire::signed::Signed;

use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure, Result, read_text};
use crate::operator::Operator;

pub fn read_manifest(bytes: &[u8]) -> Result<Manifest> {
    let sandbox = Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?;
    let (manifest, _) = sandbox
        .read_package(bytes, quorumvm_sandbox::package_limits())
        .map_err(Failure::data)?;
    Ok(manifest)
}

/// Shares every secret k-of-n here, seals share `i` to custodian `i`'s X25519 key (bound to
/// the package id, `i` and the secret's name), signs the deal of those ciphertexts with the
/// publisher's key (the one that signed the package) and uploads package, ciphertexts and deal.
/// The plaintext values and shares never leave this process.
///
/// The custodians' keys come from the coordinator unless `pinned` gives them: with `pinned`,
/// a coordinator that names other keys (to have shares sealed to itself) is refused.
pub async fn install(
    client: &Client,
    signed: &[u8],
    publisher: &SecretKey,
    secrets: &[(String, String)],
    pinned: Option<&Cluster>,
) -> Result<VersionInfo> {
    if claimed_signer(signed) != Some(publisher.public().to_bytes()) {
        return Err(Failure::data(
            "the package is not signed with this publisher key: the deal of its shares must be \
             signed by the package's own publisher",
        ));
    }
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
                "the coordinator describes other custodians or keys than the pinned cluster: not \
                 sealing any share (a cluster config names the membership as first configured; \
                 after a rotation, pin the one a custodian holds with --custodian)",
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
                epoch: 0,
            };
            let sealed = seal_share(key, &binding, point).map_err(Failure::data)?;
            out.sealed
                .insert(decl.name.clone(), hex::encode(sealed.to_bytes()));
        }
    }
    let deal = Deal {
        package_id: id.to_string(),
        threshold: cluster.threshold,
        custodians: cluster
            .custodians
            .iter()
            .zip(&shares)
            .map(|(c, s)| Dealt {
                custodian: c.index,
                sealing_key: c.sealing_key.clone(),
                shares: s
                    .sealed
                    .iter()
                    .map(|(name, hex_text)| {
                        (
                            name.clone(),
                            share_digest(&hex::decode(hex_text).expect("hex just written")),
                        )
                    })
                    .collect(),
            })
            .collect(),
    };
    let request = InstallRequest {
        package: encode_bytes(signed),
        shares,
        deal: Signed::sign(&deal, Domain::Deal, publisher),
    };
    Ok(client.install(&request).await?)
}

/// Where a publisher or caller takes the custodians' keys from, rather than from the
/// coordinator: `--cluster-config` (the cluster as configured) or `--custodian` (the membership
/// a custodian it trusts holds now, which after a rotation is no longer the configs').
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PinnedArgs {
    /// A cluster config (a coordinator's or a custodian's) listing every custodian's keys.
    #[arg(long, env = "QUORUMVM_CLUSTER_CONFIG", conflicts_with = "custodian")]
    pub cluster_config: Option<PathBuf>,
    /// A custodian's URL: the keys are those of the membership it holds
    /// (`GET /v1/membership`).
    #[arg(long = "custodian")]
    pub custodian: Option<String>,
    /// That custodian's TLS key pin (its `tls_fingerprint`); absent, plain HTTP on the loopback.
    #[arg(long = "custodian-pin", requires = "custodian")]
    pub custodian_pin: Option<Fingerprint>,
}

impl PinnedArgs {
    /// The cluster to check the coordinator's against, if one is given.
    pub async fn cluster(&self) -> Result<Option<Cluster>> {
        if let Some(path) = &self.cluster_config {
            return pinned_cluster(path).map(Some);
        }
        let Some(url) = &self.custodian else {
            return Ok(None);
        };
        let held: MembershipInfo = Client::new(&Endpoint::pinned(url, self.custodian_pin))?
            .get("/v1/membership")
            .await?;
        Cluster::new(held.threshold, &held.custodians)
            .map(Some)
            .map_err(|e| Failure::data(format!("{url}: its membership does not parse: {e}")))
    }
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
pub async fn approve(operator: &Operator, package: &str) -> Result<(Manifest, VersionInfo)> {
    let client = &operator.coordinator;
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
    let deal: Signed = client.get(&format!("/v1/packages/{package}/deal")).await?;
    check_deal(&operator.cluster, &bytes, &deal)?;
    let request = operator.approve(&Subject::Version {
        package: &id,
        manifest: &manifest,
        deal: &deal.digest(),
    });
    let info = client.approve(package, &request).await?;
    Ok((manifest, info))
}

/// What an operator can check of a deal without seeing anyone's shares: the package's own
/// publisher signed it, for the cluster's threshold, dealing once to every custodian under the
/// sealing key the cluster lists. The cluster is the coordinator's description of it, so this
/// only catches a mistake early: each custodian checks the deal against its own config and its
/// own ciphertexts before opening them.
fn check_deal(cluster: &ClusterInfo, package: &[u8], deal: &Signed) -> Result<()> {
    let refuse = |m: String| Failure::new(Code::Rejected, format!("{m}: not approving"));
    let publisher = claimed_signer(package)
        .and_then(|k| PublicKey::from_bytes(&k).ok())
        .ok_or_else(|| refuse("the package names no publisher".into()))?;
    let deal: Deal = deal
        .open(Domain::Deal, &publisher)
        .map_err(|e| refuse(format!("the deal of the shares: {e}")))?;
    if deal.threshold != cluster.threshold || deal.custodians.len() != cluster.custodians.len() {
        return Err(refuse(format!(
            "the deal is for {} custodians at threshold {}, this cluster has {} at {}",
            deal.custodians.len(),
            deal.threshold,
            cluster.custodians.len(),
            cluster.threshold
        )));
    }
    for member in &cluster.custodians {
        let dealt = deal
            .custodians
            .iter()
            .filter(|d| d.custodian == member.index)
            .collect::<Vec<_>>();
        if dealt.len() != 1
            || !dealt[0]
                .sealing_key
                .eq_ignore_ascii_case(&member.sealing_key)
        {
            return Err(refuse(format!(
                "the deal does not seal custodian {}'s shares to its key",
                member.index
            )));
        }
    }
    Ok(())
}

/// A custodian operator's approval of a caller identity: fetch the proposal, sign its name and
/// key, submit.
pub async fn approve_identity(operator: &Operator, name: &str) -> Result<IdentityInfo> {
    let client = &operator.coordinator;
    let proposal: IdentityInfo = client.get(&format!("/v1/identities/{name}")).await?;
    if proposal.name != name {
        return Err(Failure::new(
            Code::Rejected,
            format!(
                "the coordinator described identity `{}`, not `{name}`",
                proposal.name
            ),
        ));
    }
    let caller = PublicKey::from_file_text(&proposal.public_key).map_err(Failure::data)?;
    let request = operator.approve(&Subject::Identity { name, key: &caller });
    Ok(client.approve_identity(name, &request).await?)
}

/// Signs an approval without submitting it (the demo uses it to show a forged one refused).
pub fn approval_signature(
    key_file: &Path,
    id: &PackageId,
    manifest: &Manifest,
    deal: &Signed,
) -> Result<String> {
    let key = SecretKey::from_file_text(&read_text(key_file)?).map_err(Failure::data)?;
    Ok(hex::encode(quorumvm_wire::approval::sign(
        &key,
        &Subject::Version {
            package: id,
            manifest,
            deal: &deal.digest(),
        },
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
