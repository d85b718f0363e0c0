//! The status server: `/status` (alive), `/status/ready` (serving a real configuration),
//! `/metrics` (Prometheus text format) and `POST /status/drain` (drain and stop, as on
//! SIGTERM; see [`DrainAccess`]). In standalone mode, `/status` and `/status/ready` also show
//! the last rejected reload of the file (`lastRejectedReload`, see
//! [`crate::file_source::RejectedReload`]).
//!
//! Its connections are bounded like the admin API's ([`gw_core::conn::server`]): a cap in
//! total and per client address, a header read timeout, an idle timeout. Nothing here needs
//! credentials except the drain, so the server listens on loopback by default: `/metrics`
//! names upstream URLs and consumers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use gw_core::conn::server::{ServerLimits, ServerMetrics};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use gw_sync::client::ClientStatus;

use crate::file_source::LastRejection;
use crate::state::{ConfigState, Origin};

/// What the status endpoints report.
#[derive(Debug)]
pub struct StatusContext {
    /// The runtime's node id.
    pub node_id: String,
    /// The group it serves.
    pub group: String,
    /// The applied configuration.
    pub state: Arc<ConfigState>,
    /// The sync client's status, in controller mode.
    pub sync: Option<watch::Receiver<ClientStatus>>,
    /// The last rejected reload of the configuration file, in standalone mode: shown as
    /// `lastRejectedReload` by `/status` and `/status/ready`.
    pub file_rejection: Option<Arc<LastRejection>>,
    /// Set when the runtime is shutting down: readiness turns false.
    pub draining: AtomicBool,
    /// Whether readiness also requires a connected controller (controller mode only).
    pub requires_controller: bool,
    /// Notified by `POST /status/drain`: the runtime drains and stops, as on SIGTERM
    /// (`None`: no drain endpoint).
    pub drain: Option<tokio::sync::Notify>,
    /// Who may drain the runtime (`POST /status/drain`).
    pub drain_access: DrainAccess,
    /// `gw_status_drain_requests_total{result}`.
    pub drain_requests: DrainMetrics,
    /// The metrics.
    pub registry: Registry,
}

/// The shortest drain token accepted, in characters.
pub const MIN_DRAIN_TOKEN_LEN: usize = 16;

/// The bearer token `POST /status/drain` requires (`GW_DRAIN_TOKEN`), kept only as its
/// SHA-256 digest; compared in constant time; its `Debug` output is redacted.
#[derive(Clone)]
pub struct DrainToken([u8; 32]);

impl std::fmt::Debug for DrainToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrainToken(<redacted>)")
    }
}

/// A drain token shorter than [`MIN_DRAIN_TOKEN_LEN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "GW_DRAIN_TOKEN is {0} characters long; it must have at least {MIN_DRAIN_TOKEN_LEN}. Set \
     it to a random string (for example: openssl rand -hex 32)"
)]
pub struct WeakDrainToken(usize);

impl DrainToken {
    /// Wraps a token: `None` for an empty or blank one, an error for one shorter than
    /// [`MIN_DRAIN_TOKEN_LEN`] characters (surrounding blanks are not counted).
    pub fn new(token: &str) -> Result<Option<Self>, WeakDrainToken> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(None);
        }
        let chars = token.chars().count();
        if chars < MIN_DRAIN_TOKEN_LEN {
            return Err(WeakDrainToken(chars));
        }
        Ok(Some(Self(Sha256::digest(token.as_bytes()).into())))
    }

    /// Whether `header` (an `Authorization` value) is `Bearer <this token>`.
    fn verify(&self, header: &str) -> bool {
        let presented = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// Who may `POST /status/drain`, when the runtime has the endpoint at all
/// ([`crate::RuntimeOptions::drain_endpoint`]).
#[derive(Debug, Clone, Default)]
pub struct DrainAccess {
    /// Requests must carry `Authorization: Bearer <token>` (from any address).
    pub token: Option<DrainToken>,
    /// Requests must come from a loopback address. With neither this nor a token, the
    /// endpoint is off: a loopback peer may be a local proxy or sidecar that forwards
    /// anyone's request.
    pub from_loopback: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrainLabels {
    result: &'static str,
}

/// `gw_status_drain_requests_total{result}`: `accepted`, `unauthorized` (no or a wrong
/// token), `forbidden` (not from loopback), `off` (no endpoint, or no token configured).
#[derive(Debug, Clone, Default)]
pub struct DrainMetrics(
    Family<DrainLabels, Counter>,
    /// The minute (since the Unix epoch) of the last refusal logged at warning level.
    Arc<std::sync::atomic::AtomicU64>,
);

impl DrainMetrics {
    /// Registers the counter in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gw_status_drain_requests",
            "POST /status/drain requests, by result: accepted, unauthorized, forbidden, off",
            metrics.0.clone(),
        );
        metrics
    }

    fn count(&self, result: &'static str) {
        self.0.get_or_create(&DrainLabels { result }).inc();
    }

    /// Whether a refusal may be logged at warning level: once a minute at most, so that a
    /// flood of refused drains does not flood the log (the counter counts every one).
    fn warn_refusal(&self) -> bool {
        let minute = gw_sync::unix_millis() / 60_000;
        self.1.swap(minute, Ordering::Relaxed) != minute
    }
}

impl StatusContext {
    fn ready(&self) -> (StatusCode, serde_json::Value) {
        let config = self.state.gateway().config();
        let draining = self.draining.load(Ordering::Acquire);
        let controller = self
            .sync
            .as_ref()
            .and_then(|s| s.borrow().connected_to.clone());
        let reason = if draining {
            Some("draining")
        } else if self.state.origin() == Origin::None {
            Some("no configuration applied yet")
        } else if config.is_empty() {
            // a configuration applied, but the group has no API (yet, or any more)
            Some("no API in the configuration served")
        } else if self.requires_controller && self.sync.is_some() && controller.is_none() {
            Some("no controller connected")
        } else {
            None
        };
        let mut body = serde_json::json!({
            "ready": reason.is_none(),
            "reason": reason,
            "revision": self.state.revision(),
            "apis": config.apis().len(),
            "source": self.state.origin().as_str(),
            "controller": controller,
        });
        self.add_file_rejection(&mut body);
        let status = if reason.is_none() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }

    fn alive(&self) -> serde_json::Value {
        let sync = self.sync.as_ref().map(|s| {
            let s = s.borrow();
            serde_json::json!({
                "connectedTo": s.connected_to,
                "lastError": s.last_error,
                "refused": s.refused,
            })
        });
        let mut body = serde_json::json!({
            "status": "alive",
            "nodeId": self.node_id,
            "group": self.group,
            "version": env!("CARGO_PKG_VERSION"),
            "revision": self.state.revision(),
            "source": self.state.origin().as_str(),
            "sync": sync,
        });
        self.add_file_rejection(&mut body);
        body
    }

    /// Standalone mode: `lastRejectedReload`, `null` while no reload was rejected.
    fn add_file_rejection(&self, body: &mut serde_json::Value) {
        if let Some(rejection) = &self.file_rejection {
            body["lastRejectedReload"] =
                serde_json::to_value(rejection.get()).unwrap_or(serde_json::Value::Null);
        }
    }

    /// `POST /status/drain` from `peer` (see [`DrainAccess`]). The token is never logged.
    fn drain<B>(&self, request: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let error = |status: StatusCode, code: &str, message: &str| {
            json(
                status,
                &serde_json::json!({"error": {"code": code, "message": message}}),
            )
        };
        let access = &self.drain_access;
        let Some(drain) = &self.drain else {
            self.drain_requests.count("off");
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "this runtime has no drain endpoint (all-in-one, or --drain-endpoint off): stop \
                 it with SIGTERM",
            );
        };
        if access.token.is_none() && !access.from_loopback {
            self.drain_requests.count("off");
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the drain endpoint is off: set GW_DRAIN_TOKEN on the runtime and send \
                 Authorization: Bearer <token>, or stop it with SIGTERM",
            );
        }
        if access.from_loopback && !peer.ip().to_canonical().is_loopback() {
            self.drain_requests.count("forbidden");
            if self.drain_requests.warn_refusal() {
                tracing::warn!(%peer, "drain refused: not from a loopback address (logged once a minute)");
            }
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a drain is accepted from loopback addresses only",
            );
        }
        if let Some(token) = &access.token {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !token.verify(presented) {
                self.drain_requests.count("unauthorized");
                if self.drain_requests.warn_refusal() {
                    tracing::warn!(%peer, "drain refused: no valid token (logged once a minute)");
                }
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a drain needs Authorization: Bearer <GW_DRAIN_TOKEN>",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gw-drain\""),
                );
                return response;
            }
        }
        self.drain_requests.count("accepted");
        tracing::info!(%peer, "drain requested over the status API");
        // a permit is kept if the runtime is not waiting yet; a second request changes nothing
        drain.notify_one();
        json(StatusCode::ACCEPTED, &serde_json::json!({"draining": true}))
    }

    fn respond<B>(&self, request: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if request.uri().path() == "/status/drain" {
            if request.method() == Method::POST {
                return self.drain(request, peer);
            }
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({
                    "error": {"code": "method_not_allowed", "message": "use POST"}
                }),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({
                    "error": {"code": "method_not_allowed", "message": "use GET"}
                }),
            );
        }
        match request.uri().path() {
            "/status" => json(StatusCode::OK, &self.alive()),
            "/status/ready" => {
                let (status, body) = self.ready();
                json(status, &body)
            }
            "/metrics" => {
                let mut text = String::new();
                if let Err(err) =
                    prometheus_client::encoding::text::encode(&mut text, &self.registry)
                {
                    tracing::warn!(error = %err, "could not encode metrics");
                }
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({
                    "error": {"code": "not_found", "message": "try /status, /status/ready or /metrics"}
                }),
            ),
        }
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves the status endpoints on `listener` until the task is dropped, within `limits`;
/// over TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    context: Arc<StatusContext>,
    limits: ServerLimits,
    metrics: ServerMetrics,
    tls: Option<gw_core::conn::server::TlsConfig>,
) {
    let make = move |peer: SocketAddr| {
        let context = Arc::clone(&context);
        service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = context.respond(&request, peer);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    gw_core::conn::server::serve(listener, limits, metrics, tls, make, std::future::pending())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_token_has_a_minimum_length_and_is_compared_whole() {
        assert!(DrainToken::new(" ").unwrap().is_none());
        let err = DrainToken::new("short-token").unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        assert!(!err.to_string().contains("short-token"), "{err}");
        let token = DrainToken::new("drain-0123456789abcdef").unwrap().unwrap();
        assert!(token.verify("Bearer drain-0123456789abcdef"));
        assert!(token.verify("bearer  drain-0123456789abcdef "));
        assert!(!token.verify("Bearer drain-0123456789abcde"));
        assert!(!token.verify("Basic drain-0123456789abcdef"));
        assert!(!token.verify("drain-0123456789abcdef"));
        assert!(!token.verify(""));
        assert_eq!(format!("{token:?}"), "DrainToken(<redacted>)");
    }
}
