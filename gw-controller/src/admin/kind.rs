//! A kind of resource (APIs, certificates, consumers) and the one set of handlers every kind
//! is served by: list, get, PUT, POST and DELETE.
//!
//! What differs between the kinds is a [`Kind`]'s hooks: how a body becomes a document, how
//! a document is checked, completed, sealed and stored ([`Kind::deploy`]), what a listing
//! and a read show (never a secret), what keeps a resource from being deleted, and, for
//! APIs, which table of the store keeps them. Everything else (names, preconditions,
//! `?wait=applied`, JSON or YAML, `ETag`, `Location`, `Warning` and the error answers) is
//! written once, here and in [`super::write`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use gw_core::model::{self, Format};
use gw_store::{
    Audit, DeleteResourceOutcome, Precondition, PutResource, PutResourceOutcome, ResourceRecord,
    Snapshot, Store, StoreError,
};
use serde_json::json;

use super::access::refuse_groups;
use super::audit::Author;
use super::format::{document, read_body, request_format, wants_yaml};
use super::identity::Identity;
use super::write::{
    Basis, WriteParams, Written, delete_precondition, deleted, etag, precondition, written,
};
use super::{ApiError, AppState};
use crate::watcher::groups_of;

/// A write as the request asks for it, handed to [`Kind::deploy`].
#[derive(Debug)]
pub(super) struct Deploy<D> {
    /// What the body was read into.
    pub(super) document: D,
    /// The name in the URL (PUT); `None` for a POST.
    pub(super) name: Option<String>,
    /// What must hold in the store.
    pub(super) precondition: Precondition,
    /// Where the precondition comes from.
    pub(super) basis: Basis,
    /// Who makes the write (recorded with it).
    pub(super) audit: Audit,
}

/// A write the store committed, as [`Kind::deploy`] returns it.
#[derive(Debug)]
pub(super) struct Deployed {
    /// What the store did.
    pub(super) outcome: PutResourceOutcome,
    /// The groups of the resource now.
    pub(super) groups: Vec<String>,
    /// What the answer shows of it.
    pub(super) body: serde_json::Value,
}

/// The names of a kind: in the store, in messages and in URLs. One row per kind, here, so
/// that a kind's module says which row it is and nothing more.
#[derive(Debug, Clone, Copy)]
pub(super) struct Names {
    /// The kind in the store and on the sync stream (`certificate`).
    pub(super) kind: &'static str,
    /// The word for one in messages (`certificate`).
    pub(super) noun: &'static str,
    /// Its collection under `/api/v1` (`certificates`).
    pub(super) collection: &'static str,
}

impl Names {
    /// APIs.
    pub(super) const API: Self = Self {
        kind: gw_store::KIND_API,
        noun: "API",
        collection: "apis",
    };
    /// TLS certificates.
    pub(super) const CERTIFICATE: Self = Self {
        kind: gw_sync::KIND_CERTIFICATE,
        noun: "certificate",
        collection: "certificates",
    };
    /// Consumers.
    pub(super) const CONSUMER: Self = Self {
        kind: gw_sync::KIND_CONSUMER,
        noun: "consumer",
        collection: "consumers",
    };
}

/// APIs; their [`Kind`] is in [`super::apis`].
#[derive(Debug)]
pub(super) struct Apis;
/// TLS certificates; their [`Kind`] is in [`super::certificates`].
#[derive(Debug)]
pub(super) struct Certificates;
/// Consumers; their [`Kind`] is in [`super::consumers`].
#[derive(Debug)]
pub(super) struct Consumers;

/// A kind of resource of the admin API, served by the handlers of this module.
///
/// The storage hooks default to the store's generic `resources` table under its kind;
/// APIs, which have a table of their own, override them.
pub(super) trait Kind: Send + Sync + 'static {
    /// Its names: one of [`Names`]' rows.
    const NAMES: Names;

    /// What a write's body is read into.
    type Document: Send;

    /// Reads a write's body (in `format`); errors never quote a secret.
    fn parse(state: &AppState, bytes: &[u8], format: Format) -> Result<Self::Document, ApiError>;

    /// The name the document gives itself, if it gives one: a PUT checks it against the
    /// URL's (a document without one is refused by the kind's validation).
    fn document_name(document: &Self::Document) -> Option<&str>;

    /// Checks, completes, seals and stores a document: the kind's part of a PUT or POST.
    /// A store error goes through [`Kind::write_error`].
    fn deploy(
        state: &AppState,
        deploy: Deploy<Self::Document>,
    ) -> impl Future<Output = Result<Deployed, ApiError>> + Send;

    /// The gateway groups a document puts the resource in (those its validation checks).
    fn document_groups(document: &Self::Document) -> Vec<String>;

    /// Hides what a caller that may not see secrets must not see in what a read shows of
    /// one resource (its GET, or its item in a listing). By default nothing: the kind's
    /// reads show no secret to anyone.
    fn hide_secrets(shown: &mut serde_json::Value) {
        let _ = shown;
    }

    /// What a listing, and the answer to a write, show of one resource.
    fn summary(state: &AppState, record: &ResourceRecord) -> serde_json::Value;

    /// What a GET shows of one resource: its document, without any secret.
    fn shown(state: &AppState, record: &ResourceRecord) -> Result<serde_json::Value, ApiError>;

    /// Refuses to delete a resource that another one still needs (409 `in_use`). By
    /// default nothing does.
    fn check_delete(
        state: &AppState,
        name: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = (state, name);
        async { Ok(()) }
    }

    /// One resource as stored, if it exists.
    fn find(
        store: &dyn Store,
        name: &str,
    ) -> impl Future<Output = Result<Option<ResourceRecord>, StoreError>> + Send {
        async move { store.get_resource(Self::NAMES.kind, name).await }
    }

    /// Every resource of the kind in `snapshot`, by name.
    fn listed(snapshot: Snapshot) -> Vec<ResourceRecord> {
        snapshot
            .resources
            .into_iter()
            .filter(|r| r.kind == Self::NAMES.kind)
            .collect()
    }

    /// Deletes one resource (and appends the change, and `audit`'s record) under
    /// `precondition`.
    fn remove(
        store: &dyn Store,
        name: &str,
        precondition: Precondition,
        audit: &Audit,
    ) -> impl Future<Output = Result<DeleteResourceOutcome, StoreError>> + Send {
        async move {
            store
                .delete_resource(Self::NAMES.kind, name, precondition, Some(audit))
                .await
        }
    }

    /// The answer to a POST whose name is taken.
    fn taken(name: &str) -> ApiError {
        ApiError::conflict(
            "already_exists",
            format!("{} {name:?} already exists", Self::NAMES.noun),
        )
    }

    /// The answer to a GET of a resource that does not exist.
    fn absent(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} {name:?} does not exist", Self::NAMES.noun),
        )
    }

    /// The answer to a failed delete of resource `name`: [`Kind::absent`] when there is
    /// none.
    fn delete_error(name: &str, err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound { .. } => Self::absent(name),
            other => ApiError::from_store(other),
        }
    }

    /// The answer to a failed write of resource `name` whose precondition came from
    /// `basis`.
    fn write_error(name: &str, err: StoreError, basis: Basis) -> ApiError {
        match (basis, err) {
            (
                Basis::Read,
                StoreError::PreconditionFailed { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. },
            ) => ApiError::conflict(
                "concurrent_change",
                format!(
                    "{} {name:?} changed while this write was prepared; read it and retry",
                    Self::NAMES.noun
                ),
            ),
            (Basis::Client, StoreError::AlreadyExists { name }) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "{} {name:?} already exists (If-None-Match: *)",
                    Self::NAMES.noun
                ),
            ),
            (_, StoreError::AlreadyExists { name }) => Self::taken(&name),
            (_, other) => ApiError::from_store(other),
        }
    }
}

/// The routes of kind `K`: `/{collection}` (GET, POST) and `/{collection}/{name}` (GET,
/// PUT, DELETE).
pub(super) fn routes<K: Kind>(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .route(
            &format!("/{}", K::NAMES.collection),
            routing::get(list::<K>).post(create::<K>),
        )
        .route(
            &format!("/{}/{{name}}", K::NAMES.collection),
            routing::get(get::<K>).put(put::<K>).delete(delete::<K>),
        )
}

/// Where one resource lives.
pub(super) fn location<K: Kind>(name: &str) -> String {
    format!("/api/v1/{}/{name}", K::NAMES.collection)
}

/// One resource, or 404.
pub(super) async fn record<K: Kind>(
    state: &AppState,
    name: &str,
) -> Result<ResourceRecord, ApiError> {
    K::find(state.store()?.as_ref(), name)
        .await
        .map_err(ApiError::from_store)?
        .ok_or_else(|| K::absent(name))
}

/// One resource, if it exists.
pub(super) async fn find<K: Kind>(
    state: &AppState,
    name: &str,
) -> Result<Option<ResourceRecord>, ApiError> {
    K::find(state.store()?.as_ref(), name)
        .await
        .map_err(ApiError::from_store)
}

/// Writes `spec` of kind `K` to the store's `resources` table under `precondition`, with
/// `audit`'s record; a store error is answered as `basis` says ([`Kind::write_error`]).
pub(super) async fn put_resource<K: Kind>(
    state: &AppState,
    name: &str,
    spec: serde_json::Value,
    (precondition, basis): (Precondition, Basis),
    audit: Audit,
) -> Result<PutResourceOutcome, ApiError> {
    state
        .store()?
        .put_resource(PutResource {
            kind: K::NAMES.kind.to_string(),
            name: name.to_string(),
            spec,
            precondition,
            audit: Some(audit),
        })
        .await
        .map_err(|err| K::write_error(name, err, basis))
}

/// The resource a write names in its URL (`/{collection}/{name}`), and the write's query
/// (`?wait=applied`): a bad name is refused before a bad query.
#[derive(Debug)]
pub(super) struct Target {
    /// The resource's name, checked.
    pub(super) name: String,
    /// The write's query.
    pub(super) params: WriteParams,
}

impl FromRequestParts<Arc<AppState>> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let name = check_name(Path::from_request_parts(parts, state).await)?;
        let params = WriteParams::parse(parts.uri.query(), state)?;
        Ok(Self { name, params })
    }
}

/// The name in a URL, checked.
pub(super) fn check_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::from_path(&e))?;
    model::validate_name(&name).map_err(|message| ApiError::field("name", message))?;
    Ok(name)
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

/// A request's body as [`Kind::parse`] reads it, in the format its `Content-Type` names
/// (415 for one that is not JSON or YAML), at most the admin API's limit (413).
pub(super) async fn read_document<K: Kind>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<K::Document, ApiError> {
    let format = request_format(headers)?;
    let bytes = read_body(headers, body, state.options.max_body_bytes).await?;
    K::parse(state, &bytes, format)
}

/// Refuses a write by `identity` of resource `name` of kind `K` outside its groups: the
/// groups the write gives it (`new_groups`) and, when it exists, the ones it has now. For an
/// identity scoped to some groups, the write is made conditional on the revision those
/// groups were read at (see [`read_condition`]), so that a concurrent move of the resource
/// into another group cannot slip between the check and the write. Returns the write's
/// precondition and its basis.
pub(super) async fn scoped<K: Kind>(
    state: &AppState,
    identity: &Identity,
    name: &str,
    new_groups: Option<&[String]>,
    (precondition, basis): (Precondition, Basis),
) -> Result<(Precondition, Basis), ApiError> {
    let action = if new_groups.is_some() {
        "write"
    } else {
        "delete"
    };
    if let Some(groups) = new_groups {
        refuse_groups(identity, action, K::NAMES.noun, name, groups)?;
    }
    // nothing more to check: every group is the identity's, or a create finds no resource
    if identity.covers_every_group() || basis == Basis::Create {
        return Ok((precondition, basis));
    }
    let current = find::<K>(state, name).await?;
    match &current {
        Some(record) => {
            refuse_groups(
                identity,
                action,
                K::NAMES.noun,
                name,
                &groups_of(&record.spec),
            )?;
        }
        None if new_groups.is_none() => {
            return Err(K::delete_error(
                name,
                StoreError::NotFound {
                    name: name.to_string(),
                },
            ));
        }
        None => {}
    }
    read_condition::<K>(name, precondition, basis, current.as_ref())
}

/// The precondition of a write that builds on the read of `stored` (the resource as it
/// was read, if it existed), given the client's: a write without one becomes conditional on
/// what was read (basis [`Basis::Read`]: a change in between is a 409 `concurrent_change`),
/// and one whose precondition the read already fails is answered now, as `basis` says.
pub(super) fn read_condition<K: Kind>(
    name: &str,
    client: Precondition,
    basis: Basis,
    stored: Option<&ResourceRecord>,
) -> Result<(Precondition, Basis), ApiError> {
    match (client, stored) {
        (Precondition::Revision(expected), _) => {
            let actual = stored.map(|r| r.revision);
            if actual != Some(expected) {
                let failed = StoreError::PreconditionFailed {
                    name: name.to_string(),
                    expected,
                    actual,
                };
                return Err(K::write_error(name, failed, basis));
            }
            Ok((Precondition::Revision(expected), basis))
        }
        (Precondition::Absent, Some(_)) => Err(K::write_error(
            name,
            StoreError::AlreadyExists {
                name: name.to_string(),
            },
            basis,
        )),
        (Precondition::Absent, None) => Ok((Precondition::Absent, basis)),
        (Precondition::None, Some(record)) => {
            Ok((Precondition::Revision(record.revision), Basis::Read))
        }
        (Precondition::None, None) => Ok((Precondition::Absent, Basis::Read)),
    }
}

/// Answers a write that [`Kind::deploy`] committed.
async fn answer<K: Kind>(
    state: &AppState,
    params: &WriteParams,
    deployed: Deployed,
) -> Result<Response, ApiError> {
    let Deployed {
        outcome,
        groups,
        body,
    } = deployed;
    let record = &outcome.record;
    tracing::info!(kind = K::NAMES.kind, name = %record.name, revision = record.revision, created = outcome.created, "{} deployed", K::NAMES.noun);
    written(
        state,
        params,
        Written {
            groups,
            previous: outcome.previous.as_ref(),
            revision: record.revision,
            created: outcome.created,
            body,
            location: location::<K>(&record.name),
        },
    )
    .await
}

/// `PUT /api/v1/{collection}/{name}`: create or replace. With `If-None-Match: *`, an
/// existing resource fails the precondition (412), where a POST reports a conflict (409).
async fn put<K: Kind>(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Author(audit): Author,
    Target { name, params }: Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers)?;
    let document = read_document::<K>(&state, &headers, body).await?;
    if let Some(given) = K::document_name(&document) {
        check_document_name(given, &name)?;
    }
    let groups = K::document_groups(&document);
    let (precondition, basis) = scoped::<K>(
        &state,
        &identity,
        &name,
        Some(&groups),
        (precondition.unwrap_or_default(), Basis::Client),
    )
    .await?;
    let deploy = Deploy {
        document,
        name: Some(name),
        precondition,
        basis,
        audit,
    };
    let deployed = K::deploy(&state, deploy).await?;
    answer::<K>(&state, &params, deployed).await
}

/// `POST /api/v1/{collection}`: create; 409 if the name is taken.
async fn create<K: Kind>(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Author(audit): Author,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let params = WriteParams::parse(query.as_deref(), &state)?;
    let document = read_document::<K>(&state, &headers, body).await?;
    let name = K::document_name(&document).unwrap_or_default().to_string();
    let groups = K::document_groups(&document);
    let (precondition, basis) = scoped::<K>(
        &state,
        &identity,
        &name,
        Some(&groups),
        (Precondition::Absent, Basis::Create),
    )
    .await?;
    let deploy = Deploy {
        document,
        name: None,
        precondition,
        basis,
        audit,
    };
    let deployed = K::deploy(&state, deploy).await?;
    answer::<K>(&state, &params, deployed).await
}

/// `GET /api/v1/{collection}`: every resource of the kind as [`Kind::summary`] shows it,
/// and the store's revision, read at one point in time.
async fn list<K: Kind>(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Result<Response, ApiError> {
    let snapshot = state
        .store()?
        .snapshot()
        .await
        .map_err(ApiError::from_store)?;
    let revision = snapshot.revision;
    let items: Vec<_> = K::listed(snapshot)
        .iter()
        .map(|record| {
            let mut item = K::summary(&state, record);
            if !identity.sees_secrets() {
                K::hide_secrets(&mut item);
            }
            item
        })
        .collect();
    Ok(axum::Json(json!({"revision": revision, "items": items})).into_response())
}

/// `GET /api/v1/{collection}/{name}`: the document as [`Kind::shown`] shows it, in JSON or
/// YAML (`Accept`), with its revision as `ETag`.
async fn get<K: Kind>(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = check_name(name)?;
    let record = record::<K>(&state, &name).await?;
    let mut shown = K::shown(&state, &record)?;
    if !identity.sees_secrets() {
        K::hide_secrets(&mut shown);
    }
    let mut response = document(StatusCode::OK, &shown, wants_yaml(&headers));
    response
        .headers_mut()
        .insert(header::ETAG, etag(record.revision));
    Ok(response)
}

/// `DELETE /api/v1/{collection}/{name}`; 409 while another resource needs it
/// ([`Kind::check_delete`]).
async fn delete<K: Kind>(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Author(audit): Author,
    Target { name, params }: Target,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let precondition = delete_precondition(&headers)?;
    let (precondition, basis) = scoped::<K>(
        &state,
        &identity,
        &name,
        None,
        (precondition, Basis::Client),
    )
    .await?;
    K::check_delete(&state, &name).await?;
    let outcome = K::remove(state.store()?.as_ref(), &name, precondition, &audit)
        .await
        .map_err(|err| match basis {
            Basis::Read => K::write_error(&name, err, basis),
            _ => K::delete_error(&name, err),
        })?;
    tracing::info!(kind = K::NAMES.kind, name = %name, revision = outcome.revision, "{} deleted", K::NAMES.noun);
    deleted(
        &state,
        &params,
        &name,
        outcome.revision,
        &outcome.previous.spec,
    )
    .await
}
