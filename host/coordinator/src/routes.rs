//! The HTTP API (see `quorumvm_wire::api` for the bodies).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quorumvm_package::{Domain, PackageId, claimed_signer};
use quorumvm_sealing::SealedShare;
use quorumvm_server::{Body, metrics};
use quorumvm_wire::api::{
    ApproveRequest, ClusterInfo, CustodianInfo, DealtShares, FETCH_AUTH_HEADER, InstallRequest,
    VersionInfo, VersionState, decode_bytes,
};
use quorumvm_wire::approval::{ApprovalError, Subject};
use quorumvm_wire::deal::Deal;
use quorumvm_wire::now_ms;
use quorumvm_wire::order::ApprovalSignature;
use quorumvm_wire::signed::Signed;

use crate::State;
use crate::error::ApiError;
use crate::registry::{KitPool, Version};
use crate::{background, enrol, eval, retirement, store, suspension};

type Shared = AxumState<Arc<State>>;

/// The largest package upload: a 12,600-gate program is about 0.5 MB.
const MAX_PACKAGE_BODY: usize = 64 << 20;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/packages", post(install).get(list))
        .route("/v1/packages/{id}", get(show))
        .route("/v1/packages/{id}/wasm", get(wasm))
        .route("/v1/packages/{id}/deal", get(deal))
        .route("/v1/packages/{id}/shares/{custodian}", get(shares))
        .route("/v1/packages/{id}/approvals", post(approve))
        .route("/v1/packages/{id}/retirements", post(retirement::approve))
        .route("/v1/identities/{name}", get(enrol::show))
        .route("/v1/identities/{name}/approvals", post(enrol::approve))
        .route("/v1/identities/{name}/revocations", post(enrol::revoke))
        .route("/v1/suspensions", post(suspension::suspend))
        .route(
            "/v1/eval",
            post(eval::handle).layer(DefaultBodyLimit::max(eval::MAX_EVAL_BODY)),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take this method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_PACKAGE_BODY))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "role": "coordinator" }))
}

async fn cluster(AxumState(state): Shared) -> Json<ClusterInfo> {
    let c = &state.custodians;
    Json(ClusterInfo {
        threshold: c.cluster.threshold(),
        custodians: c
            .all
            .iter()
            .map(|x| CustodianInfo {
                index: x.index(),
                url: x.member.url.clone(),
                signing_key: x.member.signing_key.to_hex(),
                sealing_key: x.member.sealing_key.to_hex(),
                live: x.is_live(),
            })
            .collect(),
    })
}

pub(crate) fn info(state: &State, v: &Version) -> VersionInfo {
    state.registry.info(v, state.custodians.cluster.threshold())
}

async fn list(AxumState(state): Shared) -> Json<Vec<VersionInfo>> {
    Json(
        state
            .registry
            .all()
            .iter()
            .map(|v| info(&state, v))
            .collect(),
    )
}

pub(crate) fn known(state: &State, id: &str) -> Result<Arc<Version>, ApiError> {
    state.registry.get(id).ok_or_else(|| {
        ApiError::not_found("unknown_package", format!("no package {id} is installed"))
    })
}

async fn show(
    AxumState(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<VersionInfo>, ApiError> {
    let v = known(&state, &id)?;
    Ok(Json(info(&state, &v)))
}

async fn wasm(AxumState(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    known(&state, &id)?;
    let reader = Arc::clone(&state.reader);
    let bytes = tokio::task::spawn_blocking(move || {
        store::package_bytes(reader.lock().expect("reader lock").connection(), &id)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??
    .ok_or_else(|| ApiError::internal("a registered package has no bytes"))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

async fn deal(AxumState(state): Shared, Path(id): Path<String>) -> Result<Json<Signed>, ApiError> {
    Ok(Json(known(&state, &id)?.deal.clone()))
}

/// Custodian `custodian`'s sealed shares and the deal, to that custodian only: the request
/// carries a tag under the key the coordinator shares with it alone.
async fn shares(
    AxumState(state): Shared,
    Path((id, custodian)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let version = known(&state, &id)?;
    let c = state.custodians.get(custodian).ok_or_else(|| {
        ApiError::not_found("unknown_custodian", format!("no custodian {custodian}"))
    })?;
    let path = format!("/v1/packages/{id}/shares/{custodian}");
    let authentic = headers
        .get(FETCH_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tag| c.tickets.check_fetch_tag(&path, tag, now_ms()));
    if !authentic {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_the_custodian",
            format!("sealed shares are served to custodian {custodian} only"),
        ));
    }
    let reader = Arc::clone(&state.reader);
    let shares = tokio::task::spawn_blocking(move || {
        store::sealed_shares(
            reader.lock().expect("reader lock").connection(),
            &id,
            custodian,
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    // Ciphertexts only: the coordinator cannot open them, and neither can anyone but
    // custodian `custodian`.
    Ok(Json(DealtShares {
        shares,
        deal: version.deal.clone(),
    })
    .into_response())
}

async fn metrics(AxumState(state): Shared) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let live: Vec<(String, u64)> = state
        .custodians
        .all
        .iter()
        .map(|c| {
            (
                format!("{{custodian=\"{}\"}}", c.index()),
                c.is_live() as u64,
            )
        })
        .collect();
    metrics::gauge(
        &mut out,
        "quorumvm_custodian_live",
        "1 if the custodian answers its health checks.",
        &live,
    );
    let kits: Vec<(String, u64)> = state
        .registry
        .all()
        .iter()
        .filter(|v| v.is_active())
        .map(|v| {
            (
                format!(
                    "{{package=\"{}\",name=\"{}\"}}",
                    v.package_id, v.manifest.name
                ),
                v.kits.lock().expect("kits lock").available(),
            )
        })
        .collect();
    metrics::gauge(
        &mut out,
        "quorumvm_kits_available",
        "Preprocessed kits ready per active version.",
        &kits,
    );
    let w = state.writer.stats();
    metrics::counter(
        &mut out,
        "quorumvm_ledger_commits_total",
        "Group commits (one fsync each).",
        w.commits,
    );
    metrics::counter(
        &mut out,
        "quorumvm_ledger_jobs_total",
        "Writes committed in those groups.",
        w.jobs,
    );
    metrics::response(out)
}

async fn install(
    AxumState(state): Shared,
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
    let (bytes, manifest) = tokio::task::spawn_blocking(move || {
        sandbox
            .read_package(&bytes, quorumvm_sandbox::package_limits())
            .map(|(manifest, _circuit)| (bytes, manifest))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::bad_request("bad_package", e.to_string()))?;
    check_shares(&state, &id, &manifest, &request.shares)?;
    check_deal(&state, &id, publisher, &manifest, &request)?;

    let publisher_hex = publisher.to_hex();
    let (job_id, job_publisher, job_manifest) =
        (package_id.clone(), publisher_hex.clone(), manifest.clone());
    let (shares, deal) = (request.shares, request.deal);
    let job_deal = deal.clone();
    let outcome = state
        .writer
        .run(move |tx| {
            store::install(
                tx,
                &store::NewVersion {
                    package_id: &job_id,
                    publisher: &job_publisher,
                    package: &bytes,
                    manifest: &job_manifest,
                    shares: &shares,
                    deal: &job_deal,
                    now_ms: now_ms(),
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
                checks: Default::default(),
            });
            StatusCode::CREATED
        }
        store::Installed::AlreadyInstalled => StatusCode::OK,
    };
    let v = known(&state, &package_id)?;
    Ok((status, Json(info(&state, &v))).into_response())
}

/// Every custodian gets exactly one sealed share of every declared secret, well formed.
/// (Whether it opens only its custodian can tell; it checks at activation.)
fn check_shares(
    state: &State,
    id: &PackageId,
    manifest: &quorumvm_core::circuit::Manifest,
    shares: &[quorumvm_wire::api::SealedShares],
) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_shares", m);
    for c in &state.custodians.all {
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
    if let Some(s) = shares
        .iter()
        .find(|s| state.custodians.get(s.custodian).is_none())
    {
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
        let member = state
            .custodians
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
            state.custodians.cluster.threshold(),
            s.custodian,
            &member.member.sealing_key.to_hex(),
            &names,
            &sealed,
        )
        .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

pub(crate) fn parse_id(id: &str) -> Result<PackageId, ApiError> {
    hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(PackageId)
        .ok_or_else(|| ApiError::bad_request("bad_id", "a package id is 64 hex digits"))
}

/// Audits a refused approval (of a version or an identity) with the reason, and returns the
/// 400 that answers it (or the storage error, if the entry could not be written).
pub async fn refused_approval(
    state: &State,
    kind: &'static str,
    mut details: serde_json::Value,
    err: ApprovalError,
) -> ApiError {
    let reason = err.to_string();
    details["reason"] = serde_json::json!(reason);
    let logged = state
        .writer
        .run(move |tx| store::audit(tx, now_ms(), "coordinator", kind, details))
        .await;
    match logged {
        Ok(()) => ApiError::bad_request("bad_approval", reason),
        Err(e) => e,
    }
}

async fn approve(
    AxumState(state): Shared,
    Path(id): Path<String>,
    Body(request): Body<ApproveRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    let version = known(&state, &id)?;
    let package = parse_id(&id)?;
    let approval = ApprovalSignature {
        custodian: request.custodian,
        signature: request.signature.clone(),
    };
    let subject = Subject::Version {
        package: &package,
        manifest: &version.manifest,
        deal: &version.deal.digest(),
    };
    if let Err(e) = quorumvm_wire::approval::check(&state.custodians.cluster, &subject, &approval) {
        let details = serde_json::json!({ "package_id": id, "custodian": request.custodian });
        return Err(refused_approval(&state, "approval.rejected", details, e).await);
    }
    let k = state.custodians.cluster.threshold();
    let job_version = Arc::clone(&version);
    let (job_id, signature) = (id.clone(), request.signature.clone());
    let custodian = request.custodian;
    let (count, activated) = state
        .writer
        .run(move |tx| {
            let now = now_ms();
            let count = store::approve(
                tx,
                store::Approved::Version,
                &job_id,
                custodian,
                &signature,
                now,
            )?;
            let pending = *job_version.state.lock().expect("state lock") == VersionState::Pending;
            let activated = if count >= k && pending {
                Some(store::activate(tx, &job_id, &job_version.manifest, now)?)
            } else {
                None
            };
            Ok::<_, ApiError>((count, activated))
        })
        .await?;
    version
        .approvals
        .lock()
        .expect("approvals lock")
        .push((request.custodian, request.signature));
    tracing::info!(package = %id, custodian = request.custodian, count, "approval accepted");
    match activated {
        None => {}
        Some(store::Activated::Superseded) => {
            *version.state.lock().expect("state lock") = VersionState::Retired;
            tracing::info!(package = %id, name = %version.manifest.name, version = version.manifest.version, "approved, but a higher version is active: retired");
        }
        Some(store::Activated::Current { retired }) => {
            for old in retired.iter().filter_map(|r| state.registry.get(r)) {
                *old.state.lock().expect("state lock") = VersionState::Retired;
            }
            *version.state.lock().expect("state lock") = VersionState::Active;
            state.registry.set_alias(&version.manifest.name, &id);
            tracing::info!(package = %id, name = %version.manifest.name, version = version.manifest.version, ?retired, "version active");
            background::push_activation(Arc::clone(&state), Arc::clone(&version)).await;
        }
    }
    Ok(Json(info(&state, &version)))
}
