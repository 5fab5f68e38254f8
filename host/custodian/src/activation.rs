//! `Activate`: a version reached its approvals at the coordinator; this custodian fetches it,
//! checks everything itself, opens its shares and serves it.
//!
//! The coordinator's word activates nothing. What the custodian checks (and checks again, from
//! its ledger, at every start):
//!
//! - the package bytes hash to the package id the approvals sign;
//! - the package reads in the sandbox, and its circuit matches its manifest;
//! - the deal ([`quorumvm_wire::deal`]) is signed by the key that signed the package, and lists
//!   for this custodian, under its own sealing key, exactly the sealed shares offered: a share
//!   substituted by the coordinator (anyone can seal to a public key) is refused here;
//! - at least `k` distinct custodians of this cluster signed an approval of exactly this
//!   package id, manifest and deal, and no approval offered is forged or duplicated;
//! - every secret the manifest declares has a share sealed to this custodian for this package
//!   and this secret name (the binding is part of the sealing), and nothing else is offered;
//! - no version of the same name at least as high is activated here, and the version was not
//!   retired or refused here before.
//!
//! An activated version does not serve yet: first the custodians check together that the
//! shares of every secret lie on one polynomial ([`crate::share_check`]). A version whose shares
//! pass retires the lower ones of its name; a retired or refused version never activates again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use quorumvm_core::circuit::{Circuit, Manifest};
use quorumvm_core::field::Fp;
use quorumvm_package::{Domain, PackageId, PublicKey, claimed_signer, package_id};
use quorumvm_sandbox::{Sandbox, SandboxError, package_limits};
use quorumvm_sealing::{CustodianSecretKey, SealedShare, ShareBinding, open_share};
use quorumvm_server::http::HttpError;
use quorumvm_wire::api::{DealtShares, FETCH_AUTH_HEADER, OrderResponse};
use quorumvm_wire::approval::{self, ApprovalError, Subject};
use quorumvm_wire::config::Cluster;
use quorumvm_wire::deal::{Deal, DealError};
use quorumvm_wire::order::ApprovalSignature;
use quorumvm_wire::signed::Signed;
use zeroize::Zeroizing;

use crate::error::{self, ApiError};
use crate::state::Custodian;
use crate::store::{self, NewVersion};
use crate::versions::{Standing, Version, parse_package_id};
use quorumvm_wire::code::ErrorCode;

/// Fetching from the coordinator: a package may be large, and activation is rare.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest package this custodian downloads.
pub(crate) const MAX_PACKAGE_BYTES: usize = 64 << 20;
/// Sealed shares are a few hundred bytes per secret.
pub(crate) const MAX_SHARES_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionError {
    #[error("the package bytes hash to {got}, not to the package id {expected}")]
    WrongId { expected: String, got: String },
    #[error("the package does not read in the sandbox: {0}")]
    Unreadable(#[from] SandboxError),
    #[error("an approval is refused: {0}")]
    Approval(#[from] ApprovalError),
    #[error("{got} valid approval(s) (custodians {approvers:?}); activation needs {need}")]
    TooFewApprovals {
        got: usize,
        approvers: Vec<u32>,
        need: usize,
    },
    #[error("no sealed share of secret `{0}` for this custodian")]
    MissingShare(String),
    #[error("a share of `{0}` is offered, but the manifest declares no such secret")]
    UnknownShare(String),
    #[error("the sealed share of `{secret}` is refused: {reason}")]
    BadShare { secret: String, reason: String },
    #[error("the deal of the shares is not signed by the package's publisher")]
    UnsignedDeal,
    #[error("the deal of the shares is refused: {0}")]
    Deal(#[from] DealError),
}

impl From<VersionError> for ApiError {
    fn from(err: VersionError) -> ApiError {
        let (status, code) = match &err {
            VersionError::WrongId { .. } => (StatusCode::BAD_GATEWAY, "package_mismatch"),
            VersionError::Unreadable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_package"),
            VersionError::Approval(_) => (StatusCode::FORBIDDEN, "bad_approval"),
            VersionError::TooFewApprovals { .. } => (StatusCode::FORBIDDEN, "not_enough_approvals"),
            VersionError::MissingShare(_)
            | VersionError::UnknownShare(_)
            | VersionError::BadShare { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_shares"),
            VersionError::UnsignedDeal | VersionError::Deal(_) => {
                (StatusCode::FORBIDDEN, "bad_deal")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

/// A version that passed every check, with this custodian's shares opened.
pub(crate) struct CheckedVersion {
    pub manifest: Manifest,
    pub circuit: Circuit,
    /// In the manifest's order.
    pub secrets: Zeroizing<Vec<Fp>>,
    pub approvers: Vec<u32>,
}

/// A version's sealed shares as stored: as dealt, and those a refresh replaced them with.
pub(crate) struct Shares<'a> {
    pub sealed: &'a BTreeMap<String, Vec<u8>>,
    /// Secret name → (epoch, sealed share); empty until a refresh covers the version.
    pub refreshed: &'a BTreeMap<String, (u64, Vec<u8>)>,
}

/// What a custodian needs to check a version: its sandbox, the cluster that approved the
/// version and the custodian's index in it (where its dealt shares are; `None` for a machine
/// that joined the cluster since, which holds only shares a rotation re-dealt to it), its
/// index now (where its refreshed shares are: a rotation may have moved it) and its key.
pub(crate) struct Checker<'a> {
    pub sandbox: &'a Sandbox,
    pub cluster: &'a Cluster,
    pub me: Option<u32>,
    pub now: u32,
    pub key: &'a CustodianSecretKey,
}

/// A version's package read and its approvals and deal checked, before any share.
pub(crate) struct Approved {
    pub manifest: Manifest,
    pub circuit: Circuit,
    dealt: Deal,
    approvers: Vec<u32>,
}

impl Checker<'_> {
    /// The checks of a version that need no share of it: the package is the one its id
    /// names, k operators of `cluster` approved it, and its publisher signed the deal.
    /// Blocking: the sandbox compiles the package.
    pub fn approved(
        &self,
        id: &PackageId,
        package: &[u8],
        approvals: &[ApprovalSignature],
        deal: &Signed,
    ) -> Result<Approved, VersionError> {
        let got = package_id(package);
        if got != *id {
            return Err(VersionError::WrongId {
                expected: id.to_string(),
                got: got.to_string(),
            });
        }
        let (manifest, circuit) = self.sandbox.read_package(package, package_limits())?;
        // The package's own signer (its signature is part of the id, which the approvals
        // sign) must have signed the deal.
        let publisher = claimed_signer(package)
            .and_then(|k| PublicKey::from_bytes(&k).ok())
            .ok_or(VersionError::UnsignedDeal)?;
        let dealt: Deal = deal
            .open(Domain::Deal, &publisher)
            .map_err(|_| VersionError::UnsignedDeal)?;
        let subject = Subject::Version {
            package: id,
            manifest: &manifest,
            deal: &deal.digest(),
        };
        let approvers = approval::check_all(self.cluster, &subject, approvals)?;
        let need = self.cluster.threshold();
        if approvers.len() < need {
            return Err(VersionError::TooFewApprovals {
                got: approvers.len(),
                approvers,
                need,
            });
        }
        Ok(Approved {
            manifest,
            circuit,
            dealt,
            approvers,
        })
    }

    /// Every check of the module documentation. Blocking: the sandbox compiles the package.
    pub fn check(
        &self,
        id: &PackageId,
        package: &[u8],
        approvals: &[ApprovalSignature],
        deal: &Signed,
        shares: Shares<'_>,
    ) -> Result<CheckedVersion, VersionError> {
        let Shares { sealed, refreshed } = shares;
        let Approved {
            manifest,
            circuit,
            dealt,
            approvers,
        } = self.approved(id, package, approvals, deal)?;
        let names: Vec<&str> = manifest.secrets.iter().map(|d| d.name.as_str()).collect();
        // Once refreshed, the dealt ciphertexts are deleted: the refresh was checked by the
        // custodians together when it was made. A machine that joined since holds none (and a
        // version without secrets, nothing to check).
        let dealt_here = self.me.and_then(|me| Some((me, self.cluster.member(me)?)));
        if let (true, Some((me, member))) = (refreshed.is_empty(), dealt_here) {
            dealt.check_mine(
                id,
                self.cluster.threshold(),
                me,
                &member.sealing_key.to_hex(),
                &names,
                sealed,
            )?;
        }
        if let Some(name) = sealed
            .keys()
            .chain(refreshed.keys())
            .find(|name| !manifest.secrets.iter().any(|d| &d.name == *name))
        {
            return Err(VersionError::UnknownShare(name.clone()));
        }
        let mut secrets = Zeroizing::new(Vec::with_capacity(manifest.secrets.len()));
        for decl in &manifest.secrets {
            let missing = || VersionError::MissingShare(decl.name.clone());
            let (epoch, bytes, at) = match refreshed.get(&decl.name) {
                Some((epoch, bytes)) => (*epoch, bytes, self.now),
                None => (
                    0,
                    sealed.get(&decl.name).ok_or_else(missing)?,
                    self.me.ok_or_else(missing)?,
                ),
            };
            let refused = |reason: String| VersionError::BadShare {
                secret: decl.name.clone(),
                reason,
            };
            let sealed = SealedShare::from_bytes(bytes).map_err(|e| refused(e.to_string()))?;
            let binding = ShareBinding {
                package: *id,
                custodian: at,
                secret: &decl.name,
                epoch,
            };
            let share =
                open_share(self.key, &binding, &sealed).map_err(|e| refused(e.to_string()))?;
            if share.x != at {
                return Err(refused(format!(
                    "it is custodian {}'s share, not this custodian's",
                    share.x
                )));
            }
            secrets.push(share.y);
        }
        Ok(CheckedVersion {
            manifest,
            circuit,
            secrets,
            approvers,
        })
    }
}

/// Handles an `Activate` order; idempotent for an activated version (answering whether it
/// serves yet), refused for a retired or refused one or one that a higher activated version of
/// its name supersedes.
pub(crate) async fn activate(
    c: &Arc<Custodian>,
    package_id: &str,
    approvals: Vec<ApprovalSignature>,
) -> Result<OrderResponse, ApiError> {
    let id = parse_package_id(package_id).ok_or_else(|| {
        ApiError::bad_request("bad_package_id", "a package id is 64 hexadecimal digits")
    })?;
    if let Some(known) = activated(&id, package_id, c)? {
        return Ok(known);
    }
    // One activation at a time: they are rare, and two of the same version must not race.
    let _one = c.activation.lock().await;
    if let Some(known) = activated(&id, package_id, c)? {
        return Ok(known);
    }
    let id_hex = id.to_string();
    // One view of the cluster for the whole activation: the version is checked against it and
    // recorded with its generation (refused if a rotation commits meanwhile).
    let current = c.current();
    let me = current.me;
    let base = format!("/v1/packages/{id_hex}");
    let package = fetch(c, &format!("{base}/wasm"), MAX_PACKAGE_BYTES).await?;
    let shares = fetch(c, &format!("{base}/shares/{me}"), MAX_SHARES_BYTES).await?;
    let DealtShares { shares, deal } = serde_json::from_slice(&shares).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_shares",
            format!("the coordinator's sealed shares are unreadable: {e}"),
        )
    })?;
    if shares.custodian != me {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_shares",
            format!(
                "the coordinator sent custodian {}'s sealed shares to custodian {me}",
                shares.custodian
            ),
        ));
    }
    let mut sealed = BTreeMap::new();
    for (secret, text) in shares.sealed {
        let bytes = hex::decode(&text).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_shares",
                format!("the sealed share of `{secret}` is not hex"),
            )
        })?;
        sealed.insert(secret, bytes);
    }

    let checking = Arc::clone(c);
    let snapshot = current.clone();
    let (checked, package, sealed, approvals, deal) = c
        .off_thread("checking the version", move || {
            let checked = checking.checker(&snapshot).check(
                &id,
                &package,
                &approvals,
                &deal,
                Shares {
                    sealed: &sealed,
                    refreshed: &BTreeMap::new(),
                },
            );
            (checked, package, sealed, approvals, deal)
        })
        .await?;
    let checked = checked?;
    let deal_digest = deal.digest();
    let same_name = c.versions.named(&checked.manifest.name);
    if let Some(higher) = same_name
        .iter()
        .find(|v| v.manifest.version >= checked.manifest.version)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "superseded",
            format!(
                "version {} of `{}` is active here ({}): version {} would never serve",
                higher.manifest.version,
                higher.manifest.name,
                higher.id_hex,
                checked.manifest.version
            ),
        ));
    }

    let manifest_json = serde_json::to_string(&checked.manifest)
        .map_err(|e| ApiError::internal(format!("the manifest does not serialize: {e}")))?;
    let record = NewVersion {
        package_id: id_hex.clone(),
        name: checked.manifest.name.clone(),
        version: checked.manifest.version,
        package,
        manifest_json,
        approvals,
        deal,
        sealed,
        generation: current.generation,
        now_ms: c.env.now_ms(),
    };
    c.writer
        .run(move |tx| store::insert_version(tx, &record))
        .await?;
    tracing::info!(
        package_id = %id_hex,
        name = %checked.manifest.name,
        version = checked.manifest.version,
        approvals = ?checked.approvers,
        "version activated; its shares await their joint check"
    );
    c.versions.insert(
        Version::new(
            id,
            checked.manifest,
            checked.circuit,
            deal_digest,
            checked.secrets,
            0,
        ),
        false,
    );
    Ok(status(UNCHECKED))
}

/// What an `Activate` order answers for a version activated here already (`None`: it is not).
fn activated(
    id: &PackageId,
    package_id: &str,
    c: &Custodian,
) -> Result<Option<OrderResponse>, ApiError> {
    match c.versions.standing(id) {
        None => Ok(None),
        Some(Standing::Serving(_)) => Ok(Some(status(ACTIVE))),
        Some(Standing::Unchecked(_)) => Ok(Some(status(UNCHECKED))),
        Some(Standing::Refused) => Err(error::shares_refused(package_id, "")),
        Some(Standing::Retired) => Err(retired(id)),
    }
}

/// An `Activate` order's answer: the version serves.
pub(crate) const ACTIVE: &str = "active";
/// An `Activate` order's answer: the version is activated, and awaits the joint check of its
/// shares ([`crate::share_check`]) before it serves.
const UNCHECKED: &str = "unchecked";

pub(crate) fn status(status: &str) -> OrderResponse {
    OrderResponse {
        status: status.into(),
        kits: 0,
        ..Default::default()
    }
}

pub(crate) fn retired(id: &PackageId) -> ApiError {
    ApiError::of(
        ErrorCode::Retired,
        format!(
            "version {id} is retired on this custodian (superseded by a higher version, or \
             retired by k operators): it never serves again"
        ),
    )
}

/// GETs `path` from the coordinator, proving who asks (sealed shares are served only to their
/// custodian), refusing bodies over `limit` bytes.
pub(crate) async fn fetch(c: &Custodian, path: &str, limit: usize) -> Result<Vec<u8>, ApiError> {
    let unavailable = |message: String| {
        ApiError::new(StatusCode::BAD_GATEWAY, "coordinator_unavailable", message)
    };
    let url = format!("{}{path}", c.coordinator_url);
    let response = c
        .http
        .get(&url)
        .header(FETCH_AUTH_HEADER, c.tickets.fetch_tag(path, c.env.now_ms()))
        .timeout(FETCH_TIMEOUT)
        .limit(limit)
        .send()
        .await
        .map_err(|e| match e {
            HttpError::TooLarge(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "too_large",
                format!("GET {url}: more than {limit} bytes"),
            ),
            e => unavailable(format!("GET {url}: {e}")),
        })?;
    if !response.status.is_success() {
        return Err(unavailable(format!("GET {url}: {}", response.status)));
    }
    Ok(response.body.to_vec())
}
