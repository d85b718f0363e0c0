//! The runtime side: a stream to one controller at a time, resumed on any of them.
//!
//! [`SyncClient::run`] connects to one of its controller addresses (starting at a random one,
//! so that runtimes spread), says Hello with the revision its [`Applier`] serves, applies each
//! Snapshot or Delta through the applier and answers Ack or Nack. When the stream fails, or
//! the controller goes silent for three heartbeat intervals, it moves to the next address
//! after a backoff with full jitter (short after a healthy session, growing while nothing
//! answers).
//!
//! [`SyncClient::run_until`] stops it cleanly: an open stream is ended from the runtime's side
//! (its last message followed by the end of the stream, no error), which is how a runtime says
//! it stops; the controller records it as disconnected at once and ends its side, which the
//! client waits for (at most [`ClientOptions::goodbye_timeout`]) so that the controller has
//! taken note before the process exits.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::proto::config_sync_client::ConfigSyncClient;
use crate::proto::{
    Ack, ControllerMessage, Heartbeat, Hello, Nack, Resource, ResourceRef, RuntimeMessage,
    controller_message, runtime_message,
};
use crate::{MAX_MESSAGE_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SyncToken, unix_millis};

/// Applies configurations received from a controller. Implemented by the runtime.
#[async_trait]
pub trait Applier: Send + Sync + 'static {
    /// The revision currently served (0: none) and the id of the store it came from. Sent
    /// in Hello to resume.
    fn applied(&self) -> (i64, String);

    /// Replaces the whole configuration with that of store `store_id` at `revision`. On
    /// error, the previous one must stay in service.
    async fn apply_snapshot(
        &self,
        revision: i64,
        store_id: &str,
        resources: Vec<Resource>,
    ) -> Result<(), Vec<String>>;

    /// Applies a delta of the store the served configuration came from, whose
    /// `from_revision` is at most the served revision. On error, the previous configuration
    /// must stay in service.
    async fn apply_delta(
        &self,
        revision: i64,
        upserts: Vec<Resource>,
        removals: Vec<ResourceRef>,
    ) -> Result<(), Vec<String>>;
}

/// How the client connects and identifies itself.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Controller addresses (`host:port`, or `http://host:port`, or `https://host:port` with
    /// [`ClientOptions::tls`]); tried in turn.
    pub controllers: Vec<String>,
    /// This runtime's node id.
    pub node_id: String,
    /// The group it serves.
    pub group: String,
    /// Its version.
    pub runtime_version: String,
    /// The policies it can build.
    pub supported_policies: Vec<String>,
    /// Resource kinds the applier can apply (default: APIs, certificates and consumers); the
    /// controller sends no other kind.
    pub supported_kinds: Vec<String>,
    /// Where it serves traffic (informational, shown in the fleet view).
    pub advertise_address: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed from opening the stream to the controller's first answer; a controller
    /// that accepts connections but cannot serve (still loading its state) is left for
    /// another one after it.
    pub handshake_timeout: Duration,
    /// A heartbeat goes to the controller this often; three missed ones from the controller
    /// end the stream.
    pub heartbeat_interval: Duration,
    /// The token controllers require, if they require one.
    pub token: Option<SyncToken>,
    /// TLS to the controllers (see [`crate::tls`]); `None`: plaintext. With TLS, an address
    /// is `host:port` or `https://host:port`, and `host` is the name the controller's
    /// certificate must carry. Each connection takes the configuration current when it is
    /// made.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// When the client stops with a stream open, the longest wait for the controller to end
    /// its side of the stream after the runtime ended its own.
    pub goodbye_timeout: Duration,
    /// First backoff after a failure.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// The start time (Unix milliseconds) that the session epochs of the Hello build on, by
    /// which controllers order a node's sessions (the newest session's record wins); `None`:
    /// the time the client is made. A runtime that keeps state across restarts passes a time
    /// no lower than its previous run's, so that a restart with a clock that went back still
    /// counts as the newer session.
    pub session_start_ms: Option<u64>,
}

impl ClientOptions {
    /// Options with the default timings.
    pub fn new(controllers: Vec<String>, node_id: String, group: String) -> Self {
        Self {
            controllers,
            node_id,
            group,
            runtime_version: String::new(),
            supported_policies: Vec::new(),
            supported_kinds: vec![
                crate::KIND_API.to_string(),
                crate::KIND_CERTIFICATE.to_string(),
                crate::KIND_CONSUMER.to_string(),
            ],
            advertise_address: String::new(),
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            token: None,
            tls: None,
            goodbye_timeout: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            session_start_ms: None,
        }
    }
}

/// What the client is doing, for status pages and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// The controller the stream is open to.
    pub connected_to: Option<String>,
    /// The last connection or protocol error.
    pub last_error: Option<String>,
    /// The last refusal reason from a controller (incompatible runtime).
    pub refused: Option<String>,
    /// Attempts in a row that ended without a working stream (0 once one works): when it
    /// reaches the number of controllers, each has been tried and none answered.
    pub failed_attempts: u32,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("invalid controller address {0:?}")]
    Address(String),
    #[error("cannot connect: {}", causes(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the controller sent nothing for {0:?}")]
    Silent(Duration),
    #[error("the controller refused this runtime: {0}")]
    Refused(String),
    #[error("delta from revision {from} does not apply to revision {applied}; resyncing")]
    DeltaBase { from: i64, applied: i64 },
    #[error(
        "delta of store {got:?} does not apply to a configuration of store {applied:?}; resyncing"
    )]
    DeltaStore { got: String, applied: String },
    #[error(
        "the controller speaks protocol version {0}, which this runtime does not (it speaks \
         {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
    )]
    Protocol(u32),
    #[error("invalid sync token")]
    Token,
    #[error("the outbound stream closed")]
    Closed,
}

/// Checks that the version a controller's configuration message says the stream speaks (0:
/// version 1, from a controller before version negotiation) is one this runtime speaks: a
/// controller picks it in the runtime's range.
fn spoken(version: u32) -> Result<(), SessionError> {
    let version = version.max(1);
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(SessionError::Protocol(version))
    }
}

/// The runtime's sync client; see the module docs.
#[derive(Debug)]
pub struct SyncClient<A> {
    options: ClientOptions,
    applier: Arc<A>,
    status: watch::Sender<ClientStatus>,
    /// When this client started, in milliseconds; with `sessions`, the session epoch.
    started_ms: u64,
    sessions: std::sync::atomic::AtomicU64,
}

impl<A: Applier> SyncClient<A> {
    /// A client that applies through `applier`.
    pub fn new(options: ClientOptions, applier: Arc<A>) -> Self {
        let started_ms = options.session_start_ms.unwrap_or_else(crate::unix_millis);
        Self {
            options,
            applier,
            status: watch::channel(ClientStatus::default()).0,
            started_ms,
            sessions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Follows the client's status.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Runs until the task is dropped or aborted.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Runs until `shutdown` completes, then ends the open stream, if any, as a runtime that
    /// stops does (see the module docs), and returns. A configuration being applied is
    /// applied first.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopping) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            stop.send_replace(true);
            // kept alive, so that the receivers wait for the flag only
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = self.serve(stopping) => {}
            () = signal => {}
        }
    }

    async fn serve(&self, mut stopping: watch::Receiver<bool>) {
        let count = self.options.controllers.len();
        if count == 0 {
            tracing::error!("no controller address configured; the sync client is idle");
            return stopped(&mut stopping).await;
        }
        let mut index = rand::random_range(0..count);
        let mut failures: u32 = 0;
        loop {
            let address = normalize_address(
                &self.options.controllers[index % count],
                self.options.tls.is_some(),
            );
            let mut healthy = false;
            let result = self.session(&address, &mut healthy, &mut stopping).await;
            self.status.send_modify(|s| s.connected_to = None);
            if *stopping.borrow() {
                if let Err(err) = result {
                    tracing::debug!(controller = %address, error = %err, "sync stream ended while stopping");
                }
                return;
            }
            match result {
                Ok(()) => {
                    tracing::info!(controller = %address, "sync stream closed by the controller");
                }
                Err(err) => {
                    tracing::warn!(controller = %address, error = %err, "sync stream failed");
                    self.status.send_modify(|s| {
                        s.last_error = Some(err.to_string());
                        if let SessionError::Refused(reason) = &err {
                            s.refused = Some(reason.clone());
                        }
                    });
                }
            }
            failures = if healthy {
                0
            } else {
                failures.saturating_add(1)
            };
            self.status.send_modify(|s| s.failed_attempts = failures);
            index = index.wrapping_add(1);
            tokio::select! {
                () = tokio::time::sleep(self.backoff(failures)) => {}
                () = stopped(&mut stopping) => return,
            }
        }
    }

    /// Full jitter: a random wait up to `initial * 2^failures`, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self
            .options
            .initial_backoff
            .saturating_mul(1u32 << failures.min(16))
            .min(self.options.max_backoff);
        let millis = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }

    /// One stream to `address`, until it fails, the controller ends it, or `stopping` turns
    /// true (then the stream is ended from this side).
    async fn session(
        &self,
        address: &str,
        healthy: &mut bool,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let (uri, tls) = match &self.options.tls {
            None => (address.to_string(), None),
            Some(tls) => {
                // tonic would do its own TLS for an https URI: the connector does it instead
                let Some(authority) = address.strip_prefix("https://") else {
                    return Err(SessionError::Address(format!(
                        "{address} (sync TLS is on: give https://host:port or host:port)"
                    )));
                };
                (format!("http://{authority}"), Some(tls.current()))
            }
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|_| SessionError::Address(address.to_string()))?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.options.heartbeat_interval)
            .keep_alive_timeout(self.options.heartbeat_interval)
            .keep_alive_while_idle(true);
        let connect = async {
            match tls {
                None => endpoint.connect().await,
                Some(tls) => endpoint.connect_with_connector(tls_connector(tls)).await,
            }
        };
        let channel = tokio::select! {
            channel = connect => channel?,
            () = stopped(stopping) => return Ok(()),
        };
        let mut client =
            ConfigSyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<RuntimeMessage>(8);
        let (applied_revision, store_id) = self.applier.applied();
        let session = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .min(999_999);
        let hello = Hello {
            node_id: self.options.node_id.clone(),
            group: self.options.group.clone(),
            runtime_version: self.options.runtime_version.clone(),
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            applied_revision,
            store_id,
            session_epoch: self
                .started_ms
                .saturating_mul(1_000_000)
                .saturating_add(session),
            supported_policies: self.options.supported_policies.clone(),
            supported_kinds: self.options.supported_kinds.clone(),
            advertise_address: self.options.advertise_address.clone(),
            heartbeat_interval_ms: u32::try_from(self.options.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
        };
        tracing::debug!(controller = %address, applied = hello.applied_revision, "saying hello");
        send(&tx, runtime_message::Message::Hello(hello)).await?;
        let handshake = self.options.handshake_timeout;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.options.token {
            let value = token
                .header_value()
                .parse()
                .map_err(|_| SessionError::Token)?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut inbound = tokio::select! {
            opened = tokio::time::timeout(handshake, client.stream(request)) => {
                opened.map_err(|_| SessionError::Silent(handshake))??.into_inner()
            }
            // no session yet: nothing to end
            () = stopped(stopping) => return Ok(()),
        };

        // Three heartbeat intervals without a word from the controller end the stream; until
        // its first answer, the (shorter) handshake timeout applies.
        let silence = self.options.heartbeat_interval.saturating_mul(3);
        let mut heartbeat = tokio::time::interval(self.options.heartbeat_interval);
        heartbeat.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let limit = if *healthy {
                silence
            } else {
                handshake.min(silence)
            };
            tokio::select! {
                message = inbound.message() => {
                    last_heard = tokio::time::Instant::now();
                    let Some(ControllerMessage { message }) = message? else {
                        return Ok(());
                    };
                    let Some(message) = message else { continue };
                    self.handle(message, &tx, address, healthy).await?;
                    // applying may take a while; that is not the controller's silence
                    last_heard = tokio::time::Instant::now();
                }
                _ = heartbeat.tick() => {
                    let beat = Heartbeat {
                        revision: self.applier.applied().0,
                        unix_millis: i64::try_from(unix_millis()).unwrap_or(i64::MAX),
                    };
                    send(&tx, runtime_message::Message::Heartbeat(beat)).await?;
                }
                () = tokio::time::sleep_until(last_heard + limit) => {
                    return Err(SessionError::Silent(limit));
                }
                () = stopped(stopping) => break,
            }
        }
        // Stopping: end the stream from this side, which tells the controller that this
        // runtime stops (not that it was cut off), and wait for the controller to end its
        // side, which it does once it has taken note.
        drop(tx);
        let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
        if tokio::time::timeout(self.options.goodbye_timeout, closed)
            .await
            .is_err()
        {
            tracing::debug!(controller = %address, "the controller did not end the stream in time");
        }
        tracing::info!(controller = %address, "sync stream ended: stopping");
        Ok(())
    }

    async fn handle(
        &self,
        message: controller_message::Message,
        tx: &mpsc::Sender<RuntimeMessage>,
        address: &str,
        healthy: &mut bool,
    ) -> Result<(), SessionError> {
        let (nonce, revision, result) = match message {
            controller_message::Message::Snapshot(snapshot) => {
                spoken(snapshot.protocol_version)?;
                let result = self
                    .applier
                    .apply_snapshot(snapshot.revision, &snapshot.store_id, snapshot.resources)
                    .await;
                (snapshot.nonce, snapshot.revision, result)
            }
            controller_message::Message::Delta(delta) => {
                spoken(delta.protocol_version)?;
                let (applied, applied_store) = self.applier.applied();
                if delta.store_id != applied_store {
                    return Err(SessionError::DeltaStore {
                        got: delta.store_id,
                        applied: applied_store,
                    });
                }
                if delta.from_revision > applied {
                    // The controller thinks we have more than we do. Not a rejection of the
                    // configuration: start over with a Hello that carries our real revision.
                    return Err(SessionError::DeltaBase {
                        from: delta.from_revision,
                        applied,
                    });
                }
                let result = self
                    .applier
                    .apply_delta(delta.revision, delta.upserts, delta.removals)
                    .await;
                (delta.nonce, delta.revision, result)
            }
            controller_message::Message::Heartbeat(_) => return Ok(()),
            controller_message::Message::Refusal(refusal) => {
                tracing::error!(controller = %address, reason = %refusal.reason, "controller refused this runtime");
                return Err(SessionError::Refused(refusal.reason));
            }
        };
        if !*healthy {
            *healthy = true;
            self.status.send_modify(|s| {
                s.connected_to = Some(address.to_string());
                s.refused = None;
            });
            tracing::info!(controller = %address, "sync stream established");
        }
        match result {
            Ok(()) => {
                let ack = Ack { nonce, revision };
                send(tx, runtime_message::Message::Ack(ack)).await
            }
            Err(errors) => {
                tracing::warn!(
                    revision,
                    ?errors,
                    "configuration rejected; keeping the previous one"
                );
                send_nack(tx, nonce, revision, errors).await
            }
        }
    }
}

/// Completes once `stopping` turns true (never, if its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn send(
    tx: &mpsc::Sender<RuntimeMessage>,
    message: runtime_message::Message,
) -> Result<(), SessionError> {
    tx.send(RuntimeMessage {
        message: Some(message),
    })
    .await
    .map_err(|_| SessionError::Closed)
}

/// At most this many errors go in a Nack, each cut to [`NACK_ERROR_CHARS`] characters, so
/// that it stays well within what a controller accepts from a runtime (128 KiB).
const NACK_ERRORS: usize = 50;
/// See [`NACK_ERRORS`].
const NACK_ERROR_CHARS: usize = 1024;

/// `errors` cut to fit a Nack, with a last line that says how many were left out.
fn nack_errors(errors: Vec<String>) -> Vec<String> {
    let total = errors.len();
    let mut kept: Vec<String> = errors
        .into_iter()
        .take(NACK_ERRORS)
        .map(|e| match e.char_indices().nth(NACK_ERROR_CHARS) {
            Some((end, _)) => format!("{}...", &e[..end]),
            None => e,
        })
        .collect();
    if total > NACK_ERRORS {
        kept.push(format!("... and {} more errors", total - NACK_ERRORS));
    }
    kept
}

async fn send_nack(
    tx: &mpsc::Sender<RuntimeMessage>,
    nonce: String,
    revision: i64,
    errors: Vec<String>,
) -> Result<(), SessionError> {
    let nack = Nack {
        nonce,
        revision,
        errors: nack_errors(errors),
    };
    send(tx, runtime_message::Message::Nack(nack)).await
}

/// An error with its causes, `: ` between them: tonic's transport errors say little
/// alone ("transport error"), the TLS reason is in a cause.
pub(crate) fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    // bounded: a cycle of causes must not hang the client
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// `host:port` becomes `http://host:port`, or `https://host:port` with TLS; URLs are kept.
fn normalize_address(address: &str, tls: bool) -> String {
    if address.contains("://") {
        address.to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// Connects over TCP, then TLS with `config`, naming the URI's host (a DNS name or an
/// address) as the server the certificate must be for.
pub(crate) fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future + Send,
> + Send
+ 'static {
    tower::service_fn(move |uri: tonic::transport::Uri| {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        async move {
            let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| invalid("the host is not a DNS name or an address"))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_nack_fits_what_a_controller_accepts() {
        let errors: Vec<String> = (0..10_000)
            .map(|i| format!("{i}: {}", "é".repeat(5000)))
            .collect();
        let cut = nack_errors(errors);
        assert_eq!(cut.len(), NACK_ERRORS + 1);
        assert_eq!(cut.last().unwrap(), "... and 9950 more errors");
        let nack = Nack {
            nonce: "n".repeat(100),
            revision: 1,
            errors: cut,
        };
        assert!(nack.encoded_len() < 128 * 1024, "{}", nack.encoded_len());
        assert_eq!(nack_errors(vec!["short".into()]), ["short"]);
    }
}
