use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, status};
use prost::Message as _;
use tokio::net::TcpListener;

use super::*;
use crate::extensions::{ConnInfo, Consumer, Exchange};
use crate::metrics::ProxyMetrics;
use crate::model::Format;
use crate::policy::PolicyRegistry;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PARENT_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

fn config(endpoint: &str) -> OtelConfig {
    OtelConfig::new(endpoint).unwrap()
}

fn api(operations: &str, upstream: &str) -> Arc<ApiDefinition> {
    let doc = format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: orders}}\nspec:\n  context: /orders/v1\n  upstream:\n    endpoints: [{{url: '{upstream}'}}]\n    timeouts: {{request: 2s}}\n{operations}"
    );
    Arc::new(ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap())
}

fn request(method: &str, uri: &str, traceparent: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com:8080")
        .header("tracestate", "vendor=1")
        .body(crate::body::boxed(Full::new(Bytes::new())))
        .unwrap();
    if let Some(value) = traceparent {
        request
            .headers_mut()
            .insert("traceparent", HeaderValue::from_str(value).unwrap());
    }
    request.extensions_mut().insert(ConnInfo {
        peer: "192.0.2.7:40000".parse().unwrap(),
        secure: true,
    });
    request
}

fn text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn header(request: &Request<Body>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// An API without operations (its upstream a closed port), and its route's label.
fn plain_api() -> (Arc<ApiDefinition>, Arc<str>) {
    (api("", "http://127.0.0.1:9"), Arc::from("*"))
}

/// A `GET /orders/v1/a` that gets a 200 within its span: the request as the upstream gets it.
fn served(tracing: &Tracing, traceparent: Option<&str>) -> Request<Body> {
    let (api, op) = plain_api();
    let mut request = request("GET", "/orders/v1/a", traceparent);
    tracing
        .span(&mut request, &api, &op, Instant::now())
        .end(StatusCode::OK);
    request
}

/// A tracer whose queue the test reads.
fn tracer(ratio: f64, capacity: usize) -> (Tracing, mpsc::Receiver<SpanRecord>, Registry) {
    let mut registry = Registry::default();
    let mut config = config("http://127.0.0.1:4318");
    config.sample_ratio = ratio;
    config.queue_capacity = capacity;
    let (tracing, queue) = Tracing::with_queue(&config, OtelMetrics::register(&mut registry));
    (tracing, queue, registry)
}

#[test]
fn the_upstream_gets_the_gateways_span_as_parent_and_sampling_follows_the_client() {
    let (tracing, mut queue, _) = tracer(0.0, 16);

    // sampled by the client: recorded, whatever the ratio
    let sampled = served(&tracing, Some(PARENT));
    let sent = header(&sampled, "traceparent").unwrap();
    let record = queue.try_recv().expect("a sampled span is queued");
    let span = record.to_proto();
    assert_eq!(&sent[..36], &PARENT[..36], "same version and trace id");
    assert_eq!(&sent[52..], "-01");
    assert_eq!(
        sent[36..52],
        hex(&span.span_id),
        "the upstream's parent is the gateway's span"
    );
    assert_ne!(&sent[36..52], &PARENT[36..52]);
    assert_eq!(hex(&span.trace_id), PARENT[3..35]);
    assert_eq!(hex(&span.parent_span_id), PARENT[36..52]);
    assert_eq!(span.trace_state, "vendor=1");
    assert_eq!(header(&sampled, "tracestate").as_deref(), Some("vendor=1"));
    // W3C flags, and a remote parent
    assert_eq!(span.flags, 0x01 | 0x100 | 0x200);

    // not sampled by the client: passed on as unsampled, nothing recorded, even at ratio 1
    let (tracing, mut queue, _) = tracer(1.0, 16);
    let unsampled = served(&tracing, Some(PARENT_UNSAMPLED));
    let sent = header(&unsampled, "traceparent").unwrap();
    assert_eq!(&sent[..36], &PARENT[..36]);
    assert_ne!(&sent[36..52], &PARENT[36..52]);
    assert!(sent.ends_with("-00"), "{sent}");
    assert!(queue.try_recv().is_err());

    // no traceparent (or an invalid one): a new trace, sampled by the ratio; its tracestate goes
    for (ratio, recorded) in [(1.0, true), (0.0, false)] {
        let (tracing, mut queue, _) = tracer(ratio, 16);
        for traceparent in [None, Some("00-zz-00f067aa0ba902b7-01")] {
            let fresh = served(&tracing, traceparent);
            let sent = header(&fresh, "traceparent").unwrap();
            let parsed = TraceParent::parse(sent.as_bytes()).expect("valid");
            assert_ne!(&sent[3..35], &PARENT[3..35]);
            assert_eq!(parsed.sampled(), recorded);
            assert!(header(&fresh, "tracestate").is_none());
            match queue.try_recv() {
                Ok(record) => {
                    assert!(recorded);
                    let span = record.to_proto();
                    assert!(span.parent_span_id.is_empty());
                    assert_eq!(span.trace_state, "");
                    assert_eq!(hex(&span.span_id), sent[36..52]);
                    assert_eq!(span.flags, 0x01 | 0x100, "a root span");
                }
                Err(_) => assert!(!recorded),
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[test]
fn the_export_needs_a_runtime_and_a_valid_config() {
    let mut registry = Registry::default();
    let metrics = OtelMetrics::register(&mut registry);
    let outside = Tracing::start(&config("http://127.0.0.1:4318"), metrics.clone());
    assert!(matches!(outside, Err(OtelError::Setting(_))));
    let mut invalid = config("http://127.0.0.1:4318");
    invalid.sample_ratio = 2.0;
    assert_eq!(
        Tracing::start(&invalid, metrics).unwrap_err(),
        OtelError::SampleRatio(2.0)
    );
}

#[test]
fn the_ratio_samples_new_traces_by_their_id() {
    let (half, _, _) = tracer(0.5, 1);
    let (all, _, _) = tracer(1.0, 1);
    let (none, _, _) = tracer(0.0, 1);
    // the decision is the trace id's: its low 63 bits against 2^63 * ratio
    assert!(half.samples(0));
    assert!(half.samples((1u128 << 62) - 1 + (1 << 100)));
    assert!(!half.samples(1u128 << 63));
    assert!(all.samples(u128::MAX));
    assert!(!none.samples(0));
    // and about the ratio of random ids
    let sampled = (0..20_000)
        .filter(|_| half.samples(rand::random::<u128>()))
        .count();
    assert!((9_000..11_000).contains(&sampled), "{sampled} of 20000");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (tracing, mut queue, registry) = tracer(1.0, 2);
    for _ in 0..5 {
        served(&tracing, None);
    }
    let out = text(&registry);
    assert!(
        out.contains("gw_otel_spans_dropped_total{reason=\"queue_full\"} 3"),
        "{out}"
    );
    assert!(out.contains("gw_otel_spans_dropped_total{reason=\"export_failed\"} 0"));
    assert!(queue.try_recv().is_ok() && queue.try_recv().is_ok());
    // once the export has stopped, spans that end are dropped as such
    queue.close();
    served(&tracing, None);
    let out = text(&registry);
    assert!(
        out.contains("gw_otel_spans_dropped_total{reason=\"shutdown\"} 1"),
        "{out}"
    );
}

#[test]
fn spans_carry_the_http_and_gateway_attributes() {
    let (tracing, mut queue, _) = tracer(1.0, 16);
    let api = api(
        "  operations:\n    - {method: GET, path: '/items/{id}'}\n",
        "http://127.0.0.1:9",
    );
    let op: Arc<str> = Arc::from("GET /items/{id}");
    let mut r = request("GET", "/orders/v1/items/42?key=s3cr3t", Some(PARENT));
    // an authentication policy's exchange, and the consumer it found
    r.extensions_mut()
        .insert(Arc::new(Exchange::new(Arc::clone(&op))));
    // received a second ago (by the monotonic clock)
    let received = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
    let span = tracing.span(&mut r, &api, &op, received);
    crate::policy::authenticate(
        &mut r,
        Consumer {
            name: Arc::from("acme"),
            groups: Arc::from(Vec::new()),
            credential: None,
        },
    );
    span.end(StatusCode::BAD_GATEWAY);
    let span = queue.try_recv().unwrap().to_proto();
    assert_eq!(span.name, "GET /orders/v1/items/{id}");
    assert_eq!(span.kind, 2, "SERVER");
    let attr = |key| string_attribute(&span, key);
    assert_eq!(attr("http.request.method"), Some("GET"));
    assert_eq!(attr("url.path"), Some("/orders/v1/items/42"));
    assert_eq!(attr("url.scheme"), Some("https"));
    assert_eq!(attr("server.address"), Some("api.example.com"));
    assert_eq!(attr("client.address"), Some("192.0.2.7"));
    assert_eq!(attr("http.route"), Some("/orders/v1/items/{id}"));
    assert_eq!(attr("gw.api"), Some("orders"));
    assert_eq!(attr("gw.operation"), Some("GET /items/{id}"));
    assert_eq!(attr("gw.consumer"), Some("acme"));
    assert_eq!(attr("error.type"), Some("502"));
    assert_eq!(
        attribute(&span, "http.response.status_code"),
        Some(&any_value::Value::IntValue(502))
    );
    // no upstream answered; no query anywhere
    assert_eq!(attr("gw.upstream.endpoint"), None);
    assert!(!format!("{span:?}").contains("s3cr3t"));
    let status = span.status.unwrap();
    assert_eq!(status.code, status::StatusCode::Error as i32);
    // the span lasts from when the request was received: its duration is the monotonic
    // clock's; its start is the wall clock's, so only checked to be about a second ago
    // (give or take a minute, in case the wall clock is stepped meanwhile)
    let lasted = span.end_time_unix_nano - span.start_time_unix_nano;
    assert!(lasted >= 1_000_000_000, "{lasted}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let start = Duration::from_nanos(span.start_time_unix_nano);
    assert!(
        start.abs_diff(now) < Duration::from_secs(61),
        "{start:?} {now:?}"
    );

    // a 4xx is not the server's error; an unknown method is _OTHER; no operation, no
    // consumer: no such attributes; the span gets an exchange of its own
    let op: Arc<str> = Arc::from("*");
    let mut r = request("PURGE", "/orders/v1/x", None);
    tracing
        .span(&mut r, &api, &op, Instant::now())
        .end(StatusCode::NOT_FOUND);
    assert!(r.extensions().get::<Arc<Exchange>>().is_some());
    let span = queue.try_recv().unwrap().to_proto();
    assert_eq!(span.name, "HTTP /orders/v1");
    let attr = |key| string_attribute(&span, key);
    assert_eq!(attr("http.request.method"), Some("_OTHER"));
    assert_eq!(attr("http.request.method_original"), Some("PURGE"));
    for absent in ["gw.operation", "gw.consumer", "error.type"] {
        assert_eq!(attr(absent), None, "{absent}");
    }
    assert_eq!(span.status.unwrap().code, status::StatusCode::Unset as i32);

    // a span whose request was dropped before its response: cancelled, no status code
    let mut r = request("GET", "/orders/v1/x", None);
    drop(tracing.span(&mut r, &api, &op, Instant::now()));
    let span = queue.try_recv().unwrap().to_proto();
    assert_eq!(string_attribute(&span, "error.type"), Some("cancelled"));
    assert!(attribute(&span, "http.response.status_code").is_none());
    assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
}

/// An upstream that answers with the `traceparent` it received.
async fn traceparent_echo() -> SocketAddr {
    serve(|request| {
        let seen = request
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (StatusCode::OK, Bytes::from(seen))
    })
    .await
}

/// A loopback HTTP/1.1 server answering with `answer`.
async fn serve<F>(answer: F) -> SocketAddr
where
    F: Fn(Request<Bytes>) -> (StatusCode, Bytes) + Send + Sync + Clone + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let (status, text) = answer(Request::from_parts(parts, body));
                        let mut response = http::Response::new(Full::new(text));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A collector that keeps the requests it receives, and answers `status`.
async fn collector(status: StatusCode) -> (SocketAddr, Arc<Mutex<Vec<Request<Bytes>>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&received);
    let addr = serve(move |request| {
        store.lock().unwrap().push(request);
        (status, Bytes::new())
    })
    .await;
    (addr, received)
}

fn spans_of(requests: &[Request<Bytes>]) -> Vec<Vec<Span>> {
    requests
        .iter()
        .map(|r| {
            let message = ExportTraceServiceRequest::decode(r.body().clone()).unwrap();
            message.resource_spans[0].scope_spans[0].spans.clone()
        })
        .collect()
}

/// A loopback address where connections are refused: the socket holding its port (bound,
/// never listening) and the address.
fn refused_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A collector that reads each request, keeps it, and holds its answer until `release`
/// turns true (a 200 then), or forever.
async fn holding_collector() -> (
    SocketAddr,
    Arc<Mutex<Vec<Request<Bytes>>>>,
    tokio::sync::watch::Sender<bool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let (release, released) = tokio::sync::watch::channel(false);
    let store = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (store, released) = (Arc::clone(&store), released.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (store, mut released) = (Arc::clone(&store), released.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        store.lock().unwrap().push(Request::from_parts(parts, body));
                        if released.wait_for(|released| *released).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received, release)
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_gateway_exports_a_span_per_request_in_batches() {
    let (listening, received) = collector(StatusCode::OK).await;
    let upstream = traceparent_echo().await;
    let mut registry = Registry::default();
    let mut settings = config(&format!("http://{listening}/base/"));
    settings.batch_interval = Duration::from_millis(50);
    settings.max_batch = 2;
    settings.service_instance_id = "node-1".to_string();
    settings
        .headers
        .push(OtelHeader::parse("x-api-key=s3cr3t").unwrap());
    let tracing = Tracing::start(&settings, OtelMetrics::register(&mut registry)).unwrap();
    let gateway = crate::Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered())
        .with_tracing(tracing.clone());
    gateway
        .apply(1, [api("", &format!("http://{upstream}"))])
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        let request = Request::builder()
            .uri("/orders/v1/a")
            .header("traceparent", PARENT)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let conn = ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            secure: false,
        };
        let response = gateway.handle(request, conn).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        seen.push(String::from_utf8(body.to_vec()).unwrap());
    }
    eventually("5 spans exported", || {
        spans_of(&received.lock().unwrap()).concat().len() == 5
    })
    .await;
    let requests: Vec<Request<Bytes>> = received.lock().unwrap().drain(..).collect();
    let first = &requests[0];
    assert_eq!(first.uri().path(), "/base/v1/traces");
    assert_eq!(first.method(), http::Method::POST);
    assert_eq!(first.headers()["content-type"], "application/x-protobuf");
    assert_eq!(first.headers()["x-api-key"], "s3cr3t");
    let batches = spans_of(&requests);
    assert!(batches.iter().all(|b| b.len() <= 2), "batches of at most 2");
    let message = ExportTraceServiceRequest::decode(first.body().clone()).unwrap();
    let resource = message.resource_spans[0].resource.as_ref().unwrap();
    let resource: Vec<(String, String)> = resource
        .attributes
        .iter()
        .map(
            |kv| match kv.value.as_ref().unwrap().value.as_ref().unwrap() {
                any_value::Value::StringValue(s) => (kv.key.clone(), s.clone()),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert!(resource.contains(&("service.name".into(), "gw-runtime".into())));
    assert!(resource.contains(&("service.instance.id".into(), "node-1".into())));
    // each upstream request's parent is one exported span
    let spans = batches.concat();
    for sent in &seen {
        assert!(
            spans.iter().any(|s| hex(&s.span_id) == sent[36..52]),
            "{sent}"
        );
    }
    let endpoint = format!("http://{upstream}");
    assert!(
        spans
            .iter()
            .all(|s| string_attribute(s, "gw.upstream.endpoint") == Some(endpoint.as_str()))
    );
    tracing.shutdown().await;
    assert!(text(&registry).contains("gw_otel_spans_exported_total 5"));
}

#[tokio::test]
async fn shutdown_flushes_and_failures_are_counted() {
    // a long interval: only the final flush sends
    let (listening, received) = collector(StatusCode::OK).await;
    let mut registry = Registry::default();
    let mut settings = config(&format!("http://{listening}"));
    settings.batch_interval = Duration::from_hours(1);
    let tracing = Tracing::start(&settings, OtelMetrics::register(&mut registry)).unwrap();
    for _ in 0..3 {
        served(&tracing, None);
    }
    tracing.shutdown().await;
    assert_eq!(spans_of(&received.lock().unwrap()).concat().len(), 3);
    assert!(text(&registry).contains("gw_otel_spans_exported_total 3"));
    // stopped: later spans are dropped as such
    served(&tracing, None);
    assert!(text(&registry).contains("gw_otel_spans_dropped_total{reason=\"shutdown\"} 1"));

    // a collector that refuses, and one that is not there: the batches are dropped and counted
    let (refusing, _) = collector(StatusCode::SERVICE_UNAVAILABLE).await;
    // a port held by a socket that is bound but not listening: a connection is refused,
    // and no other process can take the port meanwhile
    let (_held, gone) = refused_port();
    for endpoint in [refusing, gone] {
        let mut registry = Registry::default();
        let mut settings = config(&format!("http://{endpoint}"));
        settings.batch_interval = Duration::from_millis(20);
        let tracing = Tracing::start(&settings, OtelMetrics::register(&mut registry)).unwrap();
        served(&tracing, None);
        eventually("the failed export counted", || {
            text(&registry).contains("gw_otel_spans_dropped_total{reason=\"export_failed\"} 1")
        })
        .await;
        assert!(text(&registry).contains("gw_otel_spans_exported_total 0"));
        tracing.shutdown().await;
    }
}

/// The export counters: (exported, dropped by reason in [`DropReason::ALL`]'s order).
fn counts(registry: &Registry) -> (u64, [u64; 4]) {
    let out = text(registry);
    let value = |prefix: &str| -> u64 {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
    };
    let dropped = DropReason::ALL.map(|reason| {
        value(&format!(
            "gw_otel_spans_dropped_total{{reason=\"{}\"}}",
            reason.label()
        ))
    });
    (value("gw_otel_spans_exported_total "), dropped)
}

#[tokio::test]
async fn a_shutdown_during_an_export_ends_by_its_deadline_and_counts_every_span() {
    const SHUTDOWN: Duration = Duration::from_millis(500);
    // the shutdown's timeout, the 100ms the task has to count, and room for a busy CI
    // machine: far below the export timeout (30 s), which shutdown used to wait for
    const BY: Duration = Duration::from_secs(5);
    for answers in [false, true] {
        let (listening, received, release) = holding_collector().await;
        let mut registry = Registry::default();
        let mut settings = config(&format!("http://{listening}"));
        settings.batch_interval = Duration::from_millis(20);
        settings.export_timeout = Duration::from_secs(30);
        settings.shutdown_timeout = SHUTDOWN;
        let tracing = Tracing::start(&settings, OtelMetrics::register(&mut registry)).unwrap();
        served(&tracing, None);
        eventually("an export under way", || {
            received.lock().unwrap().len() == 1
        })
        .await;
        // queued behind the export that waits for its answer
        for _ in 0..3 {
            served(&tracing, None);
        }
        let started = std::time::Instant::now();
        let stopping = tokio::spawn({
            let tracing = tracing.clone();
            async move { tracing.shutdown().await }
        });
        if answers {
            // the collector answers once the shutdown is under way: the batch counts, and
            // the queued spans go out in the time left
            tokio::task::yield_now().await;
            release.send_replace(true);
        }
        stopping.await.unwrap();
        let took = started.elapsed();
        assert!(took < BY, "the shutdown took {took:?}");
        let (exported, dropped) = counts(&registry);
        let [queue_full, export_failed, rejected, shutdown] = dropped;
        assert_eq!(queue_full + export_failed + rejected, 0, "{dropped:?}");
        assert_eq!(
            exported + shutdown,
            4,
            "no span vanishes: {exported} {dropped:?}"
        );
        if answers {
            assert_eq!(exported, 4, "{dropped:?}");
        } else {
            // the batch under way was cut short at the deadline, and the rest is counted
            assert_eq!(shutdown, 4);
        }
        drop(release);
    }
}

#[tokio::test]
async fn an_export_cut_short_by_the_deadline_reports_the_time_it_had() {
    let (listening, received, _release) = holding_collector().await;
    let mut registry = Registry::default();
    let mut settings = config(&format!("http://{listening}"));
    settings.export_timeout = Duration::from_secs(30);
    let mut exporter =
        export::Exporter::new(&settings, OtelMetrics::register(&mut registry)).unwrap();
    let (tracing, mut queue, _) = tracer(1.0, 4);
    served(&tracing, None);
    let mut batch = vec![queue.try_recv().unwrap()];
    let allowed = Duration::from_millis(300);
    let mut stop = export::Stop::By(tokio::time::Instant::now() + allowed);
    let error = exporter.export(&mut batch, &mut stop).await.unwrap_err();
    assert_eq!(received.lock().unwrap().len(), 1, "the batch was sent");
    match error {
        export::ExportError::Timeout(had) => {
            assert!(had > Duration::ZERO && had <= allowed, "{had:?}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(counts(&registry), (0, [0, 0, 0, 1]), "dropped at shutdown");
}
