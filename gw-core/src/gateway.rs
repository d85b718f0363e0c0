//! The Gateway: a configuration built from a set of APIs, swapped atomically, and the request
//! entry point.
//!
//! [`GatewayConfig::build`] turns validated API definitions into a routing table and one
//! pre-built tower stack per route, reusing the built state (upstream pools included) of every
//! API whose definition did not change. [`Gateway::apply`] swaps a new configuration in with
//! one atomic store: requests in flight keep the configuration they started with, new
//! requests see the new one, and nothing is dropped.
//!
//! [`Gateway::handle`] is the edge: it normalizes the path, routes, runs the route's stack,
//! turns errors into JSON responses and records metrics.
//!
//! For embedders:
//!
//! - [`GatewayService`] ([`Gateway::service`]) is the gateway as a `tower::Service`, reading
//!   the connection's information ([`ConnInfo`]) from the request's extensions: an axum app
//!   mounts it with `Router::fallback_service` (with the `axum` feature, axum's own
//!   `ConnectInfo<SocketAddr>` is read too). A request that carries neither is refused with
//!   a 500, never served with a made-up client address.
//! - [`Gateway::apply_definitions`] serves a YAML or JSON set of definitions in one call:
//!   it validates them against the gateway's policies and hashes consumers' clear keys and
//!   passwords off the async threads ([`Resources::from_set`] is the blocking step alone).
//!
//! ```
//! use std::sync::Arc;
//!
//! use gw_core::Gateway;
//! use gw_core::metrics::ProxyMetrics;
//! use gw_core::policy::PolicyRegistry;
//!
//! # async fn serve(definitions: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Arc::new(Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered()));
//! gateway.apply_definitions(1, definitions, gw_core::model::Format::Yaml).await?;
//! let service = gateway.service(); // Clone, always ready, never fails
//! # let _ = service;
//! // axum (gw-core's `axum` feature):
//! //     let app = Router::new().route(...).fallback_service(gateway.service());
//! //     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};

use crate::body::{self, Body, BoxError};
use crate::consumers::{ConsumerSet, ConsumerStore};
use crate::error::GatewayError;
use crate::extensions::Exchange;
use crate::metrics::{ApiMetrics, Limit, ProxyMetrics};
use crate::model::{ApiDefinition, CertificateDefinition, ConsumerDefinition, check_collisions};
use crate::path;
use crate::policy::{
    OperationContext, Phase, PolicyContext, PolicyRegistry, RouteService, RouteStack,
    effective_policies,
};
use crate::router::{self, Router};
use crate::tls::CertificateSet;
use crate::upstream::{Traffic, TrafficLimits, Upstream, UpstreamService};

pub use crate::extensions::ConnInfo;
pub use definitions::DefinitionsError;
pub use service::{GatewayService, ResponseFuture};

mod definitions;
mod service;

/// An API ready to serve: its definition, upstream and pre-built stacks.
#[derive(Debug)]
pub struct BuiltApi {
    definition: Arc<ApiDefinition>,
    /// The route of an API without operations.
    service: Option<Route>,
    /// Template -> index into `operations`, for an API with operations.
    operation_router: matchit::Router<usize>,
    operations: Vec<OperationRoute>,
    rescuer: Arc<Rescuer>,
    upstream: Arc<Upstream>,
}

/// Turns an error of a route's stack into a response (the "rescue"): gateway errors keep
/// their status, a body over its limit is a 413, anything else is a 502. It runs right
/// around the upstream call, so that policies see (and may decorate) the 502s and 504s, and
/// again at the edge for errors of the policies themselves. Upstream failures are logged
/// with their cause, at most once a second per API, so that an outage does not flood the
/// log (the metrics count every one).
#[derive(Debug)]
pub(crate) struct Rescuer {
    api: Box<str>,
    log_gate: LogGate,
    metrics: ProxyMetrics,
}

impl Rescuer {
    pub(crate) fn rescue(&self, error: BoxError) -> Response<Body> {
        let too_large = matches!(
            error.downcast_ref::<GatewayError>(),
            Some(GatewayError::PayloadTooLarge)
        ) || body::is_length_limit(error.as_ref());
        if too_large {
            self.metrics.limit_rejected(Limit::BodySize);
            return GatewayError::PayloadTooLarge.into_response();
        }
        let error = match error.downcast::<GatewayError>() {
            Ok(error) => *error,
            Err(other) => {
                if self.log_gate.allow() {
                    tracing::warn!(api = %self.api, error = %crate::error::chain(other.as_ref()), "request failed in the route stack");
                }
                return crate::error::json_error(
                    http::StatusCode::BAD_GATEWAY,
                    "gateway_error",
                    "the request failed in the gateway",
                );
            }
        };
        if error.is_upstream() && self.log_gate.allow() {
            tracing::warn!(api = %self.api, error = %crate::error::chain(&error), "upstream request failed");
        }
        error.into_response()
    }
}

/// The gateway's rescue, as the stack places it (see [`crate::error::RescueLayer`]).
impl crate::error::Rescue for Rescuer {
    fn rescue(&self, error: BoxError) -> Response<Body> {
        Rescuer::rescue(self, error)
    }
}

/// Lets one log line through per second.
#[derive(Debug, Default)]
struct LogGate {
    last_second: std::sync::atomic::AtomicU64,
}

impl LogGate {
    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_second
            .swap(now, std::sync::atomic::Ordering::Relaxed)
            != now
    }
}

/// One route: its pre-built stack and what the edge records for it.
#[derive(Debug)]
struct Route {
    service: RouteStack,
    metrics: ApiMetrics,
    /// `GET /items/{id}`, or `*`.
    label: Arc<str>,
    /// Whether its requests carry an [`Exchange`] (an authentication or observation policy
    /// fills it).
    observed: bool,
}

impl Route {
    fn new(
        service: RouteStack,
        policies: &[&crate::model::PolicyRef],
        registry: &PolicyRegistry,
        (metrics, label): (ApiMetrics, &str),
    ) -> Self {
        let observed = policies.iter().any(|p| {
            matches!(
                registry.phase(&p.name),
                Phase::Authenticate | Phase::Observe
            )
        });
        Self {
            service,
            metrics,
            label: Arc::from(label),
            observed,
        }
    }
}

#[derive(Debug)]
struct OperationRoute {
    /// The path template as the first of its operations spells it: a request's segments
    /// that its literal ones matched are spelled so before the request goes on.
    template: Box<str>,
    methods: Vec<(Method, Route)>,
    /// The methods whose stack answers CORS preflights (a `Phase::Cors` policy): an
    /// `OPTIONS` preflight for one of them runs that stack even though the operation is not
    /// `OPTIONS`.
    preflight: Vec<Method>,
    /// Value of the `Allow` header for a 405 on this path.
    allow: String,
}

impl BuiltApi {
    fn build(
        definition: &Arc<ApiDefinition>,
        certificates: &CertificateSet,
        registry: &PolicyRegistry,
        metrics: &ProxyMetrics,
        consumers: &ConsumerStore,
        traffic: &Arc<Traffic>,
    ) -> Result<Self, String> {
        let spec = &definition.spec;
        let upstream = Upstream::new(
            &spec.upstream,
            &definition.metadata.name,
            certificates,
            metrics,
            traffic,
        )
        .map_err(|e| e.to_string())?;
        let context_len = if spec.context == "/" {
            0
        } else {
            spec.context.len()
        };
        let rescuer = Arc::new(Rescuer {
            api: definition.metadata.name.as_str().into(),
            log_gate: LogGate::default(),
            metrics: metrics.clone(),
        });
        // the rescue right around the upstream call: the policies see its 502s and 504s
        let base = RouteService::new(crate::error::Rescued::new(
            UpstreamService::new(Arc::clone(&upstream), context_len),
            Arc::clone(&rescuer),
        ));

        let mut built = Self {
            service: None,
            operation_router: matchit::Router::new(),
            operations: Vec::new(),
            rescuer,
            upstream,
            definition: Arc::clone(definition),
        };
        let api_context = PolicyContext {
            api: &definition.metadata.name,
            context: &spec.context,
            operation: None,
            consumers,
        };
        // API-level policies are built once, and their layers shared by every operation
        // that does not replace them
        let api_layers = spec
            .policies
            .iter()
            .map(|policy| registry.build(policy, &api_context))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let name = &definition.metadata.name;
        if spec.operations.is_empty() {
            let layers = spec.policies.iter().zip(api_layers).collect();
            let policies: Vec<&crate::model::PolicyRef> = spec.policies.iter().collect();
            built.service = Some(Route::new(
                crate::policy::stack(registry, layers, base),
                &policies,
                registry,
                (
                    metrics.for_route(name, crate::metrics::ANY_OPERATION),
                    crate::metrics::ANY_OPERATION,
                ),
            ));
            return Ok(built);
        }
        let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
        for op in &spec.operations {
            let method = Method::from_bytes(op.method.as_bytes())
                .map_err(|_| format!("invalid method {:?}", op.method))?;
            let policies = effective_policies(registry, &spec.policies, &op.policies);
            let ctx = PolicyContext {
                operation: Some(OperationContext {
                    method: &op.method,
                    path: &op.path,
                }),
                ..api_context
            };
            let layers = policies
                .iter()
                .map(|policy| {
                    let shared = spec.policies.iter().position(|p| std::ptr::eq(p, *policy));
                    let layer = match shared {
                        Some(i) => api_layers[i].clone(),
                        None => registry.build(policy, &ctx)?,
                    };
                    Ok((*policy, layer))
                })
                .collect::<Result<Vec<_>, crate::policy::PolicyError>>()
                .map_err(|e| format!("operation {} {}: {e}", op.method, op.path))?;
            let label = operation_label(&op.method, &op.path);
            let stack = Route::new(
                crate::policy::stack(registry, layers, base.clone()),
                &policies,
                registry,
                (metrics.for_route(name, &label), &label),
            );
            let routed = crate::model::routed_template(&op.path, spec.case_insensitive);
            let index = match by_path.get(routed.as_ref()) {
                Some(&index) => index,
                None => {
                    let index = built.operations.len();
                    built
                        .operation_router
                        .insert(routed.as_ref(), index)
                        .map_err(|e| format!("operation path {:?}: {e}", op.path))?;
                    built.operations.push(OperationRoute {
                        template: op.path.as_str().into(),
                        methods: Vec::new(),
                        preflight: Vec::new(),
                        allow: String::new(),
                    });
                    by_path.insert(routed.into_owned(), index);
                    index
                }
            };
            let route = &mut built.operations[index];
            if policies
                .iter()
                .any(|p| registry.phase(&p.name) == crate::policy::Phase::Cors)
            {
                route.preflight.push(method.clone());
            }
            route.methods.push((method, stack));
        }
        for route in &mut built.operations {
            route.allow = route
                .methods
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
        }
        Ok(built)
    }

    /// The route at `at`.
    fn route(&self, at: RouteRef) -> &Route {
        match (at, &self.service) {
            (RouteRef::Operation(op, method), _) => &self.operations[op].methods[method].1,
            (RouteRef::Single, Some(route)) => route,
            (RouteRef::Single, None) => unreachable!("a single route exists when referenced"),
        }
    }

    /// The route for a request and its path after the context (`rest`, normalized), with
    /// `rest` respelled as the operation's template spells its literal segments when it is
    /// not already ([`path::respell`]). Operations are matched on the
    /// [`path::routing_form`] of `rest`, case-folded for a case-insensitive API.
    fn select<B>(
        &self,
        request: &Request<B>,
        rest: &str,
    ) -> Result<(RouteRef, Option<String>), GatewayError> {
        let method = request.method();
        if self.service.is_some() {
            return Ok((RouteRef::Single, None));
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        let form = path::routing_form(rest);
        let folded;
        let key: &str = if self.definition.spec.case_insensitive {
            folded = path::case_fold(&form);
            &folded
        } else {
            &form
        };
        let matched = self
            .operation_router
            .at(key)
            .map_err(|_| GatewayError::NoRoute)?;
        let op = *matched.value;
        let route = &self.operations[op];
        // matched as written, on an exact template: its literal segments are the
        // template's already
        let respelled = if key == rest && !self.definition.spec.case_insensitive {
            None
        } else {
            path::respell(rest, &route.template)
        };
        let at = Self::method_of(route, op, request, method)?;
        Ok((at, respelled))
    }

    /// The route of `method` among an operation path's methods.
    fn method_of<B>(
        route: &OperationRoute,
        op: usize,
        request: &Request<B>,
        method: &Method,
    ) -> Result<RouteRef, GatewayError> {
        if let Some(i) = route.methods.iter().position(|(m, _)| m == method) {
            return Ok(RouteRef::Operation(op, i));
        }
        // a CORS preflight for an operation whose stack answers it
        if method == Method::OPTIONS
            && request.headers().contains_key(http::header::ORIGIN)
            && let Some(requested) = request
                .headers()
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            && route.preflight.contains(&requested)
            && let Some(i) = route.methods.iter().position(|(m, _)| *m == requested)
        {
            return Ok(RouteRef::Operation(op, i));
        }
        Err(GatewayError::MethodNotAllowed {
            allow: route.allow.clone(),
        })
    }
}

/// One immutable configuration: the APIs at a revision, their routing table, and the TLS
/// certificates.
#[derive(Debug, Default)]
pub struct GatewayConfig {
    revision: i64,
    apis: BTreeMap<String, Arc<BuiltApi>>,
    router: Router<Arc<BuiltApi>>,
    certificates: Arc<CertificateSet>,
    consumers: Arc<ConsumerSet>,
}

/// What a configuration is built from: validated definitions of each kind
/// ([`Resources::from_set`] makes them from a parsed set).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// The APIs.
    pub apis: Vec<Arc<ApiDefinition>>,
    /// The TLS certificates.
    pub certificates: Vec<Arc<CertificateDefinition>>,
    /// The consumers, sealed ([`crate::credential::seal`]).
    pub consumers: Vec<Arc<ConsumerDefinition>>,
}

/// Why a configuration could not be built; the gateway keeps the previous one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration rejected: {}", .reasons.join("; "))]
pub struct ApplyError {
    /// Every reason, one per API or collision.
    pub reasons: Vec<String>,
}

impl GatewayConfig {
    /// Builds a configuration from validated definitions, reusing from `previous` every API
    /// whose definition is unchanged (its upstream pool included) and every unchanged
    /// certificate.
    ///
    /// Authentication policies built for it read their consumers from `consumer_store`,
    /// which the caller fills with [`GatewayConfig::consumers`] when it serves the result.
    /// `traffic` bounds what clients' request bodies and tunnels may hold.
    pub fn build(
        revision: i64,
        resources: Resources,
        previous: Option<&GatewayConfig>,
        registry: &PolicyRegistry,
        metrics: &ProxyMetrics,
        consumer_store: &ConsumerStore,
        traffic: &Arc<Traffic>,
    ) -> Result<Self, ApplyError> {
        let Resources {
            apis: definitions,
            certificates,
            consumers,
        } = resources;
        let mut reasons: Vec<String> = check_collisions(definitions.iter().map(AsRef::as_ref))
            .into_iter()
            .map(|c| {
                format!(
                    "APIs {:?} and {:?} both claim context {:?} on host {:?} in group {:?}",
                    c.existing, c.other, c.key.context, c.key.host, c.key.group
                )
            })
            .collect();
        let consumers = match ConsumerSet::build(consumers) {
            Ok(set) => Arc::new(set),
            Err(mut problems) => {
                reasons.append(&mut problems);
                return Err(ApplyError { reasons });
            }
        };
        let certificates =
            match CertificateSet::build(certificates, previous.map(|p| &*p.certificates)) {
                Ok(set) => Arc::new(set),
                Err(mut problems) => {
                    reasons.append(&mut problems);
                    return Err(ApplyError { reasons });
                }
            };
        let mut apis = BTreeMap::new();
        for definition in definitions {
            let name = definition.metadata.name.clone();
            let reused = previous
                .and_then(|p| p.apis.get(&name))
                .filter(|built| built.definition == definition)
                .filter(|built| same_client_certificate(built, &certificates))
                .cloned();
            let built = match reused {
                Some(built) => built,
                None => match BuiltApi::build(
                    &definition,
                    &certificates,
                    registry,
                    metrics,
                    consumer_store,
                    traffic,
                ) {
                    Ok(built) => Arc::new(built),
                    Err(reason) => {
                        reasons.push(format!("API {name:?}: {reason}"));
                        continue;
                    }
                },
            };
            apis.insert(name, built);
        }
        if !reasons.is_empty() {
            return Err(ApplyError { reasons });
        }
        let router = Router::build(apis.values().map(|api| {
            let spec = &api.definition.spec;
            router::Entry {
                hosts: spec.hosts.as_slice(),
                context: spec.context.as_str(),
                case_insensitive: spec.case_insensitive,
                value: Arc::clone(api),
            }
        }));
        Ok(Self {
            revision,
            apis,
            router,
            certificates,
            consumers,
        })
    }

    /// The consumers served.
    pub fn consumers(&self) -> &Arc<ConsumerSet> {
        &self.consumers
    }

    /// The TLS certificates served.
    pub fn certificates(&self) -> &Arc<CertificateSet> {
        &self.certificates
    }

    /// The revision this configuration was built at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The APIs served, by name.
    pub fn apis(&self) -> impl ExactSizeIterator<Item = &Arc<ApiDefinition>> {
        self.apis.values().map(|api| &api.definition)
    }

    /// Whether no API is served.
    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
    }
}

/// Whether an API built before would show the same client certificate to its upstream
/// under the new certificate set.
fn same_client_certificate(built: &BuiltApi, certificates: &CertificateSet) -> bool {
    let wanted = built
        .definition
        .spec
        .upstream
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate.as_deref());
    match (wanted, built.upstream.client_certificate()) {
        (Some(name), Some(current)) => certificates
            .get(name)
            .is_some_and(|next| Arc::ptr_eq(next, current)),
        // none named, or named but used by no https endpoint
        _ => true,
    }
}

/// The longest request URI accepted by default, in bytes.
pub const DEFAULT_MAX_URI_BYTES: usize = 8192;

/// The gateway: the current configuration and the request entry point.
#[derive(Debug)]
pub struct Gateway {
    config: ArcSwap<GatewayConfig>,
    /// The certificates of `config`, also read by the TLS listeners' resolver.
    certificates: Arc<ArcSwap<CertificateSet>>,
    /// The consumers of `config`, read by authentication policies.
    consumers: ConsumerStore,
    registry: PolicyRegistry,
    metrics: ProxyMetrics,
    max_uri_bytes: usize,
    /// Peers whose forwarding headers are believed ([`Gateway::with_trusted_proxies`]).
    trusted_proxies: Arc<[crate::policy::Cidr]>,
    /// The trace export, if one is installed ([`Gateway::with_tracing`]).
    #[cfg(feature = "otel")]
    tracing: Option<crate::otel::Tracing>,
    /// Serializes [`Gateway::apply`]: each build reuses (and retires) the APIs of the
    /// configuration it replaces.
    applying: std::sync::Mutex<()>,
    /// What clients' request bodies and tunnels may hold.
    traffic: Arc<Traffic>,
}

impl Gateway {
    /// A gateway with an empty configuration (every request gets 404).
    pub fn new(registry: PolicyRegistry, metrics: ProxyMetrics) -> Self {
        let traffic = Traffic::new(TrafficLimits::default(), metrics.clone());
        Self {
            traffic,
            config: ArcSwap::from_pointee(GatewayConfig::default()),
            certificates: Arc::new(ArcSwap::from_pointee(CertificateSet::default())),
            consumers: ConsumerStore::default(),
            registry,
            metrics,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            trusted_proxies: Arc::from([]),
            #[cfg(feature = "otel")]
            tracing: None,
            applying: std::sync::Mutex::new(()),
        }
    }

    /// Sets the longest request URI accepted (default [`DEFAULT_MAX_URI_BYTES`]); longer
    /// ones are answered 414.
    #[must_use]
    pub fn with_max_uri_bytes(mut self, limit: usize) -> Self {
        self.max_uri_bytes = limit;
        self
    }

    /// Sets what clients' request bodies and tunnels may hold (default
    /// [`TrafficLimits::default`]); see [`crate::upstream::TrafficLimits`]. Set it before the
    /// first configuration is applied: the APIs built keep the limits they were built with.
    #[must_use]
    pub fn with_traffic_limits(mut self, limits: TrafficLimits) -> Self {
        self.traffic = Traffic::new(limits, self.metrics.clone());
        self
    }

    /// The limits of clients' request bodies and tunnels, and what read-ahead holds now.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Believes the forwarding headers of these peers (the load balancers or proxies in
    /// front of the gateway; default: none): from one of them, `X-Forwarded-For` is
    /// extended with the peer's address, `X-Forwarded-Proto`, `X-Forwarded-Host` and
    /// `Forwarded` are kept (`Forwarded` gets an element for this hop), and `X-Real-IP` is
    /// the client as [`crate::policy::client_ip`] finds it. From any other peer, those
    /// headers are replaced by what the gateway knows: a client cannot plant an address or
    /// a host that the upstream would believe.
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: Vec<crate::policy::Cidr>) -> Self {
        self.trusted_proxies = Arc::from(proxies);
        self
    }

    /// Exports a span per request with `tracing` ([`crate::otel`]); without it, the
    /// gateway only keeps or makes each request's `traceparent`.
    #[cfg(feature = "otel")]
    #[must_use]
    pub fn with_tracing(mut self, tracing: crate::otel::Tracing) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// The trace export, if one is installed (to flush it at shutdown).
    #[cfg(feature = "otel")]
    pub fn tracing(&self) -> Option<&crate::otel::Tracing> {
        self.tracing.as_ref()
    }

    /// The metrics the gateway records into.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The policies this gateway can build.
    pub fn registry(&self) -> &PolicyRegistry {
        &self.registry
    }

    /// The configuration currently served.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.config.load_full()
    }

    /// The TLS configuration for an HTTPS listener of this gateway: each handshake gets the
    /// certificate for its server name from the configuration served at that moment, so a
    /// certificate applied with [`Gateway::apply_config`] is served from the next
    /// handshake on.
    #[cfg(feature = "tls")]
    pub fn tls_server_config(&self) -> Arc<rustls::ServerConfig> {
        crate::tls::server_config(Arc::clone(&self.certificates))
    }

    /// Builds a configuration of APIs only (no TLS certificates) and swaps it in; see
    /// [`Gateway::apply_config`].
    pub fn apply(
        &self,
        revision: i64,
        definitions: impl IntoIterator<Item = Arc<ApiDefinition>>,
    ) -> Result<Arc<GatewayConfig>, ApplyError> {
        self.apply_config(revision, definitions, [])
    }

    /// Builds a configuration from API and certificate definitions (and no consumers) and
    /// swaps it in; see [`Gateway::apply_resources`].
    pub fn apply_config(
        &self,
        revision: i64,
        definitions: impl IntoIterator<Item = Arc<ApiDefinition>>,
        certificates: impl IntoIterator<Item = Arc<CertificateDefinition>>,
    ) -> Result<Arc<GatewayConfig>, ApplyError> {
        self.apply_resources(
            revision,
            Resources {
                apis: definitions.into_iter().collect(),
                certificates: certificates.into_iter().collect(),
                consumers: Vec::new(),
            },
        )
    }

    /// Builds a configuration and swaps it in; on error the current one stays. Series of
    /// APIs and endpoints that left the configuration are dropped from the metrics.
    pub fn apply_resources(
        &self,
        revision: i64,
        resources: Resources,
    ) -> Result<Arc<GatewayConfig>, ApplyError> {
        let _applying = self
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.config.load_full();
        let next = Arc::new(GatewayConfig::build(
            revision,
            resources,
            Some(&previous),
            &self.registry,
            &self.metrics,
            &self.consumers,
            &self.traffic,
        )?);
        // the consumers first: a new API's authentication sees its consumers from its
        // first request
        self.consumers.store(Arc::clone(&next.consumers));
        self.config.store(Arc::clone(&next));
        self.certificates.store(Arc::clone(&next.certificates));
        for served in next.certificates.iter() {
            self.metrics
                .set_certificate_expiry(&served.definition.metadata.name, served.not_after);
        }
        for old in previous.certificates.iter() {
            let name = &old.definition.metadata.name;
            if next.certificates.get(name).is_none() {
                self.metrics.remove_certificate(name);
            }
        }
        for (name, old) in &previous.apis {
            let kept = next.apis.get(name);
            if !kept.is_some_and(|api| Arc::ptr_eq(api, old)) {
                // replaced or removed: its health checks stop now, even while requests
                // (or WebSocket tunnels) still hold it
                old.upstream.retire();
            }
            if kept.is_none() {
                self.metrics.remove_api(name);
            }
            let labels_now = kept.map(|api| route_labels(&api.definition));
            for label in route_labels(&old.definition) {
                if !labels_now.as_ref().is_some_and(|now| now.contains(&label)) {
                    self.metrics.remove_route(name, &label);
                }
            }
            for endpoint in &old.definition.spec.upstream.endpoints {
                let still_there = kept.is_some_and(|api| {
                    api.definition
                        .spec
                        .upstream
                        .endpoints
                        .iter()
                        .any(|e| e.url == endpoint.url)
                });
                if !still_there {
                    self.metrics.remove_endpoint(name, &endpoint.url);
                }
            }
        }
        // consumers or APIs gone: their consumer series go (all of them: the family cannot
        // be walked), and the next requests make them again
        let consumer_gone = previous
            .consumers
            .iter()
            .any(|c| next.consumers.get(&c.metadata.name).is_none());
        let api_gone = previous
            .apis
            .keys()
            .any(|name| !next.apis.contains_key(name));
        if consumer_gone || api_gone {
            self.metrics.clear_consumers();
        }
        Ok(next)
    }

    /// Serves one request that came on `conn`: route, run the route's stack, answer errors
    /// in JSON. [`GatewayService`] is the same as a `tower::Service`, with the connection
    /// taken from the request's extensions.
    pub async fn handle<B>(&self, mut request: Request<B>, conn: ConnInfo) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        // hop-by-hop headers off before anything reads the request: no policy sees them,
        // and `Connection` cannot name a header that a policy sets (see `crate::arrival`)
        let arrival = crate::upstream::arrive(
            request.headers_mut(),
            Some(conn.peer.ip()),
            &self.trusted_proxies,
        );
        request.extensions_mut().insert(arrival);
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len())
            + request.uri().authority().map_or(0, |a| a.as_str().len());
        if uri_len > self.max_uri_bytes {
            self.metrics.limit_rejected(Limit::UriLength);
            let error = GatewayError::UriTooLong {
                limit: self.max_uri_bytes,
            };
            self.metrics.unrouted(error.status());
            return error.into_response();
        }
        let Routed {
            mut request,
            service,
            api,
            at,
            exchange,
        } = match self.route(request) {
            Ok(found) => found,
            Err(error) => {
                self.metrics.unrouted(error.status());
                return error.into_response();
            }
        };
        if let Some(limit) = api.definition.spec.max_request_body_bytes {
            let declared = request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                self.metrics.limit_rejected(Limit::BodySize);
                let response = GatewayError::PayloadTooLarge.into_response();
                api.route(at)
                    .metrics
                    .observe(response.status(), start.elapsed());
                return response;
            }
            let (parts, body) = request.into_parts();
            request = Request::from_parts(parts, body::limited(body, limit));
        }
        request.extensions_mut().insert(conn);
        #[cfg(feature = "otel")]
        let span = crate::otel::begin(self.tracing.as_ref(), &mut request, start, || {
            (&api.definition, &api.route(at).label)
        });
        #[cfg(not(feature = "otel"))]
        crate::trace::ensure(request.headers_mut());
        let response = match call_route(service, request).await {
            Ok(response) => response,
            Err(error) => api.rescuer.rescue(error),
        };
        api.route(at)
            .metrics
            .observe(response.status(), start.elapsed());
        #[cfg(feature = "otel")]
        span.end(response.status());
        if let Some(consumer) = exchange.as_ref().and_then(|e| e.consumer()) {
            self.metrics.consumer_request(
                &api.definition.metadata.name,
                &consumer.name,
                response.status(),
            );
        }
        response
    }

    /// Finds the stack for a request and rewrites its path to the normalized form, with
    /// the context and the operation's literal segments spelled as the API spells them
    /// (`/APP/Admin;x/Items/7` is `/app/admin/items/7` for a case-insensitive API on
    /// `/app/admin` with the operation `/items/{id}`): routing decides on the path the
    /// upstream serves, and every policy sees that path.
    fn route<B>(&self, request: Request<B>) -> Result<Routed, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let config = self.config.load();
        let (service, observed, api, normalized) = {
            let path = path::normalize(request.uri().path())?;
            let host = router::request_host(&request);
            let found = config
                .router
                .lookup(host.as_deref(), &path)?
                .ok_or(GatewayError::NoRoute)?;
            let api = found.value;
            let (covered, rest) = path.split_at(found.context_len);
            let (at, respelled) = api.select(&request, rest)?;
            let route = api.route(at);
            let context = api.definition.spec.context.as_str();
            let context = if context == "/" { "" } else { context };
            let normalized = if covered != context || respelled.is_some() {
                Some(format!("{context}{}", respelled.as_deref().unwrap_or(rest)))
            } else {
                match path {
                    std::borrow::Cow::Owned(p) => Some(p),
                    std::borrow::Cow::Borrowed(_) => None,
                }
            };
            (
                (route.service.clone(), at),
                route.observed.then(|| Arc::clone(&route.label)),
                Arc::clone(api),
                normalized,
            )
        };
        let (service, at) = service;
        let mut request = request.map(body::boxed);
        if let Some(normalized) = normalized {
            let uri = with_path(request.uri(), &normalized)?;
            *request.uri_mut() = uri;
        }
        let exchange = observed.map(|label| {
            let exchange = Arc::new(Exchange::new(label));
            request.extensions_mut().insert(Arc::clone(&exchange));
            exchange
        });
        Ok(Routed {
            request,
            service,
            api,
            at,
            exchange,
        })
    }
}

/// A routed request: its stack, its API, and the exchange its policies fill.
struct Routed {
    request: Request<Body>,
    service: RouteStack,
    api: Arc<BuiltApi>,
    at: RouteRef,
    exchange: Option<Arc<Exchange>>,
}

/// Where a route is in its API.
#[derive(Debug, Clone, Copy)]
enum RouteRef {
    /// The route of an API without operations.
    Single,
    /// Operation path index, method index.
    Operation(usize, usize),
}

/// The `operation` labels of an API's routes.
fn route_labels(definition: &ApiDefinition) -> Vec<String> {
    if definition.spec.operations.is_empty() {
        vec![crate::metrics::ANY_OPERATION.to_string()]
    } else {
        definition
            .spec
            .operations
            .iter()
            .map(|op| operation_label(&op.method, &op.path))
            .collect()
    }
}

/// The `operation` label of an operation: `GET /items/{id}`.
fn operation_label(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

/// Waits for the stack to be ready and calls it. A named future type (rather than
/// `ServiceExt::oneshot`) keeps `Gateway::handle` provably `Send`.
async fn call_route(
    mut service: RouteStack,
    request: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut service, cx)).await?;
    tower::Service::call(&mut service, request).await
}

/// `uri` with its path replaced, query kept.
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, GatewayError> {
    let pq = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e: http::uri::InvalidUri| GatewayError::BadUpstreamRequest(e.to_string()))?,
    );
    http::Uri::from_parts(parts).map_err(|e| GatewayError::BadUpstreamRequest(e.to_string()))
}

// the tests' APIs are YAML and use the transform policies
#[cfg(all(test, feature = "yaml", feature = "transform"))]
mod path_tests;
#[cfg(all(test, feature = "yaml", feature = "transform"))]
mod tests;
