//! What the runtime serves, and how a new configuration gets in.
//!
//! [`ConfigState`] holds the applied APIs and their revision. Every source goes through it:
//! the controller stream (it is the sync client's [`Applier`]), the configuration file and the
//! last-known-good cache. An apply parses and validates each resource, builds the new
//! gateway configuration off the request path (reusing every unchanged API), swaps it in,
//! then writes the cache. Anything it cannot apply is refused as a whole with the reasons, and
//! the previous configuration stays in service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gw_core::Gateway;
use gw_core::model::{ApiDefinition, ValidationContext};
use gw_sync::KIND_API;
use gw_sync::client::Applier;
use gw_sync::proto::{Resource, ResourceRef};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::{CacheFile, CachedApi, CachedConfig};

/// Where the served configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Nothing applied yet.
    None,
    /// A controller's stream.
    Controller,
    /// The last-known-good cache, at start-up.
    Cache,
    /// The configuration file (standalone mode).
    File,
}

impl Origin {
    /// The name shown in `/status/ready` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::None => "none",
            Origin::Controller => "controller",
            Origin::Cache => "cache",
            Origin::File => "file",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, Default)]
struct ConfigMetrics {
    revision: Gauge,
    apis: Gauge,
    applies: Family<ApplyLabels, Counter>,
    cache_writes_failed: Counter,
    served_from: Family<SourceLabels, Gauge>,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_config_revision",
            "Revision of the configuration served",
            metrics.revision.clone(),
        );
        registry.register(
            "gw_config_apis",
            "APIs in the configuration served",
            metrics.apis.clone(),
        );
        registry.register(
            "gw_config_applies",
            "Configurations applied or rejected, by source",
            metrics.applies.clone(),
        );
        registry.register(
            "gw_config_cache_write_failures",
            "Failed writes of the last-known-good cache",
            metrics.cache_writes_failed.clone(),
        );
        registry.register(
            "gw_config_source",
            "1 for the source of the configuration served (controller, cache, file)",
            metrics.served_from.clone(),
        );
        metrics
    }
}

#[derive(Debug, Clone)]
struct Installed {
    revision: i64,
    api: Arc<ApiDefinition>,
}

#[derive(Debug, Default)]
struct Current {
    revision: i64,
    /// The store the revision belongs to (controller and cache origins).
    store_id: String,
    apis: BTreeMap<String, Installed>,
}

/// The applied configuration; see the module docs.
#[derive(Debug)]
pub struct ConfigState {
    gateway: Arc<Gateway>,
    group: String,
    current: tokio::sync::Mutex<Current>,
    applied: AtomicI64,
    /// The store of the applied revision, readable without waiting for an apply.
    applied_store: Mutex<String>,
    origin: Mutex<Origin>,
    cache: Option<CacheFile>,
    metrics: ConfigMetrics,
}

impl ConfigState {
    /// A state that applies to `gateway`, caches to `cache` (if any) and registers its
    /// metrics in `registry`.
    pub fn new(
        gateway: Arc<Gateway>,
        group: String,
        cache: Option<CacheFile>,
        registry: &mut Registry,
    ) -> Self {
        Self {
            gateway,
            group,
            current: tokio::sync::Mutex::new(Current::default()),
            applied: AtomicI64::new(0),
            applied_store: Mutex::new(String::new()),
            origin: Mutex::new(Origin::None),
            cache,
            metrics: ConfigMetrics::register(registry),
        }
    }

    /// The gateway configurations are applied to.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The revision served.
    pub fn revision(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Where the served configuration came from.
    pub fn origin(&self) -> Origin {
        *self
            .origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parses and validates one resource from a controller.
    fn parse(&self, resource: &Resource) -> Result<Installed, String> {
        if resource.kind != KIND_API {
            return Err(format!(
                "{:?}: unsupported resource kind {:?}",
                resource.name, resource.kind
            ));
        }
        let api = parse_definition(&resource.name, &resource.body, self.gateway.registry())?;
        Ok(Installed {
            revision: resource.revision,
            api: Arc::new(api),
        })
    }

    /// Applies a whole set of definitions that came from `origin` (and, for the cache, from
    /// the store `store_id`).
    pub async fn replace(
        &self,
        revision: i64,
        store_id: &str,
        apis: Vec<(i64, ApiDefinition)>,
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        let mut current = self.current.lock().await;
        current.store_id = store_id.to_string();
        let next = apis
            .into_iter()
            .map(|(revision, api)| {
                (
                    api.metadata.name.clone(),
                    Installed {
                        revision,
                        api: Arc::new(api),
                    },
                )
            })
            .collect();
        self.install(&mut current, revision, next, origin).await
    }

    async fn install(
        &self,
        current: &mut Current,
        revision: i64,
        next: BTreeMap<String, Installed>,
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        let label = origin.as_str();
        let started = std::time::Instant::now();
        let result = self
            .gateway
            .apply(revision, next.values().map(|i| Arc::clone(&i.api)));
        if let Err(err) = result {
            self.count(label, "rejected");
            return Err(err.reasons);
        }
        tracing::info!(
            revision,
            apis = next.len(),
            source = label,
            elapsed_ms = started.elapsed().as_millis(),
            "configuration applied"
        );
        current.apis = next;
        self.record(current, revision, origin);
        if origin == Origin::Controller {
            self.write_cache(current).await;
        }
        Ok(())
    }

    /// Books a new revision as served: the revision, its store, its origin and the metrics.
    fn record(&self, current: &mut Current, revision: i64, origin: Origin) {
        let label = origin.as_str();
        current.revision = revision;
        self.applied_store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone_from(&current.store_id);
        self.applied.store(revision, Ordering::Release);
        let previous = std::mem::replace(
            &mut *self
                .origin
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            origin,
        );
        if previous != origin {
            self.metrics
                .served_from
                .get_or_create(&SourceLabels {
                    source: previous.as_str(),
                })
                .set(0);
            self.metrics
                .served_from
                .get_or_create(&SourceLabels { source: label })
                .set(1);
        }
        self.metrics.revision.set(revision);
        self.metrics
            .apis
            .set(i64::try_from(current.apis.len()).unwrap_or(i64::MAX));
        self.count(label, "applied");
    }

    /// Counts a configuration from `origin` that was refused before it reached the state
    /// (a file that does not parse, for example).
    pub fn count_rejection(&self, origin: Origin) {
        self.count(origin.as_str(), "rejected");
    }

    fn count(&self, source: &'static str, result: &'static str) {
        self.metrics
            .applies
            .get_or_create(&ApplyLabels { source, result })
            .inc();
    }

    async fn write_cache(&self, current: &Current) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let config = CachedConfig {
            group: self.group.clone(),
            store_id: current.store_id.clone(),
            revision: current.revision,
            apis: current
                .apis
                .values()
                .map(|i| CachedApi {
                    revision: i.revision,
                    definition: i.api.to_json(),
                })
                .collect(),
        };
        let written = tokio::task::spawn_blocking(move || cache.write(&config)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                self.metrics.cache_writes_failed.inc();
                tracing::warn!(error = %err, "could not write the last-known-good cache");
            }
            Err(err) => {
                self.metrics.cache_writes_failed.inc();
                tracing::warn!(error = %err, "the cache writer failed");
            }
        }
    }

    /// Loads the last-known-good cache, if there is a valid one for this group, and serves
    /// it. Returns the revision loaded.
    pub async fn load_cache(&self) -> Option<i64> {
        let cache = self.cache.clone()?;
        let path = cache.path().display().to_string();
        let read = tokio::task::spawn_blocking(move || cache.read())
            .await
            .ok()?;
        let config = match read {
            Ok(Some(config)) => config,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring the last-known-good cache");
                return None;
            }
        };
        if config.group != self.group {
            tracing::warn!(
                cache = %path, cached_group = %config.group, group = %self.group,
                "ignoring a cache written for another group"
            );
            return None;
        }
        let mut apis = Vec::with_capacity(config.apis.len());
        for cached in config.apis {
            let body = cached.definition.to_string();
            match parse_definition("", body.as_bytes(), self.gateway.registry()) {
                Ok(api) => apis.push((cached.revision, api)),
                Err(err) => {
                    tracing::warn!(cache = %path, error = %err, "ignoring an invalid cache");
                    return None;
                }
            }
        }
        match self
            .replace(config.revision, &config.store_id, apis, Origin::Cache)
            .await
        {
            Ok(()) => {
                tracing::info!(cache = %path, revision = config.revision, "serving the last-known-good configuration");
                Some(config.revision)
            }
            Err(errors) => {
                tracing::warn!(cache = %path, ?errors, "ignoring a cache that does not apply");
                None
            }
        }
    }
}

/// Parses a canonical definition from a controller or the cache and validates it against the
/// policies this runtime knows. `expected_name`, when not empty, must match.
fn parse_definition(
    expected_name: &str,
    body: &[u8],
    registry: &gw_core::policy::PolicyRegistry,
) -> Result<ApiDefinition, String> {
    let label = if expected_name.is_empty() {
        "API"
    } else {
        expected_name
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("API {label:?}: invalid JSON: {e}"))?;
    let ctx = ValidationContext {
        policies: Some(registry),
    };
    let api = ApiDefinition::from_value_validated(&value, &ctx)
        .map_err(|e| format!("API {label:?}: {e}"))?;
    if !expected_name.is_empty() && api.metadata.name != expected_name {
        return Err(format!(
            "resource {expected_name:?} holds an API named {:?}",
            api.metadata.name
        ));
    }
    Ok(api)
}

#[async_trait]
impl Applier for ConfigState {
    fn applied(&self) -> (i64, String) {
        let store = self
            .applied_store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (self.revision(), store)
    }

    async fn apply_snapshot(
        &self,
        revision: i64,
        store_id: &str,
        resources: Vec<Resource>,
    ) -> Result<(), Vec<String>> {
        let mut current = self.current.lock().await;
        let mut next = BTreeMap::new();
        let mut errors = Vec::new();
        for resource in &resources {
            match self.parse(resource) {
                Ok(installed) => {
                    next.insert(resource.name.clone(), installed);
                }
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            self.count(Origin::Controller.as_str(), "rejected");
            return Err(errors);
        }
        let previous_store = std::mem::replace(&mut current.store_id, store_id.to_string());
        let result = self
            .install(&mut current, revision, next, Origin::Controller)
            .await;
        if result.is_err() {
            current.store_id = previous_store;
        }
        result
    }

    async fn apply_delta(
        &self,
        revision: i64,
        upserts: Vec<Resource>,
        removals: Vec<ResourceRef>,
    ) -> Result<(), Vec<String>> {
        let mut current = self.current.lock().await;
        let mut next = current.apis.clone();
        let mut errors = Vec::new();
        for resource in &upserts {
            match self.parse(resource) {
                Ok(installed) => {
                    next.insert(resource.name.clone(), installed);
                }
                Err(err) => errors.push(err),
            }
        }
        for removal in &removals {
            next.remove(&removal.name);
        }
        if !errors.is_empty() {
            self.count(Origin::Controller.as_str(), "rejected");
            return Err(errors);
        }
        if upserts.is_empty() && removals.is_empty() {
            // nothing changed for this group: only the revision moves; the gateway and the
            // cache keep what they have (a restart resumes from the cached revision, which
            // the controller's delta covers)
            self.record(&mut current, revision, Origin::Controller);
            return Ok(());
        }
        self.install(&mut current, revision, next, Origin::Controller)
            .await
    }
}
