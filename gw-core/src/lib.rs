//! gw's data plane core.
//!
//! - [`arrival`]: what the gateway learned about a request on arrival (its hop-by-hop
//!   headers, whether its peer is a trusted proxy), carried in its extensions.
//! - [`extensions`]: the types that travel in request extensions (connection info,
//!   consumer, exchange, request id, timeout): a leaf every layer may use.
//! - [`conn`]: connection admission (in total and per client address) and the deadlines of
//!   a connection's first and idle requests, shared by every listener (the gw-conn crate,
//!   re-exported), and the bounded HTTP server of the control surfaces.
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
//! - [`credential`]: consumers' secrets sealed into hashes; password hashing with
//!   `basic-auth`.
//!
//! This crate does no database or gRPC work; it is what runtimes and embedders build on.
//!
//! # Features
//!
//! Every feature is on by default. An embedder who needs a few policies turns the defaults
//! off and names them (`gw-core = { version = "0.1", default-features = false, features =
//! ["cors", "api-key"] }`): the policies and dependencies of the others are not compiled.
//! [`policy::PolicyRegistry::builtin`] registers the policies compiled in, and an API that
//! names one left out is refused with an error that says it is not compiled into this build.
//!
//! | feature | brings | dependencies |
//! | --- | --- | --- |
//! | `api-key` | the `api-key` policy | |
//! | `basic-auth` | the `basic-auth` policy; [`credential::hash_password`], [`credential::verify_password`], and [`credential::seal`] of passwords | argon2, bcrypt |
//! | `jwt` | the `jwt` policy, with keys inline or from a remote JWKS, and its checks as a verifier of token texts (`policy::jwt::JwtVerifier`) | jsonwebtoken, x509-parser |
//! | `rate-limit` | the `rate-limit` policy, counting in each process (`backend: local`) | |
//! | `rate-limit-redis` | `rate-limit` with `backend: redis`, counts shared through Redis; implies `rate-limit` | redis |
//! | `cors` | the `cors` policy | |
//! | `transform` | `request-headers`, `response-headers`, `rewrite`, `redirect`, `request-termination` and their header templates | |
//! | `otel` | [`otel`]: OpenTelemetry trace export over OTLP/HTTP ([`Gateway::with_tracing`]) | opentelemetry-proto, prost |
//! | `tls` | `kind: Certificate` documents (X.509 parsing) and the HTTPS listener's configuration ([`Gateway::tls_server_config`]); without it a certificate is refused | x509-parser |
//! | `yaml` | YAML documents ([`model::Format::Yaml`]); without it, that format reads JSON only | serde-saphyr |
//!
//! Always compiled: the model and its validation, the router, the proxy and its upstreams
//! (with rustls, so that `https://` upstreams, their custom CAs and client certificates
//! work in every build), and the policies that have no heavy dependency and no family:
//! `access-log`, `acl`, `correlation-id`, `ip-filter`, `request-size-limit` and `timeout`.
//! The JSON Schemas of the model and of policies' params (schemars) are always there too:
//! [`policy::Policy`]'s params are `JsonSchema`, so a policy of your own has its schema
//! whatever the build.
#![warn(missing_docs)]

pub mod arrival;
pub mod body;
pub mod conn;
pub mod consumers;
pub mod credential;
pub mod error;
pub mod extensions;
pub mod gateway;
#[cfg(any(feature = "jwt", feature = "otel"))]
mod http_client;
pub mod metrics;
pub mod model;
#[cfg(feature = "otel")]
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
