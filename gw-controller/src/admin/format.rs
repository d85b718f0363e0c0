//! Request and response bodies in JSON or YAML.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gw_core::model::Format;
use http_body_util::{BodyExt, Limited};

use super::ApiError;

/// The format of a request body, from its `Content-Type`: JSON, or YAML (also when the type
/// is missing, since YAML reads JSON too); anything else is a 415.
pub(super) fn request_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Yaml);
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        m if m.ends_with("+json") => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        m if m.ends_with("+yaml") => Ok(Format::Yaml),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {media:?} is not supported; send application/yaml or application/json"
            ),
        )),
    }
}

/// Reads a body of at most `limit` bytes; a larger one is a 413.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("could not read the request body: {err}"),
        )),
    }
}

/// Whether the client asked for YAML (`Accept: application/yaml` and friends).
pub(super) fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .any(|m| m.ends_with("yaml"))
}

/// A document in the format the client asked for.
pub(super) fn document(status: StatusCode, value: &serde_json::Value, yaml: bool) -> Response {
    if yaml {
        match serde_saphyr::to_string(value) {
            Ok(text) => {
                let mut response = (status, text).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/yaml"),
                );
                return response;
            }
            Err(err) => tracing::warn!(error = %err, "cannot render YAML; answering JSON"),
        }
    }
    (status, axum::Json(value)).into_response()
}
