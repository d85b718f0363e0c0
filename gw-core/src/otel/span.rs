//! The record of one request's span, filled on the request path with what is cheap to take
//! (ids, clocks, shared handles), and turned into an OTLP span off the request path, with
//! the names of the OpenTelemetry semantic conventions for HTTP servers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, StatusCode};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, SpanFlags, Status, span, status};

use crate::body::Body;
use crate::extensions::{ConnInfo, Exchange};
use crate::model::ApiDefinition;
use crate::trace::TraceParent;

/// The `error.type` of a span whose client left before its response was ready.
pub(super) const CANCELLED: &str = "cancelled";

/// The longest `tracestate` recorded on a span, in bytes (its lines joined with commas):
/// W3C Trace Context's 512 characters that every participant should propagate. A longer
/// one, or one of more than [`MAX_TRACE_STATE_MEMBERS`], is left off the span (the
/// upstream still gets the client's header).
pub(super) const MAX_TRACE_STATE_BYTES: usize = 512;
/// The most list members of a valid `tracestate` (W3C Trace Context).
pub(super) const MAX_TRACE_STATE_MEMBERS: usize = 32;
/// The longest `url.path` recorded, in bytes; a longer path is cut there.
pub(super) const MAX_PATH_BYTES: usize = 1024;
/// The longest `http.request.method_original` recorded, in bytes; a longer method is cut
/// there.
pub(super) const MAX_METHOD_BYTES: usize = 64;
/// The longest `server.address` recorded, in bytes (a DNS name is at most 253).
pub(super) const MAX_HOST_BYTES: usize = 255;

/// A request's span: started when its route's stack is about to run, ended when the
/// response head is ready.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    /// The trace id, the gateway's span id (as `parent_id`: the parent of the upstream's
    /// spans) and the flags passed on.
    context: TraceParent,
    /// The client's span, when the request came with a valid `traceparent`.
    parent_id: Option<u64>,
    /// The client's `tracestate`, with its `traceparent`, when it is at most
    /// [`MAX_TRACE_STATE_BYTES`] and [`MAX_TRACE_STATE_MEMBERS`].
    trace_state: Option<String>,
    start_unix_nanos: u64,
    started: Instant,
    duration: Duration,
    /// The method's name when the semantic conventions know it; else the method as sent,
    /// at most [`MAX_METHOD_BYTES`].
    method: Result<&'static str, String>,
    /// The path as routed (normalized), at most [`MAX_PATH_BYTES`]; never the query, which
    /// may carry a credential.
    path: String,
    secure: bool,
    /// The request's host without its port, nor the brackets of an IPv6 address; at most
    /// [`MAX_HOST_BYTES`].
    host: Option<String>,
    client: Option<IpAddr>,
    api: Arc<ApiDefinition>,
    /// `GET /items/{id}`, or `*` for an API without operations.
    operation: Arc<str>,
    /// Where the stack records the consumer and the endpoint.
    exchange: Arc<Exchange>,
    /// `None` while the request runs, and for one whose client left.
    status: Option<StatusCode>,
}

impl SpanRecord {
    /// The record of a request whose stack is about to run. `started` is when the gateway
    /// received it; a request without an [`Exchange`] gets one, so that the upstream
    /// endpoint is known.
    pub(super) fn start(
        request: &mut Request<Body>,
        context: TraceParent,
        parent_id: Option<u64>,
        (api, operation): (Arc<ApiDefinition>, Arc<str>),
        started: Instant,
    ) -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(started.elapsed());
        let trace_state = parent_id.and_then(|_| trace_state(request.headers()));
        let conn = request.extensions().get::<ConnInfo>().copied();
        let exchange = match request.extensions().get::<Arc<Exchange>>() {
            Some(exchange) => Arc::clone(exchange),
            None => {
                let exchange = Arc::new(Exchange::new(Arc::clone(&operation)));
                request.extensions_mut().insert(Arc::clone(&exchange));
                exchange
            }
        };
        Self {
            context,
            parent_id,
            trace_state,
            start_unix_nanos: nanos(since_epoch),
            started,
            duration: Duration::ZERO,
            method: known_method(request.method())
                .ok_or_else(|| bounded(request.method().as_str(), MAX_METHOD_BYTES).to_string()),
            path: bounded(request.uri().path(), MAX_PATH_BYTES).to_string(),
            secure: conn.is_some_and(|c| c.secure),
            host: crate::router::request_host(request).map(|host| server_address(&host)),
            client: conn.map(|c| c.peer.ip()),
            api,
            operation,
            exchange,
            status: None,
        }
    }

    /// Ends the span now, with the response's status (`None`: the client left first).
    pub(super) fn end(&mut self, status: Option<StatusCode>) {
        self.duration = self.started.elapsed();
        self.status = status;
    }

    /// The OTLP span.
    pub(super) fn to_proto(&self) -> Span {
        let route = http_route(&self.api.spec.context, &self.operation);
        let known = self.method.as_ref().ok().copied();
        let mut attributes = Vec::with_capacity(14);
        let mut text = |key: &str, value: &str| attributes.push(string(key, value));
        text("http.request.method", known.unwrap_or("_OTHER"));
        if let Err(original) = &self.method {
            text("http.request.method_original", original);
        }
        text("url.path", &self.path);
        text("url.scheme", if self.secure { "https" } else { "http" });
        if let Some(host) = &self.host {
            text("server.address", host);
        }
        if let Some(client) = self.client {
            text("client.address", &client.to_string());
        }
        text("http.route", &route);
        text("gw.api", &self.api.metadata.name);
        if &*self.operation != crate::metrics::ANY_OPERATION {
            text("gw.operation", &self.operation);
        }
        if let Some(consumer) = self.exchange.consumer() {
            text("gw.consumer", &consumer.name);
        }
        if let Some(endpoint) = self.exchange.endpoint() {
            text("gw.upstream.endpoint", endpoint);
        }
        let error = match self.status {
            Some(status) if status.is_server_error() => Some(status.as_str().to_string()),
            Some(_) => None,
            None => Some(CANCELLED.to_string()),
        };
        if let Some(error) = &error {
            text("error.type", error);
        }
        if let Some(status) = self.status {
            attributes.push(KeyValue {
                key: "http.response.status_code".to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i64::from(status.as_u16()))),
                }),
                ..KeyValue::default()
            });
        }
        let remote = if self.parent_id.is_some() {
            SpanFlags::ContextIsRemoteMask as u32
        } else {
            0
        };
        Span {
            trace_id: self.context.trace_id.to_be_bytes().to_vec(),
            span_id: self.context.parent_id.to_be_bytes().to_vec(),
            trace_state: self.trace_state.clone().unwrap_or_default(),
            parent_span_id: self
                .parent_id
                .map(|id| id.to_be_bytes().to_vec())
                .unwrap_or_default(),
            flags: u32::from(self.context.flags)
                | SpanFlags::ContextHasIsRemoteMask as u32
                | remote,
            name: format!("{} {route}", known.unwrap_or("HTTP")),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: self.start_unix_nanos,
            end_time_unix_nano: self.start_unix_nanos.saturating_add(nanos(self.duration)),
            attributes,
            status: Some(span_status(self.status)),
            ..Span::default()
        }
    }
}

/// ERROR for a 5xx and for a request whose client left; else unset (a 4xx is the client's
/// error, not the server's).
fn span_status(status: Option<StatusCode>) -> Status {
    match status {
        Some(status) if status.is_server_error() => Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        },
        Some(_) => Status::default(),
        None => Status {
            code: status::StatusCode::Error as i32,
            message: "the client left before the response was ready".to_string(),
        },
    }
}

/// The route's template under the API's context: `/orders/v1/items/{id}`, or the context for
/// an API without operations.
fn http_route(context: &str, operation: &str) -> String {
    let template = operation.split_once(' ').map_or("/", |(_, path)| path);
    match (context, template) {
        ("/", template) => template.to_string(),
        (context, "/") => context.to_string(),
        (context, template) => format!("{context}{template}"),
    }
}

/// The method's name when the semantic conventions know it (else `_OTHER`).
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

/// The request's `tracestate`, its header lines joined; `None` when it is longer than
/// [`MAX_TRACE_STATE_BYTES`] or has more than [`MAX_TRACE_STATE_MEMBERS`] list members
/// (checked before anything is copied).
fn trace_state(headers: &http::HeaderMap) -> Option<String> {
    let parts = || {
        headers
            .get_all(crate::trace::TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (mut bytes, mut members) = (0usize, 0usize);
    for (i, part) in parts().enumerate() {
        bytes += part.len() + usize::from(i > 0);
        if bytes > MAX_TRACE_STATE_BYTES {
            return None;
        }
        members += part
            .split(',')
            .filter(|member| !member.trim().is_empty())
            .count();
        if members > MAX_TRACE_STATE_MEMBERS {
            return None;
        }
    }
    let mut joined = String::with_capacity(bytes);
    for part in parts() {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(part);
    }
    (!joined.is_empty()).then_some(joined)
}

/// `server.address`: a host without the brackets of an IPv6 address, at most
/// [`MAX_HOST_BYTES`].
fn server_address(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bounded(host, MAX_HOST_BYTES).to_string()
}

/// `value`, cut to at most `max` bytes (on a character boundary).
fn bounded(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// A string attribute.
pub(super) fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_join_the_context_and_the_template() {
        assert_eq!(
            http_route("/orders/v1", "GET /items/{id}"),
            "/orders/v1/items/{id}"
        );
        assert_eq!(http_route("/", "GET /items/{id}"), "/items/{id}");
        assert_eq!(http_route("/orders/v1", "*"), "/orders/v1");
        assert_eq!(http_route("/orders/v1", "GET /"), "/orders/v1");
        assert_eq!(http_route("/", "*"), "/");
    }

    #[test]
    fn trace_state_lines_are_joined() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(trace_state(&headers), None);
        headers.append("tracestate", "a=1".parse().unwrap());
        headers.append("tracestate", " b=2 ".parse().unwrap());
        assert_eq!(trace_state(&headers).as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn trace_state_is_recorded_only_within_the_w3c_bounds() {
        let of = |lines: &[String]| {
            let mut headers = http::HeaderMap::new();
            for line in lines {
                headers.append("tracestate", line.parse().unwrap());
            }
            trace_state(&headers)
        };
        // 512 bytes, commas included: kept; one more: left off
        let member = |i: usize, len: usize| format!("k{i:02}={}", "v".repeat(len - 4));
        let at_limit: Vec<String> = (0..8)
            .map(|i| member(i, if i == 0 { 64 } else { 63 }))
            .collect();
        let joined = of(&at_limit).unwrap();
        assert_eq!(joined.len(), MAX_TRACE_STATE_BYTES);
        let mut over = at_limit.clone();
        over[0].push('v');
        assert_eq!(of(&over), None);
        // a single huge line is not copied
        assert_eq!(of(&[format!("big={}", "x".repeat(60_000))]), None);
        // at most 32 list members, however short
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=1"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(of(&[members(32)]).is_some());
        assert_eq!(of(&[members(33)]), None);
        assert_eq!(of(&[members(20), members(13)]), None);
    }

    #[test]
    fn client_strings_are_bounded() {
        assert_eq!(server_address("[2001:db8::1]"), "2001:db8::1");
        assert_eq!(server_address("api.example.com"), "api.example.com");
        assert_eq!(bounded("abcdef", 4), "abcd");
        assert_eq!(bounded("ab", 4), "ab");
        assert_eq!(bounded("aé", 2), "a", "cut on a character boundary");

        let method = format!("X{}", "Y".repeat(300));
        let path = format!("/{}", "p".repeat(5000));
        let mut request = Request::builder()
            .method(method.as_str())
            .uri(path.as_str())
            .header("host", "[2001:db8::1]:8443")
            .body(crate::body::boxed(http_body_util::Full::new(
                bytes::Bytes::new(),
            )))
            .unwrap();
        let api = Arc::new(
            ApiDefinition::parse(
                b"apiVersion: gw/v1\nkind: Api\nmetadata: {name: a}\nspec:\n  context: /\n  upstream:\n    endpoints: [{url: 'http://127.0.0.1:9'}]\n",
                crate::model::Format::Yaml,
            )
            .unwrap(),
        );
        let context = TraceParent {
            trace_id: 1,
            parent_id: 2,
            flags: 1,
        };
        let record = SpanRecord::start(
            &mut request,
            context,
            None,
            (api, Arc::from("*")),
            Instant::now(),
        );
        let span = record.to_proto();
        let attr = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        };
        assert_eq!(attr("url.path").unwrap(), path[..MAX_PATH_BYTES]);
        assert_eq!(
            attr("http.request.method_original").unwrap(),
            method[..MAX_METHOD_BYTES]
        );
        assert_eq!(attr("server.address").as_deref(), Some("2001:db8::1"));
    }

    #[test]
    fn known_methods_and_others() {
        assert_eq!(known_method(&Method::PATCH), Some("PATCH"));
        assert_eq!(known_method(&Method::from_bytes(b"PURGE").unwrap()), None);
    }
}
