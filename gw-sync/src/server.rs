//! The controller side: one session per runtime stream.
//!
//! A session reads the runtime's Hello, checks it, and sends a Delta from the runtime's
//! applied revision (or a Snapshot when the history does not reach back that far, or the
//! runtime is ahead of this controller even after waiting for it to catch up). From then on
//! it keeps at most one configuration message in flight: when it is acknowledged and the
//! desired state has moved on, the next Delta goes out from the acknowledged revision, so a
//! slow runtime gets one merged delta, never a queue. A rejected revision is not sent again;
//! the next change produces a delta from the last acknowledged revision that includes it.
//!
//! Sessions never block on the store: fleet events go to a [`FleetObserver`], whose
//! implementation records them without waiting on I/O.
//!
//! What a client of the sync port can hold is bounded ([`ServerOptions`] has every limit):
//! connections in total and per client address, streams per connection, a deadline for a
//! connection's first stream and an idle timeout for one with none, a timeout on every message
//! sent to a runtime and on the acknowledgement of each configuration message, and one budget
//! of bytes for the configuration messages in flight over every session (see `budget`). A
//! session that gives up on its runtime closes the runtime's connection, since that is what
//! frees a message the runtime did not read (see `transport`).

mod budget;
mod enrollment;
mod metrics;
mod transport;

pub use enrollment::{EnrollRefusal, Enroller, IssuedCertificate};
pub use metrics::SyncMetrics;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use gw_conn::{ConnLimiter, InFlight};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use self::budget::{Budget, Reservation};
use self::metrics::SyncLimit;
use self::transport::{Admission, SyncConn};
use crate::pki::RuntimeIdentity;
use crate::tls::ServerTls;

use crate::proto::config_sync_server::{ConfigSync, ConfigSyncServer};
use crate::proto::{
    ControllerMessage, Delta, Heartbeat, Hello, Refusal, RuntimeMessage, Snapshot,
    controller_message, runtime_message,
};
use crate::state::DesiredState;
use crate::{MAX_MESSAGE_BYTES, SyncToken, unix_millis};

/// One runtime's connection, as the fleet view records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The runtime's node id.
    pub node_id: String,
    /// Its gateway group.
    pub group: String,
    /// Unique per stream.
    pub session_id: String,
    /// The runtime's version.
    pub runtime_version: String,
    /// The address the runtime advertises, or else its address as seen by the controller.
    pub address: String,
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// The heartbeat interval of the session (the runtime's, from its Hello).
    pub heartbeat_interval: Duration,
    /// Orders the sessions of one runtime: a later stream has a larger epoch.
    pub session_epoch: u64,
}

/// Receives fleet events. Implementations must not block: record in memory and persist in
/// the background.
pub trait FleetObserver: Send + Sync + 'static {
    /// A runtime connected, serving `applied_revision`.
    fn connected(&self, session: &SessionInfo, applied_revision: i64);
    /// It acknowledged `revision`.
    fn applied(&self, session: &SessionInfo, revision: i64);
    /// It refused `revision` and keeps serving its previous configuration.
    fn rejected(&self, session: &SessionInfo, revision: i64, errors: &[String]);
    /// It sent a heartbeat.
    fn seen(&self, session: &SessionInfo, applied_revision: i64);
    /// Its stream ended.
    fn disconnected(&self, session: &SessionInfo, applied_revision: i64);
    /// It was refused before a session started (bad Hello, incompatible protocol), saying
    /// it serves `applied_revision`. `runtime` describes it as its Hello did, with a session
    /// id of its own; its node id may be invalid (that can be the reason).
    fn refused(&self, runtime: &SessionInfo, applied_revision: i64, reason: &str);
}

/// The source of truth for revisions (the controllers' store). When a runtime says it serves
/// a revision that this controller has not reached, the session asks it: if the store is
/// behind the runtime too (a database restored from a backup), the runtime gets a snapshot
/// of the store's state; otherwise this controller is merely lagging, and the runtime is sent
/// to another one rather than rolled back.
#[async_trait::async_trait]
pub trait RevisionAuthority: Send + Sync + 'static {
    /// The newest revision, or `None` if it cannot be read now.
    async fn newest_revision(&self) -> Option<i64>;
}

/// Timings and limits of the server side.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A heartbeat goes to each runtime this often, unless the runtime asks for another
    /// interval in its Hello (kept between 1 and 60 seconds); a runtime that sends nothing
    /// for three intervals (and five seconds) is disconnected.
    pub heartbeat_interval: Duration,
    /// The Hello must arrive within this time.
    pub hello_timeout: Duration,
    /// How long to wait for this controller to catch up with a runtime that is ahead of it
    /// before sending it a snapshot.
    pub catch_up_timeout: Duration,
    /// Longest wait for a runtime to take a message (a heartbeat, a snapshot, a delta) once
    /// it is due; a runtime that does not read is disconnected.
    pub send_timeout: Duration,
    /// Longest wait for a runtime to acknowledge (or reject) a configuration message; one
    /// that does neither is disconnected, and the room its message took in flight is freed.
    pub ack_timeout: Duration,
    /// Open connections on the sync port (at least 1); one beyond it is closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one `/64`); 0: no per-address limit.
    pub max_connections_per_address: usize,
    /// Concurrent streams on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`); a
    /// runtime uses one.
    pub max_streams_per_connection: u32,
    /// A connection that opens no authenticated stream within this time is closed.
    pub first_stream_timeout: Duration,
    /// A connection with no stream open for this long is closed.
    pub connection_idle_timeout: Duration,
    /// HTTP/2 keep-alive: a ping this often on every connection; one whose peer does not
    /// answer within the same time is closed.
    pub keepalive_interval: Duration,
    /// Bytes of configuration messages sent and not yet acknowledged, over every session
    /// (at least 1 KiB): the bound on the memory they hold. A session waits for room (in
    /// arrival order, holding no message); a message larger than this takes all of it.
    pub max_inflight_bytes: usize,
    /// Configuration messages not yet acknowledged from one client address (IPv6: one
    /// `/64`), so that one address cannot take the whole budget; 0: no per-address limit.
    pub max_inflight_per_address: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            catch_up_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_mins(1),
            max_connections: 4096,
            max_connections_per_address: 256,
            max_streams_per_connection: 4,
            first_stream_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_mins(1),
            keepalive_interval: Duration::from_secs(10),
            max_inflight_bytes: 256 * 1024 * 1024,
            max_inflight_per_address: 16,
        }
    }
}

/// The gRPC service; see the module docs.
#[derive(Clone)]
pub struct SyncServer {
    state: Arc<DesiredState>,
    observer: Arc<dyn FleetObserver>,
    options: ServerOptions,
    controller_id: Arc<str>,
    sessions: Arc<AtomicU64>,
    /// Turns true when the server shuts down; sessions end their streams then.
    stopping: Arc<watch::Sender<bool>>,
    token: Option<SyncToken>,
    authority: Option<Arc<dyn RevisionAuthority>>,
    store_id: Arc<str>,
    metrics: SyncMetrics,
    /// Room for configuration messages in flight, shared by every session.
    budget: Arc<Budget>,
    /// The sync port's TLS, when it speaks TLS.
    tls: Option<Arc<ServerTls>>,
    /// Who issues runtimes their certificates and says which still hold.
    enroller: Option<Arc<dyn Enroller>>,
}

impl std::fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncServer")
            .field("controller_id", &self.controller_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SyncServer {
    /// A server of `state` that reports to `observer`.
    pub fn new(
        controller_id: &str,
        state: Arc<DesiredState>,
        observer: Arc<dyn FleetObserver>,
        options: ServerOptions,
    ) -> Self {
        let metrics = SyncMetrics::default();
        Self {
            budget: Arc::new(Self::budget(&options, &metrics)),
            state,
            observer,
            options,
            controller_id: controller_id.into(),
            sessions: Arc::new(AtomicU64::new(0)),
            stopping: Arc::new(watch::channel(false).0),
            token: None,
            authority: None,
            store_id: Arc::from(""),
            metrics,
            tls: None,
            enroller: None,
        }
    }

    fn budget(options: &ServerOptions, metrics: &SyncMetrics) -> Budget {
        Budget::new(
            options.max_inflight_bytes,
            options.max_inflight_per_address,
            metrics.inflight_bytes.clone(),
        )
    }

    /// Counts in `metrics` (registered with [`SyncMetrics::register`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: SyncMetrics) -> Self {
        self.budget = Arc::new(Self::budget(&self.options, &metrics));
        self.metrics = metrics;
        self
    }

    /// The id of the store this controller serves; a runtime that says it applied a
    /// configuration of another store gets a snapshot.
    #[must_use]
    pub fn with_store_id(mut self, store_id: &str) -> Self {
        self.store_id = Arc::from(store_id);
        self
    }

    /// Requires runtimes to present `token`.
    #[must_use]
    pub fn with_token(mut self, token: Option<SyncToken>) -> Self {
        self.token = token;
        self
    }

    /// Serves [`SyncServer::serve`]'s listener over TLS. When `tls` requires identities,
    /// every stream must come from a runtime whose certificate names the node id and the
    /// group of its Hello; any other stream is refused before it is served anything, and
    /// not recorded in the fleet view (a runtime cannot speak for another node).
    #[must_use]
    pub fn with_tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves the Enrollment service with `enroller` (on a TLS port: see
    /// [`SyncServer::with_tls`]), and serves streams only to runtimes whose certificate it
    /// admits: a stream whose certificate it stops admitting (revoked, superseded) ends.
    #[must_use]
    pub fn with_enroller(mut self, enroller: Arc<dyn Enroller>) -> Self {
        self.enroller = Some(enroller);
        self
    }

    /// Consults `authority` before sending a snapshot to a runtime that is ahead of this
    /// controller (see [`RevisionAuthority`]). Without one, such a runtime is always sent to
    /// another controller.
    #[must_use]
    pub fn with_authority(mut self, authority: Arc<dyn RevisionAuthority>) -> Self {
        self.authority = Some(authority);
        self
    }

    /// Ends every session's stream, so that runtimes move to another controller at once.
    /// [`SyncServer::serve`] does this when its shutdown signal fires; a caller that mounts
    /// [`SyncServer::into_service`] on its own server calls it before shutting that down.
    pub fn stop_sessions(&self) {
        self.stopping.send_replace(true);
    }

    /// The tonic service, to mount on a server of the caller's.
    pub fn into_service(self) -> ConfigSyncServer<Self> {
        // runtimes only send small messages (Hello, Ack, Nack, Heartbeat); configurations
        // flow the other way
        ConfigSyncServer::new(self)
            .max_decoding_message_size(MAX_INBOUND_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Serves on `listener` until `shutdown` completes, then ends every session; connections
    /// still open a few seconds later are closed. The connection limits, deadlines and
    /// HTTP/2 settings of [`ServerOptions`] apply to the connections of `listener` only: a
    /// caller that mounts [`SyncServer::into_service`] on its own server sets its own.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let stopping = Arc::clone(&self.stopping);
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        let options = &self.options;
        let admission = Admission {
            limiter: ConnLimiter::new(
                options.max_connections,
                options.max_connections_per_address,
                self.metrics.connections.clone(),
            ),
            first_stream: options.first_stream_timeout,
            idle: options.connection_idle_timeout,
            metrics: self.metrics.clone(),
            stopping: self.stopping.subscribe(),
            warned: Arc::default(),
            tls: self.tls.clone(),
        };
        let keepalive = options.keepalive_interval.max(Duration::from_secs(1));
        // enrollment only over TLS: a token sent in plaintext would be anyone's
        let enrollment = match (&self.tls, &self.enroller) {
            (Some(_), Some(enroller)) => Some(enrollment::EnrollmentService::server(
                Arc::clone(enroller),
                self.metrics.clone(),
            )),
            _ => None,
        };
        tonic::transport::Server::builder()
            .max_concurrent_streams(options.max_streams_per_connection.max(1))
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            // a runtime sends one header of its own (the token)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .add_service(self.into_service())
            .add_optional_service(enrollment)
            .serve_with_incoming_shutdown(transport::incoming(listener, admission), shutdown)
            .await
    }

    /// On a TLS port, the identity the connection's certificate names, or a refusal: a
    /// stream without a runtime's certificate is served nothing. `None` on a plaintext port.
    #[allow(
        clippy::result_large_err,
        reason = "tonic's Status, as every handler returns"
    )]
    fn identity<'c>(
        &self,
        conn: Option<&'c SyncConn>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Option<&'c RuntimeIdentity>, Status> {
        if self.tls.is_none() {
            return Ok(None);
        }
        match conn.and_then(|conn| conn.identity.as_deref()) {
            Some(identity) => Ok(Some(identity)),
            None => {
                self.metrics.rejected(SyncLimit::Identity);
                tracing::warn!(
                    ?peer,
                    "refusing a sync stream without a runtime certificate"
                );
                Err(Status::unauthenticated(
                    "a runtime certificate is required on this sync port (a client certificate \
                     from the cluster CA naming urn:gw:runtime:<group>:<node-id>)",
                ))
            }
        }
    }

    /// Refuses a Hello that the connection's certificate does not name: another node id or
    /// another group.
    #[allow(
        clippy::result_large_err,
        reason = "tonic's Status, as every handler returns"
    )]
    fn check_identity(
        &self,
        identity: &RuntimeIdentity,
        hello: &Hello,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        let refusal = if identity.node_id != hello.node_id {
            format!(
                "the certificate is node {:?}'s; this Hello says node {:?}",
                identity.node_id,
                crate::clip(&hello.node_id, 64)
            )
        } else if identity.group != hello.group {
            format!(
                "the certificate of node {:?} is for group {:?}; this Hello asks for group {:?}",
                identity.node_id,
                identity.group,
                crate::clip(&hello.group, 64)
            )
        } else {
            return Ok(());
        };
        self.metrics.rejected(SyncLimit::Identity);
        tracing::warn!(
            ?peer,
            node = %identity.node_id,
            reason = %refusal,
            "refusing a runtime whose certificate does not name it"
        );
        Err(Status::permission_denied(refusal))
    }

    /// With an enroller, whether it admits the connection's certificate (not revoked, not
    /// superseded); what the session watches to end when that changes.
    #[allow(
        clippy::result_large_err,
        reason = "tonic's Status, as every handler returns"
    )]
    async fn admitted(
        &self,
        identity: Option<&RuntimeIdentity>,
        conn: Option<&SyncConn>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Option<Admitted>, Status> {
        let (Some(enroller), Some(identity)) = (&self.enroller, identity) else {
            return Ok(None);
        };
        let cert = conn.and_then(|conn| conn.cert.clone());
        // subscribed before the check: a revocation in between is seen
        let changes = enroller.changes();
        let admitted = match &cert {
            Some(cert) => enroller.admit(identity, cert).await,
            None => false,
        };
        if let (true, Some(cert)) = (admitted, cert) {
            return Ok(Some(Admitted {
                enroller: Arc::clone(enroller),
                identity: identity.clone(),
                cert,
                changes,
            }));
        }
        {
            self.metrics.rejected(SyncLimit::Revoked);
            tracing::warn!(
                ?peer, node = %identity.node_id,
                "refusing a runtime whose certificate was revoked or replaced"
            );
            Err(Status::permission_denied(REVOKED))
        }
    }

    /// Checks a Hello; answers the protocol version the stream speaks.
    fn check_hello(hello: &Hello) -> Result<u32, String> {
        let version = crate::negotiate(hello.min_protocol_version, hello.protocol_version)?;
        crate::validate_node_id(&hello.node_id)?;
        if let Err(reason) = crate::validate_group(&hello.group) {
            return Err(format!("invalid group: {reason}"));
        }
        if hello.applied_revision < 0 {
            return Err("applied revision must not be negative".to_string());
        }
        Ok(version)
    }
}

/// The largest message a controller accepts from a runtime: a Hello, an Ack, a Nack (whose
/// errors the client cuts to fit) or a Heartbeat. Each stream buffers at most one message
/// being received, so this bounds what a stream can make the controller hold.
const MAX_INBOUND_BYTES: usize = 128 * 1024;

/// The largest header list a controller accepts on the sync port.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

type OutboundStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigSync for SyncServer {
    type StreamStream = OutboundStream;

    async fn stream(
        &self,
        request: Request<Streaming<RuntimeMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // the connection's own view (served by `serve`), or tonic's (mounted elsewhere)
        let conn = request.extensions().get::<SyncConn>().cloned();
        let peer = conn
            .as_ref()
            .map(|c| c.peer)
            .or_else(|| request.remote_addr());
        if let Some(token) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !token.verify(presented) {
                tracing::warn!(peer = ?peer, "refusing a runtime without a valid sync token");
                return Err(Status::unauthenticated(
                    "a valid sync token is required (GW_SYNC_TOKEN)",
                ));
            }
        }
        // before the stream counts: a client without a certificate holds no connection past
        // its deadlines
        let identity = self.identity(conn.as_ref(), peer)?;
        // an authenticated stream keeps its connection from the first-stream and idle
        // deadlines for as long as it lives
        let activity = conn.as_ref().map(|c| c.activity.begin());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.options.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello received"))??;
        let Some(RuntimeMessage {
            message: Some(runtime_message::Message::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        if let Some(identity) = identity {
            self.check_identity(identity, &hello, peer)?;
        }
        let admitted = self.admitted(identity, conn.as_ref(), peer).await?;
        if conn
            .as_ref()
            .and_then(|conn| conn.cert.as_ref())
            .is_some_and(|cert| cert.not_after <= SystemTime::now())
        {
            return Err(Status::unauthenticated(EXPIRED));
        }
        let (tx, rx) = mpsc::channel(4);
        let number = self.sessions.fetch_add(1, Ordering::Relaxed);
        let heartbeat_interval = match hello.heartbeat_interval_ms {
            0 => self.options.heartbeat_interval,
            ms => Duration::from_millis(u64::from(ms))
                .clamp(Duration::from_secs(1), Duration::from_mins(1)),
        };
        let info = SessionInfo {
            session_id: format!(
                "{}-{}-{:08x}",
                self.controller_id,
                number,
                rand::random::<u32>()
            ),
            address: advertised_or_peer(&hello.advertise_address, peer),
            node_id: hello.node_id.clone(),
            group: hello.group.clone(),
            runtime_version: crate::clip(&hello.runtime_version, 128).to_string(),
            connected_at: SystemTime::now(),
            heartbeat_interval,
            session_epoch: hello.session_epoch,
        };
        let protocol_version = match Self::check_hello(&hello) {
            Ok(version) => version,
            Err(reason) => {
                // the node id may be what is wrong with the Hello: logged cut short and escaped
                tracing::warn!(node = ?crate::clip(&hello.node_id, 64), %reason, "refusing runtime");
                self.observer
                    .refused(&info, hello.applied_revision, &reason);
                let refusal = ControllerMessage {
                    message: Some(controller_message::Message::Refusal(Refusal { reason })),
                };
                // the channel has room: this cannot fail
                let _ = tx.try_send(Ok(refusal));
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
        };
        let kinds = supported_kinds(&hello);
        let session = Session {
            kinds,
            protocol_version,
            info,
            // a configuration from another store (or of unknown origin) is replaced whole
            acked: if hello.applied_revision > 0 && *hello.store_id == *self.store_id {
                hello.applied_revision
            } else {
                0
            },
            store_id: Arc::clone(&self.store_id),
            state: Arc::clone(&self.state),
            observer: Arc::clone(&self.observer),
            options: self.options.clone(),
            tx,
            nonces: 0,
            stopping: self.stopping.subscribe(),
            authority: self.authority.clone(),
            unacked: None,
            budget: Arc::clone(&self.budget),
            metrics: self.metrics.clone(),
            ip: peer.map(|p| p.ip()),
            expires: conn
                .as_ref()
                .and_then(|conn| conn.cert.as_ref())
                .map(|cert| {
                    Instant::now()
                        + cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                }),
            conn,
            admitted,
            _activity: activity,
        };
        tracing::info!(
            node = %session.info.node_id, group = %session.info.group,
            applied = hello.applied_revision, address = %session.info.address, "runtime connected"
        );
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a runtime whose connection's certificate expired is told.
const EXPIRED: &str =
    "the certificate of this connection has expired; reconnect with the renewed one";

/// What a runtime whose certificate is no longer admitted is told.
const REVOKED: &str = "this runtime's certificate was revoked or replaced by a later enrollment \
                       of its node; enroll it again (GW_ENROLL_TOKEN)";

/// A session's certificate, as its enroller admitted it.
struct Admitted {
    enroller: Arc<dyn Enroller>,
    identity: RuntimeIdentity,
    cert: Arc<crate::pki::CertFacts>,
    changes: watch::Receiver<u64>,
}

/// Completes once the enroller no longer admits the session's certificate (never without
/// an enroller, or once the enroller is gone).
async fn revoked(admitted: &mut Option<Admitted>) {
    let Some(admitted) = admitted else {
        return std::future::pending().await;
    };
    loop {
        if admitted.changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !admitted.enroller.admits(&admitted.identity, &admitted.cert) {
            return;
        }
    }
}

/// Completes once `stopping` turns true (never, if its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn advertised_or_peer(advertised: &str, peer: Option<SocketAddr>) -> String {
    if advertised.is_empty() {
        peer.map(|p| p.to_string()).unwrap_or_default()
    } else {
        advertised.chars().take(256).collect()
    }
}

struct Session {
    info: SessionInfo,
    /// The protocol version the stream speaks ([`crate::negotiate`]).
    protocol_version: u32,
    /// The revision the runtime serves.
    acked: i64,
    state: Arc<DesiredState>,
    observer: Arc<dyn FleetObserver>,
    options: ServerOptions,
    tx: mpsc::Sender<Result<ControllerMessage, Status>>,
    nonces: u64,
    stopping: watch::Receiver<bool>,
    authority: Option<Arc<dyn RevisionAuthority>>,
    store_id: Arc<str>,
    /// The resource kinds the runtime applies; others are never sent to it.
    kinds: Vec<String>,
    /// The configuration message sent and not yet acknowledged, if any.
    unacked: Option<Unacked>,
    budget: Arc<Budget>,
    metrics: SyncMetrics,
    /// The runtime's address, for its share of the budget.
    ip: Option<std::net::IpAddr>,
    /// The runtime's connection (when served by [`SyncServer::serve`]).
    conn: Option<SyncConn>,
    /// The certificate the session was admitted with, watched for revocation.
    admitted: Option<Admitted>,
    /// When the certificate of the session's connection expires: the stream ends then (the
    /// runtime reconnects with its renewed one).
    expires: Option<Instant>,
    /// Keeps the connection from its idle deadline while the session lives.
    _activity: Option<InFlight>,
}

/// A configuration message in flight.
struct Unacked {
    nonce: String,
    /// When the runtime must have acknowledged it.
    deadline: Instant,
    /// Its room in the budget.
    _reservation: Reservation,
}

/// The kinds a Hello declares; none declared: APIs only (a runtime that predates the field).
fn supported_kinds(hello: &Hello) -> Vec<String> {
    if hello.supported_kinds.is_empty() {
        vec![crate::KIND_API.to_string()]
    } else {
        hello.supported_kinds.clone()
    }
}

/// Whether a runtime that applies `kinds` is sent resources of `kind`.
fn sent(kinds: &[String], kind: &str) -> bool {
    kinds.iter().any(|k| k == kind)
}

/// Why a session ended.
enum End {
    /// The runtime ended its stream: it stops.
    Goodbye,
    /// The stream failed (the runtime's connection closed or was reset).
    Closed,
    /// The runtime sent nothing for three heartbeat intervals.
    Silent,
    Stopping,
    /// This controller has not reached the runtime's revision.
    Behind,
    Protocol(String),
    /// The runtime did not take a message within the send timeout.
    SendTimeout,
    /// The runtime did not acknowledge a configuration message within the ack timeout.
    AckTimeout,
    /// The runtime's certificate was revoked or superseded.
    Revoked,
    /// The certificate of the runtime's connection expired.
    Expired,
}

/// Counts a session in `gw_sync_sessions` while it lives.
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Counted {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<RuntimeMessage>) {
        let _counted = Counted::new(&self.metrics.sessions);
        self.observer.connected(&self.info, self.acked);
        let end = match self.serve(&mut inbound).await {
            Err(end) => end,
            Ok(never) => match never {},
        };
        let node = &self.info.node_id;
        match &end {
            End::Goodbye => tracing::info!(node = %node, "runtime stopped: it ended its stream"),
            End::Closed => tracing::info!(node = %node, "runtime disconnected"),
            End::Stopping => {
                tracing::info!(node = %node, "controller stopping; closing runtime stream");
            }
            End::Silent => tracing::warn!(
                node = %node,
                "runtime sent nothing for {:?}; closing its stream", self.silence_timeout()
            ),
            End::Behind => {
                tracing::warn!(
                    node = %node, runtime_revision = self.acked,
                    revision = self.state.revision(),
                    "runtime is ahead of this controller; sending it to another one"
                );
                let _ = self.tx.try_send(Err(Status::unavailable(
                    "this controller has not reached the runtime's revision yet; try another",
                )));
            }
            End::Protocol(reason) => {
                tracing::warn!(node = %node, %reason, "closing runtime stream");
                let _ = self
                    .tx
                    .try_send(Err(Status::invalid_argument(reason.clone())));
            }
            End::SendTimeout => {
                self.metrics.rejected(SyncLimit::SendTimeout);
                tracing::warn!(
                    node = %node, peer = ?self.ip,
                    "runtime did not take a message within {:?}; closing its connection",
                    self.options.send_timeout
                );
            }
            End::Revoked => {
                self.metrics.rejected(SyncLimit::Revoked);
                tracing::warn!(node = %node, "runtime certificate revoked; closing its stream");
                let _ = self.tx.try_send(Err(Status::permission_denied(REVOKED)));
            }
            End::Expired => {
                tracing::info!(
                    node = %node,
                    "the certificate of the runtime's connection expired; closing its stream \
                     (it reconnects with its renewed one)"
                );
                let _ = self.tx.try_send(Err(Status::unauthenticated(EXPIRED)));
            }
            End::AckTimeout => {
                self.metrics.rejected(SyncLimit::AckTimeout);
                tracing::warn!(
                    node = %node, peer = ?self.ip,
                    "runtime did not acknowledge its configuration within {:?}; closing its connection",
                    self.options.ack_timeout
                );
            }
        }
        // What the runtime has not read stays buffered for as long as its stream lives, and
        // a runtime that does not read never lets the stream end: close the connection.
        let unacknowledged = self.unacked.take().is_some();
        // (a revoked or expired certificate's streams end with their reason, which must
        // reach the runtime; a new stream on the connection is refused at its start)
        if (unacknowledged || matches!(end, End::SendTimeout | End::AckTimeout))
            && let Some(conn) = &self.conn
        {
            conn.control.kill();
        }
        self.observer.disconnected(&self.info, self.acked);
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<RuntimeMessage>,
    ) -> Result<std::convert::Infallible, End> {
        let mut revisions = self.state.subscribe();
        // A runtime ahead of this controller was served by a controller that has seen newer
        // changes: give ours a moment to catch up rather than roll the runtime back. If it
        // does not, roll back only when the store itself is behind the runtime.
        if self.acked > self.state.revision() && !self.catch_up().await? {
            let truth = match &self.authority {
                Some(authority) => authority.newest_revision().await,
                None => None,
            };
            match truth {
                Some(newest) if newest < self.acked => tracing::warn!(
                    node = %self.info.node_id, runtime_revision = self.acked, store_revision = newest,
                    "the store is behind this runtime (restored database?); sending it the store's state"
                ),
                _ => return Err(End::Behind),
            }
        }
        // Always answer the Hello, even with an empty delta: the runtime learns it is in sync.
        self.send_update().await?;
        let mut rejected: i64 = 0;
        let mut heartbeat = tokio::time::interval(self.info.heartbeat_interval);
        heartbeat.tick().await;
        let silence = self.silence_timeout();
        let mut silent_at = Instant::now() + silence;
        loop {
            let ack_deadline = self.unacked.as_ref().map(|u| u.deadline);
            tokio::select! {
                message = inbound.message() => {
                    silent_at = Instant::now() + silence;
                    let message = match message {
                        Ok(Some(RuntimeMessage { message: Some(m) })) => m,
                        Ok(Some(RuntimeMessage { message: None })) => continue,
                        Ok(None) => return Err(End::Goodbye),
                        Err(_) => return Err(End::Closed),
                    };
                    match message {
                        runtime_message::Message::Ack(ack) => {
                            if self.unacked.as_ref().is_some_and(|u| u.nonce == ack.nonce) {
                                self.unacked = None;
                                self.acked = ack.revision;
                                self.observer.applied(&self.info, ack.revision);
                            }
                        }
                        runtime_message::Message::Nack(nack) => {
                            if self.unacked.as_ref().is_some_and(|u| u.nonce == nack.nonce) {
                                self.unacked = None;
                                rejected = nack.revision;
                                tracing::warn!(
                                    node = %self.info.node_id, revision = nack.revision,
                                    errors = ?nack.errors, "runtime rejected a configuration"
                                );
                                self.observer.rejected(&self.info, nack.revision, &nack.errors);
                            }
                        }
                        runtime_message::Message::Heartbeat(_) => {
                            self.observer.seen(&self.info, self.acked);
                        }
                        runtime_message::Message::Hello(_) => {
                            return Err(End::Protocol("Hello sent twice on one stream".to_string()));
                        }
                    }
                }
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Err(End::Closed);
                    }
                }
                _ = heartbeat.tick() => self.heartbeat().await?,
                () = tokio::time::sleep_until(silent_at) => return Err(End::Silent),
                () = sleep_until_some(ack_deadline) => return Err(End::AckTimeout),
                () = stopped(&mut self.stopping) => return Err(End::Stopping),
                () = revoked(&mut self.admitted) => return Err(End::Revoked),
                () = sleep_until_some(self.expires) => return Err(End::Expired),
            }
            let newest = self.state.revision();
            if self.unacked.is_none() && newest > self.acked.max(rejected) {
                self.send_update().await?;
                // a wait for room in flight is not the runtime's silence: what it sent
                // meanwhile is read next
                silent_at = Instant::now() + silence;
            }
        }
    }

    /// How long the runtime may send nothing.
    fn silence_timeout(&self) -> Duration {
        self.info.heartbeat_interval * 3 + Duration::from_secs(5)
    }

    /// Sends `message`, waiting at most the send timeout for the runtime to take it.
    async fn send(&self, message: ControllerMessage) -> Result<(), End> {
        match tokio::time::timeout(self.options.send_timeout, self.tx.send(Ok(message))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::SendTimeout),
        }
    }

    /// Sends a heartbeat.
    async fn heartbeat(&self) -> Result<(), End> {
        let beat = ControllerMessage {
            message: Some(controller_message::Message::Heartbeat(Heartbeat {
                revision: self.state.revision(),
                unix_millis: i64::try_from(unix_millis()).unwrap_or(i64::MAX),
            })),
        };
        self.send(beat).await
    }

    /// Waits (at most the catch-up timeout) for the desired state to reach the runtime's
    /// revision, with a heartbeat every interval so the runtime knows the controller is
    /// alive meanwhile. Returns whether it got there.
    async fn catch_up(&self) -> Result<bool, End> {
        let deadline = Instant::now() + self.options.catch_up_timeout;
        loop {
            self.heartbeat().await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .state
                .wait_for(self.acked, left.min(self.info.heartbeat_interval))
                .await
            {
                return Ok(true);
            }
            if left <= self.info.heartbeat_interval {
                return Ok(false);
            }
        }
    }

    /// Sends a Delta from the acknowledged revision, or a Snapshot, once the budget has room
    /// for it, and records it as unacknowledged.
    async fn send_update(&mut self) -> Result<(), End> {
        let mut reserved: Option<Reservation> = None;
        loop {
            let (nonce, message) = self.build_update();
            let bytes = message.encoded_len();
            let reservation = match reserved.take() {
                Some(mut reservation) if self.budget.covers(&reservation, bytes) => {
                    reservation.resize(bytes);
                    Ok(reservation)
                }
                // the state grew while the session waited: room for the new size
                Some(_) | None => self.budget.try_reserve(self.ip, bytes),
            };
            match reservation {
                Ok(reservation) => {
                    self.send(message).await?;
                    self.unacked = Some(Unacked {
                        nonce,
                        deadline: Instant::now() + self.options.ack_timeout,
                        _reservation: reservation,
                    });
                    return Ok(());
                }
                Err(limit) => {
                    // wait holding no message; build it again once there is room
                    drop(message);
                    self.metrics.waited(limit);
                    reserved = Some(self.wait_for_room(bytes).await?);
                }
            }
        }
    }

    /// Waits for room for a message of `bytes`, with heartbeats meanwhile (often enough for a
    /// runtime that waits for its first answer).
    async fn wait_for_room(&self, bytes: usize) -> Result<Reservation, End> {
        tracing::debug!(node = %self.info.node_id, bytes, "waiting for room among the configurations in flight");
        let reserve = Arc::clone(&self.budget).reserve(self.ip, bytes);
        tokio::pin!(reserve);
        let mut stopping = self.stopping.clone();
        let mut beat = tokio::time::interval(
            (self.info.heartbeat_interval / 3).max(Duration::from_millis(500)),
        );
        loop {
            tokio::select! {
                reservation = &mut reserve => return Ok(reservation),
                _ = beat.tick() => self.heartbeat().await?,
                () = stopped(&mut stopping) => return Err(End::Stopping),
            }
        }
    }

    /// A Delta from the acknowledged revision, or a Snapshot, and its nonce.
    fn build_update(&mut self) -> (String, ControllerMessage) {
        self.nonces += 1;
        let nonce = format!("{}-{}", self.info.session_id, self.nonces);
        let group = &self.info.group;
        // a runtime with nothing applied gets the whole state as such
        let delta = if self.acked > 0 {
            self.state.delta(group, self.acked)
        } else {
            None
        };
        let kinds = &self.kinds;
        let message = match delta {
            Some(mut delta) => {
                delta.upserts.retain(|r| sent(kinds, &r.kind));
                delta.removals.retain(|r| sent(kinds, &r.kind));
                controller_message::Message::Delta(Delta {
                    nonce: nonce.clone(),
                    from_revision: self.acked,
                    revision: delta.revision,
                    upserts: delta.upserts,
                    removals: delta.removals,
                    store_id: self.store_id.to_string(),
                    protocol_version: self.protocol_version,
                })
            }
            None => {
                let (revision, mut resources) = self.state.snapshot(group);
                resources.retain(|r| sent(kinds, &r.kind));
                controller_message::Message::Snapshot(Snapshot {
                    nonce: nonce.clone(),
                    revision,
                    resources,
                    store_id: self.store_id.to_string(),
                    protocol_version: self.protocol_version,
                })
            }
        };
        (
            nonce,
            ControllerMessage {
                message: Some(message),
            },
        )
    }
}

/// Completes at `deadline`; never without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
