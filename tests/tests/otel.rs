//! OpenTelemetry trace export through a real runtime: an OTLP/HTTP receiver in the test
//! decodes what the runtime exports, and the echo upstream shows the `traceparent` it got.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gw_e2e::{Upstream, eventually, metric, standalone};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, status};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
/// The collector's credential: it must reach the collector and no log line.
const SECRET: &str = "s3cr3t-otlp-key";

/// What the receiver got: each export's headers and message.
type Received = Arc<Mutex<Vec<(hyper::HeaderMap, ExportTraceServiceRequest)>>>;

/// An OTLP/HTTP receiver on loopback; dropping it closes its listener and every connection.
struct Receiver {
    addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let store = Arc::clone(&received);
        let task = tokio::spawn(async move {
            // the connections live in the task: aborting it closes them too
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                let service = service_fn(move |request: Request<Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let ok = request.uri().path() == "/v1/traces"
                            && request.headers()["content-type"] == "application/x-protobuf";
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(message) if ok => {
                                store.lock().unwrap().push((parts.headers, message));
                                200
                            }
                            _ => 400,
                        };
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, message)| &message.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn value(values: &[KeyValue], key: &str) -> Option<any_value::Value> {
    values
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v: AnyValue| v.value)
}

fn text(values: &[KeyValue], key: &str) -> Option<String> {
    match value(values, key)? {
        any_value::Value::StringValue(s) => Some(s),
        other => panic!("{key} is {other:?}"),
    }
}

/// The `traceparent` the echo upstream saw.
fn upstream_traceparent(echo: &serde_json::Value) -> String {
    echo["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream saw no traceparent: {echo}"))
        .to_string()
}

#[tokio::test]
async fn spans_are_exported_and_the_upstream_nests_under_them() {
    let receiver = Receiver::start().await;
    let upstream = Upstream::start("u").await;
    // an upstream port held by a socket that is bound but never listens: connections are
    // refused, and no other process can take the port during the test
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    let yaml = format!(
        "{}  operations:\n    - {{method: GET, path: '/items/{{id}}'}}\n---\n{}---\n{}  policies:\n    - name: api-key\n---\napiVersion: gw/v1\nkind: Consumer\nmetadata: {{name: acme}}\nspec:\n  credentials: [{{type: api-key, id: k1, key: acme-key-0123456789abcdef}}]\n",
        gw_e2e::api_yaml("orders", "/orders", &upstream.url("/")),
        gw_e2e::api_yaml("broken", "/broken", &nowhere),
        gw_e2e::api_yaml("keyed", "/keyed", &upstream.url("/")),
    );
    let endpoint = format!("http://{}", receiver.addr);
    let header = format!("x-otlp-key={SECRET}");
    let (mut runtime, _dir) = standalone(
        &yaml,
        &[
            "--otel-endpoint",
            &endpoint,
            "--otel-batch-interval",
            "100ms",
            "--otel-service-name",
            "edge-gateway",
            "--otel-header",
            &header,
        ],
    );
    let proxy = runtime.addr("proxy");
    let status = runtime.addr("status");
    let client = reqwest::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(format!("http://{proxy}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    // a client that did not sample its trace: passed on unsampled, nothing exported
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CLIENT_SPAN}-00");
    let response = get("/orders/items/1", &[("traceparent", &unsampled)])
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream_traceparent(&response.json().await.unwrap());
    assert!(
        seen.starts_with(&format!("00-{UNSAMPLED_TRACE}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    assert_ne!(&seen[36..52], CLIENT_SPAN);

    // a sampled client trace: the gateway's span is the client span's child, and the
    // upstream's parent
    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let response = get(
        "/orders/items/42?token=hidden",
        &[("traceparent", &parent), ("tracestate", "vendor=abc")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    let seen = upstream_traceparent(&echo);
    assert_eq!(echo["headers"]["tracestate"], "vendor=abc", "{echo}");
    let span = eventually_span(&receiver, |s| hex(&s.trace_id) == TRACE).await;
    assert_eq!(seen, format!("00-{TRACE}-{}-01", hex(&span.span_id)));
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.trace_state, "vendor=abc");
    assert_eq!(span.name, "GET /orders/items/{id}");
    assert_eq!(span.kind, 2, "SERVER");
    let attrs = &span.attributes;
    assert_eq!(text(attrs, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(attrs, "url.path").as_deref(), Some("/orders/items/42"));
    assert_eq!(text(attrs, "url.scheme").as_deref(), Some("http"));
    assert_eq!(text(attrs, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(text(attrs, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        text(attrs, "http.route").as_deref(),
        Some("/orders/items/{id}")
    );
    assert_eq!(text(attrs, "gw.api").as_deref(), Some("orders"));
    assert_eq!(
        text(attrs, "gw.operation").as_deref(),
        Some("GET /items/{id}")
    );
    assert_eq!(
        text(attrs, "gw.upstream.endpoint").as_deref(),
        Some(format!("http://{}", upstream.addr).as_str())
    );
    assert_eq!(text(attrs, "gw.consumer"), None);
    assert_eq!(
        value(attrs, "http.response.status_code"),
        Some(any_value::Value::IntValue(200))
    );
    assert!(
        !format!("{span:?}").contains("hidden"),
        "no query in a span"
    );
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Unset as i32)
    );
    assert!(span.start_time_unix_nano > 0 && span.end_time_unix_nano >= span.start_time_unix_nano);

    // no traceparent: a new trace, sampled at the default ratio of 1
    let response = get("/orders/items/7", &[]).await.unwrap();
    let seen = upstream_traceparent(&response.json().await.unwrap());
    assert!(seen.ends_with("-01"), "{seen}");
    let span = eventually_span(&receiver, |s| hex(&s.trace_id) == seen[3..35]).await;
    assert_eq!(hex(&span.span_id), seen[36..52]);
    assert!(span.parent_span_id.is_empty());

    // an upstream that is not there: 502, and the span says ERROR
    let response = get("/broken/x", &[]).await.unwrap();
    assert_eq!(response.status(), 502);
    let broken = eventually_span(&receiver, |s| {
        text(&s.attributes, "gw.api").as_deref() == Some("broken")
    })
    .await;
    assert_eq!(
        broken.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Error as i32)
    );
    assert_eq!(
        value(&broken.attributes, "http.response.status_code"),
        Some(any_value::Value::IntValue(502))
    );
    assert_eq!(broken.name, "GET /broken");

    // authenticated by api-key: the span names the consumer
    let response = get("/keyed/a", &[("x-api-key", "acme-key-0123456789abcdef")])
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let keyed = eventually_span(&receiver, |s| {
        text(&s.attributes, "gw.api").as_deref() == Some("keyed")
    })
    .await;
    assert_eq!(
        text(&keyed.attributes, "gw.consumer").as_deref(),
        Some("acme")
    );

    // the resource, the vendor header; the unsampled trace was never exported (spans are
    // exported in order, and later ones have arrived)
    let received = receiver.received.lock().unwrap().clone();
    let (headers, message) = &received[0];
    assert_eq!(headers["x-otlp-key"], SECRET);
    let resource = &message.resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(
        text(resource, "service.name").as_deref(),
        Some("edge-gateway")
    );
    assert_eq!(
        text(resource, "service.instance.id").as_deref(),
        Some("edge")
    );
    assert!(text(resource, "service.version").is_some());
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| hex(&s.trace_id) == UNSAMPLED_TRACE)
    );
    // the exporter counts a batch once it has read the receiver's answer: wait until it has
    // counted every span the receiver got (no traffic is under way), so that no answer is
    // still in flight when the receiver goes
    let exported = std::cell::Cell::new(0u64);
    eventually(
        "every span the receiver got counted as exported",
        Duration::from_secs(20),
        || {
            // distinct spans: a batch whose answer was lost may arrive twice
            let got = receiver
                .spans()
                .iter()
                .map(|s| s.span_id.clone())
                .collect::<std::collections::HashSet<_>>()
                .len() as u64;
            let exported = &exported;
            async move {
                let counted = metric(status, "gw_otel_spans_exported_total")
                    .await
                    .unwrap_or(0);
                exported.set(counted);
                counted == got
            }
        },
    )
    .await;
    assert!(exported.get() >= 4, "{}", exported.get());

    // the receiver goes away: traffic goes on, and the lost batches are counted
    drop(receiver);
    let dropped = |status| async move {
        metric::<u64>(
            status,
            "gw_otel_spans_dropped_total{reason=\"export_failed\"}",
        )
        .await
        .unwrap_or(0)
    };
    assert_eq!(dropped(status).await, 0);
    eventually(
        "spans dropped for a failed export",
        Duration::from_secs(20),
        || async {
            let response = get("/orders/items/9", &[]).await.unwrap();
            assert_eq!(response.status(), 200);
            dropped(status).await > 0
        },
    )
    .await;
    // the counter goes up before the line is written, and the line comes through a reader
    eventually("the failure logged", Duration::from_secs(20), || {
        std::future::ready(runtime.logged("trace export failed"))
    })
    .await;
    runtime.terminate();
    assert!(!runtime.log().contains(SECRET), "a header value was logged");
}

/// The first exported span that `matches`, waiting for it.
async fn eventually_span(receiver: &Receiver, matches: impl Fn(&Span) -> bool) -> Span {
    let mut found = None;
    eventually("a matching span", Duration::from_secs(20), || {
        found = receiver.spans().into_iter().find(|s| matches(s));
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap()
}
