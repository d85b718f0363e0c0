//! `/api/v1/certificates`: deploy, read and delete TLS certificates.
//!
//! A certificate is validated like an API (its PEM decoded, its key checked against the
//! certificate) and stored with its change-log entry in one transaction; runtimes of its
//! groups serve it on their HTTPS listeners from the next handshake on. The private key is
//! never returned: reads show the certificate, its names and its validity.
//!
//! A certificate that an API presents to its upstream (`spec.upstream.tls.clientCertificate`)
//! cannot be deleted while that API names it (409).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use gw_core::model::{CertificateDefinition, FieldError, parse_value};
use gw_store::{Precondition, ResourceRecord};
use gw_sync::KIND_CERTIFICATE;
use serde_json::json;

use super::apis::{
    WriteParams, Written, check_name, delete_precondition, deleted, precondition, written,
};
use super::format::{read_body, request_format};
use super::resources::{ResourceKind, check_document_name, shown};
use super::{ApiError, AppState};
use crate::watcher::groups_of;

const CERTIFICATES: ResourceKind = ResourceKind {
    kind: KIND_CERTIFICATE,
    noun: "certificate",
    collection: "certificates",
};

/// What a listing shows of a certificate: never its key.
fn summary(state: &AppState, record: &ResourceRecord) -> serde_json::Value {
    let mut item = json!({
        "name": record.name,
        "revision": record.revision,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
    });
    let opened = match state.sealer.open_certificate(&record.spec, &record.name) {
        Ok(opened) => opened,
        Err(err) => {
            item["error"] = json!(format!("spec.privateKey: {err}"));
            return item;
        }
    };
    match CertificateDefinition::from_value_validated(&opened) {
        Ok(certificate) => {
            item["groups"] = json!(certificate.spec.groups);
            if let Ok(parsed) = certificate.parse_pem() {
                item["serverNames"] = json!(certificate.server_names(&parsed));
                item["dnsNames"] = json!(parsed.dns_names);
                item["notBefore"] = json!(timestamp(parsed.not_before));
                item["notAfter"] = json!(timestamp(parsed.not_after));
                item["serial"] = json!(parsed.serial);
                item["issuer"] = json!(parsed.issuer);
            }
        }
        Err(err) => item["error"] = json!(err.to_string()),
    }
    item
}

fn timestamp(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

async fn parse_certificate(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<CertificateDefinition, ApiError> {
    let format = request_format(headers)?;
    let bytes = read_body(headers, body, state.options.max_body_bytes).await?;
    let value = parse_value(&bytes, format).map_err(ApiError::from_model)?;
    CertificateDefinition::from_value_validated(&value).map_err(ApiError::from_model)
}

async fn write(
    state: &AppState,
    certificate: CertificateDefinition,
    precondition: Precondition,
    exists_is_412: bool,
    params: WriteParams,
) -> Result<Response, ApiError> {
    let store = state.store()?;
    let stranded = users_outside(store.as_ref(), &certificate).await?;
    if !stranded.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!(
                "API(s) {} present certificate {:?} to their upstream in groups it would leave",
                stranded.join(", "),
                certificate.metadata.name
            ),
        ));
    }
    // the private key is stored sealed under the controller's encryption key
    let mut spec = certificate.to_json();
    state
        .sealer
        .seal_certificate(&mut spec, &certificate.metadata.name);
    let outcome = CERTIFICATES
        .put(
            state,
            &certificate.metadata.name,
            spec,
            precondition,
            exists_is_412,
        )
        .await?;
    let record = outcome.record;
    tracing::info!(certificate = %record.name, revision = record.revision, created = outcome.created, "certificate deployed");
    written(
        state,
        &params,
        Written {
            groups: certificate.spec.groups.clone(),
            previous: outcome.previous.as_ref(),
            revision: record.revision,
            created: outcome.created,
            body: summary(state, &record),
            location: CERTIFICATES.location(&record.name),
        },
    )
    .await
}

/// The APIs that present certificate `name` to their upstream, with their groups.
async fn users(
    store: &dyn gw_store::Store,
    name: &str,
) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    Ok(store
        .snapshot()
        .await
        .map_err(ApiError::from_store)?
        .apis
        .iter()
        .filter(|api| {
            api.spec
                .pointer("/spec/upstream/tls/clientCertificate")
                .and_then(|v| v.as_str())
                == Some(name)
        })
        .map(|api| (api.name.clone(), groups_of(&api.spec)))
        .collect())
}

/// The APIs that present `certificate` to their upstream in a group it does not list.
async fn users_outside(
    store: &dyn gw_store::Store,
    certificate: &CertificateDefinition,
) -> Result<Vec<String>, ApiError> {
    Ok(users(store, &certificate.metadata.name)
        .await?
        .into_iter()
        .filter(|(_, groups)| groups.iter().any(|g| !certificate.spec.groups.contains(g)))
        .map(|(api, _)| api)
        .collect())
}

/// `PUT /api/v1/certificates/{name}`: create or replace (rotate).
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = check_name(name)?;
    let params = WriteParams::parse(query.as_deref(), &state)?;
    let precondition = precondition(&headers)?;
    let certificate = parse_certificate(&state, &headers, body).await?;
    check_document_name(&certificate.metadata.name, &name)?;
    let precondition_header = precondition == Some(Precondition::Absent);
    write(
        &state,
        certificate,
        precondition.unwrap_or_default(),
        precondition_header,
        params,
    )
    .await
}

/// `POST /api/v1/certificates`: create; 409 if the name is taken.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let params = WriteParams::parse(query.as_deref(), &state)?;
    let certificate = parse_certificate(&state, &headers, body).await?;
    write(&state, certificate, Precondition::Absent, false, params).await
}

/// `GET /api/v1/certificates`: every certificate with its names and validity.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    CERTIFICATES
        .list(&state, |record| summary(&state, record))
        .await
}

/// `GET /api/v1/certificates/{name}`: the document without its private key, in JSON or YAML
/// (`Accept`), with its ETag.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = check_name(name)?;
    let record = CERTIFICATES.get(&state, &name).await?;
    let mut public = record.spec.clone();
    if let Some(spec) = public.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.remove("privateKey");
    }
    Ok(shown(&headers, &public, record.revision))
}

/// `DELETE /api/v1/certificates/{name}`; 409 while an API presents it to its upstream.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = check_name(name)?;
    let params = WriteParams::parse(query.as_deref(), &state)?;
    let precondition = delete_precondition(&headers)?;
    let store = state.store()?;
    let users: Vec<String> = users(store.as_ref(), &name)
        .await?
        .into_iter()
        .map(|(api, _)| api)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!(
                "certificate {name:?} is the client certificate of API(s) {}; change them first",
                users.join(", ")
            ),
        )
        .with_details(
            users
                .iter()
                .map(|api| {
                    FieldError::new(
                        format!("apis.{api}"),
                        "spec.upstream.tls.clientCertificate names it",
                    )
                })
                .collect(),
        ));
    }
    let outcome = CERTIFICATES.delete(&state, &name, precondition).await?;
    tracing::info!(certificate = %name, revision = outcome.revision, "certificate deleted");
    deleted(
        &state,
        &params,
        &name,
        outcome.revision,
        &outcome.previous.spec,
    )
    .await
}
