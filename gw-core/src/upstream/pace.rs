//! What a client can make the gateway hold with a request body it does not send, and with
//! a tunnel it does not use.
//!
//! A request body is read ahead before an upstream connection is taken: up to
//! [`TrafficLimits::body_read_ahead`] bytes of it, all of it when it is shorter, and for a
//! gRPC request (`content-type: application/grpc...`) its first message (the first
//! length-prefixed message, at most that many bytes), so that a streaming call starts as soon
//! as its client has sent something to answer. So only a client that actually sends its body
//! holds upstream capacity: one that declares a body (or starts a chunked one) and sends
//! nothing more is answered 408 without the upstream ever hearing of it, and one that wants
//! to hold an upstream connection with a stalled body must first send the read-ahead size.
//! What is read ahead is copied into one buffer whose capacity is what counts: over every
//! request of the gateway, read-ahead holds at most [`TrafficLimits::body_buffer_memory`]
//! bytes, and the requests of one client address at most
//! [`TrafficLimits::body_buffer_per_address`]; the buffer grows as the body arrives, so a
//! client that declares a large body and sends a byte holds a small step of it. A body that
//! finds no room waits for some (other bodies go upstream and give theirs back) as long as
//! the body timeout, then is refused with 503 `request_buffer_full` ([`BufferFull`], counted
//! in `gw_request_buffer_overflows_total`): never sent upstream unread, where a client that
//! does not send it would hold the connection.
//!
//! Until the upstream's response headers arrive, the body's pace is watched ([`Paced`]):
//! a body that stops arriving for [`TrafficLimits::body_timeout`], or arrives slower than
//! [`TrafficLimits::body_min_rate`] bytes per second on average (counted over the time
//! spent waiting for the client, never the time the upstream made the gateway wait; a body
//! may fall behind that rate by [`RATE_GRACE`] at most), is cut: the client gets 408 and the
//! upstream connection is closed, and the upstream endpoint is not blamed. Once the upstream
//! has answered, the exchange is a full-duplex stream (gRPC, say) and the request body goes
//! at the client's pace.
//!
//! An API whose clients send nothing until they hear from the upstream (a bidirectional
//! stream that the server opens) turns both off with `upstream.requestBuffering: false`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::metrics::{Limit, ProxyMetrics};

/// How far behind the minimum rate a body may fall: a body that has sent nothing is cut
/// after this long, one that has sent `n` bytes at `n / rate` plus this long.
pub const RATE_GRACE: Duration = Duration::from_secs(5);

/// The bounds on what a client's request bodies and tunnels can hold; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficLimits {
    /// Bytes of a request body read before an upstream connection is taken.
    pub body_read_ahead: usize,
    /// Bytes that read-ahead may hold, over every request of the gateway together.
    pub body_buffer_memory: usize,
    /// Bytes that read-ahead may hold for the requests of one client address (an IPv6
    /// client: its `/64`).
    pub body_buffer_per_address: usize,
    /// Longest wait for the next bytes of a request body, until the upstream answers.
    pub body_timeout: Duration,
    /// The slowest average rate of a request body, in bytes per second, until the upstream
    /// answers; 0: none.
    pub body_min_rate: u64,
    /// A WebSocket tunnel that nothing crosses, either way, for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A WebSocket tunnel is closed after this long, used or not.
    pub tunnel_lifetime: Duration,
}

impl Default for TrafficLimits {
    fn default() -> Self {
        Self {
            body_read_ahead: 1024 * 1024,
            body_buffer_memory: 256 * 1024 * 1024,
            body_buffer_per_address: 32 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            tunnel_idle_timeout: Duration::from_mins(5),
            tunnel_lifetime: Duration::from_hours(24),
        }
    }
}

const SHARDS: usize = 16;

/// The limits and what read-ahead holds now, shared by every upstream of a gateway.
#[derive(Debug)]
pub struct Traffic {
    pub(crate) limits: TrafficLimits,
    buffered: AtomicUsize,
    /// Bytes held per client address.
    per_address: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
    hasher: RandomState,
    pub(crate) metrics: ProxyMetrics,
    /// Signalled when read-ahead memory is given back, for the bodies waiting for room.
    released: tokio::sync::Notify,
    waiting: AtomicUsize,
}

impl Traffic {
    /// The state of `limits`, counting into `metrics`.
    pub fn new(limits: TrafficLimits, metrics: ProxyMetrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            buffered: AtomicUsize::new(0),
            per_address: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            metrics,
            released: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Bytes held by read-ahead now.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Bytes held by read-ahead now for the requests of `ip`.
    pub fn buffered_for(&self, ip: IpAddr) -> usize {
        let key = crate::conn::address_key(ip);
        self.shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.per_address[index]
    }

    /// Takes `len` bytes of the read-ahead memory for a request of `key` (an address key),
    /// if that many are free in total and in the address's share.
    fn reserve(&self, key: Option<IpAddr>, len: usize) -> bool {
        let max = self.limits.body_buffer_memory;
        let mut now = self.buffered.load(Ordering::Acquire);
        loop {
            let Some(next) = now.checked_add(len).filter(|n| *n <= max) else {
                return false;
            };
            match self.buffered.compare_exchange_weak(
                now,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        if let Some(key) = key {
            let mut shard = self
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let held = shard.entry(key).or_insert(0);
            if held.saturating_add(len) > self.limits.body_buffer_per_address {
                if *held == 0 {
                    shard.remove(&key);
                }
                drop(shard);
                self.buffered.fetch_sub(len, Ordering::AcqRel);
                return false;
            }
            *held += len;
        }
        self.metrics
            .request_buffer()
            .inc_by(i64::try_from(len).unwrap_or(i64::MAX));
        true
    }

    /// [`Traffic::reserve`], waiting for room (memory that other requests give back) at
    /// most `wait`.
    async fn reserve_waiting(&self, key: Option<IpAddr>, len: usize, wait: Duration) -> bool {
        if self.reserve(key, len) {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        let reserved = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.reserve(key, len) {
                break true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break self.reserve(key, len);
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        reserved
    }

    fn release(&self, key: Option<IpAddr>, len: usize) {
        if len == 0 {
            return;
        }
        self.buffered.fetch_sub(len, Ordering::AcqRel);
        self.metrics
            .request_buffer()
            .dec_by(i64::try_from(len).unwrap_or(i64::MAX));
        if let Some(key) = key {
            let mut shard = self
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(held) = shard.get_mut(&key) {
                *held = held.saturating_sub(len);
                if *held == 0 {
                    shard.remove(&key);
                }
            }
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// A request body found no room in the read-ahead memory (in total, or in its address's
/// share) for as long as the body timeout: the request is refused (503), rather than sent
/// upstream unread, where a client that does not send its body would hold the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no room to read the request body ahead")]
pub struct BufferFull;

/// Why a request body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlowBody {
    /// Nothing arrived for the body timeout.
    #[error("the request body stopped arriving for {} s", .0.as_secs())]
    Stalled(Duration),
    /// The average rate fell below the minimum.
    #[error("the request body arrived slower than {0} bytes per second")]
    TooSlow(u64),
    /// The body was still arriving when the upstream's time was up.
    #[error("the request body was not complete within the request timeout of {} s", .0.as_secs())]
    Unfinished(Duration),
}

impl SlowBody {
    /// The limit that cut the body.
    pub(crate) fn limit(self) -> Limit {
        match self {
            SlowBody::Stalled(_) | SlowBody::Unfinished(_) => Limit::BodyTimeout,
            SlowBody::TooSlow(_) => Limit::BodyRate,
        }
    }
}

/// The [`SlowBody`] that `error` (or an error it was caused by) is, if any.
pub(crate) fn slow_body(error: &(dyn std::error::Error + 'static)) -> Option<SlowBody> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(slow) = error.downcast_ref::<SlowBody>() {
            return Some(*slow);
        }
        current = error.source();
    }
    None
}

/// What a request's body did, told to the upstream call: whether the upstream has answered
/// (the pace is no longer watched), and whether the gateway cut the body or the client broke
/// it off (a failure of the exchange that is the client's, never the endpoint's).
#[derive(Debug, Default)]
pub(crate) struct BodyState {
    answered: AtomicBool,
    cut: OnceLock<SlowBody>,
    broken: AtomicBool,
}

impl BodyState {
    /// The upstream answered: the body goes at the client's pace from now on.
    pub(crate) fn answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// Why the gateway cut the body, if it did.
    pub(crate) fn cut(&self) -> Option<SlowBody> {
        self.cut.get().copied()
    }

    /// Whether the client's body failed (the client reset or aborted it).
    pub(crate) fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// The clock of a body's pace: bytes received, time spent waiting for them.
#[derive(Debug)]
struct Pace {
    timeout: Duration,
    min_rate: u64,
    received: u64,
    /// Time spent waiting for the client in earlier waits.
    waited: Duration,
    /// When the current wait began.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Pace {
    fn new(limits: &TrafficLimits) -> Self {
        Self {
            timeout: limits.body_timeout,
            min_rate: limits.body_min_rate,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// How long the current wait may last, and what is wrong when it lasts longer.
    fn allowance(&self) -> (Duration, SlowBody) {
        let stalled = (self.timeout, SlowBody::Stalled(self.timeout));
        if self.min_rate == 0 {
            return stalled;
        }
        // the body may fall behind the rate by the grace at most: received >= rate *
        // (waited - grace), so the total wait may reach received / rate + grace
        let earned_nanos = u128::from(self.received) * 1_000_000_000 / u128::from(self.min_rate);
        let earned = Duration::from_nanos(u64::try_from(earned_nanos).unwrap_or(u64::MAX));
        let rate = (earned + RATE_GRACE).saturating_sub(self.waited);
        if rate < stalled.0 {
            (rate, SlowBody::TooSlow(self.min_rate))
        } else {
            stalled
        }
    }

    /// The body returned something: the wait (if any) ends.
    fn arrived(&mut self, bytes: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.received += bytes as u64;
    }

    /// The body is pending: `Err` when it has been waited for too long.
    fn pending(&mut self, cx: &mut Context<'_>) -> Result<(), SlowBody> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let (allowed, error) = self.allowance();
        let deadline = since + allowed;
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(error),
            Poll::Pending => Ok(()),
        }
    }
}

/// A request body whose pace is watched until the upstream answers (see the module docs).
pub(crate) struct Paced {
    inner: Body,
    pace: Pace,
    state: Arc<BodyState>,
    metrics: ProxyMetrics,
}

impl Paced {
    pub(crate) fn new(inner: Body, traffic: &Traffic, state: Arc<BodyState>) -> Self {
        Self {
            inner,
            pace: Pace::new(&traffic.limits),
            state,
            metrics: traffic.metrics.clone(),
        }
    }
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Err(_)))) {
            this.state.broken.store(true, Ordering::Release);
        }
        if this.state.answered.load(Ordering::Acquire) {
            this.pace.timer = None;
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.pace.arrived(frame.data_ref().map_or(0, Bytes::len));
            }
            Poll::Ready(_) => this.pace.arrived(0),
            Poll::Pending => {
                if let Err(slow) = this.pace.pending(cx) {
                    this.metrics.limit_rejected(slow.limit());
                    let _ = this.state.cut.set(slow);
                    return Poll::Ready(Some(Err(Box::new(slow))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How much of a body to read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    /// Up to the read-ahead size (all of a shorter body).
    Bytes,
    /// A gRPC request: its first length-prefixed message (at most the read-ahead size).
    GrpcMessage,
}

/// The growth step of the buffer of a body of unknown length.
const STEP: usize = 16 * 1024;

/// A body read ahead: what was read, in one buffer whose capacity is charged to the
/// read-ahead memory (given back once it is handed on), then trailers, and the rest of the
/// client's body, paced.
pub(crate) struct ReadAhead {
    buffer: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Paced>,
    reserved: usize,
    key: Option<IpAddr>,
    traffic: Arc<Traffic>,
}

impl ReadAhead {
    /// Reads `body` ahead (see the module docs) for a client at `peer`, pacing it; the body
    /// stays paced until `state` says the upstream answered. A body that is too slow, or
    /// that the client breaks off, is an error.
    pub(crate) async fn read(
        body: Body,
        traffic: &Arc<Traffic>,
        state: Arc<BodyState>,
        peer: Option<IpAddr>,
        ahead: Ahead,
    ) -> Result<Self, BoxError> {
        let limit = traffic.limits.body_read_ahead;
        let known = body
            .size_hint()
            .exact()
            .map(|len| usize::try_from(len).unwrap_or(usize::MAX));
        let target = known.map_or(limit, |len| len.min(limit));
        let mut paced = Paced::new(body, traffic, state);
        let mut read = Self {
            buffer: None,
            trailers: None,
            rest: None,
            reserved: 0,
            key: peer.map(crate::conn::address_key),
            traffic: Arc::clone(traffic),
        };
        let mut buffer = BytesMut::new();
        let wait = traffic.limits.body_timeout;
        loop {
            if buffer.len() >= target || grpc_message_read(ahead, &buffer) {
                break;
            }
            let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut paced).poll_frame(cx)).await
            else {
                break;
            };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    let need = buffer.len() + data.len();
                    if need > buffer.capacity() {
                        // the buffer grows with what arrives (a client that declares a body
                        // and sends a byte holds one step), in steps charged before they are
                        // taken; a frame past the read-ahead size is taken whole
                        let want = need.max((buffer.capacity() * 2).max(STEP).min(target));
                        let more = want - read.reserved;
                        if !traffic.reserve_waiting(read.key, more, wait).await {
                            traffic.metrics.request_buffer_overflowed();
                            return Err(Box::new(BufferFull));
                        }
                        read.reserved += more;
                        let mut bigger = BytesMut::with_capacity(want);
                        bigger.extend_from_slice(&buffer);
                        buffer = bigger;
                    }
                    buffer.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        read.trailers = Some(trailers);
                    }
                }
            }
        }
        if !buffer.is_empty() {
            read.buffer = Some(buffer.freeze());
        } else if read.reserved > 0 {
            traffic.release(read.key, read.reserved);
            read.reserved = 0;
        }
        if !paced.is_end_stream() && read.trailers.is_none() {
            read.rest = Some(paced);
        }
        Ok(read)
    }

    /// Bytes read ahead (in the buffer).
    #[cfg(test)]
    fn read_len(&self) -> usize {
        self.buffer.as_ref().map_or(0, Bytes::len)
    }
}

/// Whether `buffer` holds a whole gRPC message (a 5-byte prefix, then the length it says).
fn grpc_message_read(ahead: Ahead, buffer: &[u8]) -> bool {
    if ahead != Ahead::GrpcMessage || buffer.len() < 5 {
        return false;
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
    buffer.len() - 5 >= usize::try_from(len).unwrap_or(usize::MAX)
}

impl ReadAhead {
    fn give_back(&mut self) {
        self.traffic
            .release(self.key, std::mem::take(&mut self.reserved));
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl http_body::Body for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(buffer) = this.buffer.take() {
            // handed on: the upstream connection writes it out from here
            this.give_back();
            return Poll::Ready(Some(Ok(Frame::data(buffer))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffer.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Paced::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.buffer.as_ref().map_or(0, |b| b.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(held),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + held);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn traffic(limits: TrafficLimits) -> Arc<Traffic> {
        Traffic::new(limits, ProxyMetrics::unregistered())
    }

    /// A body (of `len` bytes, when declared) that the test feeds through the returned
    /// sender; it ends when the sender is dropped.
    fn channel(len: Option<u64>) -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        (tx, crate::body::boxed(Fed { rx, len }))
    }

    struct Fed {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        len: Option<u64>,
    }

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
        fn size_hint(&self) -> SizeHint {
            self.len.map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    fn limits() -> TrafficLimits {
        TrafficLimits {
            body_read_ahead: 8,
            body_buffer_memory: 20,
            body_buffer_per_address: 20,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 10,
            ..TrafficLimits::default()
        }
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    async fn read(traffic: &Arc<Traffic>, body: Body) -> Result<ReadAhead, BoxError> {
        ReadAhead::read(body, traffic, Arc::default(), PEER, Ahead::Bytes).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_is_read_whole() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(6));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tx.send(Bytes::from_static(b"def")).await.unwrap();
        drop(tx);
        let ahead = read(&traffic, body).await.unwrap();
        assert_eq!(ahead.read_len(), 6);
        assert_eq!(traffic.buffered(), 6);
        let bytes = ahead.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdef");
        assert_eq!(traffic.buffered(), 0, "given back as sent");
        assert_eq!(traffic.buffered_for(PEER.unwrap()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_comes_is_cut_and_the_rate_is_judged_after_the_grace() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(100));
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let started = Instant::now();
        let state = Arc::new(BodyState::default());
        let Err(error) =
            ReadAhead::read(body, &traffic, Arc::clone(&state), PEER, Ahead::Bytes).await
        else {
            panic!("a stalled body must be cut")
        };
        // one byte at 10 bytes/s earns 0.1 s, after the grace
        assert_eq!(slow_body(error.as_ref()), Some(SlowBody::TooSlow(10)));
        assert_eq!(state.cut(), Some(SlowBody::TooSlow(10)));
        assert_eq!(started.elapsed(), RATE_GRACE + Duration::from_millis(100));
        assert_eq!(traffic.buffered(), 0, "nothing held after the cut");
        drop(tx);

        // no rate: the body timeout alone
        let traffic = self::traffic(TrafficLimits {
            body_min_rate: 0,
            ..limits()
        });
        let (_tx, body) = channel(Some(100));
        let started = Instant::now();
        let error = read(&traffic, body).await.err().unwrap();
        assert_eq!(
            slow_body(error.as_ref()),
            Some(SlowBody::Stalled(Duration::from_secs(30)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // a chunked body (no length) that sends a byte and stops is cut the same way: it
        // does not go upstream on its first byte
        let traffic = self::traffic(limits());
        let (tx, body) = channel(None);
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let error = read(&traffic, body).await.err().unwrap();
        assert_eq!(slow_body(error.as_ref()), Some(SlowBody::TooSlow(10)));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_at_the_rate_passes_and_an_answered_one_is_not_judged() {
        let traffic = traffic(TrafficLimits {
            body_read_ahead: 1000,
            body_buffer_memory: 1000,
            body_buffer_per_address: 1000,
            ..limits()
        });
        let (tx, body) = channel(Some(60));
        let feeder = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
            }
            tx
        });
        let ahead = read(&traffic, body).await.unwrap();
        assert_eq!(ahead.read_len(), 60);
        drop((ahead, feeder.await.unwrap()));

        // a gRPC stream: its first message, then answered: full duplex, never cut
        let state = Arc::new(BodyState::default());
        let (tx, body) = channel(None);
        tx.send(Bytes::from_static(b"\0\0\0\0\x05hello"))
            .await
            .unwrap();
        let ahead = ReadAhead::read(body, &traffic, Arc::clone(&state), PEER, Ahead::GrpcMessage)
            .await
            .unwrap();
        assert_eq!(ahead.read_len(), 10, "the first message");
        state.answered();
        let reader = tokio::spawn(async move {
            ahead
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
        });
        tokio::time::sleep(Duration::from_hours(1)).await;
        tx.send(Bytes::from_static(b" world")).await.unwrap();
        drop(tx);
        assert_eq!(
            &reader.await.unwrap().unwrap()[..],
            b"\0\0\0\0\x05hello world"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn read_ahead_stops_at_its_size_and_waits_for_memory() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(30));
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
        }
        let first = read(&traffic, body).await.unwrap();
        assert_eq!(
            first.read_len(),
            10,
            "the frame that passed the 8 bytes, whole"
        );
        assert!(first.rest.is_some());
        assert_eq!(traffic.buffered(), 10);

        // 10 of 20 bytes of memory left: a second body takes them
        let (tx2, body) = channel(Some(30));
        for _ in 0..2 {
            tx2.send(Bytes::from_static(b"0123456789")).await.unwrap();
        }
        let second = read(&traffic, body).await.unwrap();
        assert_eq!(traffic.buffered(), 20);

        // a third waits for room: given as the first goes upstream
        let (tx3, body) = channel(Some(30));
        tx3.send(Bytes::from_static(b"0123456789")).await.unwrap();
        let third = tokio::spawn({
            let traffic = Arc::clone(&traffic);
            async move { read(&traffic, body).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "waits for room");
        drop(first);
        let third = third.await.unwrap().unwrap();
        assert_eq!(third.read_len(), 10);

        // a fourth finds none for the body timeout: refused, never sent on unread
        let (tx4, body) = channel(Some(30));
        tx4.send(Bytes::from_static(b"0123456789")).await.unwrap();
        let started = Instant::now();
        let error = read(&traffic, body).await.err().unwrap();
        assert!(error.is::<BufferFull>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop((second, third, tx, tx2, tx3, tx4));
        assert_eq!(traffic.buffered(), 0);
    }

    /// What is held is what is counted, however the client slices its body: a thousand
    /// one-byte frames are one buffer of a thousand bytes.
    #[tokio::test(start_paused = true)]
    async fn tiny_frames_are_held_in_one_charged_buffer() {
        let traffic = traffic(TrafficLimits {
            body_read_ahead: 1000,
            body_buffer_memory: 4000,
            body_buffer_per_address: 4000,
            ..limits()
        });
        let (tx, body) = channel(Some(1000));
        let feeder = tokio::spawn(async move {
            for _ in 0..1000 {
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let ahead = read(&traffic, body).await.unwrap();
        feeder.await.unwrap();
        assert_eq!(ahead.read_len(), 1000);
        assert_eq!(traffic.buffered(), 1000);
        assert!(ahead.rest.is_none() || ahead.is_end_stream() || ahead.buffer.is_some());
    }

    /// One address may hold its share of the read-ahead memory, no more: its next body
    /// waits (and is refused if no room comes), another address's is read ahead; and a body
    /// that declares a large length and sends a byte holds one step of the buffer, not the
    /// length it declared.
    #[tokio::test(start_paused = true)]
    async fn an_address_holds_its_share_at_most() {
        let traffic = traffic(TrafficLimits {
            body_read_ahead: 10,
            body_buffer_memory: 100,
            body_buffer_per_address: 15,
            ..limits()
        });
        let full = |len| async move {
            let (tx, body) = channel(Some(len));
            tx.send(Bytes::from(vec![b'x'; 10])).await.unwrap();
            (tx, body)
        };
        let (_a, body) = full(10).await;
        let first = read(&traffic, body).await.unwrap();
        assert_eq!(first.read_len(), 10);
        let (_b, body) = full(10).await;
        let refused = read(&traffic, body).await.err().unwrap();
        assert!(refused.is::<BufferFull>(), "over the address's share");
        let (_c, body) = full(10).await;
        let other = ReadAhead::read(
            body,
            &traffic,
            Arc::default(),
            Some("10.0.0.9".parse().unwrap()),
            Ahead::Bytes,
        )
        .await
        .unwrap();
        assert_eq!(other.read_len(), 10);
        assert_eq!(traffic.buffered_for(PEER.unwrap()), 10);
        drop((first, other));
        assert_eq!(traffic.buffered(), 0);
        assert_eq!(traffic.buffered_for(PEER.unwrap()), 0);

        // a million bytes declared, one sent: one step held
        let traffic = self::traffic(TrafficLimits {
            body_read_ahead: 1024 * 1024,
            body_buffer_memory: 4 * 1024 * 1024,
            body_buffer_per_address: 4 * 1024 * 1024,
            ..limits()
        });
        let (tx, body) = channel(Some(1_000_000));
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let reading = tokio::spawn({
            let traffic = Arc::clone(&traffic);
            async move { read(&traffic, body).await.is_err() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(traffic.buffered(), STEP);
        drop(tx);
        assert!(reading.await.unwrap() || traffic.buffered() == 0);
    }
}
