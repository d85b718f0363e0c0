//! gw's data plane core.
//!
//! - [`arrival`]: what the gateway learned about a request on arrival (its hop-by-hop
//!   headers, whether its peer is a trusted proxy), carried in its extensions.
//! - [`extensions`]: the types that travel in request extensions (connection info,
//!   consumer, exchange, request id, timeout): a leaf every layer may use.
//! - [`conn`]: connection admission (in total and per client address) and the deadlines of
//!   a connection's first and idle requests, shared by every listener.
//! - [`model`]: the API definition, its parsing, validation and JSON Schema.
//! - [`path`]: request path normalization, so that no spelling of a path reaches a route
//!   its plain form would not.
//! - [`router`]: host, then context (longest prefix), then operation.
//! - [`consumers`]: the consumers served, indexed by credential, for authentication.
//! - [`policy`]: the registry that maps a policy name and its params to a `tower::Layer`.
//! - [`upstream`]: endpoints, round robin, the pooled HTTP client and the proxying service.
//! - [`gateway`]: the configuration built from a set of APIs, swapped atomically, and the
//!   request entry point that routes, runs the per-route stack and turns errors into
//!   responses.
//! - [`trace`]: W3C trace context (`traceparent`) kept, made and passed on to upstreams.
//! - [`otel`]: OpenTelemetry trace export (OTLP/HTTP), off unless installed on the gateway.
//!
//! This crate does no database or gRPC work; it is what runtimes and embedders build on.
#![warn(missing_docs)]

pub mod arrival;
pub mod body;
pub mod conn;
pub mod consumers;
pub mod error;
pub mod extensions;
pub mod gateway;
mod http_client;
pub mod metrics;
pub mod model;
pub mod otel;
pub mod path;
pub mod policy;
pub mod router;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use body::{Body, BoxError};
pub use error::GatewayError;
pub use gateway::{ConnInfo, Gateway, GatewayConfig, GatewayService};
pub use model::ApiDefinition;
