//! The status server: `/status` (alive), `/status/ready` (serving a real configuration),
//! `/metrics` (Prometheus text format) and `POST /status/drain` (drain and stop, as on
//! SIGTERM; from loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use gw_sync::client::ClientStatus;

use crate::state::ConfigState;

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
    /// Set when the runtime is shutting down: readiness turns false.
    pub draining: AtomicBool,
    /// Whether readiness also requires a connected controller (controller mode only).
    pub requires_controller: bool,
    /// Notified by `POST /status/drain`: the runtime drains and stops, as on SIGTERM
    /// (`None`: no drain endpoint).
    pub drain: Option<tokio::sync::Notify>,
    /// The metrics.
    pub registry: Registry,
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
        } else if config.is_empty() {
            Some("no configuration applied yet")
        } else if self.requires_controller && self.sync.is_some() && controller.is_none() {
            Some("no controller connected")
        } else {
            None
        };
        let body = serde_json::json!({
            "ready": reason.is_none(),
            "reason": reason,
            "revision": self.state.revision(),
            "apis": config.apis().len(),
            "source": self.state.origin().as_str(),
            "controller": controller,
        });
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
        serde_json::json!({
            "status": "alive",
            "nodeId": self.node_id,
            "group": self.group,
            "version": env!("CARGO_PKG_VERSION"),
            "revision": self.state.revision(),
            "source": self.state.origin().as_str(),
            "sync": sync,
        })
    }

    /// `POST /status/drain` from `peer`: from loopback only (a preStop hook, an operator on
    /// the host), since the status port has no authentication.
    fn drain(&self, peer: SocketAddr) -> Response<Full<Bytes>> {
        let Some(drain) = &self.drain else {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({
                    "error": {"code": "not_found", "message": "this runtime has no drain endpoint (all-in-one: stop the process with SIGTERM)"}
                }),
            );
        };
        if !peer.ip().to_canonical().is_loopback() {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({
                    "error": {"code": "forbidden", "message": "a drain is accepted from loopback addresses only"}
                }),
            );
        }
        tracing::info!(%peer, "drain requested over the status API");
        // a permit is kept if the runtime is not waiting yet; a second request changes nothing
        drain.notify_one();
        json(StatusCode::ACCEPTED, &serde_json::json!({"draining": true}))
    }

    fn respond<B>(&self, request: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if request.uri().path() == "/status/drain" {
            if request.method() == Method::POST {
                return self.drain(peer);
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

/// Serves the status endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, context: Arc<StatusContext>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = context.respond(&request, peer);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
