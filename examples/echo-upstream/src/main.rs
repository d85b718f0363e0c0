//! An upstream for trying gw: answers every request with a JSON description of what it
//! received (method, path, query, headers, body size), so you can see what the gateway
//! forwarded.
//!
//! ```text
//! cargo run -p echo-upstream -- --addr 127.0.0.1:9001 --name orders
//! ```
//!
//! It also has a few controls, for trying (and testing) what the gateway does when an
//! upstream misbehaves:
//!
//! - a request with `x-echo-delay-ms: N` is answered after N milliseconds (at most 60 s);
//! - `POST /_echo/respond?status=N` makes every later request answer with status N (200 to
//!   go back);
//! - `GET /_echo/health` answers 200, or the status set with `POST /_echo/health?status=N`;
//! - `GET /_echo/stats` counts the requests and health probes received;
//! - `GET /_echo/bytes?n=N` streams N bytes (`x`), 64 KiB at a time;
//! - `GET /_echo/sse` answers `text/event-stream` with one event at once and a second one
//!   only after `POST /_echo/release` (at most 60 s later), then keeps the stream open (up to
//!   60 s more), to show that events are not held back on the way;
//! - a request with `x-echo-trailer: V` gets its answer with a trailer `x-echo-trailer: V`
//!   (as gRPC sends `grpc-status`).
//!
//! With `--tls-cert FILE --tls-key FILE` it serves HTTPS instead (ALPN `h2` and
//! `http/1.1`), and with `--tls-client-ca FILE` it also requires a client certificate
//! signed by that CA. The description then says what TLS brought: the server name the client
//! sent, the ALPN protocol and whether a client certificate was shown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

struct Args {
    addr: SocketAddr,
    name: String,
    json_log: bool,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_client_ca: Option<String>,
}

/// What the controls change.
struct State {
    name: String,
    respond_status: AtomicU16,
    health_status: AtomicU16,
    requests: AtomicU64,
    probes: AtomicU64,
    /// `POST /_echo/release` calls, and their wake-up.
    releases: AtomicU64,
    released: tokio::sync::Notify,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: "echo".to_string(),
        json_log: false,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let text = value()?;
                parsed.addr = text.parse().map_err(|e| format!("--addr {text}: {e}"))?;
            }
            "--name" => parsed.name = value()?,
            "--log-format" => parsed.json_log = value()? == "json",
            "--tls-cert" => parsed.tls_cert = Some(value()?),
            "--tls-key" => parsed.tls_key = Some(value()?),
            "--tls-client-ca" => parsed.tls_client_ca = Some(value()?),
            "--help" | "-h" => {
                return Err(
                    "usage: echo-upstream [--addr 127.0.0.1:9001] [--name echo] [--log-format text|json] \
                     [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]"
                        .to_string()
                );
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    if parsed.tls_cert.is_some() != parsed.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".to_string());
    }
    if parsed.tls_client_ca.is_some() && parsed.tls_cert.is_none() {
        return Err("--tls-client-ca needs --tls-cert and --tls-key".to_string());
    }
    Ok(parsed)
}

/// The TLS acceptor of `--tls-cert`, `--tls-key` and `--tls-client-ca`.
fn tls_acceptor(args: &Args) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key}: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(std::sync::Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &args.tls_client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))? {
                roots
                    .add(der.map_err(|e| format!("{path}: {e}"))?)
                    .map_err(|e| format!("{path}: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        config,
    ))))
}

/// The status in `?status=N`, if valid.
fn status_param(query: Option<&str>) -> Option<StatusCode> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("status="))
        .and_then(|n| n.parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

/// The control paths under `/_echo/`; `None` for any other request.
fn control(state: &State, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let path = request.uri().path();
    let query = request.uri().query();
    let method = request.method();
    let set = |target: &AtomicU16| match status_param(query) {
        Some(status) => {
            target.store(status.as_u16(), Ordering::Relaxed);
            plain(StatusCode::NO_CONTENT, String::new())
        }
        None => plain(StatusCode::BAD_REQUEST, "use ?status=N\n".to_string()),
    };
    Some(match (method.as_str(), path) {
        ("GET", "/_echo/health") => {
            state.probes.fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(state.health_status.load(Ordering::Relaxed))
                .unwrap_or(StatusCode::OK);
            plain(status, format!("{}\n", status.as_u16()))
        }
        ("POST", "/_echo/health") => set(&state.health_status),
        ("POST", "/_echo/respond") => set(&state.respond_status),
        ("POST", "/_echo/release") => {
            state.releases.fetch_add(1, Ordering::SeqCst);
            state.released.notify_waiters();
            plain(StatusCode::NO_CONTENT, String::new())
        }
        ("GET", "/_echo/stats") => plain(
            StatusCode::OK,
            serde_json::json!({
                "upstream": state.name,
                "requests": state.requests.load(Ordering::Relaxed),
                "healthProbes": state.probes.load(Ordering::Relaxed),
            })
            .to_string(),
        ),
        _ => return None,
    })
}

/// A body fed by a channel, each piece sent as one frame as soon as it arrives.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// `GET /_echo/sse`: one event now, the second after the next `POST /_echo/release`.
fn events(state: &'static State) -> Response<BoxBody<Bytes, Infallible>> {
    let start = state.releases.load(Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"data: first\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let released = async {
            loop {
                let notified = state.released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if state.releases.load(Ordering::SeqCst) > start {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(Duration::from_mins(1), released)
            .await
            .is_ok()
            && tx
                .send(Bytes::from_static(b"data: second\n\n"))
                .await
                .is_ok()
        {
            // the stream stays open, as an event stream does: a proxy that held the last
            // event until the end would be caught
            let _ = tokio::time::timeout(Duration::from_mins(1), tx.closed()).await;
        }
    });
    let mut response = Response::new(Channel(rx).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// A body of `remaining` bytes of `x`, made 64 KiB at a time as it is read.
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining.min(self.chunk.len() as u64)).unwrap_or(0);
        self.remaining -= n as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

async fn serve(
    state: &'static State,
    tls: Option<&serde_json::Value>,
    request: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    if request.method() == hyper::Method::GET && request.uri().path() == "/_echo/bytes" {
        let n = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("n=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        return Response::new(
            Generated {
                remaining: n,
                chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            }
            .boxed(),
        );
    }
    if request.method() == hyper::Method::GET && request.uri().path() == "/_echo/sse" {
        return events(state);
    }
    let trailer = request.headers().get("x-echo-trailer").cloned();
    let response = echo(state, tls, request).await;
    match trailer {
        None => response.map(BodyExt::boxed),
        Some(value) => response.map(|body| {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("x-echo-trailer", value);
            body.with_trailers(std::future::ready(Some(Ok(trailers))))
                .boxed()
        }),
    }
}

async fn echo(
    state: &State,
    tls: Option<&serde_json::Value>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(response) = control(state, &request) {
        return response;
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    let delay = request
        .headers()
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let name = state.name.as_str();
    let (parts, body) = request.into_parts();
    // counted as it streams, never held: bodies of any size in constant memory
    let mut body = body;
    let mut body_bytes = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let description = serde_json::json!({
        "tls": tls,
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "bodyBytes": body_bytes,
        "version": format!("{:?}", parts.version),
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    *response.status_mut() = StatusCode::from_u16(state.respond_status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let tls = match tls_acceptor(&args) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {}: {err}", args.addr);
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().unwrap_or(args.addr);
    if args.json_log {
        eprintln!(
            "{}",
            serde_json::json!({
                "message": "listening",
                "listener": if tls.is_some() { "https" } else { "http" },
                "addr": local.to_string(),
            })
        );
    } else {
        println!("echo-upstream {} listening on {local}", args.name);
    }
    let state: &'static State = Box::leak(Box::new(State {
        name: args.name,
        respond_status: AtomicU16::new(200),
        health_status: AtomicU16::new(200),
        requests: AtomicU64::new(0),
        probes: AtomicU64::new(0),
        releases: AtomicU64::new(0),
        released: tokio::sync::Notify::new(),
    }));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                let service = service_fn(move |request| async move {
                    Ok::<_, Infallible>(serve(state, None, request).await)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            };
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let (_, session) = stream.get_ref();
            let described = std::sync::Arc::new(serde_json::json!({
                "serverName": session.server_name(),
                "alpn": session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                "clientCertificate": session.peer_certificates().is_some_and(|c| !c.is_empty()),
            }));
            let service = service_fn(move |request| {
                let described = std::sync::Arc::clone(&described);
                async move { Ok::<_, Infallible>(serve(state, Some(&described), request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
