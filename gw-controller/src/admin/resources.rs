//! What the endpoints of the kinds kept in the store's generic `resources` table
//! (certificates, consumers) share: reading, writing and deleting one resource with the admin
//! API's errors, and showing one document with its `ETag`.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gw_store::{
    DeleteResourceOutcome, Precondition, PutResource, PutResourceOutcome, ResourceRecord,
    StoreError,
};
use serde_json::json;

use super::apis::etag;
use super::format::{document, wants_yaml};
use super::{ApiError, AppState};

/// A kind of resource, as the admin API names it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResourceKind {
    /// The kind in the store and on the sync stream (`certificate`).
    pub(super) kind: &'static str,
    /// The word for one in messages (`certificate`).
    pub(super) noun: &'static str,
    /// Its collection under `/api/v1` (`certificates`).
    pub(super) collection: &'static str,
}

impl ResourceKind {
    pub(super) fn not_found(self, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} {name:?} does not exist", self.noun),
        )
    }

    /// Where one resource lives.
    pub(super) fn location(self, name: &str) -> String {
        format!("/api/v1/{}/{name}", self.collection)
    }

    /// One resource, or 404.
    pub(super) async fn get(
        self,
        state: &AppState,
        name: &str,
    ) -> Result<ResourceRecord, ApiError> {
        self.find(state, name)
            .await?
            .ok_or_else(|| self.not_found(name))
    }

    /// One resource, if it exists.
    pub(super) async fn find(
        self,
        state: &AppState,
        name: &str,
    ) -> Result<Option<ResourceRecord>, ApiError> {
        state
            .store()?
            .get_resource(self.kind, name)
            .await
            .map_err(ApiError::from_store)
    }

    /// `GET` of the collection: every resource of the kind as `summary` shows it, and the
    /// store's revision, read at one point in time.
    pub(super) async fn list(
        self,
        state: &AppState,
        summary: impl Fn(&ResourceRecord) -> serde_json::Value,
    ) -> Result<Response, ApiError> {
        let snapshot = state
            .store()?
            .snapshot()
            .await
            .map_err(ApiError::from_store)?;
        let items: Vec<_> = snapshot
            .resources
            .iter()
            .filter(|r| r.kind == self.kind)
            .map(summary)
            .collect();
        Ok(axum::Json(json!({"revision": snapshot.revision, "items": items})).into_response())
    }

    /// Writes `spec` (and its change-log entry) under `precondition`, with the store's error
    /// as it is, for callers that answer some of them in their own way.
    pub(super) async fn put_raw(
        self,
        state: &AppState,
        name: &str,
        spec: serde_json::Value,
        precondition: Precondition,
    ) -> Result<Result<PutResourceOutcome, StoreError>, ApiError> {
        Ok(state
            .store()?
            .put_resource(PutResource {
                kind: self.kind.to_string(),
                name: name.to_string(),
                spec,
                precondition,
            })
            .await)
    }

    /// Writes `spec` under `precondition`. A resource that exists when it must not is a 412
    /// when the client said so (`If-None-Match: *`, `exists_is_412`), a 409 otherwise (POST).
    pub(super) async fn put(
        self,
        state: &AppState,
        name: &str,
        spec: serde_json::Value,
        precondition: Precondition,
        exists_is_412: bool,
    ) -> Result<PutResourceOutcome, ApiError> {
        self.put_raw(state, name, spec, precondition)
            .await?
            .map_err(|err| self.put_error(err, exists_is_412))
    }

    /// The answer to a failed write.
    pub(super) fn put_error(self, err: StoreError, exists_is_412: bool) -> ApiError {
        match err {
            StoreError::AlreadyExists { name } if exists_is_412 => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("{} {name:?} already exists (If-None-Match: *)", self.noun),
            ),
            StoreError::AlreadyExists { name } => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{} {name:?} already exists", self.noun),
            ),
            other => ApiError::from_store(other),
        }
    }

    /// Deletes one resource (and appends the change) under `precondition`; 404 when there is
    /// none.
    pub(super) async fn delete(
        self,
        state: &AppState,
        name: &str,
        precondition: Precondition,
    ) -> Result<DeleteResourceOutcome, ApiError> {
        state
            .store()?
            .delete_resource(self.kind, name, precondition)
            .await
            .map_err(|err| match err {
                StoreError::NotFound { .. } => self.not_found(name),
                other => ApiError::from_store(other),
            })
    }
}

/// One resource as `GET` shows it: `shown`, in JSON or YAML (`Accept`), with the revision as
/// `ETag`.
pub(super) fn shown(headers: &HeaderMap, shown: &serde_json::Value, revision: i64) -> Response {
    let mut response = document(StatusCode::OK, shown, wants_yaml(headers));
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

/// The name in a document must be the one in the URL it is written to.
pub(super) fn check_document_name(in_document: &str, in_url: &str) -> Result<(), ApiError> {
    if in_document == in_url {
        Ok(())
    } else {
        Err(ApiError::field(
            "metadata.name",
            format!("{in_document:?} does not match the name in the URL ({in_url:?})"),
        ))
    }
}
