//! Request bodies read as JSON, with every rejection answered as an [`ApiError`] like any other
//! error: an over-long body is `413 too_large` (the route's `DefaultBodyLimit` decides how
//! long), an unreadable one `bad_body`, and one that is not the expected JSON `400 bad_json`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `Json<T>` whose rejections are JSON errors like every other.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json(Bytes::from_request(req, state).await).map(Body)
    }
}

/// A body already taken as bytes, read as JSON.
pub fn json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(body_error)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

/// A body that could not be read: too long for its route, or cut short.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_body"
    };
    ApiError::new(status, code, rejection.body_text())
}
