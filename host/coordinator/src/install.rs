//! `POST /v1/packages`: a publisher's signed package, its sealed shares and its signed deal of
//! them. Only a publisher of the config's allow-list installs; the deal must be signed by the
//! package's own signer and list exactly the ciphertexts uploaded; the same name and version
//! with other bytes is refused.

use quorumvm_ledger::Commit as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quorumvm_package::{Domain, PackageId, claimed_signer};
use quorumvm_sealing::SealedShare;
use quorumvm_server::Body;
use quorumvm_wire::api::{InstallRequest, VersionState, decode_bytes};
use quorumvm_wire::deal::Deal;

use crate::custodians::Roster;
use crate::error::ApiError;
use crate::packages::{info, known};
use crate::registry::{KitPool, Version};
use crate::{State, store};

pub async fn install(
    AxumState(state): AxumState<Arc<State>>,
    Body(request): Body<InstallRequest>,
) -> Result<Response, ApiError> {
    let bytes =
        decode_bytes(&request.package).map_err(|m| ApiError::bad_request("bad_package", m))?;
    let signer = claimed_signer(&bytes).ok_or_else(|| {
        ApiError::bad_request(
            "unsigned",
            "the package is not signed: sign it with `quorumvm sign`",
        )
    })?;
    let publisher = state
        .publishers
        .iter()
        .find(|p| p.to_bytes() == signer)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "unknown_publisher",
                format!(
                    "publisher {} is not among this coordinator's publishers",
                    hex::encode(signer)
                ),
            )
        })?;
    let id = quorumvm_package::verify(&bytes, publisher)
        .map_err(|e| ApiError::bad_request("bad_signature", e.to_string()))?;
    let package_id = id.to_string();
    let sandbox = state.sandbox.clone();
    let (bytes, manifest) = state
        .env
        .blocking(move || {
            sandbox
                .read_package(&bytes, quorumvm_sandbox::package_limits())
                .map(|(manifest, _circuit)| (bytes, manifest))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request("bad_package", e.to_string()))?;
    // One membership for both checks: the shares must be dealt to the cluster in force.
    let roster = state.custodians.roster();
    check_shares(&roster, &id, &manifest, &request.shares)?;
    check_deal(&state, &roster, &id, publisher, &manifest, &request)?;

    let publisher_hex = publisher.to_hex();
    let (job_id, job_publisher, job_manifest) =
        (package_id.clone(), publisher_hex.clone(), manifest.clone());
    let (shares, deal) = (request.shares, request.deal);
    let job_deal = deal.clone();
    let now = state.env.now_ms();
    let outcome = state
        .storage
        .commit(move |tx| {
            store::install(
                tx,
                &store::NewVersion {
                    package_id: &job_id,
                    publisher: &job_publisher,
                    package: &bytes,
                    manifest: &job_manifest,
                    shares: &shares,
                    deal: &job_deal,
                    now_ms: now,
                },
            )
        })
        .await?;
    let status = match outcome {
        store::Installed::New => {
            tracing::info!(package = %package_id, name = %manifest.name, version = manifest.version, "installed, pending approvals");
            state.registry.insert(Version {
                package_id: package_id.clone(),
                manifest,
                publisher: publisher_hex,
                deal,
                state: std::sync::Mutex::new(VersionState::Pending),
                approvals: std::sync::Mutex::new(vec![]),
                retirements: std::sync::Mutex::new(vec![]),
                kits: std::sync::Mutex::new(KitPool::default()),
                kits_added: Default::default(),
                checks: Default::default(),
            });
            StatusCode::CREATED
        }
        store::Installed::AlreadyInstalled => StatusCode::OK,
    };
    let v = known(&state, &package_id).await?;
    Ok((status, Json(info(&state, &v))).into_response())
}

/// Every custodian gets exactly one sealed share of every declared secret, well formed.
/// (Whether it opens only its custodian can tell; it checks at activation.)
fn check_shares(
    roster: &Roster,
    id: &PackageId,
    manifest: &quorumvm_core::circuit::Manifest,
    shares: &[quorumvm_wire::api::SealedShares],
) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_shares", m);
    for c in &roster.all {
        let mut mine = shares.iter().filter(|s| s.custodian == c.index());
        let Some(s) = mine.next() else {
            return Err(bad(format!("no sealed shares for custodian {}", c.index())));
        };
        if mine.next().is_some() {
            return Err(bad(format!(
                "custodian {}'s shares are given twice",
                c.index()
            )));
        }
        for secret in &manifest.secrets {
            let sealed = s.sealed.get(&secret.name).ok_or_else(|| {
                bad(format!(
                    "custodian {} has no share of secret `{}`",
                    c.index(),
                    secret.name
                ))
            })?;
            let bytes = hex::decode(sealed).map_err(|_| {
                bad(format!(
                    "custodian {}'s share of `{}` is not hex",
                    c.index(),
                    secret.name
                ))
            })?;
            SealedShare::from_bytes(&bytes).map_err(|e| {
                bad(format!(
                    "custodian {}'s share of `{}`: {e}",
                    c.index(),
                    secret.name
                ))
            })?;
        }
        if let Some(extra) = s
            .sealed
            .keys()
            .find(|k| !manifest.secrets.iter().any(|d| &d.name == *k))
        {
            return Err(bad(format!(
                "package {id} declares no secret `{extra}` (custodian {})",
                c.index()
            )));
        }
    }
    if let Some(s) = shares.iter().find(|s| roster.get(s.custodian).is_none()) {
        return Err(bad(format!(
            "custodian {} is not in this cluster",
            s.custodian
        )));
    }
    Ok(())
}

/// The deal is signed by the package's publisher and lists, for every custodian under its
/// configured key, exactly the sealed shares uploaded (each custodian checks the same for
/// itself before opening; this refuses a broken upload early).
fn check_deal(
    state: &State,
    roster: &Roster,
    id: &PackageId,
    publisher: &quorumvm_package::PublicKey,
    manifest: &quorumvm_core::circuit::Manifest,
    request: &InstallRequest,
) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_deal", m);
    let deal: Deal = request
        .deal
        .open(Domain::Deal, publisher)
        .map_err(|e| bad(format!("the deal of the shares: {e}")))?;
    let names: Vec<&str> = manifest.secrets.iter().map(|d| d.name.as_str()).collect();
    for s in &request.shares {
        let member = roster
            .get(s.custodian)
            .expect("check_shares checked the custodians");
        let sealed = s
            .sealed
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    hex::decode(v).expect("check_shares checked the hex"),
                )
            })
            .collect();
        deal.check_mine(
            id,
            state.custodians.roster().threshold(),
            s.custodian,
            &member.member.sealing_key.to_hex(),
            &names,
            &sealed,
        )
        .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}
