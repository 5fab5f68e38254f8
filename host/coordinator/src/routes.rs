//! The HTTP API (see `quorumvm_wire::api` for the bodies): which route each operation serves.
//! The operations are in their own modules.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use quorumvm_wire::api::{ClusterInfo, CustodianInfo};

use crate::State;
use crate::error::ApiError;
use crate::{
    approve, enrol, eval, freeze, install, metrics, packages, reshare, retirement, rotation,
    suspects,
};

type Shared = AxumState<Arc<State>>;

/// The largest package upload: a 12,600-gate program is about 0.5 MB.
const MAX_PACKAGE_BODY: usize = 64 << 20;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/packages", post(install::install).get(packages::list))
        .route("/v1/packages/{id}", get(packages::show))
        .route("/v1/packages/{id}/wasm", get(packages::wasm))
        .route("/v1/packages/{id}/deal", get(packages::deal))
        .route(
            "/v1/packages/{id}/shares/{custodian}",
            get(packages::shares),
        )
        .route("/v1/packages/{id}/approvals", post(approve::approve))
        .route("/v1/packages/{id}/retirements", post(retirement::approve))
        .route("/v1/identities/{name}", get(enrol::show))
        .route("/v1/identities/{name}/approvals", post(enrol::approve))
        .route("/v1/identities/{name}/revocations", post(enrol::revoke))
        .route("/v1/freezes", post(freeze::freeze))
        .route("/v1/unfreezes", post(freeze::unfreeze))
        .route("/v1/custodians/clearances", post(suspects::clear))
        .route("/v1/reshares", post(reshare::handle))
        .route("/v1/membership", get(rotation::show))
        .route("/v1/memberships", post(rotation::approve))
        .route(
            "/v1/eval",
            post(eval::handle).layer(DefaultBodyLimit::max(eval::MAX_EVAL_BODY)),
        )
        .route("/metrics", get(metrics::serve))
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
    let c = state.custodians.roster();
    Json(ClusterInfo {
        threshold: c.threshold(),
        custodians: c
            .all
            .iter()
            .map(|x| CustodianInfo {
                index: x.index(),
                url: x.member.url.clone(),
                operator_key: x.member.operator_key.to_hex(),
                sealing_key: x.member.sealing_key.to_hex(),
                live: x.is_live(),
            })
            .collect(),
    })
}
