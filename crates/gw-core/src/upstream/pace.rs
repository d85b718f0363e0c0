//! What a client can make the gateway hold with a request body it does not send, and with
//! a tunnel it does not use.
//!
//! A request body is read ahead before an upstream connection is taken: a body of known
//! length up to [`TrafficLimits::body_read_ahead`] bytes is read whole, a longer one up to
//! that size, and one of unknown length (chunked, or HTTP/2 without `content-length`)
//! until its first bytes arrive. So only a client that actually sends its body holds
//! upstream capacity; one that declares a body and sends nothing is answered 408 without
//! the upstream ever seeing it. What read-ahead holds, over every request together, is
//! bounded by [`TrafficLimits::body_buffer_memory`]; past it, bodies are not read ahead
//! any further and stream as they come.
//!
//! Until the upstream's response headers arrive, the body's pace is watched ([`Paced`]):
//! a body that stops arriving for [`TrafficLimits::body_timeout`], or arrives slower than
//! [`TrafficLimits::body_min_rate`] bytes per second on average (counted over the time
//! spent waiting for the client, never the time the upstream made the gateway wait; a body
//! may fall behind that rate by [`RATE_GRACE`] at most), is cut: the client gets 408 and the
//! upstream connection is closed. Once the upstream has answered, the exchange is a
//! full-duplex stream (gRPC, say) and the request body goes at the client's pace.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
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
            body_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            tunnel_idle_timeout: Duration::from_mins(5),
            tunnel_lifetime: Duration::from_hours(24),
        }
    }
}

/// The limits and what read-ahead holds now, shared by every upstream of a gateway.
#[derive(Debug)]
pub struct Traffic {
    pub(crate) limits: TrafficLimits,
    buffered: AtomicUsize,
    pub(crate) metrics: ProxyMetrics,
}

impl Traffic {
    /// The state of `limits`, counting into `metrics`.
    pub fn new(limits: TrafficLimits, metrics: ProxyMetrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            buffered: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Bytes held by read-ahead now.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Takes `len` bytes of the read-ahead memory, if that many are free.
    fn reserve(&self, len: usize) -> bool {
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
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    fn release(&self, len: usize) {
        if len > 0 {
            self.buffered.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

/// Why a request body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlowBody {
    /// Nothing arrived for the body timeout.
    #[error("the request body stopped arriving for {} s", .0.as_secs())]
    Stalled(Duration),
    /// The average rate fell below the minimum.
    #[error("the request body arrived slower than {0} bytes per second")]
    TooSlow(u64),
}

impl SlowBody {
    /// The limit that cut the body.
    pub(crate) fn limit(self) -> Limit {
        match self {
            SlowBody::Stalled(_) => Limit::BodyTimeout,
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

/// A request body whose pace is watched until `answered` is set (see the module docs).
pub(crate) struct Paced {
    inner: Body,
    pace: Pace,
    answered: Arc<AtomicBool>,
    metrics: ProxyMetrics,
}

impl Paced {
    pub(crate) fn new(inner: Body, traffic: &Traffic, answered: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            pace: Pace::new(&traffic.limits),
            answered,
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
        if this.answered.load(Ordering::Acquire) {
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

/// A body read ahead: the frames read so far, then the rest of the client's body (if it
/// did not end), paced. The read-ahead memory its frames hold is given back as they go.
pub(crate) struct ReadAhead {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Paced>,
    reserved: usize,
    traffic: Arc<Traffic>,
}

impl ReadAhead {
    /// Reads `body` ahead (see the module docs), pacing it; the body stays paced until
    /// `answered` is set. A body that is too slow is an error, counted in the metrics.
    pub(crate) async fn read(
        body: Body,
        traffic: &Arc<Traffic>,
        answered: Arc<AtomicBool>,
    ) -> Result<Self, BoxError> {
        let hint = body.size_hint();
        let known = hint.exact();
        let mut paced = Paced::new(body, traffic, answered);
        let mut ahead = Self {
            frames: VecDeque::new(),
            rest: None,
            reserved: 0,
            traffic: Arc::clone(traffic),
        };
        let target = match known {
            Some(len) => usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(traffic.limits.body_read_ahead),
            // unknown length: until the first bytes (a full-duplex stream must not wait
            // for more than the client sends before it hears back)
            None => 1,
        };
        let mut read = 0usize;
        loop {
            if read >= target {
                break;
            }
            let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut paced).poll_frame(cx)).await
            else {
                // the end
                return Ok(ahead);
            };
            let frame = frame?;
            let len = frame.data_ref().map_or(0, Bytes::len);
            let room = traffic.reserve(len);
            if room {
                ahead.reserved += len;
            }
            read += len;
            ahead.frames.push_back(frame);
            if !room {
                // the memory of read-ahead is taken: this body streams from here
                break;
            }
        }
        if !paced.is_end_stream() {
            ahead.rest = Some(paced);
        }
        Ok(ahead)
    }

    /// Bytes read ahead.
    #[cfg(test)]
    fn read_len(&self) -> usize {
        self.frames
            .iter()
            .map(|f| f.data_ref().map_or(0, Bytes::len))
            .sum()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.traffic.release(self.reserved);
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
        if let Some(frame) = this.frames.pop_front() {
            let len = frame.data_ref().map_or(0, Bytes::len).min(this.reserved);
            this.reserved -= len;
            this.traffic.release(len);
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(Paced::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
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
            body_timeout: Duration::from_secs(30),
            body_min_rate: 10,
            ..TrafficLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_is_read_whole() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(6));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tx.send(Bytes::from_static(b"def")).await.unwrap();
        drop(tx);
        let ahead = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .unwrap();
        assert_eq!(ahead.read_len(), 6);
        assert_eq!(traffic.buffered(), 6);
        let bytes = ahead.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdef");
        assert_eq!(traffic.buffered(), 0, "given back as sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_comes_is_cut_and_the_rate_is_judged_after_the_grace() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(100));
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let started = Instant::now();
        let Err(error) = ReadAhead::read(body, &traffic, Arc::default()).await else {
            panic!("a stalled body must be cut")
        };
        // one byte at 10 bytes/s earns 0.1 s, after the grace
        assert_eq!(slow_body(error.as_ref()), Some(SlowBody::TooSlow(10)));
        assert_eq!(started.elapsed(), RATE_GRACE + Duration::from_millis(100));
        drop(tx);

        // no rate: the body timeout alone
        let traffic = self::traffic(TrafficLimits {
            body_min_rate: 0,
            ..limits()
        });
        let (_tx, body) = channel(Some(100));
        let started = Instant::now();
        let error = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .err()
            .unwrap();
        assert_eq!(
            slow_body(error.as_ref()),
            Some(SlowBody::Stalled(Duration::from_secs(30)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_at_the_rate_passes_and_an_answered_one_is_not_judged() {
        let traffic = traffic(TrafficLimits {
            body_read_ahead: 1000,
            body_buffer_memory: 1000,
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
        let ahead = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .unwrap();
        assert_eq!(ahead.read_len(), 60);
        drop(feeder.await.unwrap());

        // answered: a full-duplex stream, never cut
        let answered = Arc::new(AtomicBool::new(false));
        let (tx, body) = channel(None);
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        let ahead = ReadAhead::read(body, &traffic, Arc::clone(&answered))
            .await
            .unwrap();
        assert_eq!(ahead.read_len(), 5, "unknown length: until the first bytes");
        answered.store(true, Ordering::Release);
        let reader = tokio::spawn(async move {
            ahead
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
        });
        tokio::time::sleep(Duration::from_hours(1)).await;
        tx.send(Bytes::from_static(b" world")).await.unwrap();
        drop(tx);
        assert_eq!(&reader.await.unwrap().unwrap()[..], b"hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn read_ahead_stops_at_its_size_and_at_its_memory() {
        let traffic = traffic(limits());
        let (tx, body) = channel(Some(30));
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
        }
        let first = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .unwrap();
        assert_eq!(
            first.read_len(),
            10,
            "one frame past the 8 bytes of read-ahead"
        );
        assert!(first.rest.is_some());
        assert_eq!(traffic.buffered(), 10);

        // 10 of 20 bytes of memory left: a second body takes them, a third streams
        let (tx2, body) = channel(Some(30));
        for _ in 0..2 {
            tx2.send(Bytes::from_static(b"0123456789")).await.unwrap();
        }
        let second = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .unwrap();
        assert_eq!(traffic.buffered(), 20);
        let (tx3, body) = channel(Some(30));
        tx3.send(Bytes::from_static(b"0123456789")).await.unwrap();
        let third = ReadAhead::read(body, &traffic, Arc::default())
            .await
            .unwrap();
        assert_eq!(
            third.read_len(),
            10,
            "read, but not counted: no memory left"
        );
        assert_eq!(traffic.buffered(), 20);
        drop((first, second, third, tx, tx2, tx3));
        assert_eq!(traffic.buffered(), 0);
    }
}
