//! Policies: named, parameterized `tower::Layer`s wrapped around the upstream call.
//!
//! A [`PolicyRegistry`] maps a policy name to a [`PolicyFactory`], which validates the
//! policy's params at deploy time and builds its layer when a configuration is applied,
//! never per request. Embedders register their own policies next to the built-in ones.
//!
//! The per-route stack is built by [`build_stack`]: the API-level policies, with an
//! operation-level policy of the same name replacing the API-level one, in the order they
//! are listed, the first one outermost, around the upstream service.
//!
//! ```
//! use gw_core::policy::{PolicyFactory, PolicyRegistry, RouteLayer};
//! use gw_core::model::FieldError;
//!
//! /// A policy that accepts no params and adds nothing: a starting point.
//! #[derive(Debug)]
//! struct Noop;
//!
//! impl PolicyFactory for Noop {
//!     fn validate(&self, params: &serde_json::Value) -> Vec<FieldError> {
//!         if params.is_null() { vec![] } else { vec![FieldError::new("", "takes no params")] }
//!     }
//!     fn build(&self, _params: &serde_json::Value) -> Result<RouteLayer, String> {
//!         Ok(RouteLayer::new(tower::layer::util::Identity::new()))
//!     }
//! }
//!
//! let registry = PolicyRegistry::new().register("noop", Noop);
//! assert!(registry.contains("noop"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use tower::util::{BoxCloneSyncService, BoxCloneSyncServiceLayer};

use crate::body::{Body, BoxError};
use crate::model::{FieldError, PolicyRef};

/// The service at every level of a per-route stack.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// A policy's layer, type-erased so that a stack can hold any mix of policies.
pub type RouteLayer =
    BoxCloneSyncServiceLayer<RouteService, Request<Body>, Response<Body>, BoxError>;

/// Validates a policy's params and builds its layer.
pub trait PolicyFactory: Send + Sync + fmt::Debug + 'static {
    /// Every problem in `params`, with field paths relative to `params` (empty when valid).
    fn validate(&self, params: &serde_json::Value) -> Vec<FieldError>;

    /// Builds the layer from params that [`PolicyFactory::validate`] accepted.
    fn build(&self, params: &serde_json::Value) -> Result<RouteLayer, String>;
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

    /// Adds (or replaces) the policy `name`.
    #[must_use]
    pub fn register(mut self, name: impl Into<String>, factory: impl PolicyFactory) -> Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Validates the params of policy `name`; an unknown name is one error.
    pub fn validate_params(&self, name: &str, params: &serde_json::Value) -> Vec<FieldError> {
        match self.factories.get(name) {
            Some(factory) => factory.validate(params),
            None => vec![FieldError::new("", format!("unknown policy {name:?}"))],
        }
    }

    /// Builds the layer of one policy.
    pub fn build(&self, policy: &PolicyRef) -> Result<RouteLayer, PolicyError> {
        let error = |message: String| PolicyError {
            name: policy.name.clone(),
            message,
        };
        let factory = self
            .factories
            .get(&policy.name)
            .ok_or_else(|| error("unknown policy".to_string()))?;
        let problems = factory.validate(&policy.params);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(error(list.join("; ")));
        }
        factory.build(&policy.params).map_err(error)
    }
}

/// The effective policies of an operation: the API-level list, where an operation-level
/// policy of the same name replaces the API-level one in place, followed by the remaining
/// operation-level policies.
pub fn effective_policies<'a>(
    api: &'a [PolicyRef],
    operation: &'a [PolicyRef],
) -> Vec<&'a PolicyRef> {
    let mut out: Vec<&PolicyRef> = api
        .iter()
        .map(|p| operation.iter().find(|o| o.name == p.name).unwrap_or(p))
        .collect();
    out.extend(
        operation
            .iter()
            .filter(|o| !api.iter().any(|p| p.name == o.name)),
    );
    out
}

/// Wraps `inner` in the layers of `policies`, the first policy outermost.
pub fn build_stack(
    registry: &PolicyRegistry,
    policies: &[&PolicyRef],
    inner: RouteService,
) -> Result<RouteService, PolicyError> {
    let mut service = inner;
    for policy in policies.iter().rev() {
        let layer = registry.build(policy)?;
        service = tower::Layer::layer(&layer, service);
    }
    Ok(service)
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
        let got: Vec<(String, i64)> = effective_policies(&api, &op)
            .into_iter()
            .map(|x| (x.name.clone(), x.params.as_i64().unwrap()))
            .collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 2)]);
    }

    #[test]
    fn unknown_policy_does_not_build() {
        let registry = PolicyRegistry::new();
        let err = registry.build(&p("nope", 0)).unwrap_err();
        assert_eq!(err.name, "nope");
    }
}
