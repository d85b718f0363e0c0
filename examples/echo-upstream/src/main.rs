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
//! - a request with `x-echo-trailer: V` gets its answer with a trailer `x-echo-trailer: V`
//!   (as gRPC sends `grpc-status`).

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
}

/// What the controls change.
struct State {
    name: String,
    respond_status: AtomicU16,
    health_status: AtomicU16,
    requests: AtomicU64,
    probes: AtomicU64,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: "echo".to_string(),
        json_log: false,
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
            "--help" | "-h" => {
                return Err(
                    "usage: echo-upstream [--addr 127.0.0.1:9001] [--name echo] [--log-format text|json]"
                        .to_string()
                );
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    Ok(parsed)
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

async fn serve(state: &State, request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
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
    let trailer = request.headers().get("x-echo-trailer").cloned();
    let response = echo(state, request).await;
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

async fn echo(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
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
            serde_json::json!({"message": "listening", "listener": "http", "addr": local.to_string()})
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
    }));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(serve(state, request).await)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
