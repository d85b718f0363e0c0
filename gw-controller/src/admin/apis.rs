//! `/api/v1/apis`: deploy, read and delete APIs (served by the handlers of
//! [`super::kind`]).
//!
//! Every field of a definition that its policies or the model mark secret (an HS256 key,
//! the password of a Redis or upstream URL, an injected `Authorization`) is stored sealed
//! (see [`crate::sealed`]) and shown to no one: reads show `<redacted>` in its place, and a
//! write that carries `<redacted>` back is refused ([`super::redact`] says why).
//!
//! A write validates the definition (every problem, with its field path) against the
//! policies this controller knows, checks that a client certificate it presents to its
//! upstream is deployed to its groups, and stores it with the routing keys it occupies (a
//! key another API holds is a 409 `route_conflict`). APIs have a table of their own in the
//! store, because they own routes.

use gw_core::model::{self, ApiDefinition, Format, ValidationContext};
use gw_store::{
    Audit, DeleteResourceOutcome, Precondition, PutApi, ResourceRecord, RouteKey, Snapshot, Store,
    StoreError,
};
use serde_json::json;

use super::kind::{Apis, Deploy, Deployed, Kind, Names};
use super::{ApiError, AppState};
use crate::watcher::groups_of;

impl Kind for Apis {
    const NAMES: Names = Names::API;

    type Document = ApiDefinition;

    fn parse(state: &AppState, bytes: &[u8], format: Format) -> Result<ApiDefinition, ApiError> {
        let ctx = ValidationContext {
            policies: Some(&state.policies),
        };
        let value = model::parse_value(bytes, format).map_err(ApiError::from_model)?;
        // before validation, which would refuse the placeholder as a bad value
        super::redact::refuse_redacted(&value)?;
        ApiDefinition::from_value_validated(&value, &ctx).map_err(ApiError::from_model)
    }

    fn document_name(api: &ApiDefinition) -> Option<&str> {
        Some(&api.metadata.name)
    }

    async fn deploy(state: &AppState, deploy: Deploy<ApiDefinition>) -> Result<Deployed, ApiError> {
        let api = deploy.document;
        let store = state.store()?;
        check_client_certificate(store.as_ref(), &api).await?;
        let name = api.metadata.name.clone();
        // every secret field sealed, bound to this API and the field's path
        let mut spec = api.to_json();
        state.sealer.seal_api(&mut spec, &name, &state.policies);
        let outcome = store
            .put_api(PutApi {
                name: name.clone(),
                routes: route_keys(&api),
                spec,
                precondition: deploy.precondition,
                audit: Some(deploy.audit),
            })
            .await
            .map_err(|err| Self::write_error(&name, err, deploy.basis))?
            .into_record::<ResourceRecord>();
        Ok(Deployed {
            body: Self::summary(state, &outcome.record),
            outcome,
            groups: api.spec.groups,
        })
    }

    fn document_groups(api: &ApiDefinition) -> Vec<String> {
        api.spec.groups.clone()
    }

    /// For roles that may not see secrets, also what [`super::redact`] guesses to be one
    /// (a policy that does not mark its secret params).
    fn hide_secrets(shown: &mut serde_json::Value) {
        super::redact::hide_secrets(shown);
    }

    fn summary(state: &AppState, record: &ResourceRecord) -> serde_json::Value {
        json!({
            "name": record.name,
            "revision": record.revision,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
            "api": shown(state, record),
        })
    }

    fn shown(state: &AppState, record: &ResourceRecord) -> Result<serde_json::Value, ApiError> {
        Ok(shown(state, record))
    }

    async fn find(store: &dyn Store, name: &str) -> Result<Option<ResourceRecord>, StoreError> {
        Ok(store.get_api(name).await?.map(Into::into))
    }

    fn listed(snapshot: Snapshot) -> Vec<ResourceRecord> {
        snapshot.apis.into_iter().map(Into::into).collect()
    }

    async fn remove(
        store: &dyn Store,
        name: &str,
        precondition: Precondition,
        audit: &Audit,
    ) -> Result<DeleteResourceOutcome, StoreError> {
        Ok(store
            .delete_api(name, precondition, Some(audit))
            .await?
            .into_record())
    }

    // A taken name and a missing API are answered with the store's own text (`"pets"
    // already exists`), as they were before the other kinds existed.
    fn taken(name: &str) -> ApiError {
        ApiError::from_store(StoreError::AlreadyExists {
            name: name.to_string(),
        })
    }

    fn delete_error(_: &str, err: StoreError) -> ApiError {
        ApiError::from_store(err)
    }
}

/// An API as any read shows it, whatever the reader's role: every field its policies or
/// the model mark secret ([`gw_core::model::secret`]) as `<redacted>`, sealed in the store
/// or not.
fn shown(state: &AppState, record: &ResourceRecord) -> serde_json::Value {
    let mut spec = record.spec.clone();
    state
        .sealer
        .hide_api_secrets(&mut spec, &record.name, &state.policies);
    spec
}

fn route_keys(api: &ApiDefinition) -> Vec<RouteKey> {
    api.route_keys()
        .into_iter()
        .map(|k| RouteKey {
            group: k.group,
            host: k.host,
            context: k.context,
        })
        .collect()
}

/// An API that shows a client certificate to its upstream needs that certificate deployed
/// to every group of the API (runtimes would refuse the API otherwise).
async fn check_client_certificate(
    store: &dyn gw_store::Store,
    api: &ApiDefinition,
) -> Result<(), ApiError> {
    const FIELD: &str = "spec.upstream.tls.clientCertificate";
    let Some(name) = api
        .spec
        .upstream
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate.as_deref())
    else {
        return Ok(());
    };
    let record = store
        .get_resource(Names::CERTIFICATE.kind, name)
        .await
        .map_err(ApiError::from_store)?;
    let Some(record) = record else {
        return Err(ApiError::field(
            FIELD,
            format!("certificate {name:?} does not exist; deploy it first"),
        ));
    };
    let deployed = groups_of(&record.spec);
    let missing: Vec<&str> = api
        .spec
        .groups
        .iter()
        .filter(|g| !deployed.contains(g))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::field(
            FIELD,
            format!(
                "certificate {name:?} is not deployed to group(s) {} of this API",
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}
