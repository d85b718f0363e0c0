//! What the runtime serves, and how a new configuration gets in.
//!
//! [`ConfigState`] holds the applied resources (APIs, TLS certificates, consumers) and their
//! revision. Every source goes through it:
//! the controller stream (it is the sync client's [`Applier`]), the configuration file and the
//! last-known-good cache. An apply parses and validates each resource, builds the new
//! gateway configuration off the request path (reusing every unchanged API), swaps it in,
//! then writes the cache. Anything it cannot apply is refused as a whole with the reasons, and
//! the previous configuration stays in service.
//!
//! Consumers from a controller or the cache must be sealed (keys and passwords as hashes):
//! a configuration with a clear secret in it is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gw_core::Gateway;
use gw_core::gateway::Resources as GatewayResources;
use gw_core::model::{ApiDefinition, CertificateDefinition, ConsumerDefinition, ValidationContext};
use gw_sync::client::Applier;
use gw_sync::proto::{Resource, ResourceRef};
use gw_sync::{KIND_API, KIND_CERTIFICATE, KIND_CONSUMER, KINDS};
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
    /// A signed fallback bundle, at start-up, while no controller answered.
    Bundle,
}

impl Origin {
    /// The name shown in `/status/ready` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::None => "none",
            Origin::Controller => "controller",
            Origin::Cache => "cache",
            Origin::File => "file",
            Origin::Bundle => "bundle",
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    /// `snapshot` or `delta`
    kind: &'static str,
}

#[derive(Debug, Clone, Default)]
struct ConfigMetrics {
    revision: Gauge,
    /// Updates received from controllers, by kind.
    updates: Family<UpdateLabels, Counter>,
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
            "gw_sync_updates",
            "Configuration updates received from controllers, by kind (snapshot: the whole \
             configuration; delta: the changes since the revision served)",
            metrics.updates.clone(),
        );
        registry.register(
            "gw_config_cache_write_failures",
            "Failed writes of the last-known-good cache",
            metrics.cache_writes_failed.clone(),
        );
        registry.register(
            "gw_config_source",
            "1 for the source of the configuration served (controller, cache, bundle, file)",
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
    consumers: BTreeMap<String, Installed<ConsumerDefinition>>,
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
            Parsed::Consumer(consumer) => {
                self.consumers
                    .insert(consumer.definition.metadata.name.clone(), consumer);
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
            KIND_CONSUMER => {
                self.consumers.remove(&removal.name);
            }
            // a kind this runtime never held
            _ => {}
        }
    }

    /// What the gateway builds its configuration from.
    fn definitions(&self) -> GatewayResources {
        fn all<T>(installed: &BTreeMap<String, Installed<T>>) -> Vec<Arc<T>> {
            installed
                .values()
                .map(|i| Arc::clone(&i.definition))
                .collect()
        }
        GatewayResources {
            apis: all(&self.apis),
            certificates: all(&self.certificates),
            consumers: all(&self.consumers),
        }
    }
}

/// One resource from a controller, parsed.
enum Parsed {
    Api(Installed<ApiDefinition>),
    Certificate(Installed<CertificateDefinition>),
    Consumer(Installed<ConsumerDefinition>),
}

/// A whole configuration handed to [`ConfigState::replace`]: validated definitions of each
/// kind, each with the revision of its last change. Consumers must be sealed.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    /// The APIs.
    pub apis: Vec<(i64, ApiDefinition)>,
    /// The TLS certificates.
    pub certificates: Vec<(i64, CertificateDefinition)>,
    /// The consumers, sealed ([`gw_core::credential::seal`]).
    pub consumers: Vec<(i64, ConsumerDefinition)>,
}

impl Definitions {
    /// Definitions that all changed last at `revision` (a configuration file's).
    pub fn at(
        revision: i64,
        apis: Vec<ApiDefinition>,
        certificates: Vec<CertificateDefinition>,
        consumers: Vec<ConsumerDefinition>,
    ) -> Self {
        fn at<T>(revision: i64, items: Vec<T>) -> Vec<(i64, T)> {
            items.into_iter().map(|item| (revision, item)).collect()
        }
        Self {
            apis: at(revision, apis),
            certificates: at(revision, certificates),
            consumers: at(revision, consumers),
        }
    }
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

    /// The group served.
    pub fn group(&self) -> &str {
        &self.group
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
            KIND_CONSUMER => {
                let consumer = parse_consumer(&resource.name, &resource.body)?;
                Ok(Parsed::Consumer(Installed {
                    revision: resource.revision,
                    definition: Arc::new(consumer),
                }))
            }
            other => Err(format!(
                "{:?}: unsupported resource kind {other:?}",
                resource.name
            )),
        }
    }

    /// Applies a whole set of definitions that came from `origin` (and, for the cache, from
    /// the store `store_id`). A consumer that is not sealed refuses the whole set.
    pub async fn replace(
        &self,
        revision: i64,
        store_id: &str,
        definitions: Definitions,
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        fn installed<T>(revision: i64, definition: T) -> Installed<T> {
            Installed {
                revision,
                definition: Arc::new(definition),
            }
        }
        let unsealed: Vec<String> = definitions
            .consumers
            .iter()
            .filter(|(_, c)| !c.is_sealed())
            .map(|(_, c)| unsealed_reason(&c.metadata.name))
            .collect();
        if !unsealed.is_empty() {
            self.count(origin.as_str(), "rejected");
            return Err(unsealed);
        }
        let mut current = self.current.lock().await;
        current.store_id = store_id.to_string();
        let mut next = Resources::default();
        for (revision, api) in definitions.apis {
            next.insert(Parsed::Api(installed(revision, api)));
        }
        for (revision, certificate) in definitions.certificates {
            next.insert(Parsed::Certificate(installed(revision, certificate)));
        }
        for (revision, consumer) in definitions.consumers {
            next.insert(Parsed::Consumer(installed(revision, consumer)));
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
        let result = self.gateway.apply_resources(revision, next.definitions());
        if let Err(err) = result {
            self.count(label, "rejected");
            return Err(err.reasons);
        }
        tracing::info!(
            revision,
            apis = next.apis.len(),
            certificates = next.certificates.len(),
            consumers = next.consumers.len(),
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

    fn count_update(&self, kind: &'static str) {
        self.metrics
            .updates
            .get_or_create(&UpdateLabels { kind })
            .inc();
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
        let resources = &current.resources;
        let config = CachedConfig {
            group: self.group.clone(),
            store_id: current.store_id.clone(),
            revision: current.revision,
            kinds: KINDS.iter().map(ToString::to_string).collect(),
            apis: cached(&resources.apis, ApiDefinition::to_json),
            certificates: cached(&resources.certificates, CertificateDefinition::to_json),
            // sealed: hashes only
            consumers: cached(&resources.consumers, ConsumerDefinition::to_json),
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
        let definitions = match cached_definitions(&config, self.gateway.registry()) {
            Ok(definitions) => definitions,
            Err(err) => {
                tracing::warn!(cache = %path, error = %err, "ignoring an invalid cache");
                return None;
            }
        };
        // a cache from a runtime that did not apply every kind this one does: served, but
        // resumed from a snapshot rather than a delta (which would miss the resources of
        // that kind made before it)
        let store_id = resumable_store(&config.kinds, &config.store_id);
        match self
            .replace(config.revision, store_id, definitions, Origin::Cache)
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

impl ConfigState {
    /// Parses `resources` (a whole configuration of the store `store_id` at `revision`)
    /// and installs them; on error the previous configuration and its store stay.
    async fn install_whole(
        &self,
        current: &mut Current,
        revision: i64,
        store_id: &str,
        resources: &[Resource],
        origin: Origin,
    ) -> Result<(), Vec<String>> {
        let mut next = Resources::default();
        let mut errors = Vec::new();
        for resource in resources {
            match self.parse(resource) {
                Ok(parsed) => next.insert(parsed),
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            self.count(origin.as_str(), "rejected");
            return Err(errors);
        }
        let previous_store = std::mem::replace(&mut current.store_id, store_id.to_string());
        let result = self.install(current, revision, next, origin).await;
        if result.is_err() {
            current.store_id = previous_store;
        }
        result
    }

    /// Serves a verified fallback bundle's configuration (`resources` of the store
    /// `store_id` at `revision`, holding every resource of `kinds`), unless a configuration
    /// is served already (a controller answered meanwhile, or the cache was loaded): then
    /// nothing changes and `Ok(false)` is returned. The bundle's revision and store are sent
    /// in the next Hello, so that a controller of that store resumes with a delta.
    pub async fn apply_bundle(
        &self,
        revision: i64,
        store_id: &str,
        kinds: &[String],
        resources: &[Resource],
    ) -> Result<bool, Vec<String>> {
        let mut current = self.current.lock().await;
        if self.origin() != Origin::None {
            return Ok(false);
        }
        let store_id = resumable_store(kinds, store_id);
        self.install_whole(&mut current, revision, store_id, resources, Origin::Bundle)
            .await
            .map(|()| true)
    }
}

/// The store id under which a configuration holding every resource of `kinds` may be
/// resumed with a delta: `store_id` when `kinds` covers every kind this runtime applies;
/// otherwise none (a delta would miss the resources of the missing kind made before it, so
/// the controller must send a snapshot).
fn resumable_store<'a>(kinds: &[String], store_id: &'a str) -> &'a str {
    if KINDS.iter().all(|kind| kinds.iter().any(|k| k == kind)) {
        store_id
    } else {
        ""
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

/// Resources as cached, each with the revision of its last change.
fn cached<T>(
    installed: &BTreeMap<String, Installed<T>>,
    to_json: impl Fn(&T) -> serde_json::Value,
) -> Vec<CachedApi> {
    installed
        .values()
        .map(|i| CachedApi {
            revision: i.revision,
            definition: to_json(&i.definition),
        })
        .collect()
}

/// Every resource of a cache, parsed and validated like those from a controller.
fn cached_definitions(
    config: &CachedConfig,
    registry: &gw_core::policy::PolicyRegistry,
) -> Result<Definitions, String> {
    Ok(Definitions {
        apis: parse_cached(&config.apis, |body| parse_definition("", body, registry))?,
        certificates: parse_cached(&config.certificates, |body| parse_certificate("", body))?,
        consumers: parse_cached(&config.consumers, |body| parse_consumer("", body))?,
    })
}

/// Parses cached resources with `parse`, each with its revision; the first error stops.
fn parse_cached<T>(
    cached: &[CachedApi],
    parse: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<Vec<(i64, T)>, String> {
    cached
        .iter()
        .map(|c| Ok((c.revision, parse(c.definition.to_string().as_bytes())?)))
        .collect()
}

fn unsealed_reason(name: &str) -> String {
    format!(
        "consumer {name:?} carries a key or password in the clear; a controller sends \
         consumers sealed (keyHash, passwordHash): upgrade the controller"
    )
}

/// Parses a canonical consumer from a controller or the cache, which must be sealed: every
/// api-key credential has its `keyHash`, and no clear key or password is accepted.
/// `expected_name`, when not empty, must match. Errors never quote a secret or a hash.
fn parse_consumer(expected_name: &str, body: &[u8]) -> Result<ConsumerDefinition, String> {
    let label = if expected_name.is_empty() {
        "consumer"
    } else {
        expected_name
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "consumer {label:?}: invalid JSON at line {} column {}",
            e.line(),
            e.column()
        )
    })?;
    let consumer = ConsumerDefinition::from_value_validated(&value, false)
        .map_err(|e| format!("consumer {label:?}: {}", e.redacted()))?;
    if !expected_name.is_empty() && consumer.metadata.name != expected_name {
        return Err(format!(
            "resource {expected_name:?} holds a consumer named {:?}",
            consumer.metadata.name
        ));
    }
    if !consumer.is_sealed() {
        return Err(unsealed_reason(&consumer.metadata.name));
    }
    Ok(consumer)
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
        self.count_update("snapshot");
        let mut current = self.current.lock().await;
        self.install_whole(
            &mut current,
            revision,
            store_id,
            &resources,
            Origin::Controller,
        )
        .await
    }

    async fn apply_delta(
        &self,
        revision: i64,
        upserts: Vec<Resource>,
        removals: Vec<ResourceRef>,
    ) -> Result<(), Vec<String>> {
        self.count_update("delta");
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
            let from_elsewhere = self.origin() != Origin::Controller;
            self.record(&mut current, revision, Origin::Controller);
            if from_elsewhere {
                // a configuration loaded from a bundle (or the cache) is now the
                // controller's: the cache gets it, at this revision
                self.write_cache(&current).await;
            }
            return Ok(());
        }
        self.install(&mut current, revision, next, Origin::Controller)
            .await
    }
}

#[cfg(test)]
mod tests {
    use gw_core::metrics::ProxyMetrics;
    use gw_core::policy::PolicyRegistry;

    use super::*;
    use crate::cache::DEFAULT_MAX_BYTES;

    const KEY: &str = "alice-key-0123456789";

    fn state(cache: Option<CacheFile>) -> ConfigState {
        let gateway = Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered());
        ConfigState::new(
            Arc::new(gateway),
            "default".into(),
            cache,
            &mut Registry::default(),
        )
    }

    /// Consumer `alice` with an API key: in the clear, or sealed as a controller sends it.
    fn alice(sealed: bool) -> ConsumerDefinition {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
            "spec": {"aclGroups": ["gold"], "credentials": [{"type": "api-key", "id": "k", "key": KEY}]}
        });
        let mut consumer = ConsumerDefinition::from_value_validated(&value, false).unwrap();
        if sealed {
            gw_core::credential::seal(&mut consumer).unwrap();
        }
        consumer
    }

    fn resource(revision: i64, consumer: &ConsumerDefinition) -> Resource {
        Resource {
            kind: KIND_CONSUMER.into(),
            name: consumer.metadata.name.clone(),
            revision,
            body: serde_json::to_vec(&consumer.to_json()).unwrap(),
        }
    }

    fn served(state: &ConfigState) -> Option<String> {
        let config = state.gateway().config();
        config
            .consumers()
            .by_api_key(KEY.as_bytes())
            .map(|c| c.name.to_string())
    }

    #[tokio::test]
    async fn a_consumer_from_a_controller_must_be_sealed() {
        let state = state(None);
        state
            .apply_snapshot(1, "s", vec![resource(1, &alice(true))])
            .await
            .unwrap();
        assert_eq!(served(&state).as_deref(), Some("alice"));

        let errors = state
            .apply_delta(2, vec![resource(2, &alice(false))], Vec::new())
            .await
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("in the clear") && errors[0].contains("sends consumers sealed"),
            "{errors:?}"
        );
        assert!(!errors[0].contains(KEY), "{errors:?}");
        assert_eq!(state.revision(), 1, "the previous configuration stays");
        assert_eq!(served(&state).as_deref(), Some("alice"));

        // nor may a caller of replace hand one over
        let errors = state
            .replace(
                3,
                "",
                Definitions {
                    consumers: vec![(3, alice(false))],
                    ..Definitions::default()
                },
                Origin::File,
            )
            .await
            .unwrap_err();
        assert!(errors[0].contains("in the clear"), "{errors:?}");
        assert_eq!(state.revision(), 1);

        // a removal of the kind takes the consumer out
        state
            .apply_delta(
                4,
                Vec::new(),
                vec![ResourceRef {
                    kind: KIND_CONSUMER.into(),
                    name: "alice".into(),
                }],
            )
            .await
            .unwrap();
        assert_eq!(served(&state), None);
    }

    #[tokio::test]
    async fn a_bundle_is_served_only_when_nothing_else_is_and_resumes_like_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(dir.path().join("cache.json"), DEFAULT_MAX_BYTES);
        let kinds: Vec<String> = KINDS.iter().map(ToString::to_string).collect();
        let state = state(Some(cache.clone()));
        assert_eq!(
            state
                .apply_bundle(7, "store-1", &kinds, &[resource(6, &alice(true))])
                .await,
            Ok(true)
        );
        assert_eq!(state.origin(), Origin::Bundle);
        assert_eq!(served(&state).as_deref(), Some("alice"));
        // resumed from the bundle's revision and store
        assert_eq!(state.applied(), (7, "store-1".to_string()));
        // the bundle is not the runtime's cache
        assert!(cache.read().unwrap().is_none());
        // a second bundle (or a late one) does not replace what is served
        assert_eq!(
            state.apply_bundle(9, "store-1", &kinds, &[]).await,
            Ok(false)
        );
        assert_eq!(state.revision(), 7);

        // the controller's empty delta makes the configuration its own, and cached
        state.apply_delta(8, Vec::new(), Vec::new()).await.unwrap();
        assert_eq!(state.origin(), Origin::Controller);
        assert_eq!(cache.read().unwrap().map(|c| c.revision), Some(8));

        // a bundle that lacks a kind is served, but resumed from a snapshot
        let partial = self::state(None);
        let only_apis = vec![KIND_API.to_string()];
        assert_eq!(
            partial.apply_bundle(3, "store-1", &only_apis, &[]).await,
            Ok(true)
        );
        assert_eq!(partial.applied(), (3, String::new()));

        // a bundle with a clear key is refused whole
        let refused = self::state(None);
        let errors = refused
            .apply_bundle(3, "store-1", &kinds, &[resource(3, &alice(false))])
            .await
            .unwrap_err();
        assert!(errors[0].contains("in the clear"), "{errors:?}");
        assert_eq!(refused.origin(), Origin::None);
    }

    #[tokio::test]
    async fn the_cache_keeps_consumers_sealed_and_lists_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(dir.path().join("cache.json"), DEFAULT_MAX_BYTES);
        let first = state(Some(cache.clone()));
        first
            .apply_snapshot(5, "store-1", vec![resource(5, &alice(true))])
            .await
            .unwrap();
        let text = std::fs::read_to_string(cache.path()).unwrap();
        assert!(text.contains("keyHash") && !text.contains(KEY), "{text}");
        let cached = cache.read().unwrap().unwrap();
        assert!(cached.kinds.iter().any(|k| k == KIND_CONSUMER));
        assert_eq!(cached.consumers.len(), 1);

        // a restart serves the consumer from the cache and resumes from its revision
        let second = state(Some(cache.clone()));
        assert_eq!(second.load_cache().await, Some(5));
        assert_eq!(served(&second).as_deref(), Some("alice"));
        assert_eq!(second.applied(), (5, "store-1".to_string()));

        // a cache written before consumers existed is served, but its revision is not
        // trusted for a delta: the runtime asks for a snapshot
        let mut old = cached.clone();
        old.kinds = vec![KIND_API.into(), KIND_CERTIFICATE.into()];
        old.consumers.clear();
        cache.write(&old).unwrap();
        let third = state(Some(cache.clone()));
        assert_eq!(third.load_cache().await, Some(5));
        assert_eq!(third.applied(), (5, String::new()));

        // a cache holding a clear key is not served at all
        let mut clear = cached;
        clear.consumers[0].definition = alice(false).to_json();
        cache.write(&clear).unwrap();
        let fourth = state(Some(cache));
        assert_eq!(fourth.load_cache().await, None);
        assert_eq!(served(&fourth), None);
    }
}
