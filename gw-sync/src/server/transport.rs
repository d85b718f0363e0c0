//! The sync port's connections: admission (a cap in total and per client address), the
//! deadline for a connection's first stream, the idle timeout of a connection with no stream
//! open, and a switch through which a session closes its whole connection.
//!
//! Closing the connection is the only way to free what a runtime has not read: HTTP/2 keeps
//! a message that the peer does not read buffered for as long as the stream lives, and such a
//! stream never completes. So a session that gives up on its runtime closes the connection,
//! not only its stream.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use gw_conn::{Activity, ConnLimiter, ConnRefused, ConnSlot, Expired};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tonic::transport::server::Connected;

use super::metrics::{SyncLimit, SyncMetrics};
use crate::pki::RuntimeIdentity;
use crate::tls::ServerTls;

/// How long connections may stay open once the server stops (runtimes close theirs when their
/// stream ends), before they are closed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Closes one connection on demand: its reads and writes fail from then on, so the HTTP/2
/// connection ends and drops every stream and buffer it holds.
#[derive(Debug, Default)]
pub(crate) struct ConnControl {
    killed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
    /// Signalled when the connection is gone.
    closed: Notify,
}

impl ConnControl {
    /// Closes the connection.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.read.wake();
        self.write.wake();
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn aborted() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed by the sync server",
        )
    }
}

/// What a request knows about its sync connection (in its extensions, through
/// [`Connected`]).
#[derive(Debug, Clone)]
pub(crate) struct SyncConn {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Who the client's certificate says it is (a TLS connection with a runtime's
    /// certificate, verified in the handshake).
    pub(crate) identity: Option<Arc<RuntimeIdentity>>,
    /// That certificate's serial number and validity, to tell a revoked or superseded one,
    /// and to end its streams when it expires.
    pub(crate) cert: Option<Arc<crate::pki::CertFacts>>,
    /// The connection's streams, for its first-stream and idle deadlines.
    pub(crate) activity: Arc<Activity>,
    /// Closes the connection.
    pub(crate) control: Arc<ConnControl>,
}

/// The bytes of a connection: as they come, or through TLS.
#[derive(Debug)]
enum Wire {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Forwards a poll to the wire's stream, whichever it is.
macro_rules! on_wire {
    ($wire:expr, $stream:ident => $call:expr) => {
        match $wire {
            Wire::Plain($stream) => $call,
            Wire::Tls($stream) => $call,
        }
    };
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_wire!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_wire!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_wire!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        on_wire!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_wire!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_wire!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// An accepted connection, holding its slot for as long as it lives.
#[derive(Debug)]
pub(crate) struct SyncIo {
    stream: Wire,
    conn: SyncConn,
    _slot: ConnSlot,
}

impl Drop for SyncIo {
    fn drop(&mut self) {
        self.conn.control.closed.notify_one();
    }
}

impl Connected for SyncIo {
    type ConnectInfo = SyncConn;

    fn connect_info(&self) -> SyncConn {
        self.conn.clone()
    }
}

impl AsyncRead for SyncIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.conn.control.read.register(cx.waker());
        if self.conn.control.killed() {
            return Poll::Ready(Err(ConnControl::aborted()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SyncIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.control.write.register(cx.waker());
        if self.conn.control.killed() {
            return Poll::Ready(Err(ConnControl::aborted()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.conn.control.write.register(cx.waker());
        if self.conn.control.killed() {
            return Poll::Ready(Err(ConnControl::aborted()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.control.killed() {
            return Poll::Ready(Err(ConnControl::aborted()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How connections are admitted and how long they may live without a stream.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    pub(crate) limiter: ConnLimiter,
    /// A connection must open an (authenticated) stream within this time.
    pub(crate) first_stream: Duration,
    /// A connection with no stream open for this long is closed.
    pub(crate) idle: Duration,
    pub(crate) metrics: SyncMetrics,
    /// Turns true when the server stops.
    pub(crate) stopping: watch::Receiver<bool>,
    /// When a refusal was last logged at warning level (seconds since the Unix epoch).
    pub(crate) warned: Arc<std::sync::atomic::AtomicU64>,
    /// The listener's TLS, if it speaks TLS.
    pub(crate) tls: Option<Arc<ServerTls>>,
}

impl Admission {
    /// A slot for a connection from `peer`, or `None` (counted) when a limit refuses it.
    fn admit(&self, peer: SocketAddr) -> Option<ConnSlot> {
        match self.limiter.try_acquire(peer.ip()) {
            Ok(slot) => Some(slot),
            Err(refused) => {
                let limit = match refused {
                    ConnRefused::Total => SyncLimit::Connections,
                    ConnRefused::PerAddress => SyncLimit::ConnectionsPerAddress,
                };
                self.metrics.rejected(limit);
                // at most one warning a minute: a flood must not flood the log too
                let now = crate::unix_millis() / 1000;
                let last = self.warned.load(Ordering::Relaxed);
                if now >= last + 60
                    && self
                        .warned
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        %peer, ?refused,
                        "sync connection refused: limit reached (--sync-max-connections, \
                         --sync-max-connections-per-address; counted in \
                         gw_sync_limit_rejections_total; logged once a minute)"
                    );
                } else {
                    tracing::debug!(%peer, ?refused, "sync connection refused: limit reached");
                }
                None
            }
        }
    }

    /// Wraps an admitted connection, with a watchdog that closes it when it opens no stream
    /// in time, has none open for the idle timeout, or outlives the server's stop by
    /// [`STOP_GRACE`].
    /// `first` is what is left of the first-stream deadline (a TLS handshake took the rest).
    fn wrap(&self, stream: Wire, peer: SocketAddr, slot: ConnSlot, first: Duration) -> SyncIo {
        let leaf = match &stream {
            Wire::Plain(_) => None,
            Wire::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first()),
        };
        let identity = leaf
            .and_then(|cert| RuntimeIdentity::of_certificate(cert).ok())
            .map(Arc::new);
        let cert = leaf
            .and_then(|cert| crate::pki::CertFacts::of_certificate(cert).ok())
            .map(Arc::new);
        let conn = SyncConn {
            peer,
            identity,
            cert,
            activity: Activity::new(),
            control: Arc::new(ConnControl::default()),
        };
        let watched = conn.clone();
        let idle = self.idle;
        let metrics = self.metrics.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let stopped = async {
                if stopping.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(STOP_GRACE).await;
            };
            tokio::select! {
                why = watched.activity.expired(first, idle) => {
                    let limit = match why {
                        Expired::NoRequest => SyncLimit::FirstStreamTimeout,
                        Expired::Idle => SyncLimit::IdleTimeout,
                    };
                    metrics.rejected(limit);
                    tracing::debug!(%peer, ?why, "closing a sync connection without a stream");
                    watched.control.kill();
                }
                () = watched.control.closed.notified() => {}
                () = stopped => watched.control.kill(),
            }
        });
        SyncIo {
            stream,
            conn,
            _slot: slot,
        }
    }
}

/// The connections accepted on `listener` that `admission` lets in. Accept errors (out of
/// file descriptors) are logged and retried after a pause, never passed on. On a TLS
/// listener each handshake runs on its own task, holding the connection's slot, and must
/// finish within the first-stream deadline; a failed one is counted and dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    admission: Admission,
) -> impl Stream<Item = Result<SyncIo, io::Error>> {
    // handshaken connections come back through here; every one holds a slot, so the
    // connection limit bounds what waits in it
    let (done, handshaken) = mpsc::unbounded_channel::<SyncIo>();
    let state = (listener, admission, done, handshaken);
    futures_util::stream::unfold(
        state,
        |(listener, admission, done, mut handshaken)| async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(io) = handshaken.recv() => {
                        return Some((Ok(io), (listener, admission, done, handshaken)));
                    }
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "sync accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = admission.admit(peer) else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Some(tls) = &admission.tls else {
                    let io =
                        admission.wrap(Wire::Plain(stream), peer, slot, admission.first_stream);
                    return Some((Ok(io), (listener, admission, done, handshaken)));
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let (admission, done) = (admission.clone(), done.clone());
                tokio::spawn(async move {
                    let accepted = tokio::time::Instant::now();
                    match tokio::time::timeout(admission.first_stream, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            // the handshake counts against the first-stream deadline
                            let left = admission.first_stream.saturating_sub(accepted.elapsed());
                            let io = admission.wrap(Wire::Tls(Box::new(tls)), peer, slot, left);
                            let _ = done.send(io);
                        }
                        Ok(Err(err)) => {
                            admission.metrics.rejected(SyncLimit::TlsHandshake);
                            tracing::debug!(%peer, error = %err, "sync TLS handshake failed");
                        }
                        Err(_) => {
                            admission.metrics.rejected(SyncLimit::FirstStreamTimeout);
                            tracing::debug!(%peer, "sync TLS handshake timed out");
                        }
                    }
                });
            }
        },
    )
}
