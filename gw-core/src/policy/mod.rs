//! Policies: named, parameterized `tower::Layer`s wrapped around the upstream call.
//!
//! A [`PolicyRegistry`] maps a policy name to a [`PolicyFactory`], which validates the
//! policy's params at deploy time and builds its layer when a configuration is applied,
//! never per request. [`PolicyRegistry::builtin`] holds gw's own policies; embedders
//! register theirs next to them, usually by implementing [`Policy`], whose params are a
//! serde type: unknown fields and type errors are then reported with their field paths.
//!
//! A route's stack is assembled by [`stack`] from the layers of [`effective_policies`]
//! (each built with [`PolicyRegistry::build`]): the API-level policies, with an
//! operation-level policy of the same name replacing the API-level one, run phase by phase
//! ([`Phase`]) and in the listed order within a phase, the first one outermost, around the
//! upstream service. Policies written as [`Filter`]s that sit next to each other in a stack
//! run in one service with one future: no service clone or boxed future per policy.
//!
//! ```
//! use gw_core::policy::{Policy, PolicyContext, PolicyRegistry, RouteLayer};
//!
//! /// A policy that accepts no params and adds nothing: a starting point.
//! #[derive(Debug)]
//! struct Noop;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct NoParams {}
//!
//! impl Policy for Noop {
//!     type Params = NoParams;
//!     fn layer(&self, _params: NoParams, _ctx: &PolicyContext<'_>) -> Result<RouteLayer, String> {
//!         Ok(RouteLayer::new(tower::layer::util::Identity::new()))
//!     }
//! }
//!
//! let registry = PolicyRegistry::builtin().register_policy("noop", Noop);
//! assert!(registry.contains("noop"));
//! assert!(registry.contains("access-log"));
//! ```

pub mod accesslog;
pub mod acl;
#[cfg(feature = "api-key")]
pub mod apikey;
#[cfg(feature = "basic-auth")]
pub mod basicauth;
mod cidr;
pub mod correlation;
#[cfg(feature = "cors")]
pub mod cors;
pub mod deferred;
pub mod filter;
mod header_names;
#[cfg(feature = "transform")]
pub mod headers;
pub mod ipfilter;
#[cfg(feature = "jwt")]
pub mod jwt;
#[cfg(feature = "rate-limit")]
pub mod ratelimit;
#[cfg(feature = "transform")]
pub mod redirect;
#[cfg(feature = "transform")]
pub mod rewrite;
pub mod sizelimit;
mod stack;
#[cfg(feature = "transform")]
mod template;
#[cfg(feature = "transform")]
pub mod termination;
#[cfg(test)]
pub(crate) mod testing;
pub mod timeout;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::body::{Body, BoxError};
use crate::consumers::ConsumerStore;
use crate::model::secret::SecretField;
use crate::model::{Attachment, FieldError, PolicyCatalog, PolicyRef};

pub use crate::extensions::{Consumer, Exchange, RequestId, authenticate};
pub use cidr::{Cidr, UNKNOWN_CLIENT, client_ip};
pub use filter::{ConfigError, Filter, FilterLayer, FilterService, filter_layer};
pub use stack::{RouteLayer, RouteStack, StackFuture, stack};
#[cfg(feature = "transform")]
pub use template::Template;

/// `get_ref`, `get_mut` and `into_inner` for a policy's service `Foo<S>` whose inner service
/// is its field `inner`, as tower-http's middlewares have them.
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The inner service, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_service_accessors;

/// The future of a [`RouteService`] call, for policies written as services of their own.
pub type RouteFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The service at every level of a per-route stack.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Where a policy is attached: what its layer may need to know about its route when it is
/// built (it is built once per route and configuration, never per request).
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// The API's name.
    pub api: &'a str,
    /// The API's context path (`/orders/v1`, or `/`).
    pub context: &'a str,
    /// The operation, for a route of an API with operations.
    pub operation: Option<OperationContext<'a>>,
    /// The gateway's consumers, for authentication policies: keep a clone and
    /// [`ConsumerStore::load`] it per request, so that credentials added or revoked take
    /// effect without rebuilding the policy.
    pub consumers: &'a ConsumerStore,
}

/// The operation a policy is attached to.
#[derive(Debug, Clone, Copy)]
pub struct OperationContext<'a> {
    /// The method, upper case.
    pub method: &'a str,
    /// The path template under the context (`/items/{id}`).
    pub path: &'a str,
}

/// Where a policy runs in a route's stack, outermost first. Whatever order policies are
/// listed in, a route's stack runs them phase by phase (so that, for example, a rate limit
/// per consumer always runs after authentication has found the consumer); within a phase
/// they run in the order listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Request ids, access logs: they see every request and every response.
    Observe,
    /// CORS: preflights are answered before authentication, which browsers do not send
    /// with them.
    Cors,
    /// Cheap refusals before any credential is checked: IP filters, size limits.
    Admission,
    /// Authentication: finds the consumer.
    Authenticate,
    /// Authorization of the consumer: ACLs.
    Authorize,
    /// Rate limits.
    RateLimit,
    /// Request and response transforms, redirects, mocks, timeouts; the default.
    Transform,
}

impl Phase {
    /// The phase's name in the admin API and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Observe => "observe",
            Phase::Cors => "cors",
            Phase::Admission => "admission",
            Phase::Authenticate => "authenticate",
            Phase::Authorize => "authorize",
            Phase::RateLimit => "rate-limit",
            Phase::Transform => "transform",
        }
    }
}

/// Validates a policy's params and builds its layer. Most policies implement [`Policy`]
/// instead, which derives both from a serde params type.
pub trait PolicyFactory: Send + Sync + fmt::Debug + 'static {
    /// Every problem in `params`, with field paths relative to `params` (empty when valid).
    /// `ctx` says where the policy is attached; an API-level policy is validated without an
    /// operation.
    fn validate(&self, params: &serde_json::Value, ctx: &PolicyContext<'_>) -> Vec<FieldError>;

    /// Where the policy runs in a route's stack; see [`Phase`].
    fn phase(&self) -> Phase {
        Phase::Transform
    }

    /// Where the policy runs with these params (a rate limit may run before
    /// authentication); [`PolicyFactory::phase`] unless the factory says otherwise.
    fn phase_of(&self, params: &serde_json::Value) -> Phase {
        let _ = params;
        self.phase()
    }

    /// Builds the layer from params that [`PolicyFactory::validate`] accepted.
    fn build(
        &self,
        params: &serde_json::Value,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String>;

    /// The JSON Schema of the params, when the policy has one.
    fn schema(&self) -> Option<serde_json::Value> {
        None
    }

    /// The fields of `params` that hold secrets (an HS256 key, a password in a URL, an
    /// injected `Authorization` value), as JSON pointers relative to `params`: a control
    /// plane seals them at rest and never shows them. None by default. Read from the JSON,
    /// which may not be valid params (see [`crate::model::secret`]).
    fn secret_params(&self, params: &serde_json::Value) -> Vec<SecretField> {
        let _ = params;
        Vec::new()
    }
}

/// A policy whose params are a serde type. Parsing reports unknown fields and type errors
/// with their paths (`allow[2]`); [`Policy::check`] adds the rules a type cannot say.
/// Params that are absent (`null`) parse as an empty object.
pub trait Policy: Send + Sync + fmt::Debug + 'static {
    /// The params, as written under `params:` in the API definition.
    type Params: serde::de::DeserializeOwned + schemars::JsonSchema;

    /// Problems the params type cannot express (ranges, one-of rules, patterns, references
    /// to the operation's path parameters).
    fn check(&self, params: &Self::Params, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let _ = (params, ctx);
        Vec::new()
    }

    /// Where the policy runs in a route's stack; see [`Phase`].
    fn phase(&self) -> Phase {
        Phase::Transform
    }

    /// Where the policy runs with these params; [`Policy::phase`] unless the policy says
    /// otherwise.
    fn phase_of(&self, params: &Self::Params) -> Phase {
        let _ = params;
        self.phase()
    }

    /// Builds the layer from checked params.
    fn layer(&self, params: Self::Params, ctx: &PolicyContext<'_>) -> Result<RouteLayer, String>;

    /// The fields of `params` (as written, not parsed) that hold secrets; see
    /// [`PolicyFactory::secret_params`]. None by default.
    fn secret_params(&self, params: &serde_json::Value) -> Vec<SecretField> {
        let _ = params;
        Vec::new()
    }
}

/// Adapts a [`Policy`] to a [`PolicyFactory`].
#[derive(Debug)]
struct Typed<P>(P);

impl<P: Policy> Typed<P> {
    fn tracked(params: &serde_json::Value) -> (Option<P::Params>, Vec<FieldError>) {
        let empty = serde_json::Value::Object(serde_json::Map::new());
        let value = if params.is_null() { &empty } else { params };
        crate::model::deserialize_tracked::<P::Params>(value)
    }

    fn parse(params: &serde_json::Value) -> Result<P::Params, Vec<FieldError>> {
        match Self::tracked(params) {
            (Some(parsed), errors) if errors.is_empty() => Ok(parsed),
            (_, errors) => Err(errors),
        }
    }
}

impl<P: Policy> PolicyFactory for Typed<P> {
    fn validate(&self, params: &serde_json::Value, ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let (parsed, mut errors) = Self::tracked(params);
        if let Some(parsed) = parsed {
            errors.extend(self.0.check(&parsed, ctx));
        }
        errors
    }

    fn phase(&self) -> Phase {
        self.0.phase()
    }

    fn phase_of(&self, params: &serde_json::Value) -> Phase {
        match Self::parse(params) {
            Ok(parsed) => self.0.phase_of(&parsed),
            Err(_) => self.0.phase(),
        }
    }

    fn build(
        &self,
        params: &serde_json::Value,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        let parsed = Self::parse(params).map_err(|errors| join(&errors))?;
        self.0.layer(parsed, ctx)
    }

    fn schema(&self) -> Option<serde_json::Value> {
        serde_json::to_value(schemars::schema_for!(P::Params)).ok()
    }

    fn secret_params(&self, params: &serde_json::Value) -> Vec<SecretField> {
        self.0.secret_params(params)
    }
}

/// Field errors as one message, `; ` between them.
fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The policies a runtime or controller knows, by name.
#[derive(Debug, Clone, Default)]
pub struct PolicyRegistry {
    factories: BTreeMap<String, Arc<dyn PolicyFactory>>,
}

/// A policy that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {name:?}: {message}")]
pub struct PolicyError {
    /// The policy name.
    pub name: String,
    /// Why it could not be built.
    pub message: String,
}

impl PolicyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// gw's built-in policies (docs/policies.md) that this build compiled in: a policy of
    /// a family whose cargo feature is off is left out (see the crate's features).
    pub fn builtin() -> Self {
        // the policies with no family and no heavy dependency are always compiled in
        let registry = Self::new()
            .register_policy("access-log", accesslog::AccessLogPolicy)
            .register_policy("acl", acl::AclPolicy)
            .register_policy("correlation-id", correlation::CorrelationIdPolicy)
            .register_policy("ip-filter", ipfilter::IpFilterPolicy)
            .register_policy("request-size-limit", sizelimit::RequestSizeLimitPolicy)
            .register_policy("timeout", timeout::TimeoutPolicy);
        #[cfg(feature = "api-key")]
        let registry = registry.register_policy("api-key", apikey::ApiKeyPolicy);
        #[cfg(feature = "basic-auth")]
        let registry = registry.register_policy("basic-auth", basicauth::BasicAuthPolicy);
        #[cfg(feature = "jwt")]
        let registry = registry.register_policy("jwt", jwt::JwtPolicy);
        #[cfg(feature = "cors")]
        let registry = registry.register_policy("cors", cors::CorsPolicy);
        #[cfg(feature = "rate-limit")]
        let registry = registry.register_policy("rate-limit", ratelimit::RateLimitPolicy);
        #[cfg(feature = "transform")]
        let registry = registry
            .register_policy("request-headers", headers::RequestHeadersPolicy)
            .register_policy("response-headers", headers::ResponseHeadersPolicy)
            .register_policy("request-termination", termination::RequestTerminationPolicy)
            .register_policy("redirect", redirect::RedirectPolicy)
            .register_policy("rewrite", rewrite::RewritePolicy);
        registry
    }

    /// Adds (or replaces) the policy `name`.
    #[must_use]
    pub fn register(mut self, name: impl Into<String>, factory: impl PolicyFactory) -> Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Adds (or replaces) the policy `name`, whose params are a serde type.
    #[must_use]
    pub fn register_policy(self, name: impl Into<String>, policy: impl Policy) -> Self {
        self.register(name, Typed(policy))
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// The phase of policy `name` ([`Phase::Transform`] when it is unknown).
    pub fn phase(&self, name: &str) -> Phase {
        self.factories
            .get(name)
            .map_or(Phase::Transform, |f| f.phase())
    }

    /// The phase of `policy` with its params (a `rate-limit` with `beforeAuthentication`
    /// runs in [`Phase::Admission`]); [`Phase::Transform`] when it is unknown.
    pub fn phase_of(&self, policy: &PolicyRef) -> Phase {
        self.factories
            .get(&policy.name)
            .map_or(Phase::Transform, |f| f.phase_of(&policy.params))
    }

    /// The JSON Schema of the params of policy `name`, if it is registered and has one.
    pub fn schema(&self, name: &str) -> Option<serde_json::Value> {
        self.factories.get(name).and_then(|f| f.schema())
    }

    /// Validates the params of policy `name` attached at `ctx`; an unknown name is one
    /// error.
    pub fn validate_params(
        &self,
        name: &str,
        params: &serde_json::Value,
        ctx: &PolicyContext<'_>,
    ) -> Vec<FieldError> {
        match self.factories.get(name) {
            Some(factory) => factory.validate(params, ctx),
            None => vec![FieldError::new("", self.unknown(name))],
        }
    }

    /// Builds the layer of one policy.
    pub fn build(
        &self,
        policy: &PolicyRef,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, PolicyError> {
        let error = |message: String| PolicyError {
            name: policy.name.clone(),
            message,
        };
        let factory = self
            .factories
            .get(&policy.name)
            .ok_or_else(|| error(self.unknown(&policy.name)))?;
        let problems = factory.validate(&policy.params, ctx);
        if !problems.is_empty() {
            return Err(error(join(&problems)));
        }
        factory.build(&policy.params, ctx).map_err(error)
    }
}

/// gw's built-in policies by the cargo feature that compiles them in, and whether it is
/// on in this build: what [`PolicyCatalog::unknown`] says of one left out.
const FEATURE_POLICIES: [(&str, bool, &[&str]); 6] = [
    ("api-key", cfg!(feature = "api-key"), &["api-key"]),
    ("basic-auth", cfg!(feature = "basic-auth"), &["basic-auth"]),
    ("jwt", cfg!(feature = "jwt"), &["jwt"]),
    ("rate-limit", cfg!(feature = "rate-limit"), &["rate-limit"]),
    ("cors", cfg!(feature = "cors"), &["cors"]),
    (
        "transform",
        cfg!(feature = "transform"),
        &[
            "request-headers",
            "response-headers",
            "rewrite",
            "redirect",
            "request-termination",
        ],
    ),
];

impl PolicyCatalog for PolicyRegistry {
    fn contains(&self, name: &str) -> bool {
        PolicyRegistry::contains(self, name)
    }

    fn unknown(&self, name: &str) -> String {
        let known = self.names();
        let hint = if known.is_empty() {
            "no policies are registered in this build".to_string()
        } else {
            format!("known policies: {}", known.join(", "))
        };
        let left_out = FEATURE_POLICIES
            .iter()
            .find(|(_, on, names)| !on && names.contains(&name));
        match left_out {
            Some((feature, ..)) => format!(
                "unknown policy {name:?}: it is not compiled into this build of gw (gw-core's \
                 `{feature}` feature is off; {hint})"
            ),
            None => format!("unknown policy {name:?} ({hint})"),
        }
    }

    fn phase_name(&self, policy: &PolicyRef) -> &'static str {
        self.phase_of(policy).as_str()
    }

    fn check_params(&self, policy: &PolicyRef, at: &Attachment<'_>) -> Vec<FieldError> {
        let ctx = PolicyContext {
            api: at.api,
            context: at.context,
            operation: at
                .operation
                .map(|(method, path)| OperationContext { method, path }),
            // validation never authenticates: no consumer is needed
            consumers: ConsumerStore::empty(),
        };
        self.validate_params(&policy.name, &policy.params, &ctx)
    }

    fn secret_params(&self, policy: &PolicyRef) -> Vec<SecretField> {
        self.factories
            .get(&policy.name)
            .map_or_else(Vec::new, |f| f.secret_params(&policy.params))
    }
}

/// The effective policies of an operation: the API-level list, where an operation-level
/// policy of the same name and phase replaces the API-level one in place, followed by the
/// remaining operation-level policies. (A `rate-limit` with `beforeAuthentication` and one
/// after authentication are two policies: an operation's per-consumer limit does not
/// replace the API's throttle of logins.)
pub fn effective_policies<'a>(
    registry: &PolicyRegistry,
    api: &'a [PolicyRef],
    operation: &'a [PolicyRef],
) -> Vec<&'a PolicyRef> {
    let same = |a: &PolicyRef, b: &PolicyRef| {
        a.name == b.name && registry.phase_of(a) == registry.phase_of(b)
    };
    let mut out: Vec<&PolicyRef> = api
        .iter()
        .map(|p| operation.iter().find(|o| same(o, p)).unwrap_or(p))
        .collect();
    out.extend(operation.iter().filter(|o| !api.iter().any(|p| same(p, o))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, v: i64) -> PolicyRef {
        PolicyRef {
            name: name.to_string(),
            params: serde_json::json!(v),
        }
    }

    #[test]
    fn operation_policy_replaces_api_policy_of_the_same_name() {
        let api = [p("a", 1), p("b", 1)];
        let op = [p("b", 2), p("c", 2)];
        let got: Vec<(String, i64)> = effective_policies(&PolicyRegistry::new(), &api, &op)
            .into_iter()
            .map(|x| (x.name.clone(), x.params.as_i64().unwrap()))
            .collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 2)]);
    }

    /// A rate limit before authentication and one after it are two policies: both may be
    /// listed, and an operation's per-consumer limit replaces the API's, not its throttle of
    /// logins.
    #[cfg(feature = "rate-limit")]
    #[test]
    fn a_policy_is_replaced_by_one_of_the_same_name_and_phase() {
        let registry = PolicyRegistry::builtin();
        let limit = |before: bool, requests: u64| PolicyRef {
            name: "rate-limit".to_string(),
            params: serde_json::json!({
                "key": if before { "ip" } else { "consumer" },
                "beforeAuthentication": before,
                "limits": [{"requests": requests, "window": "second"}],
            }),
        };
        let api = [limit(true, 10), limit(false, 100)];
        let op = [limit(false, 5)];
        let got: Vec<u64> = effective_policies(&registry, &api, &op)
            .into_iter()
            .map(|p| p.params["limits"][0]["requests"].as_u64().unwrap())
            .collect();
        assert_eq!(got, [10, 5]);
        assert_eq!(registry.phase_of(&api[0]), Phase::Admission);
        assert_eq!(registry.phase_of(&api[1]), Phase::RateLimit);
    }

    /// Every built-in policy has its section in docs/policies.md, and every param of its
    /// schema appears there.
    #[test]
    fn every_builtin_policy_is_documented() {
        let doc = include_str!("../../../docs/policies.md");
        let registry = PolicyRegistry::builtin();
        let mut missing = Vec::new();
        for name in registry.names() {
            let heading = format!("\n## {name}\n");
            let Some(start) = doc.find(&heading) else {
                missing.push(name);
                continue;
            };
            let rest = &doc[start + heading.len()..];
            let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
            let schema = registry.schema(&name).expect("built-ins have schemas");
            for param in schema["properties"]
                .as_object()
                .into_iter()
                .flat_map(|p| p.keys())
            {
                if !section.contains(&format!("`{param}`")) {
                    missing.push(format!("{name}.{param}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not documented in docs/policies.md: {missing:?}"
        );
    }

    #[test]
    fn an_unknown_policy_is_refused_with_the_known_ones() {
        let registry = PolicyRegistry::builtin();
        let message = PolicyCatalog::unknown(&registry, "nope");
        assert!(
            message.starts_with("unknown policy \"nope\" (known policies: access-log, acl,"),
            "{message}"
        );
        let empty = PolicyCatalog::unknown(&PolicyRegistry::new(), "nope");
        assert!(empty.contains("no policies are registered"), "{empty}");
    }

    /// A built-in policy that this build left out is named with its feature (run with
    /// `--no-default-features`).
    #[cfg(not(feature = "jwt"))]
    #[test]
    fn a_policy_left_out_of_the_build_names_its_feature() {
        let registry = PolicyRegistry::builtin();
        assert!(!registry.contains("jwt"));
        let message = PolicyCatalog::unknown(&registry, "jwt");
        assert!(
            message.contains("not compiled into this build") && message.contains("`jwt` feature"),
            "{message}"
        );
    }

    #[test]
    fn unknown_policy_does_not_build() {
        let registry = PolicyRegistry::new();
        let ctx = PolicyContext {
            consumers: crate::consumers::ConsumerStore::empty(),
            api: "a",
            context: "/",
            operation: None,
        };
        let err = registry.build(&p("nope", 0), &ctx).unwrap_err();
        assert_eq!(err.name, "nope");
    }
}
