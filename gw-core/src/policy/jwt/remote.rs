//! `jwksUrl`: a JWKS fetched over HTTP or HTTPS, cached, refreshed on a schedule and when a
//! token names a key the cache does not hold.
//!
//! One [`Remote`] serves every `jwt` policy of the process with the same URL and intervals,
//! across configurations: a new configuration finds the keys the previous one fetched (the
//! registry holds weak references, so a URL no policy uses any more is forgotten, and its
//! refresh task stops). A fetch that fails keeps the last good keys. Fetches are bounded in
//! time ([`FETCH_TIMEOUT`]) and size ([`MAX_JWKS_BYTES`]), follow no redirects, and are
//! logged with the URL's scheme, host and path only (a query may carry a secret).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Empty;
use tokio::time::Instant;

use super::keys::{self, KeySet, Origin};
use crate::http_client::{self, ClientError, Target};

/// How long one fetch may take, connection included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS read.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The shortest wait before retrying a failed scheduled fetch.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// Why a fetch failed. The messages name no key material and no URL query.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The exchange itself failed: no connection, TLS, HTTP, or a body over
    /// [`MAX_JWKS_BYTES`].
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Not a 200 (redirects are not followed).
    #[error("answered {0}, not 200 OK (redirects are not followed)")]
    Status(StatusCode),
    /// No answer within [`FETCH_TIMEOUT`].
    #[error("no answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// The body is not a JWKS.
    #[error("the body is not a JWKS: {0}")]
    Invalid(String),
}

/// What the fetches so far have done.
#[derive(Debug, Default)]
struct State {
    /// When the last fetch ended.
    attempted: Option<Instant>,
    /// Whether it succeeded.
    succeeded: bool,
    /// When the last fetch asked for by an unknown `kid` started.
    on_demand: Option<Instant>,
}

/// A JWKS URL's keys, shared by the policies that name it.
pub(crate) struct Remote {
    target: Target,
    refresh: Duration,
    min_refresh: Duration,
    keys: ArcSwap<KeySet>,
    /// Held for the whole of a fetch: requests waiting for keys wait on it.
    state: tokio::sync::Mutex<State>,
    /// Whether a fetch has ended (well or not).
    settled: AtomicBool,
    /// How many fetches have started (for tests and debugging).
    fetches: AtomicU64,
    /// The refresh task, aborted when the last policy lets go.
    task: ArcSwapOption<tokio::task::AbortHandle>,
    /// Held while a refresh task is being started.
    starting: Mutex<()>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.target.shown())
            .field("refresh", &self.refresh)
            .field("min_refresh", &self.min_refresh)
            .finish_non_exhaustive()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(task) = &*self.task.load() {
            task.abort();
        }
    }
}

type Registry = Mutex<HashMap<(String, Duration, Duration), Weak<Remote>>>;

/// The remotes in use, by URL and intervals.
static REMOTES: LazyLock<Registry> = LazyLock::new(Registry::default);

impl Remote {
    /// The remote for `url` with these intervals: the one already in use, or a new one
    /// (whose first fetch starts at once when called inside a Tokio runtime, else with the
    /// first request).
    pub(crate) fn shared(
        url: &url::Url,
        refresh: Duration,
        min_refresh: Duration,
    ) -> Result<Arc<Self>, String> {
        let key = (url.as_str().to_string(), refresh, min_refresh);
        let mut remotes = REMOTES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(remote) = remotes.get(&key).and_then(Weak::upgrade) {
            return Ok(remote);
        }
        remotes.retain(|_, remote| remote.strong_count() > 0);
        let remote = Arc::new(Self {
            target: Target::parse(url)?,
            refresh,
            min_refresh,
            keys: ArcSwap::from_pointee(KeySet::default()),
            state: tokio::sync::Mutex::new(State::default()),
            settled: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
            task: ArcSwapOption::empty(),
            starting: Mutex::new(()),
        });
        remotes.insert(key, Arc::downgrade(&remote));
        drop(remotes);
        remote.start();
        Ok(remote)
    }

    /// The URL's syntax, checked without building anything.
    pub(crate) fn check_url(url: &str) -> Result<url::Url, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            // whoever is on the network path of a plain-HTTP JWKS can mint tokens
            "http" if is_loopback(&parsed) => {}
            "http" => {
                return Err(
                    "must be an https:// URL (http:// only on a loopback address)".to_string(),
                );
            }
            _ => return Err("must be an https:// URL".to_string()),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry a user name or password".to_string());
        }
        if parsed.host().is_none() {
            return Err("must name a host".to_string());
        }
        if parsed.fragment().is_some() {
            return Err("must not have a fragment".to_string());
        }
        Ok(parsed)
    }

    /// The keys of the last good fetch (a lock-free load).
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Whether no fetch has ended yet.
    pub(crate) fn pending(&self) -> bool {
        !self.settled.load(Ordering::Acquire)
    }

    /// Whether a fetch has ended and none is in progress.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        !self.pending() && self.state.try_lock().is_ok()
    }

    /// How many fetches have started.
    #[cfg(test)]
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Whether a token with an unknown `kid` may wait for a fetch: none asked for by a `kid`
    /// in the last `minRefreshInterval`, or one in progress.
    pub(crate) fn may_refetch(&self) -> bool {
        match self.state.try_lock() {
            Ok(state) => !self.recent(state.on_demand),
            Err(_) => true,
        }
    }

    fn recent(&self, at: Option<Instant>) -> bool {
        at.is_some_and(|at| at.elapsed() < self.min_refresh)
    }

    /// Starts the refresh task when there is a runtime to run it and no task runs (none
    /// started yet, or the runtime it ran on is gone).
    pub(crate) fn start(self: &Arc<Self>) {
        let running = || self.task.load().as_ref().is_some_and(|t| !t.is_finished());
        if running() {
            return;
        }
        let _starting = self
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let task = runtime.spawn(async move {
            loop {
                let Some(remote) = weak.upgrade() else {
                    return;
                };
                let wait = remote.scheduled().await;
                drop(remote);
                tokio::time::sleep(wait).await;
            }
        });
        self.task.store(Some(Arc::new(task.abort_handle())));
    }

    /// Fetches when a refresh is due; returns the time until the next one.
    async fn scheduled(&self) -> Duration {
        let mut state = self.state.lock().await;
        let retry = self.min_refresh.max(MIN_RETRY).min(self.refresh);
        let next = |state: &State| match state.attempted {
            None => Duration::ZERO,
            Some(at) => {
                let every = if state.succeeded { self.refresh } else { retry };
                every.saturating_sub(at.elapsed())
            }
        };
        if next(&state).is_zero() {
            self.fetch_locked(&mut state).await;
        }
        next(&state).max(MIN_RETRY.min(self.refresh))
    }

    /// Waits until a first fetch has ended, fetching if none has started.
    pub(crate) async fn settle(&self) {
        let mut state = self.state.lock().await;
        if state.attempted.is_none() {
            self.fetch_locked(&mut state).await;
        }
    }

    /// Fetches again for a token whose `kid` no key has, unless one fetched for a `kid` in
    /// the last `minRefreshInterval` (or a concurrent fetch found the key).
    pub(crate) async fn refetch_for(&self, kid: &str) {
        let mut state = self.state.lock().await;
        if self.keys.load().has_kid(kid) || self.recent(state.on_demand) {
            return;
        }
        state.on_demand = Some(Instant::now());
        self.fetch_locked(&mut state).await;
    }

    async fn fetch_locked(&self, state: &mut State) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        };
        state.attempted = Some(Instant::now());
        state.succeeded = result.is_ok();
        match result {
            Ok(set) => {
                tracing::debug!(url = %self.target.shown(), keys = set.keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(set));
            }
            Err(err) => tracing::warn!(
                url = %self.target.shown(),
                error = %crate::error::chain(&err),
                "JWKS fetch failed; the last good keys stay in use"
            ),
        }
        self.settled.store(true, Ordering::Release);
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let body = self.exchange().await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| FetchError::Invalid(e.to_string()))?;
        let (set, problems) =
            keys::from_jwks(&value, Origin::Fetched, None).map_err(FetchError::Invalid)?;
        for (index, reason) in problems {
            tracing::debug!(url = %self.target.shown(), index, reason, "JWKS key skipped");
        }
        if set.keys.is_empty() {
            // a failure, not a new truth: the last good keys stay in use
            return Err(FetchError::Invalid(
                "the JWKS holds no usable key".to_string(),
            ));
        }
        Ok(set)
    }

    async fn exchange(&self) -> Result<Bytes, FetchError> {
        let mut connection = self.target.connect::<Empty<Bytes>>().await?;
        let request = self
            .target
            .request(http::Method::GET)
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(header::USER_AGENT, "gw")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        let response = connection.send(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        Ok(http_client::read_body(response, MAX_JWKS_BYTES).await?)
    }
}

/// Whether the URL's host is a loopback address (or `localhost`).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
