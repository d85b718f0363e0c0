//! The admin API's error responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gw_core::model::{FieldError, ModelError};
use gw_store::StoreError;
use serde::Serialize;

/// An error answered as `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
    /// Sent as `ETag` (when a write succeeded but waiting for it failed).
    etag: Option<i64>,
    /// Fields beside `error` in the body: what a committed write must still show (the keys
    /// it generated) when waiting for it failed.
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [FieldError],
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            etag: None,
            extra: serde_json::Map::new(),
        }
    }

    /// A 409: the request conflicts with what is stored (`code` says how).
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// Adds a field beside `error` in the body.
    #[must_use]
    pub fn with_extra(mut self, field: &str, value: serde_json::Value) -> Self {
        self.extra.insert(field.to_string(), value);
        self
    }

    /// Adds per-field details.
    #[must_use]
    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    /// Adds the `ETag` of the stored revision.
    #[must_use]
    pub fn with_etag(mut self, revision: i64) -> Self {
        self.etag = Some(revision);
        self
    }

    /// A 404: what the path names does not exist (`message` says what, and where to look).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 500 that says no more than to read the controller's log (where the cause is).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the controller failed; see its log",
        )
    }

    /// A 400 for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "the request is invalid",
        )
        .with_details(vec![FieldError::new(field, message)])
    }

    /// The response to a path whose names did not decode (percent-encoded bytes that are
    /// not UTF-8).
    pub fn from_path(rejection: &axum::extract::rejection::PathRejection) -> Self {
        tracing::debug!(%rejection, "path rejected");
        Self::field("name", "the path is not UTF-8 text once percent-decoded")
    }

    /// The response to a document that did not parse or validate.
    pub fn from_model(err: ModelError) -> Self {
        match err {
            ModelError::TooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                err.to_string(),
            ),
            ModelError::Syntax { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_document", err.to_string())
            }
            ModelError::Invalid(details) => Self::new(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                format!("the document has {} problem(s)", details.len()),
            )
            .with_details(details),
        }
    }

    /// The response to a store error; unexpected ones are logged and answered without
    /// their detail.
    pub fn from_store(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; try again later (a write cut off by the outage \
                     either committed whole or not at all: read the resource to know which)",
                )
            }
            StoreError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
            }
            StoreError::AlreadyExists { .. } => Self::conflict("already_exists", err.to_string()),
            StoreError::PreconditionFailed { actual, .. } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                match actual {
                    Some(_) => format!("{err}; read it again and retry with its current ETag"),
                    None => format!("{err}; it was deleted, or never created"),
                },
            ),
            StoreError::RouteConflict { .. } => Self::conflict("route_conflict", err.to_string())
                .with_details(vec![FieldError::new("spec.context", err.to_string())]),
            other => {
                tracing::error!(error = %other, "store error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: &self.details,
            },
            extra: &self.extra,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(revision) = self.etag
            && let Ok(value) = format!("\"{revision}\"").parse()
        {
            response
                .headers_mut()
                .insert(axum::http::header::ETAG, value);
        }
        response
    }
}
