//! Re-sealing: rewrites every value sealed at rest under the controller's current key, the
//! last step of a key rotation (`gw-controller reseal`, or `POST /api/v1/reseal`).
//!
//! It reads each stored API and certificate, the change log's older versions of them, and
//! the cluster CA, and rewrites those holding a value sealed under a previous key (or a
//! secret stored in the clear before sealing existed). What a value opens to is unchanged,
//! so a rewrite takes no new revision, appends no change and sends runtimes nothing
//! ([`Store::reseal`]): an HA cluster keeps serving, and no runtime rebuilds a route.
//!
//! Safe while other controllers write: each rewrite is conditional on the revision that
//! was read (and the CA's on its value), so a write that lands in between is never lost;
//! the row is then read again and resealed (up to [`ATTEMPTS`] times). Two reseals at once
//! are harmless: both seal under the current key. It must run only once every controller
//! has the new key as its current one (a controller still sealing under the old key would
//! keep writing values the next reseal has to redo; see docs/security/control-plane.md).

use std::sync::Arc;
use std::time::Duration;

use gw_core::model::PolicyCatalog;
use gw_core::policy::PolicyRegistry;
use gw_store::{ChangeOp, KIND_API, ResourceRecord, Store, StoreError};
use gw_sync::KIND_CERTIFICATE;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::cluster_ca::{self, ClusterCaError};
use crate::sealed::{SealError, Sealer};

/// How many times one resource is read again when a write keeps landing between its read
/// and its rewrite.
pub const ATTEMPTS: usize = 5;

/// How many changes are read from the change log at once.
const PAGE: i64 = 500;

/// What a reseal did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResealReport {
    /// Resources (APIs, certificates, the cluster CA) rewritten under the current key.
    pub resealed: u64,
    /// Resources whose secrets already were all under the current key (or that hold none).
    pub already_current: u64,
    /// Older versions in the change log rewritten.
    pub changes_resealed: u64,
}

/// Why a reseal stopped (what it resealed before stays resealed; run it again).
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// A value does not open with this controller's keys.
    #[error("{resource}: {source}")]
    Sealed {
        /// Its kind and name (`certificate "site"`).
        resource: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// The cluster CA could not be read or resealed.
    #[error("the cluster CA: {0}")]
    ClusterCa(#[from] ClusterCaError),
    /// Writes kept landing on one resource.
    #[error("{kind} {name:?} changed {ATTEMPTS} times while it was resealed; run the reseal again")]
    Busy {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
}

/// `spec` (of `kind` `name`) with every secret under the current key, or `None` when it
/// already is (a kind without secrets never changes).
fn resealed(
    sealer: &Sealer,
    policies: &dyn PolicyCatalog,
    kind: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<Option<serde_json::Value>, ResealError> {
    let resealed = match kind {
        KIND_API => sealer.reseal_api(spec, name, policies),
        KIND_CERTIFICATE => sealer.reseal_certificate(spec, name),
        _ => Ok(None),
    };
    resealed.map_err(|source| ResealError::Sealed {
        resource: format!("{kind} {name:?}"),
        source,
    })
}

/// Reseals every sealed value of the store under `sealer`'s current key.
pub async fn reseal(
    store: &dyn Store,
    sealer: &Sealer,
    policies: &dyn PolicyCatalog,
) -> Result<ResealReport, ResealError> {
    let mut report = ResealReport::default();
    let snapshot = store.snapshot().await?;
    let records = snapshot
        .apis
        .into_iter()
        .map(ResourceRecord::from)
        .chain(snapshot.resources);
    for record in records {
        if reseal_one(store, sealer, policies, record).await? {
            report.resealed += 1;
        } else {
            report.already_current += 1;
        }
    }
    report.changes_resealed = reseal_changes(store, sealer, policies).await?;
    if cluster_ca::reseal(store, sealer).await? {
        report.resealed += 1;
    } else {
        report.already_current += 1;
    }
    tracing::info!(
        resealed = report.resealed,
        already_current = report.already_current,
        changes = report.changes_resealed,
        key = sealer.key_id(),
        "secrets resealed"
    );
    Ok(report)
}

/// How many stored APIs and certificates hold a secret a reseal would rewrite (sealed under
/// a previous key, or stored in the clear before sealing existed). The cluster CA is not
/// counted: reading it makes it where the store keeps none.
pub async fn pending(
    store: &dyn Store,
    sealer: &Sealer,
    policies: &dyn PolicyCatalog,
) -> Result<u64, ResealError> {
    let snapshot = store.snapshot().await?;
    let mut count = 0;
    let records = snapshot
        .apis
        .into_iter()
        .map(ResourceRecord::from)
        .chain(snapshot.resources);
    for record in records {
        if resealed(sealer, policies, &record.kind, &record.name, &record.spec)?.is_some() {
            count += 1;
        }
    }
    Ok(count)
}

/// Sets `gauge` to [`pending`] now and every `every` (`gw_controller_secrets_to_reseal`:
/// 0 once a key rotation's reseal is done; -1 while it cannot be counted).
pub async fn count_periodically(
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    policies: PolicyRegistry,
    gauge: Gauge,
    every: Duration,
) {
    loop {
        match pending(store.as_ref(), &sealer, &policies).await {
            Ok(count) => {
                gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            Err(err) => {
                gauge.set(-1);
                tracing::warn!(error = %err, "cannot count the secrets left to reseal");
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Reseals one resource, reading it again when a write lands first; returns whether it was
/// rewritten (`false`: already current, or deleted meanwhile).
async fn reseal_one(
    store: &dyn Store,
    sealer: &Sealer,
    policies: &dyn PolicyCatalog,
    mut record: ResourceRecord,
) -> Result<bool, ResealError> {
    for _ in 0..ATTEMPTS {
        let Some(spec) = resealed(sealer, policies, &record.kind, &record.name, &record.spec)?
        else {
            return Ok(false);
        };
        if store
            .reseal(&record.kind, &record.name, record.revision, &spec)
            .await?
        {
            return Ok(true);
        }
        // written or deleted since it was read: read it again
        let current = if record.kind == KIND_API {
            store.get_api(&record.name).await?.map(ResourceRecord::from)
        } else {
            store.get_resource(&record.kind, &record.name).await?
        };
        match current {
            Some(current) => record = current,
            None => return Ok(false),
        }
    }
    Err(ResealError::Busy {
        kind: record.kind,
        name: record.name,
    })
}

/// Reseals the older versions the change log keeps (runtimes behind are sent deltas from
/// them); returns how many it rewrote.
async fn reseal_changes(
    store: &dyn Store,
    sealer: &Sealer,
    policies: &dyn PolicyCatalog,
) -> Result<u64, ResealError> {
    let mut count = 0;
    let mut after = 0;
    loop {
        let changes = match store.changes_since(after, PAGE).await {
            Ok(changes) => changes,
            // compacted meanwhile: go on from where the log now starts
            Err(StoreError::Compacted {
                compacted_through, ..
            }) => {
                after = compacted_through;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let Some(last) = changes.last().map(|c| c.revision) else {
            return Ok(count);
        };
        for change in changes {
            let ChangeOp::Upsert(spec) = &change.op else {
                continue;
            };
            if let Some(spec) = resealed(sealer, policies, &change.kind, &change.name, spec)?
                && store
                    .reseal_change(&change.kind, &change.name, change.revision, &spec)
                    .await?
            {
                count += 1;
            }
        }
        after = last;
    }
}
