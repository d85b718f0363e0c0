//! `/api/v1/certificates`: deploy, read and delete TLS certificates (served by the handlers
//! of [`super::kind`]).
//!
//! A certificate is validated like an API (its PEM decoded, its key checked against the
//! certificate) and stored with its change-log entry in one transaction; runtimes of its
//! groups serve it on their HTTPS listeners from the next handshake on. The private key is
//! stored sealed under the controller's encryption key and never returned: reads show the
//! certificate, its names and its validity.
//!
//! A certificate that an API presents to its upstream (`spec.upstream.tls.clientCertificate`)
//! cannot be deleted while that API names it, nor leave a group of that API (409 `in_use`).

use gw_core::model::{CertificateDefinition, FieldError, Format, parse_value};
use gw_store::ResourceRecord;
use serde_json::json;

use super::kind::{Certificates, Deploy, Deployed, Kind, Names, put_resource};
use super::{ApiError, AppState};
use crate::watcher::groups_of;

impl Kind for Certificates {
    const NAMES: Names = Names::CERTIFICATE;

    type Document = CertificateDefinition;

    fn parse(
        _: &AppState,
        bytes: &[u8],
        format: Format,
    ) -> Result<CertificateDefinition, ApiError> {
        let value = parse_value(bytes, format).map_err(ApiError::from_model)?;
        CertificateDefinition::from_value_validated(&value).map_err(ApiError::from_model)
    }

    fn document_name(certificate: &CertificateDefinition) -> Option<&str> {
        Some(&certificate.metadata.name)
    }

    async fn deploy(
        state: &AppState,
        deploy: Deploy<CertificateDefinition>,
    ) -> Result<Deployed, ApiError> {
        let certificate = deploy.document;
        let name = &certificate.metadata.name;
        let stranded = users_outside(state.store()?.as_ref(), &certificate).await?;
        if !stranded.is_empty() {
            return Err(ApiError::conflict(
                "in_use",
                format!(
                    "API(s) {} present certificate {name:?} to their upstream in groups it would leave",
                    stranded.join(", "),
                ),
            ));
        }
        // the private key is stored sealed under the controller's encryption key
        let mut spec = certificate.to_json();
        state.sealer.seal_certificate(&mut spec, name);
        let outcome = put_resource::<Self>(
            state,
            name,
            spec,
            (deploy.precondition, deploy.basis),
            deploy.audit,
        )
        .await?;
        Ok(Deployed {
            body: Self::summary(state, &outcome.record),
            outcome,
            groups: certificate.spec.groups,
        })
    }

    fn document_groups(certificate: &CertificateDefinition) -> Vec<String> {
        certificate.spec.groups.clone()
    }

    fn summary(state: &AppState, record: &ResourceRecord) -> serde_json::Value {
        summary(state, record)
    }

    /// The document without its private key.
    fn shown(_: &AppState, record: &ResourceRecord) -> Result<serde_json::Value, ApiError> {
        let mut public = record.spec.clone();
        if let Some(spec) = public.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.remove("privateKey");
        }
        Ok(public)
    }

    /// 409 while an API presents it to its upstream.
    async fn check_delete(state: &AppState, name: &str) -> Result<(), ApiError> {
        let users: Vec<String> = users(state.store()?.as_ref(), name)
            .await?
            .into_iter()
            .map(|(api, _)| api)
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(ApiError::conflict(
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
        ))
    }
}

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
