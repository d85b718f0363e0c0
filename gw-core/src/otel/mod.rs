//! OpenTelemetry trace export: one SERVER span per proxied request, sent in batches to an
//! OTLP/HTTP collector (protobuf, `POST {endpoint}/v1/traces`).
//!
//! Off unless a [`Tracing`] is installed on the gateway ([`crate::Gateway::with_tracing`]);
//! then, for each routed request:
//!
//! - the gateway's span gets a new span id; it continues the trace of the client's valid
//!   `traceparent` (the client's span as its parent, its `tracestate` kept: upstream as
//!   sent, on the span within W3C's bounds) or starts a new trace, and the upstream receives
//!   a `traceparent` whose parent-id is the gateway's span, so that the upstream's spans
//!   nest under it;
//! - what a span keeps of the request is bounded (the `tracestate`, the path, an unknown
//!   method, the host: the limits are in `span.rs`), so that a full queue's memory is bounded;
//! - sampling is parent-based: the client's `sampled` flag decides; a new trace is sampled
//!   with [`OtelConfig::sample_ratio`] (by its trace id, so every participant that uses the
//!   same ratio rule agrees); an unsampled span is not recorded and `00` is propagated;
//! - the span ends when the response head is ready (the point `gw_request_duration_seconds`
//!   measures), or when the client leaves before that; the request only pushes the finished
//!   record into a bounded queue (never waiting: a full queue drops the span and counts
//!   it), and a background task turns records into OTLP messages and sends them.
//!
//! This module must never make a request wait on the collector, nor fail one because of it.

mod config;
mod export;
mod span;

use std::sync::Arc;
use std::time::Instant;

use http::Request;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::body::Body;
use crate::model::ApiDefinition;
use crate::trace::TraceParent;

pub use config::{
    DEFAULT_BATCH_INTERVAL, DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_SERVICE_NAME, DEFAULT_SHUTDOWN_TIMEOUT, OtelConfig, OtelError, OtelHeader,
    check_sample_ratio, parse_endpoint, redact_endpoint,
};
use span::SpanRecord;

/// Why spans were dropped, as counted in `gw_otel_spans_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full when the request ended.
    QueueFull = 0,
    /// The export request failed (no connection, timeout, a status other than 2xx).
    ExportFailed = 1,
    /// The collector answered but rejected some spans (an OTLP partial success).
    Rejected = 2,
    /// The span ended after the export had stopped, or the final flush (or an export under
    /// way at shutdown) ran out of time.
    Shutdown = 3,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The export's metrics: spans exported, and spans dropped by reason.
#[derive(Debug, Clone)]
pub struct OtelMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
    /// The counter of each [`DropReason`], in [`DropReason::ALL`]'s order.
    dropped_by: [Counter; 4],
}

impl OtelMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "gw_otel_spans_exported",
            "Spans the OTLP collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "gw_otel_spans_dropped",
            "Spans not exported, by reason: queue_full, export_failed, rejected (by the collector), shutdown",
            metrics.dropped.clone(),
        );
        metrics
    }

    /// Metrics that are counted but exported nowhere.
    pub fn unregistered() -> Self {
        let dropped = Family::<DropLabels, Counter>::default();
        // every reason from the start, at zero, so that a rate() sees the first drop
        let dropped_by = DropReason::ALL.map(|reason| {
            dropped
                .get_or_create(&DropLabels {
                    reason: reason.label(),
                })
                .clone()
        });
        Self {
            exported: Counter::default(),
            dropped,
            dropped_by,
        }
    }

    fn exported(&self, spans: u64) {
        self.exported.inc_by(spans);
    }

    fn dropped(&self, reason: DropReason, spans: u64) {
        self.dropped_by[reason as usize].inc_by(spans);
    }
}

/// The trace export, installed on a gateway with [`crate::Gateway::with_tracing`]: the
/// sampler, the queue of finished spans, and the task that exports them. Clones share all
/// of it.
#[derive(Debug, Clone)]
pub struct Tracing {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// New traces whose trace id's 63 low bits are below this are sampled.
    threshold: u64,
    queue: mpsc::Sender<SpanRecord>,
    metrics: OtelMetrics,
    /// The export task and the way to stop it; taken by the first [`Tracing::shutdown`].
    task: std::sync::Mutex<Option<export::Handle>>,
}

impl Tracing {
    /// Checks `config` and starts the export task on the current Tokio runtime (an error
    /// outside one).
    pub fn start(config: &OtelConfig, metrics: OtelMetrics) -> Result<Self, OtelError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            OtelError::Setting("the export must start inside a Tokio runtime".to_string())
        })?;
        let exporter = export::Exporter::new(config, metrics.clone())?;
        tracing::info!(
            endpoint = exporter.endpoint(),
            sample_ratio = config.sample_ratio,
            "exporting traces (OTLP/HTTP)"
        );
        let (tracing, queue) = Self::with_queue(config, metrics);
        let handle = export::spawn(&runtime, exporter, queue, config);
        *tracing
            .shared
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        Ok(tracing)
    }

    /// The sampler and the queue, without an export task: the receiver gets the spans.
    fn with_queue(config: &OtelConfig, metrics: OtelMetrics) -> (Self, mpsc::Receiver<SpanRecord>) {
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let tracing = Self {
            shared: Arc::new(Shared {
                threshold: sample_threshold(config.sample_ratio),
                queue,
                metrics,
                task: std::sync::Mutex::new(None),
            }),
        };
        (tracing, receiver)
    }

    /// Sends what is queued and stops the export, waiting at most the configured shutdown
    /// timeout (an export under way included: it is cut short at the deadline). What cannot
    /// be sent by then, and spans that end afterwards, are dropped and counted. Later calls
    /// return at once.
    pub async fn shutdown(&self) {
        let handle = self
            .shared
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle.stop().await;
        }
    }

    /// Whether a new trace with this id is sampled.
    fn samples(&self, trace_id: u128) -> bool {
        // the low 64 bits of the id, as the OpenTelemetry SDKs' TraceIdRatioBased
        #[allow(clippy::cast_possible_truncation)]
        let random = (trace_id as u64) >> 1;
        random < self.shared.threshold
    }

    /// Starts the span of a routed request: decides its sampling, and sets the request's
    /// `traceparent` to continue the trace from the gateway's span.
    fn span<'a>(
        &'a self,
        request: &mut Request<Body>,
        api: &Arc<ApiDefinition>,
        operation: &Arc<str>,
        started: Instant,
    ) -> RequestSpan<'a> {
        let headers = request.headers_mut();
        let parent = TraceParent::of(headers);
        let span_id = rand::random::<u64>().max(1);
        let context = match parent {
            Some(parent) => parent.child(span_id, parent.sampled()),
            None => {
                // a tracestate belongs to the trace of its traceparent: with a new trace, it goes
                headers.remove(crate::trace::TRACESTATE);
                let trace_id = rand::random::<u128>().max(1);
                TraceParent {
                    trace_id,
                    parent_id: 0,
                    flags: 0,
                }
                .child(span_id, self.samples(trace_id))
            }
        };
        headers.insert(crate::trace::TRACEPARENT, context.to_header());
        if !context.sampled() {
            return RequestSpan::NONE;
        }
        let record = SpanRecord::start(
            request,
            context,
            parent.map(|p| p.parent_id),
            (Arc::clone(api), Arc::clone(operation)),
            started,
        );
        RequestSpan {
            active: Some((self, Box::new(record))),
        }
    }

    /// Queues a finished span, or drops and counts it when the queue is full.
    fn finish(&self, record: Box<SpanRecord>) {
        match self.shared.queue.try_send(*record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.metrics.dropped(DropReason::QueueFull, 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.metrics.dropped(DropReason::Shutdown, 1);
            }
        }
    }
}

/// The threshold of [`Tracing::samples`] for a ratio from 0 to 1.
fn sample_threshold(ratio: f64) -> u64 {
    // 2^63 * ratio: exact at 0 and 1, and a ratio is at most 1
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let threshold = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
    threshold
}

/// The span of one request while it is served: empty when there is no export or the
/// request is not sampled. [`RequestSpan::end`] records it with the response's status; one
/// dropped before that (the client left) is recorded as cancelled.
#[derive(Debug)]
pub(crate) struct RequestSpan<'a> {
    active: Option<(&'a Tracing, Box<SpanRecord>)>,
}

impl RequestSpan<'_> {
    const NONE: Self = Self { active: None };

    /// Ends the span: the response head is ready with `status`.
    pub(crate) fn end(mut self, status: http::StatusCode) {
        if let Some((tracing, mut record)) = self.active.take() {
            record.end(Some(status));
            tracing.finish(record);
        }
    }
}

impl Drop for RequestSpan<'_> {
    fn drop(&mut self) {
        if let Some((tracing, mut record)) = self.active.take() {
            record.end(None);
            tracing.finish(record);
        }
    }
}

/// The request hook of [`crate::Gateway::handle`], where the route's stack is about to run:
/// with an export, the request's span starts (`route` names its API and operation) and its
/// `traceparent` names the gateway's span; without one, the `traceparent` is only kept or
/// made ([`crate::trace::ensure`]), as before there was an export.
pub(crate) fn begin<'a, 'r>(
    tracing: Option<&'a Tracing>,
    request: &mut Request<Body>,
    started: Instant,
    route: impl FnOnce() -> (&'r Arc<ApiDefinition>, &'r Arc<str>),
) -> RequestSpan<'a> {
    match tracing {
        None => {
            crate::trace::ensure(request.headers_mut());
            RequestSpan::NONE
        }
        Some(tracing) => {
            let (api, operation) = route();
            tracing.span(request, api, operation, started)
        }
    }
}

#[cfg(test)]
mod tests;
