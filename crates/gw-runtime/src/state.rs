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
use gw_core::model::{ApiDefinition, CertificateDefinition, ValidationContext};
use gw_sync::client::Applier;
use gw_sync::proto::{Resource, ResourceRef};
use gw_sync::{KIND_API, KIND_CERTIFICATE};
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

/// A resource as applied, with the revision of its last change.
#[derive(Debug)]
struct Installed<T> {
    revision: i64,
    definition: Arc<T>,
}

impl<T> Clone for Installed<T> {
    fn clone(&self) -> Self {
        Self {
            revision: self.revision,
            definition: Arc::clone(&self.definition),
        }
    }
}

/// Every resource of a configuration, by kind and name.
#[derive(Debug, Clone, Default)]
struct Resources {
    apis: BTreeMap<String, Installed<ApiDefinition>>,
    certificates: BTreeMap<String, Installed<CertificateDefinition>>,
}

impl Resources {
    fn insert(&mut self, parsed: Parsed) {
        match parsed {
            Parsed::Api(api) => {
                self.apis.insert(api.definition.metadata.name.clone(), api);
            }
            Parsed::Certificate(certificate) => {
                self.certificates
                    .insert(certificate.definition.metadata.name.clone(), certificate);
            }
        }
    }

    fn remove(&mut self, removal: &ResourceRef) {
        match removal.kind.as_str() {
            KIND_API => {
                self.apis.remove(&removal.name);
            }
            KIND_CERTIFICATE => {
                self.certificates.remove(&removal.name);
            }
            // a kind this runtime never held
            _ => {}
        }
    }
}

/// One resource from a controller, parsed.
enum Parsed {
    Api(Installed<ApiDefinition>),
    Certificate(Installed<CertificateDefinition>),
}

#[derive(Debug, Default)]
struct Current {
    revision: i64,
    /// The store the revision belongs to (controller and cache origins).
    store_id: String,
    resources: Resources,
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
    fn parse(&self, resource: &Resource) -> Result<Parsed, String> {
        match resource.kind.as_str() {
            KIND_API => {
                let api =
                    parse_definition(&resource.name, &resource.body, self.gateway.registry())?;
                Ok(Parsed::Api(Installed {
                    revision: resource.revision,
                    definition: Arc::new(api),
                }))
            }
            KIND_CERTIFICATE => {
                let certificate = parse_certificate(&resource.name, &resource.body)?;
                Ok(Parsed::Certificate(Installed {
                    revision: resource.revision,
                    definition: Arc::new(certificate),
                }))
            }
            other => Err(format!(
                "{:?}: unsupported resource kind {other:?}",
                resource.name
            )),
        }
    }

    /// Applies a whole set of definitions that came from `origin` (and, for the cache, from
    /// the store `store_id`), each with the revision of its last change.
    pub async fn replace(
        &self,
        revision: i64,
        store_id: &str,
        apis: Vec<(i64, ApiDefinition)>,
        certificates: Vec<(i64, CertificateDefinition)>,
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        let mut current = self.current.lock().await;
        current.store_id = store_id.to_string();
        let mut next = Resources::default();
        for (revision, api) in apis {
            next.insert(Parsed::Api(Installed {
                revision,
                definition: Arc::new(api),
            }));
        }
        for (revision, certificate) in certificates {
            next.insert(Parsed::Certificate(Installed {
                revision,
                definition: Arc::new(certificate),
            }));
        }
        self.install(&mut current, revision, next, origin).await
    }

    async fn install(
        &self,
        current: &mut Current,
        revision: i64,
        next: Resources,
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        let label = origin.as_str();
        let started = std::time::Instant::now();
        let result = self.gateway.apply_config(
            revision,
            next.apis.values().map(|i| Arc::clone(&i.definition)),
            next.certificates
                .values()
                .map(|i| Arc::clone(&i.definition)),
        );
        if let Err(err) = result {
            self.count(label, "rejected");
            return Err(err.reasons);
        }
        tracing::info!(
            revision,
            apis = next.apis.len(),
            certificates = next.certificates.len(),
            source = label,
            elapsed_ms = started.elapsed().as_millis(),
            "configuration applied"
        );
        current.resources = next;
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
            .set(i64::try_from(current.resources.apis.len()).unwrap_or(i64::MAX));
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
            kinds: vec![KIND_API.to_string(), KIND_CERTIFICATE.to_string()],
            apis: current
                .resources
                .apis
                .values()
                .map(|i| CachedApi {
                    revision: i.revision,
                    definition: i.definition.to_json(),
                })
                .collect(),
            certificates: current
                .resources
                .certificates
                .values()
                .map(|i| CachedApi {
                    revision: i.revision,
                    definition: i.definition.to_json(),
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
        let mut certificates = Vec::with_capacity(config.certificates.len());
        for cached in config.certificates {
            let body = cached.definition.to_string();
            match parse_certificate("", body.as_bytes()) {
                Ok(certificate) => certificates.push((cached.revision, certificate)),
                Err(err) => {
                    tracing::warn!(cache = %path, error = %err, "ignoring an invalid cache");
                    return None;
                }
            }
        }
        // a cache from a runtime that did not apply certificates: served, but resumed from a
        // snapshot rather than a delta (which would miss the certificates made before it)
        let store_id = if config.kinds.iter().any(|k| k == KIND_CERTIFICATE) {
            config.store_id.as_str()
        } else {
            ""
        };
        match self
            .replace(config.revision, store_id, apis, certificates, Origin::Cache)
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

/// Parses a canonical certificate from a controller or the cache. `expected_name`, when not
/// empty, must match. Errors never quote the key.
fn parse_certificate(expected_name: &str, body: &[u8]) -> Result<CertificateDefinition, String> {
    let label = if expected_name.is_empty() {
        "certificate"
    } else {
        expected_name
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("certificate {label:?}: invalid JSON: {e}"))?;
    let certificate = CertificateDefinition::from_value_validated(&value)
        .map_err(|e| format!("certificate {label:?}: {e}"))?;
    if !expected_name.is_empty() && certificate.metadata.name != expected_name {
        return Err(format!(
            "resource {expected_name:?} holds a certificate named {:?}",
            certificate.metadata.name
        ));
    }
    Ok(certificate)
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
        let mut next = Resources::default();
        let mut errors = Vec::new();
        for resource in &resources {
            match self.parse(resource) {
                Ok(parsed) => next.insert(parsed),
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
        let mut next = current.resources.clone();
        let mut errors = Vec::new();
        for resource in &upserts {
            match self.parse(resource) {
                Ok(parsed) => next.insert(parsed),
                Err(err) => errors.push(err),
            }
        }
        for removal in &removals {
            next.remove(removal);
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
