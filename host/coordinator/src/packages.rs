//! Reading what is installed: `GET /v1/packages` and one version's description, its bytes,
//! its publisher's deal, and (to that custodian only) a custodian's sealed shares.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quorumvm_package::PackageId;
use quorumvm_wire::api::{DealtShares, FETCH_AUTH_HEADER, VersionInfo};
use quorumvm_wire::signed::Signed;

use crate::error::ApiError;
use crate::registry::Version;
use crate::{State, replicas, store};

type Shared = AxumState<Arc<State>>;

pub(crate) fn info(state: &State, v: &Version) -> VersionInfo {
    state
        .registry
        .info(v, state.custodians.roster().threshold())
}

pub async fn list(AxumState(state): Shared) -> Json<Vec<VersionInfo>> {
    Json(
        state
            .registry
            .all()
            .iter()
            .map(|v| info(&state, v))
            .collect(),
    )
}

/// The installed version `id`, if any, looked for among what other replicas installed before
/// it is said to be absent.
pub(crate) async fn installed(state: &State, id: &str) -> Result<Option<Arc<Version>>, ApiError> {
    if state.registry.get(id).is_none() {
        replicas::catch_up(state).await?;
    }
    Ok(state.registry.get(id))
}

/// The installed version `id`, else `404 unknown_package`.
pub(crate) async fn known(state: &State, id: &str) -> Result<Arc<Version>, ApiError> {
    installed(state, id).await?.ok_or_else(|| {
        ApiError::not_found("unknown_package", format!("no package {id} is installed"))
    })
}

pub async fn show(
    AxumState(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<VersionInfo>, ApiError> {
    let v = known(&state, &id).await?;
    Ok(Json(info(&state, &v)))
}

pub async fn wasm(AxumState(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    known(&state, &id).await?;
    let storage = state.storage.clone();
    let bytes = state
        .env
        .blocking(move || storage.read(|conn| store::package_bytes(conn, &id)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??
        .ok_or_else(|| ApiError::internal("a registered package has no bytes"))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

pub async fn deal(
    AxumState(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<Signed>, ApiError> {
    Ok(Json(known(&state, &id).await?.deal.clone()))
}

/// Custodian `custodian`'s sealed shares and the deal, to that custodian only: the request
/// carries a tag under the key the coordinator shares with it alone.
pub async fn shares(
    AxumState(state): Shared,
    Path((id, custodian)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let version = known(&state, &id).await?;
    let roster = state.custodians.roster();
    let c = roster.get(custodian).ok_or_else(|| {
        ApiError::not_found("unknown_custodian", format!("no custodian {custodian}"))
    })?;
    let path = format!("/v1/packages/{id}/shares/{custodian}");
    let authentic = headers
        .get(FETCH_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tag| c.tickets.check_fetch_tag(&path, tag, state.env.now_ms()));
    if !authentic {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_the_custodian",
            format!("sealed shares are served to custodian {custodian} only"),
        ));
    }
    let storage = state.storage.clone();
    let shares = state
        .env
        .blocking(move || storage.read(|conn| store::sealed_shares(conn, &id, custodian)))
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

pub(crate) fn parse_id(id: &str) -> Result<PackageId, ApiError> {
    hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(PackageId)
        .ok_or_else(|| ApiError::bad_request("bad_id", "a package id is 64 hex digits"))
}
