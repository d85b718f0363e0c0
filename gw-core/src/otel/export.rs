//! The export task: takes finished spans from the queue, batches them (up to the batch size,
//! or what has arrived when the batch interval ticks) and POSTs each batch to the
//! collector as an OTLP `ExportTraceServiceRequest` in protobuf, on a kept-alive
//! connection.
//!
//! A batch that fails (no connection, a timeout, a status other than 2xx) is dropped and
//! counted, never retried: the next one goes out on time. The one exception: a batch whose
//! kept-alive connection turns out to be closed is sent once more on a new connection; if
//! the collector had received it and only its answer was lost, it gets the batch twice.
//! Failures are logged when they start, at most once a minute while they last, and when
//! they end; logs show the endpoint's scheme, host and path only, never a header.
//!
//! A stop (shutdown) is seen even while a batch is out: that export goes on until its
//! answer, its own timeout or the stop's deadline, whichever comes first, and then what is
//! queued goes out by the deadline. Spans that cannot go by then are counted as dropped at
//! shutdown, the batch cut short included.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::span::{SpanRecord, string};
use super::{DropReason, OtelConfig, OtelError, OtelHeader, OtelMetrics};
use crate::http_client::{self, ClientError, Connection, Target};

/// The largest collector answer read (an `ExportTraceServiceResponse`).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// While exports keep failing, at most one log line per this.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_mins(1);
const PROTOBUF: HeaderValue = HeaderValue::from_static("application/x-protobuf");

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the export request could not be built: {0}")]
    Request(#[source] http::Error),
    #[error("the collector answered {0}")]
    Status(StatusCode),
    /// No answer within the time allowed: the export timeout, or less when the shutdown
    /// deadline came first.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends batches to the collector.
pub(super) struct Exporter {
    target: Target,
    headers: Vec<OtelHeader>,
    user_agent: HeaderValue,
    resource: Resource,
    scope: InstrumentationScope,
    timeout: Duration,
    /// Kept between batches while the collector keeps it open.
    connection: Option<Connection<Full<Bytes>>>,
    metrics: OtelMetrics,
    failures: FailureLog,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("target", &self.target)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    pub(super) fn new(config: &OtelConfig, metrics: OtelMetrics) -> Result<Self, OtelError> {
        let target = Target::parse(&config.traces_url()).map_err(OtelError::Endpoint)?;
        let mut resource = vec![
            string("service.name", &config.service_name),
            string("service.version", &config.service_version),
        ];
        if !config.service_instance_id.is_empty() {
            resource.push(string("service.instance.id", &config.service_instance_id));
        }
        Ok(Self {
            target,
            headers: config.headers.clone(),
            user_agent: HeaderValue::from_static(concat!("gw/", env!("CARGO_PKG_VERSION"))),
            resource: Resource {
                attributes: resource,
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: "gw".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..InstrumentationScope::default()
            },
            timeout: config.export_timeout,
            connection: None,
            metrics,
            failures: FailureLog::default(),
        })
    }

    /// Where spans go, as logs show it (`scheme://authority/path`).
    pub(super) fn endpoint(&self) -> &str {
        self.target.shown()
    }

    /// Sends `batch` (emptied) within the export timeout, or by the stop's deadline if that
    /// is sooner (a stop that arrives meanwhile counts too), and counts the outcome: the
    /// error, if the batch was not sent.
    pub(super) async fn export(
        &mut self,
        batch: &mut Vec<SpanRecord>,
        stop: &mut Stop,
    ) -> Result<(), ExportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len() as u64;
        let body = self.encode(batch);
        let started = Instant::now();
        let timeout_at = started + self.timeout;
        // (the result, and whether the shutdown deadline cut the export short)
        let (result, cut_short) = {
            let post = self.post(body);
            tokio::pin!(post);
            loop {
                let until = stop.deadline().map_or(timeout_at, |d| d.min(timeout_at));
                tokio::select! {
                    biased;
                    result = &mut post => break (result, false),
                    () = tokio::time::sleep_until(until) => {
                        let allowed = until.saturating_duration_since(started);
                        break (Err(ExportError::Timeout(allowed)), until < timeout_at);
                    }
                    // the export goes on, now bounded by the stop's deadline too
                    _ = stop.stopped() => {}
                }
            }
        };
        match result {
            Ok(rejected) => {
                let rejected = rejected.min(count);
                self.metrics.exported(count - rejected);
                if rejected > 0 {
                    self.metrics.dropped(DropReason::Rejected, rejected);
                }
                self.failures.succeeded(self.target.shown());
                Ok(())
            }
            Err(error) => {
                if matches!(error, ExportError::Timeout(_)) {
                    // the connection may be mid-exchange
                    self.connection = None;
                }
                if cut_short {
                    self.metrics.dropped(DropReason::Shutdown, count);
                    tracing::warn!(
                        endpoint = self.target.shown(),
                        error = %crate::error::chain(&error),
                        spans = count,
                        "the trace export was cut short by the shutdown deadline; the batch is dropped"
                    );
                } else {
                    self.metrics.dropped(DropReason::ExportFailed, count);
                    self.failures.failed(self.target.shown(), &error, count);
                }
                Err(error)
            }
        }
    }

    /// The OTLP message of a batch (emptied).
    fn encode(&self, batch: &mut Vec<SpanRecord>) -> Bytes {
        let spans = batch.drain(..).map(|record| record.to_proto()).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        Bytes::from(request.encode_to_vec())
    }

    /// POSTs one message; the number of spans the collector rejected.
    async fn post(&mut self, body: Bytes) -> Result<u64, ExportError> {
        let reused = self.connection.as_ref().is_some_and(Connection::is_open);
        match self.attempt(body.clone()).await {
            // a kept-alive connection the collector closed meanwhile: once more on a new one
            Err(ExportError::Client(ClientError::Http(_))) if reused => {
                self.connection = None;
                self.attempt(body).await
            }
            other => other,
        }
    }

    async fn attempt(&mut self, body: Bytes) -> Result<u64, ExportError> {
        let mut connection = match self.connection.take() {
            Some(connection) if connection.is_open() => connection,
            _ => self.target.connect().await?,
        };
        let mut request = self
            .target
            .request(http::Method::POST)
            .header(header::CONTENT_TYPE, PROTOBUF)
            .header(header::USER_AGENT, self.user_agent.clone())
            .body(Full::new(body))
            .map_err(ExportError::Request)?;
        for extra in &self.headers {
            request
                .headers_mut()
                .insert(extra.name().clone(), extra.value().clone());
        }
        let response = connection.send(request).await?;
        let status = response.status();
        // the body is read whatever the status, so that the connection can be kept
        let body = http_client::read_body(response, MAX_RESPONSE_BYTES).await?;
        self.connection = Some(connection);
        if !status.is_success() {
            return Err(ExportError::Status(status));
        }
        let rejected = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|answer| answer.partial_success)
            .map_or(0, |partial| {
                if partial.rejected_spans > 0 || !partial.error_message.is_empty() {
                    tracing::debug!(
                        rejected = partial.rejected_spans,
                        message = %partial.error_message,
                        "the OTLP collector rejected spans"
                    );
                }
                u64::try_from(partial.rejected_spans).unwrap_or(0)
            });
        Ok(rejected)
    }
}

/// Logs export failures when they start, at most once per [`FAILURE_LOG_INTERVAL`] while
/// they last, and their end.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failed batches since the last success, and spans in them.
    failed: (u64, u64),
    last_logged: Option<Instant>,
}

impl FailureLog {
    fn failed(&mut self, endpoint: &str, error: &ExportError, spans: u64) {
        self.failed.0 += 1;
        self.failed.1 += spans;
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL);
        if !due {
            return;
        }
        let error = crate::error::chain(error);
        if self.failed.0 == 1 {
            tracing::warn!(endpoint, %error, spans, "trace export failed; the batch is dropped");
        } else {
            tracing::warn!(
                endpoint,
                %error,
                batches = self.failed.0,
                spans = self.failed.1,
                "trace export still failing; the batches are dropped"
            );
        }
        self.last_logged = Some(Instant::now());
    }

    fn succeeded(&mut self, endpoint: &str) {
        if self.failed.0 > 0 {
            tracing::info!(
                endpoint,
                batches_dropped = self.failed.0,
                spans_dropped = self.failed.1,
                "trace export recovered"
            );
        }
        *self = Self::default();
    }
}

/// The running export task.
#[derive(Debug)]
pub(super) struct Handle {
    stop: oneshot::Sender<Instant>,
    task: tokio::task::JoinHandle<()>,
    shutdown_timeout: Duration,
}

impl Handle {
    /// Asks the task for a final flush and waits for it, at most the shutdown timeout.
    pub(super) async fn stop(self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        if self.stop.send(deadline).is_err() {
            return;
        }
        let abort = self.task.abort_handle();
        // the task ends by the deadline, an export under way included; a moment more, for
        // it to count what it could not send
        let grace = Duration::from_millis(100);
        if tokio::time::timeout_at(deadline + grace, self.task)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!("the final trace export did not finish in time");
        }
    }
}

/// The stop signal, as the export task sees it.
#[derive(Debug)]
pub(super) enum Stop {
    /// Running: the stop's deadline comes here. If the [`Handle`] goes without a stop, the
    /// task stops with this much time for the final flush.
    Running(oneshot::Receiver<Instant>, Duration),
    /// Stopping: everything must be sent by this.
    By(Instant),
}

impl Stop {
    /// The deadline, once stopping.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Stop::Running(..) => None,
            Stop::By(deadline) => Some(*deadline),
        }
    }

    /// Waits for the stop and returns its deadline; never returns once stopping. Cancel-safe.
    async fn stopped(&mut self) -> Instant {
        let deadline = match self {
            Stop::Running(receiver, shutdown_timeout) => {
                let timeout = *shutdown_timeout;
                receiver.await.unwrap_or_else(|_| Instant::now() + timeout)
            }
            Stop::By(_) => return std::future::pending().await,
        };
        *self = Stop::By(deadline);
        deadline
    }
}

/// Starts the export task.
pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    exporter: Exporter,
    queue: mpsc::Receiver<SpanRecord>,
    config: &OtelConfig,
) -> Handle {
    let (stop, stopped) = oneshot::channel();
    let task = runtime.spawn(run(
        exporter,
        queue,
        Stop::Running(stopped, config.shutdown_timeout),
        (config.batch_interval, config.max_batch),
    ));
    Handle {
        stop,
        task,
        shutdown_timeout: config.shutdown_timeout,
    }
}

/// The batching loop: a full batch goes at once, a partial one when the interval ticks;
/// on stop (or when every sender is gone) what is queued goes out by the deadline.
async fn run(
    mut exporter: Exporter,
    mut queue: mpsc::Receiver<SpanRecord>,
    mut stop: Stop,
    (interval, max_batch): (Duration, usize),
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = loop {
        // a stop seen during an export ends the loop too
        if let Some(deadline) = stop.deadline() {
            break deadline;
        }
        let room = max_batch - batch.len();
        tokio::select! {
            biased;
            deadline = stop.stopped() => break deadline,
            received = queue.recv_many(&mut batch, room) => {
                if received == 0 {
                    let Stop::Running(_, shutdown_timeout) = stop else { continue };
                    stop = Stop::By(Instant::now() + shutdown_timeout);
                    continue;
                }
                if batch.len() >= max_batch {
                    let _ = exporter.export(&mut batch, &mut stop).await;
                    ticks.reset();
                }
            }
            _ = ticks.tick() => {
                let _ = exporter.export(&mut batch, &mut stop).await;
            }
        }
    };
    flush(&mut exporter, &mut queue, batch, (deadline, max_batch)).await;
}

/// Sends what is batched and queued, by `deadline`; what cannot go by then is counted as
/// dropped at shutdown.
async fn flush(
    exporter: &mut Exporter,
    queue: &mut mpsc::Receiver<SpanRecord>,
    mut batch: Vec<SpanRecord>,
    (deadline, max_batch): (Instant, usize),
) {
    queue.close();
    let mut stop = Stop::By(deadline);
    loop {
        while batch.len() < max_batch
            && let Ok(record) = queue.try_recv()
        {
            batch.push(record);
        }
        if batch.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let left = (batch.len() + queue.len()) as u64;
            exporter.metrics.dropped(DropReason::Shutdown, left);
            tracing::warn!(
                spans = left,
                "spans still queued at the trace export's shutdown deadline are dropped"
            );
            return;
        }
        let _ = exporter.export(&mut batch, &mut stop).await;
    }
}
