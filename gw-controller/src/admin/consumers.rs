//! `/api/v1/consumers`: deploy, read and delete consumers, and add or revoke one credential.
//!
//! Secrets go in and never come out. A write may carry API keys and passwords in the clear;
//! they are sealed before anything is stored (a key as its SHA-256 `keyHash`, a password as
//! an argon2id `passwordHash`, hashed on a blocking thread), and only the sealed document is
//! stored, logged in the change log and sent to runtimes. An api-key credential given with
//! neither `key` nor `keyHash` gets a generated key, which the write's answer shows once
//! (`generatedKeys`; `key` when one credential is added). Reads show no key, password or
//! hash, and no error quotes a document (which may hold a secret).
//!
//! GET, edit, PUT: since reads leave the secrets out, a document written back lacks them. A
//! credential that gives no secret keeps the stored one when the stored consumer has a
//! credential with the same `id` and `type` (for basic-auth, only with the same `username`:
//! a renamed user needs its password again). An api-key credential with no such namesake
//! gets a generated key. A new key therefore comes from giving it, from a new `id`, or from
//! revoking the credential and adding another.
//!
//! An API key, a basic-auth user name or a JWT subject belongs to one consumer: a write that
//! would give one to a second consumer is refused (409 `credential_conflict`, naming the
//! other consumer, never the key).
//!
//! A write that builds on the stored consumer (any PUT over one, a credential added or
//! revoked) is conditional on the revision it read: a change in between answers 409
//! `concurrent_change` (412 when the client's own `If-Match` is stale) rather than being
//! lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use gw_core::model::{
    self, ConsumerDefinition, CredentialType, FieldError, Format, ModelError, conflicting_claims,
    generate_api_key, parse_value,
};
use gw_store::{Audit, Precondition, PutResourceOutcome, ResourceRecord, StoreError};
use serde_json::{Value, json};

use super::access::refuse_groups;
use super::audit::Author;
use super::identity::Identity;
use super::kind::{
    Consumers, Deploy, Deployed, Kind, Names, Target, find, location, put_resource, read_condition,
    read_document, record,
};
use super::write::{Basis, WriteParams, Written, precondition, written};
use super::{ApiError, AppState};
use crate::watcher::groups_of;

/// The audit action of `POST /consumers/{name}/credentials` (the credential's id is its
/// detail).
const ADD_CREDENTIAL: &str = "add-credential";
/// The audit action of `DELETE /consumers/{name}/credentials/{id}`.
const REVOKE_CREDENTIAL: &str = "revoke-credential";

impl Kind for Consumers {
    const NAMES: Names = Names::CONSUMER;

    /// The document as given: its secrets are completed before it is validated.
    type Document = Value;

    /// Syntax errors do not quote the body.
    fn parse(_: &AppState, bytes: &[u8], format: Format) -> Result<Value, ApiError> {
        parse_value(bytes, format).map_err(|err| ApiError::from_model(err.redacted()))
    }

    fn document_name(document: &Value) -> Option<&str> {
        document.pointer("/metadata/name").and_then(Value::as_str)
    }

    /// Writes a whole consumer (PUT, POST). A PUT builds on the stored consumer, whose
    /// secrets the credentials that give none keep: it is conditional on the revision read.
    async fn deploy(state: &AppState, deploy: Deploy<Value>) -> Result<Deployed, ApiError> {
        let Deploy {
            document,
            name,
            precondition,
            basis,
            audit,
        } = deploy;
        let (stored, precondition, basis) = match name {
            Some(name) if basis != Basis::Create => {
                let record = find::<Self>(state, &name).await?;
                let (precondition, basis) =
                    read_condition::<Self>(&name, precondition, basis, record.as_ref())?;
                let stored = record.as_ref().map(stored_definition).transpose()?;
                (stored, precondition, basis)
            }
            _ => (None, precondition, basis),
        };
        let Prepared {
            consumer,
            generated,
        } = prepare(document, stored.as_ref(), &same_path).await?;
        let outcome = commit(state, &consumer, (precondition, basis), audit, &same_path).await?;
        let mut body = summary(&outcome.record);
        if !generated.is_empty() {
            tracing::info!(consumer = %consumer.metadata.name, generated_keys = generated.len(), "API keys generated");
            body["generatedKeys"] = generated
                .iter()
                .map(|g| json!({"id": g.id, "key": g.key}))
                .collect();
        }
        Ok(Deployed {
            outcome,
            groups: consumer.spec.groups,
            body,
        })
    }

    /// The groups the document names, `[default]` when it names none (as its validation
    /// reads it).
    fn document_groups(document: &Value) -> Vec<String> {
        groups_of(document)
    }

    fn summary(_: &AppState, record: &ResourceRecord) -> Value {
        summary(record)
    }

    /// The document without keys, passwords or hashes.
    fn shown(_: &AppState, record: &ResourceRecord) -> Result<Value, ApiError> {
        Ok(stored_definition(record)?.to_public_json())
    }
}

/// The fields of a credential that hold a secret or its hash.
const SECRETS: [&str; 4] = ["key", "keyHash", "password", "passwordHash"];

/// A key generated for an api-key credential, shown once in the write's answer.
struct GeneratedKey {
    id: String,
    key: String,
}

/// What filling in a document's missing secrets did.
#[derive(Default)]
struct Completion {
    generated: Vec<GeneratedKey>,
    /// The basic-auth credentials (by index) that give no password while their stored
    /// namesake has another user name.
    renamed: Vec<usize>,
}

/// A consumer ready to be written: completed, validated and sealed.
struct Prepared {
    consumer: ConsumerDefinition,
    generated: Vec<GeneratedKey>,
}

/// Fills in the secrets that the credentials of a consumer document (about to be validated)
/// do not give: the stored hash of the `stored` credential with the same `id` and `type`
/// (for basic-auth, only with the same `username`), or else, for an api-key, a generated
/// key.
fn complete(document: &mut Value, stored: Option<&ConsumerDefinition>) -> Completion {
    let mut completion = Completion::default();
    let Some(credentials) = document
        .pointer_mut("/spec/credentials")
        .and_then(Value::as_array_mut)
    else {
        return completion;
    };
    for (i, credential) in credentials.iter_mut().enumerate() {
        let Some(fields) = credential.as_object_mut() else {
            continue;
        };
        // an explicit null gives no secret
        for secret in SECRETS {
            if fields.get(secret).is_some_and(Value::is_null) {
                fields.remove(secret);
            }
        }
        let id = fields
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = fields
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let namesake = |kind: CredentialType| {
            stored.and_then(|c| {
                c.spec
                    .credentials
                    .iter()
                    .find(|s| s.kind == kind && s.id == id)
            })
        };
        if kind == CredentialType::ApiKey.as_str()
            && !fields.contains_key("key")
            && !fields.contains_key("keyHash")
        {
            if let Some(hash) = namesake(CredentialType::ApiKey).and_then(|s| s.key_hash.clone()) {
                fields.insert("keyHash".into(), Value::String(hash));
            } else {
                let key = generate_api_key();
                fields.insert("key".into(), Value::String(key.clone()));
                completion.generated.push(GeneratedKey { id, key });
            }
        } else if kind == CredentialType::BasicAuth.as_str()
            && !fields.contains_key("password")
            && !fields.contains_key("passwordHash")
            && let Some(stored) = namesake(CredentialType::BasicAuth)
        {
            let username = fields.get("username").and_then(Value::as_str);
            match &stored.password_hash {
                Some(hash) if username == stored.username.as_deref() => {
                    fields.insert("passwordHash".into(), Value::String(hash.clone()));
                }
                _ => completion.renamed.push(i),
            }
        }
    }
    completion
}

/// Validates a completed document, with the errors' field paths passed through `path`;
/// the `renamed` credentials are told that they need their password.
fn validate(
    document: &Value,
    renamed: &[usize],
    path: &(dyn Fn(&str) -> String + Sync),
) -> Result<ConsumerDefinition, ApiError> {
    let mut err = match ConsumerDefinition::from_value_validated(document, true) {
        Ok(consumer) => return Ok(consumer),
        Err(err) => err.redacted(),
    };
    if let ModelError::Invalid(errors) = &mut err {
        for &i in renamed {
            let field = format!("spec.credentials[{i}].password");
            let message = "the username differs from the stored credential's: give the \
                           password (the stored one is kept only for the same username)";
            match errors.iter_mut().find(|e| e.field == field) {
                Some(error) => message.clone_into(&mut error.message),
                None => errors.push(FieldError::new(field, message)),
            }
        }
        for error in errors.iter_mut() {
            error.field = path(&error.field);
        }
    }
    Err(ApiError::from_model(err))
}

/// Completes, validates and seals a consumer document. `stored` is the consumer it replaces,
/// whose hashes the credentials that give no secret keep; `path` maps field paths in errors.
async fn prepare(
    mut document: Value,
    stored: Option<&ConsumerDefinition>,
    path: &(dyn Fn(&str) -> String + Sync),
) -> Result<Prepared, ApiError> {
    let completion = complete(&mut document, stored);
    let consumer = validate(&document, &completion.renamed, path)?;
    let consumer = seal(consumer).await?;
    Ok(Prepared {
        consumer,
        generated: completion.generated,
    })
}

/// Hashes the clear secrets of `consumer` on a blocking thread (argon2 is slow by design).
async fn seal(mut consumer: ConsumerDefinition) -> Result<ConsumerDefinition, ApiError> {
    tokio::task::spawn_blocking(move || gw_core::credential::seal(&mut consumer).map(|()| consumer))
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "sealing a consumer failed");
            ApiError::internal()
        })?
        .map_err(|err| {
            // the message is the hasher's, never the password
            tracing::error!(field = %err.field, error = %err.message, "sealing a consumer failed");
            ApiError::internal()
        })
}

/// A stored consumer (sealed, valid).
fn stored_definition(record: &ResourceRecord) -> Result<ConsumerDefinition, ApiError> {
    ConsumerDefinition::from_value_validated(&record.spec, false).map_err(|err| {
        tracing::error!(consumer = %record.name, revision = record.revision, error = %err.redacted(), "a stored consumer does not validate");
        ApiError::internal()
    })
}

fn quoted(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses (409 `credential_conflict`) a consumer that claims what another stored consumer
/// claims: the same API key, basic-auth user name or JWT subject. `path` maps the field
/// paths of the details (one per credential in conflict).
///
/// The other consumers are read outside the write's transaction, like the certificate
/// checks of APIs. This controller serializes its consumer writes from this check to their
/// commit (`AppState::consumer_writes`), but two controllers writing clashing consumers at
/// the same moment can both pass it. Runtimes then refuse the configuration that holds both
/// (an ambiguous credential is never served), keep serving the previous one and report the
/// rejection (`GET /api/v1/runtimes`) until one of the two consumers is changed.
async fn check_unique(
    state: &AppState,
    consumer: &ConsumerDefinition,
    path: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), ApiError> {
    let ours = &consumer.metadata.name;
    let records = state
        .store()?
        .list_resources(Names::CONSUMER.kind)
        .await
        .map_err(ApiError::from_store)?;
    let others: Vec<ConsumerDefinition> = records
        .iter()
        .filter(|r| r.name != *ours)
        .filter_map(|r| stored_definition(r).ok())
        .collect();
    let mut holders = BTreeSet::new();
    let mut details = Vec::new();
    for (claim, names) in conflicting_claims(others.iter().chain([consumer])) {
        if !names.contains(ours) {
            continue;
        }
        let theirs: BTreeSet<String> = names.into_iter().filter(|n| n != ours).collect();
        for (i, credential) in consumer.spec.credentials.iter().enumerate() {
            if credential.claim().as_ref() == Some(&claim) {
                details.push(FieldError::new(
                    path(&format!("spec.credentials[{i}]")),
                    format!(
                        "consumer {} already has {}",
                        quoted(&theirs),
                        claim.describe()
                    ),
                ));
            }
        }
        holders.extend(theirs);
    }
    if holders.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict("credential_conflict",
        format!(
            "consumer {} already holds a credential given here; a credential belongs to one consumer",
            quoted(&holders)
        ),
    )
    .with_details(details))
}

/// Checks the uniqueness of the prepared consumer's credentials and writes it under
/// `condition` (its precondition and basis), with `audit`'s record.
async fn commit(
    state: &AppState,
    consumer: &ConsumerDefinition,
    condition: (Precondition, Basis),
    audit: Audit,
    path: &(dyn Fn(&str) -> String + Sync),
) -> Result<PutResourceOutcome, ApiError> {
    let name = &consumer.metadata.name;
    let _serialized = state.consumer_writes.lock().await;
    check_unique(state, consumer, path).await?;
    put_resource::<Consumers>(state, name, consumer.to_json(), condition, audit).await
}

/// What a listing or a write shows of a consumer: its groups and credentials, without any
/// secret or hash.
fn summary(record: &ResourceRecord) -> Value {
    let mut item = json!({
        "name": record.name,
        "revision": record.revision,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
    });
    match ConsumerDefinition::from_value_validated(&record.spec, false) {
        Ok(consumer) => {
            let public = consumer.to_public_json();
            item["groups"] = public["spec"]["groups"].clone();
            item["aclGroups"] = json!(consumer.spec.acl_groups);
            item["credentials"] = public["spec"]
                .get("credentials")
                .cloned()
                .unwrap_or_else(|| json!([]));
        }
        Err(err) => item["error"] = json!(err.redacted().to_string()),
    }
    item
}

fn same_path(field: &str) -> String {
    field.to_string()
}

/// The stored consumer a credential call changes, and where the write's precondition comes
/// from: the client's `If-Match`, which must name the stored revision, or else the read.
/// 403 when the consumer is outside `identity`'s groups.
async fn read_for_change(
    state: &AppState,
    identity: &Identity,
    headers: &HeaderMap,
    name: &str,
) -> Result<(ResourceRecord, ConsumerDefinition, Basis), ApiError> {
    let client = match precondition(headers)? {
        Some(Precondition::Absent) => {
            return Err(ApiError::field(
                "If-None-Match",
                "not supported on credentials: the consumer must exist",
            ));
        }
        other => other,
    };
    let record = record::<Consumers>(state, name).await?;
    // the change is conditional on this read: the groups checked are the ones written over
    refuse_groups(
        identity,
        "write",
        Names::CONSUMER.noun,
        name,
        &groups_of(&record.spec),
    )?;
    let basis = match client {
        Some(Precondition::Revision(expected)) if expected != record.revision => {
            return Err(ApiError::from_store(StoreError::PreconditionFailed {
                name: name.to_string(),
                expected,
                actual: Some(record.revision),
            }));
        }
        Some(_) => Basis::Client,
        None => Basis::Read,
    };
    let consumer = stored_definition(&record)?;
    Ok((record, consumer, basis))
}

/// `POST /api/v1/consumers/{name}/credentials`: adds one credential (the body); an api-key
/// without a key gets a generated one, shown once in the answer as `key`.
pub(super) async fn add_credential(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Author(audit): Author,
    Target { name, params }: Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let credential = read_document::<Consumers>(&state, &headers, body).await?;
    let (record, stored, basis) = read_for_change(&state, &identity, &headers, &name).await?;
    if let Some(id) = credential.get("id").and_then(Value::as_str)
        && stored.spec.credentials.iter().any(|c| c.id == id)
    {
        return Err(ApiError::conflict("already_exists",
            format!(
                "consumer {name:?} already has a credential {id:?}; revoke it first, or PUT the consumer"
            ),
        )
        .with_details(vec![FieldError::new("id", "already used by this consumer")]));
    }
    let index = stored.spec.credentials.len();
    let mut document = stored.to_json();
    match document.pointer_mut("/spec/credentials") {
        Some(Value::Array(credentials)) => credentials.push(credential),
        _ => document["spec"]["credentials"] = json!([credential]),
    }
    // errors about the new credential are reported with paths into the body
    let prefix = format!("spec.credentials[{index}]");
    let path = |field: &str| match field.strip_prefix(&prefix) {
        Some(rest) => rest.trim_start_matches('.').to_string(),
        None => field.to_string(),
    };
    let prepared = prepare(document, None, &path).await?;
    let id = prepared
        .consumer
        .spec
        .credentials
        .get(index)
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let outcome = commit(
        &state,
        &prepared.consumer,
        (Precondition::Revision(record.revision), basis),
        audit.doing(ADD_CREDENTIAL, Some(id.clone())),
        &path,
    )
    .await?;
    let record = &outcome.record;
    tracing::info!(consumer = %name, credential = %id, revision = record.revision, "credential added");
    let mut body = json!({
        "name": name,
        "revision": record.revision,
        "credential": prepared.consumer.to_public_json()["spec"]["credentials"][index],
    });
    if let Some(generated) = prepared.generated.first() {
        body["key"] = json!(generated.key);
    }
    written(
        &state,
        &params,
        Written {
            groups: prepared.consumer.spec.groups.clone(),
            previous: outcome.previous.as_ref(),
            revision: record.revision,
            created: true,
            body,
            location: location::<Consumers>(&name),
        },
    )
    .await
}

/// `DELETE /api/v1/consumers/{name}/credentials/{id}`: revokes one credential.
pub(super) async fn revoke_credential(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Author(audit): Author,
    names: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((name, id)) = names.map_err(|e| ApiError::from_path(&e))?;
    model::validate_name(&name).map_err(|message| ApiError::field("name", message))?;
    model::validate_name(&id).map_err(|message| ApiError::field("id", message))?;
    let params = WriteParams::parse(query.as_deref(), &state)?;
    let (record, mut consumer, basis) = read_for_change(&state, &identity, &headers, &name).await?;
    let before = consumer.spec.credentials.len();
    consumer.spec.credentials.retain(|c| c.id != id);
    if consumer.spec.credentials.len() == before {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("consumer {name:?} has no credential {id:?}"),
        ));
    }
    let outcome = put_resource::<Consumers>(
        &state,
        &name,
        consumer.to_json(),
        (Precondition::Revision(record.revision), basis),
        audit.doing(REVOKE_CREDENTIAL, Some(id.clone())),
    )
    .await?;
    let revision = outcome.record.revision;
    tracing::info!(consumer = %name, credential = %id, revision, "credential revoked");
    written(
        &state,
        &params,
        Written {
            groups: consumer.spec.groups.clone(),
            previous: outcome.previous.as_ref(),
            revision,
            created: false,
            body: json!({"name": name, "revision": revision, "credential": id, "revoked": true}),
            location: location::<Consumers>(&name),
        },
    )
    .await
}
