//! `backend: redis`: the rate limit's counts in Redis, shared by every gateway process that
//! names the same server, so that a limit holds for the whole cluster.
//!
//! # The check
//!
//! One Lua script per request ([`SCRIPT`], sent with `EVALSHA`, loaded on `NOSCRIPT`) runs
//! the same GCRA as the local backend over all the limits of the request at once: it reads
//! every window's `TAT`, and only if every window conforms does it advance them all. A
//! script runs atomically in Redis, so runtimes never race each other: with `requests` per
//! window, exactly `requests` requests pass a burst, whichever runtimes they reach. The
//! clock is Redis's (`TIME`), in microseconds, so the runtimes' clocks do not matter.
//!
//! # Keys
//!
//! One string key per (attachment, request key, window):
//! `{keyPrefix}{<api>|<operation>|<key>}:<window>`, where `<operation>` is `*` for an
//! API-level policy or `GET /items/{id}` for an operation's, and `<key>` is `api`,
//! `consumer=<name>`, `credential=<id>`, `ip=<address>` (IPv6 per `/64`), or
//! `<kind>#<digest>` (the first 128 bits of the SHA-256, in hex) for a name that is long or
//! not printable ASCII and for every header value (header values may be secrets, such as
//! API keys: they are never written to Redis as they are). The value is the window's `TAT`;
//! the key expires (`PX`) when its `TAT` is past, which is exactly when it no longer counts
//! anything, so Redis holds only the keys of clients that are being limited. The braces
//! are a Redis Cluster hash tag: all the windows of one request live in one slot.
//!
//! # Connections and outages
//!
//! A [`Connection`] per distinct URL is shared by the whole process: the registry holds it
//! weakly, the policies that use it strongly, so a configuration reload (built while the
//! previous configuration still serves) reuses it, and it closes when no policy names the
//! URL any more. A [`RedisRateLimitLayer`] made by an embedder has a connection of its own,
//! shared by its clones. The connection is a `redis::aio::ConnectionManager` (one multiplexed
//! connection, reconnecting by itself), made on the first request: building a
//! configuration never waits for Redis.
//!
//! A check that fails or takes longer than `timeout` makes the request fall back: to a
//! local limiter built with the same limits when `failOpen` is true, else to a 503
//! `rate_limit_unavailable`. While Redis is known to be down, one request at a time probes
//! it (the others fall back at once instead of each waiting for `timeout`), and a manager
//! that has not succeeded for [`STALE`] is replaced by a new one, so that no state of the
//! connection (a half-open socket, an error it gives up on) can keep the limit down after
//! Redis is back. The transitions (unavailable, available again) are logged once each,
//! with the URL's password redacted.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Request, Response, StatusCode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::Digest as _;

use super::{
    BackendKind, Decision, Identity, KeyBuf, KeySource, Keys, LocalLimiter, MAX_KEY_BYTES,
    RateLimitConfig, RateLimitParams, RateLimitPolicy, Window, local, refusal,
};
use crate::body::Body;
use crate::model::{FieldError, HumanDuration};
use crate::policy::PolicyContext;
use crate::policy::deferred::{self, DeferredFilter, DeferredLayer, DeferredService};
use crate::policy::filter::{ConfigError, standalone};

/// The longest `timeout` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `keyPrefix` accepted, in bytes.
const MAX_PREFIX: usize = 256;
/// How long a connection manager may go without a successful check, while checks are
/// failing, before it is replaced by a new one.
pub(crate) const STALE: Duration = Duration::from_secs(2);

/// Where a [`RedisRateLimitLayer`] keeps its counts, and what it does when Redis does not
/// answer: the `redis` and `failOpen` params of `rate-limit` with `backend: redis`.
#[derive(Clone)]
pub struct RedisConfig {
    /// The server: `redis://[:password@]host[:port][/db]`, or `redis+unix:///path`. The
    /// password never appears in logs or errors.
    pub url: String,
    /// Put before every key the layer writes (default `gw:rl:`): layers (and gateways)
    /// with the same server and prefix share their counts.
    pub key_prefix: String,
    /// The longest a request waits for Redis, in whole milliseconds (default 50 ms, at
    /// most 10 s); a check that takes longer counts as Redis being unavailable.
    pub timeout: Duration,
    /// While Redis is unavailable: `true`, each layer enforces the limits on its own (as
    /// [`RateLimitLayer`](super::RateLimitLayer) does) until Redis answers again; `false`
    /// (the default), the request gets 503 `rate_limit_unavailable`.
    pub fail_open: bool,
}

impl RedisConfig {
    /// The server at `url`, with the default prefix, timeout and outage behaviour.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: default_prefix(),
            timeout: default_timeout().as_duration(),
            fail_open: false,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

/// `rate-limit` with the Redis backend as a `tower::Layer` for any stack: the limits hold
/// for every layer, in this process or another, that names the same server and key prefix
/// (a gateway's attachment of the policy counts apart: its keys also name its API and
/// operation, a layer's neither). Its services ([`RedisRateLimit`]) check each
/// request in Redis (one script, atomic), answer a request over a limit with 429 and
/// `Retry-After`, and put the `RateLimit-*` headers on the others unless told not to. The
/// inner service must be `Clone + Send`, as every request awaits Redis before the call.
///
/// The layer and its clones share one connection to Redis, made on the first request and
/// remade by itself after an outage; a check that fails or takes longer than the timeout
/// falls back as [`RedisConfig::fail_open`] says.
///
/// ```no_run
/// use gw_core::policy::ratelimit::{
///     KeyKind, Limit, RateLimitConfig, RedisConfig, RedisRateLimitLayer, Window,
/// };
/// use http::{Request, Response};
/// use tower::{Service as _, ServiceBuilder, ServiceExt as _};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let limit = RedisRateLimitLayer::new(
///     RateLimitConfig {
///         limits: vec![Limit { requests: 100, window: Window::Minute }],
///         key: KeyKind::Api,
///         ..RateLimitConfig::default()
///     },
///     RedisConfig {
///         key_prefix: "shop:rl:".into(),
///         fail_open: true,
///         ..RedisConfig::new("redis://127.0.0.1:6379/0")
///     },
/// )?;
/// let mut service = ServiceBuilder::new()
///     .layer(limit)
///     .service_fn(|_: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
///     });
/// let response = service.ready().await?.call(Request::new(())).await?;
/// assert_eq!(response.headers()["ratelimit-limit"], "100");
/// # Ok(())
/// # }
/// ```
pub type RedisRateLimitLayer = DeferredLayer<RedisRateLimitFilter>;

/// The service of a [`RedisRateLimitLayer`] around `S`.
pub type RedisRateLimit<S> = DeferredService<RedisRateLimitFilter, S>;

impl RedisRateLimitLayer {
    /// Checks `config` and `redis` (the same rules, and field paths, as the params of
    /// `rate-limit` with `backend: redis`) and makes the layer's connection to Redis (not
    /// connected yet: building never waits for Redis).
    pub fn new(config: RateLimitConfig, redis: RedisConfig) -> Result<Self, ConfigError> {
        let millis = u64::try_from(redis.timeout.as_millis()).unwrap_or(u64::MAX);
        let params = RateLimitParams {
            backend: BackendKind::Redis,
            redis: Some(RedisParams {
                url: RedisUrl(redis.url),
                key_prefix: redis.key_prefix,
                timeout: HumanDuration::from_millis(millis),
            }),
            fail_open: Some(redis.fail_open),
            ..RateLimitParams::from(config)
        };
        Self::checked(&RateLimitPolicy, params, |params| {
            RedisRateLimitFilter::build(&params, &standalone(), |url| {
                Connection::new(url).map(Arc::new)
            })
        })
    }
}

/// The params under `redis:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub(crate) struct RedisParams {
    /// The server: `redis://[:password@]host[:port][/db]`, or `redis+unix:///path`. The
    /// password never appears in logs or errors.
    pub url: RedisUrl,
    /// Put before every key the policy writes (default `gw:rl:`); gateways that share a
    /// count must use the same prefix.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// The longest a request waits for Redis (default `50ms`, at most `10s`); a check that
    /// takes longer counts as Redis being unavailable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_prefix() -> String {
    "gw:rl:".to_string()
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_millis(50)
}

/// A Redis URL, which may carry a password: its `Debug` form is redacted.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(crate) struct RedisUrl(String);

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl RedisParams {
    /// The problems of the params, with field paths under `path`.
    pub(super) fn check(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(message) = open(&self.url.0) {
            errors.push(FieldError::new(format!("{path}.url"), message));
        }
        let timeout = self.timeout.as_duration();
        if timeout.is_zero() {
            errors.push(FieldError::new(
                format!("{path}.timeout"),
                "must be more than 0",
            ));
        } else if timeout > MAX_TIMEOUT {
            errors.push(FieldError::new(format!("{path}.timeout"), "at most 10s"));
        }
        if self.key_prefix.len() > MAX_PREFIX {
            errors.push(FieldError::new(
                format!("{path}.keyPrefix"),
                format!("at most {MAX_PREFIX} bytes"),
            ));
        }
        errors
    }
}

/// The client of a Redis URL; the error never repeats the URL, which may hold a password.
fn open(url: &str) -> Result<redis::Client, &'static str> {
    const FORM: &str = "not a Redis URL: write redis://[:password@]host[:port][/db]";
    let parsed = url::Url::parse(url).map_err(|_| FORM)?;
    match parsed.scheme() {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" => return Err("rediss:// (TLS) is not supported: use redis://"),
        _ => return Err(FORM),
    }
    redis::Client::open(url).map_err(|_| FORM)
}

/// `url` for logs: any user name and password become `***`, and so do the values of query
/// parameters that name a password.
pub(crate) fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(not a URL)".to_string();
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name.to_ascii_lowercase().contains("pass") {
                    "***".to_string()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The GCRA of one request over all its limits, atomically.
///
/// `KEYS[i]`: the `TAT` of limit `i` (microseconds of Redis time). `ARGV[3i-2..3i]`: limit
/// `i`'s interval and burst (microseconds) and requests. Returns `{allowed (0 or 1),
/// tightest limit (1-based), its remaining requests, microseconds until it is whole again,
/// microseconds until a refused request would pass (0 when allowed)}`. Numbers stay below
/// 2^53, where Lua's doubles are exact, and are written with `%.0f`, never in exponent
/// form.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LUA));

const LUA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local n = #KEYS
local tats = {}
local allowed = 1
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if tat < now then tat = now end
  tats[i] = tat
  if tat + interval > now + burst then allowed = 0 end
end
local best, best_remaining, best_reset, wait = 0, 0, 0, 0
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local requests = tonumber(ARGV[3 * i])
  local tat = tats[i]
  if allowed == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.0f', tat),
      'PX', string.format('%.0f', math.ceil((tat - now) / 1000)))
  else
    local w = tat + interval - burst - now
    if w > wait then wait = w end
  end
  local remaining = math.floor((now + burst - tat) / interval)
  if remaining < 0 then remaining = 0 end
  if remaining > requests then remaining = requests end
  local reset = tat - now
  if best == 0 or remaining < best_remaining
      or (remaining == best_remaining and reset > best_reset) then
    best, best_remaining, best_reset = i, remaining, reset
  end
end
return {allowed, best, best_remaining, best_reset, wait}
";

/// What [`SCRIPT`] returns.
type Reply = (i64, i64, i64, i64, i64);

/// One limit in the script's units: microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Micros {
    interval: u64,
    burst: u64,
    /// The requests the script counts with: the limit's, at most one per microsecond.
    requests: u64,
}

impl Micros {
    fn new(requests: u64, window: Window) -> Self {
        let window = u64::try_from(window.duration().as_micros()).unwrap_or(u64::MAX);
        let requests = requests.clamp(1, window);
        let interval = window / requests;
        Self {
            interval,
            burst: interval * requests,
            requests,
        }
    }
}

const ALIVE: u8 = 0;
const DOWN: u8 = 1;

/// The process-wide connections, by URL. Weak: a connection lives as long as a policy
/// uses it.
static CONNECTIONS: LazyLock<Mutex<HashMap<String, Weak<Connection>>>> =
    LazyLock::new(Mutex::default);

/// One Redis server's connection, shared by every policy of the process that names its URL.
pub(crate) struct Connection {
    client: redis::Client,
    /// The URL with its password redacted: what logs say.
    url: String,
    /// The password, raw and decoded, scrubbed from the errors that are logged.
    secrets: Vec<String>,
    /// The connection manager; made on the first check, replaced when stale.
    managed: ArcSwapOption<Managed>,
    /// Held while a manager is made or replaced.
    making: Mutex<()>,
    state: AtomicU8,
    /// Whether a request is probing Redis while it is down.
    probing: AtomicBool,
    /// The zero of `last_ok` and of [`Managed::born`].
    epoch: Instant,
    /// Milliseconds since `epoch` of the last successful check.
    last_ok: AtomicU64,
}

struct Managed {
    manager: ConnectionManager,
    /// Milliseconds since the connection's epoch.
    born: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("down", &(self.state.load(Ordering::Relaxed) == DOWN))
            .finish_non_exhaustive()
    }
}

/// A request's turn to check Redis; a prober gives the turn back when it is done (or
/// dropped).
struct Turn<'a>(Option<&'a AtomicBool>);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Release);
        }
    }
}

impl Connection {
    /// The process's connection to `url`, made (not connected) if there is none.
    pub(crate) fn shared(url: &str) -> Result<Arc<Self>, String> {
        let mut connections = CONNECTIONS.lock().unwrap_or_else(PoisonError::into_inner);
        connections.retain(|_, weak| weak.strong_count() > 0);
        if let Some(connection) = connections.get(url).and_then(Weak::upgrade) {
            return Ok(connection);
        }
        let connection = Arc::new(Self::new(url)?);
        connections.insert(url.to_string(), Arc::downgrade(&connection));
        Ok(connection)
    }

    /// A connection of its own to `url` (not connected yet).
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let client = open(url).map_err(|message| format!("redis.url: {message}"))?;
        let mut secrets = Vec::new();
        if let Ok(parsed) = url::Url::parse(url) {
            for part in [parsed.username(), parsed.password().unwrap_or_default()] {
                if !part.is_empty() {
                    secrets.push(part.to_string());
                    if let Ok(decoded) = percent_decode(part) {
                        secrets.push(decoded);
                    }
                }
            }
        }
        Ok(Self {
            client,
            url: redact(url),
            secrets,
            managed: ArcSwapOption::empty(),
            making: Mutex::new(()),
            state: AtomicU8::new(ALIVE),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
            last_ok: AtomicU64::new(0),
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A new connection manager, connecting in a task of its own so that the connection
    /// is made even if the request that asked for it stops waiting.
    fn connect(&self) -> redis::RedisResult<Arc<Managed>> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(MAX_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(5);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        let mut connecting = manager.clone();
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut connecting).await;
        });
        Ok(Arc::new(Managed {
            manager,
            born: self.millis(),
        }))
    }

    /// The connection manager, made on first use.
    fn manager(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(managed) = &*self.managed.load() {
            return Ok(managed.manager.clone());
        }
        let _making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(managed) = &*self.managed.load() {
            return Ok(managed.manager.clone());
        }
        let managed = self.connect()?;
        let manager = managed.manager.clone();
        self.managed.store(Some(managed));
        Ok(manager)
    }

    /// Whether this request may check Redis: always while it is up; while it is down, one
    /// request at a time.
    fn turn(&self) -> Option<Turn<'_>> {
        if self.state.load(Ordering::Acquire) != DOWN {
            return Some(Turn(None));
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            None
        } else {
            Some(Turn(Some(&self.probing)))
        }
    }

    /// Runs `invocation`, waiting at most `timeout`; `None` when Redis is unavailable.
    async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Option<Reply> {
        let _turn = self.turn()?;
        let outcome = match self.manager() {
            Ok(mut manager) => {
                match tokio::time::timeout(timeout, invocation.invoke_async(&mut manager)).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(reply) => {
                self.succeeded();
                Some(reply)
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    fn succeeded(&self) {
        self.last_ok.store(self.millis(), Ordering::Relaxed);
        if self.state.swap(ALIVE, Ordering::AcqRel) == DOWN {
            tracing::info!(
                redis = %self.url,
                "rate-limit: Redis is available again; limits are cluster-wide again"
            );
        }
    }

    fn failed(&self, error: &str) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            let mut error = error.to_string();
            for secret in &self.secrets {
                error = error.replace(secret.as_str(), "***");
            }
            tracing::warn!(
                redis = %self.url,
                %error,
                "rate-limit: Redis is unavailable; requests get the local limit (failOpen) \
                 or 503 until it answers again"
            );
        }
        self.replace_if_stale();
    }

    /// Replaces the connection manager if neither it nor the last success is recent.
    fn replace_if_stale(&self) {
        let stale = |managed: &Option<Arc<Managed>>| {
            let since = managed.as_ref().map_or(0, |m| m.born);
            let since = since.max(self.last_ok.load(Ordering::Relaxed));
            self.millis().saturating_sub(since) >= u64::try_from(STALE.as_millis()).unwrap_or(0)
        };
        if !stale(&self.managed.load_full()) {
            return;
        }
        let _making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if stale(&self.managed.load_full())
            && let Ok(managed) = self.connect()
        {
            tracing::debug!(redis = %self.url, "rate-limit: a new Redis connection");
            self.managed.store(Some(managed));
        }
    }
}

/// `text` with its `%XX` escapes decoded, when that gives UTF-8.
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(hi), Some(lo)) = (hex(hi), hex(lo))
        {
            // two hex digits: below 256
            #[allow(clippy::cast_possible_truncation)]
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
}

/// The compiled `rate-limit` policy with the Redis backend: the [`DeferredFilter`] of a
/// [`RedisRateLimitLayer`] and of the policy's attachments with `backend: redis`.
pub struct RedisRateLimitFilter {
    connection: Arc<Connection>,
    timeout: Duration,
    /// `{keyPrefix}{<api>|<operation>|`: the start of every key.
    scope: String,
    /// Per limit: its window's name, its figures in microseconds, its requests as written.
    limits: Box<[(&'static str, Micros, u64)]>,
    keys: Keys,
    headers: bool,
    /// With `failOpen`: the limiter used while Redis is unavailable.
    fallback: Option<LocalLimiter>,
}

impl fmt::Debug for RedisRateLimitFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitFilter")
            .field("connection", &self.connection)
            .field("timeout", &self.timeout)
            .field("scope", &self.scope)
            .field("fail_open", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisRateLimitFilter {
    /// The limit of checked `params` (with `backend: redis`) for the attachment `ctx`, on
    /// the connection `connect` gives for the URL of `params`.
    pub(super) fn build(
        params: &RateLimitParams,
        ctx: &PolicyContext<'_>,
        connect: impl FnOnce(&str) -> Result<Arc<Connection>, String>,
    ) -> Result<Self, String> {
        let Some(redis) = &params.redis else {
            return Err("redis: required with backend: redis".to_string());
        };
        let keys = Keys::build(params)?;
        let fallback = if params.fail_open.unwrap_or(false) {
            Some(local(&params.limits)?)
        } else {
            None
        };
        let limits: Vec<(u64, Window)> = params
            .limits
            .iter()
            .map(|l| (l.requests, l.window))
            .collect();
        Ok(Self::with_connection(
            connect(&redis.url.0)?,
            redis,
            ctx,
            &limits,
            keys,
            params.headers,
            fallback,
        ))
    }

    fn with_connection(
        connection: Arc<Connection>,
        params: &RedisParams,
        ctx: &PolicyContext<'_>,
        limits: &[(u64, Window)],
        keys: Keys,
        headers: bool,
        fallback: Option<LocalLimiter>,
    ) -> Self {
        let operation = ctx
            .operation
            .map_or_else(|| "*".to_string(), |o| format!("{} {}", o.method, o.path));
        Self {
            connection,
            timeout: params.timeout.as_duration(),
            scope: format!("{}{{{}|{operation}|", params.key_prefix, ctx.api),
            limits: limits
                .iter()
                .map(|&(requests, window)| {
                    (window.as_str(), Micros::new(requests, window), requests)
                })
                .collect(),
            keys,
            headers,
            fallback,
        }
    }

    /// What the request is counted by, as written in its Redis keys.
    fn part<B>(&self, request: &Request<B>) -> Option<String> {
        let kind = self.keys.kind();
        Some(match self.keys.identity(request) {
            Identity::Api => "api".to_string(),
            Identity::Named(name)
                if name.len() <= MAX_KEY_BYTES
                    && name.iter().all(u8::is_ascii_graphic)
                    && !matches!(self.keys.source, KeySource::Header(_)) =>
            {
                // printable ASCII: UTF-8
                format!("{kind}={}", String::from_utf8_lossy(name))
            }
            Identity::Named(other) => {
                let digest = sha2::Sha256::digest(other);
                let mut part = format!("{kind}#");
                for byte in &digest[..16] {
                    let _ = write!(part, "{byte:02x}");
                }
                part
            }
            Identity::Address(ip) => match ip.to_canonical() {
                IpAddr::V4(v4) => format!("ip={v4}"),
                IpAddr::V6(v6) => {
                    let block = Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX));
                    format!("ip={block}/64")
                }
            },
            Identity::Unknown => return None,
        })
    }

    /// The Redis key of `part` in the limit of `window`.
    fn key(&self, part: &str, window: &str) -> String {
        format!("{}{part}}}:{window}", self.scope)
    }

    /// Decides a request counted by `part` in Redis; `None` when Redis is unavailable.
    async fn check(&self, part: &str) -> Option<Decision> {
        let mut invocation = SCRIPT.prepare_invoke();
        for &(window, micros, _) in &*self.limits {
            invocation
                .key(self.key(part, window))
                .arg(micros.interval)
                .arg(micros.burst)
                .arg(micros.requests);
        }
        let (allowed, tightest, remaining, reset, wait) =
            self.connection.run(&invocation, self.timeout).await?;
        let allowed = allowed == 1;
        let limit = usize::try_from(tightest - 1)
            .ok()
            .and_then(|i| self.limits.get(i))
            .map_or(0, |&(_, _, requests)| requests);
        let micros = |n: i64| u64::try_from(n).unwrap_or(0);
        Some(Decision {
            allowed,
            limit,
            remaining: micros(remaining),
            reset: micros(reset).div_ceil(1_000_000),
            retry_after: if allowed {
                0
            } else {
                micros(wait).div_ceil(1_000_000).max(1)
            },
        })
    }
}

impl DeferredFilter for RedisRateLimitFilter {
    /// What the request is counted by, as written in its Redis keys.
    type Pending = String;
    /// The decision, when its headers go on the response.
    type State = Option<Decision>;

    fn decide<B>(&self, request: &mut Request<B>) -> deferred::Decision<Self::State, String> {
        match self.part(request) {
            Some(part) => deferred::Decision::Defer(part),
            None => deferred::Decision::Refuse(crate::error::conn_info_missing()),
        }
    }

    async fn settle<B: Send>(
        &self,
        part: String,
        request: &mut Request<B>,
    ) -> Result<Option<Decision>, Response<Body>> {
        let decision = match self.check(&part).await {
            Some(decision) => decision,
            None => match &self.fallback {
                Some(local) => {
                    let mut buf = KeyBuf::default();
                    let Some(key) = self.keys.local(request, &mut buf) else {
                        return Err(crate::error::conn_info_missing());
                    };
                    local.decide(key, local.now())
                }
                None => return Err(unavailable()),
            },
        };
        if !decision.allowed {
            return Err(refusal(&decision, self.headers));
        }
        Ok(self.headers.then_some(decision))
    }
}

/// The 503 of a request whose limit cannot be checked.
fn unavailable() -> Response<Body> {
    let mut response = crate::error::json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_unavailable",
        "the rate limit cannot be checked right now; try again",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use std::hash::RandomState;

    use super::*;
    use crate::policy::ratelimit::{KeyKind, Limit};
    use crate::policy::testing::{call, call_seen, ctx, request_from, text};
    use crate::policy::{OperationContext, Policy, RouteLayer};

    /// The Redis the tests use: `GW_TEST_REDIS_URL`, else the local server.
    fn redis_url() -> String {
        std::env::var("GW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    /// A key prefix no other test uses.
    fn prefix() -> String {
        format!("gw:test:{:016x}:", rand::random::<u64>())
    }

    fn params(url: &str, prefix: &str) -> RedisParams {
        RedisParams {
            url: RedisUrl(url.to_string()),
            key_prefix: prefix.to_string(),
            timeout: HumanDuration::from_secs(2),
        }
    }

    fn keys(source: KeySource) -> Keys {
        Keys {
            source,
            trusted: Vec::new(),
            digest: [RandomState::new(), RandomState::new()],
        }
    }

    /// A limit on its own connection to the test server (a test's runtime is its own, so
    /// tests do not share the process-wide connections).
    fn limit(prefix: &str, limits: &[(u64, Window)]) -> RedisRateLimitFilter {
        let url = redis_url();
        RedisRateLimitFilter::with_connection(
            Arc::new(Connection::new(&url).unwrap()),
            &params(&url, prefix),
            &ctx(),
            limits,
            keys(KeySource::Api),
            true,
            None,
        )
    }

    async fn redis(query: &mut redis::Cmd) -> redis::Value {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        query.query_async(&mut connection).await.unwrap()
    }

    async fn pttl(key: &str) -> i64 {
        match redis(redis::cmd("PTTL").arg(key)).await {
            redis::Value::Int(n) => n,
            other => panic!("PTTL answered {other:?}"),
        }
    }

    async fn get(key: &str) -> Option<String> {
        match redis(redis::cmd("GET").arg(key)).await {
            redis::Value::BulkString(bytes) => Some(String::from_utf8(bytes).unwrap()),
            redis::Value::Nil => None,
            other => panic!("GET answered {other:?}"),
        }
    }

    async fn check(limit: &RedisRateLimitFilter, part: &str) -> Decision {
        limit.check(part).await.expect("Redis answers")
    }

    /// Checks `part` until a request passes (refused ones count nothing); how long it took.
    async fn until_allowed(limit: &RedisRateLimitFilter, part: &str) -> (Decision, Duration) {
        let start = Instant::now();
        loop {
            let decision = check(limit, part).await;
            if decision.allowed {
                return (decision, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never refilled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_burst_then_refused_and_keys_expire_with_their_tat() {
        let prefix = prefix();
        let limit = limit(&prefix, &[(5, Window::Second)]);
        let remaining: Vec<u64> = {
            let mut out = Vec::new();
            for _ in 0..5 {
                let decision = check(&limit, "k").await;
                assert!(decision.allowed);
                out.push(decision.remaining);
            }
            out
        };
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = check(&limit, "k").await;
        assert_eq!(
            refused,
            Decision {
                allowed: false,
                limit: 5,
                remaining: 0,
                reset: 1,
                retry_after: 1
            }
        );
        // the TAT is at most a second ahead: so is the key's expiry
        let key = format!("{prefix}{{orders|*|k}}:second");
        let ttl = pttl(&key).await;
        assert!((1..=1000).contains(&ttl), "PTTL {ttl}");
        // another key was never affected
        assert_eq!(check(&limit, "other").await.remaining, 4);
    }

    #[tokio::test]
    async fn one_request_per_interval_refills() {
        // 5 per second: T = 200ms
        let limit = limit(&prefix(), &[(5, Window::Second)]);
        for _ in 0..5 {
            assert!(check(&limit, "k").await.allowed);
        }
        assert!(!check(&limit, "k").await.allowed);
        let (refilled, waited) = until_allowed(&limit, "k").await;
        assert_eq!(refilled.remaining, 0);
        // one interval had to pass (less what the five checks themselves took)
        assert!(
            waited >= Duration::from_millis(50),
            "refilled after {waited:?}"
        );
        // and it refilled one request, not more
        assert!(!check(&limit, "k").await.allowed);
        let (_, waited) = until_allowed(&limit, "k").await;
        assert!(
            waited >= Duration::from_millis(100),
            "refilled after {waited:?}"
        );
    }

    #[tokio::test]
    async fn several_windows_commit_together_or_not_at_all() {
        // 2 per second and 3 per minute (T = 20s)
        let prefix = prefix();
        let limit = limit(&prefix, &[(2, Window::Second), (3, Window::Minute)]);
        let minute = format!("{prefix}{{orders|*|k}}:minute");
        assert!(check(&limit, "k").await.allowed);
        let first = check(&limit, "k").await;
        assert!(first.allowed);
        // the second limit has 0 left: it is the tightest
        assert_eq!((first.limit, first.remaining, first.reset), (2, 0, 1));
        let counted = get(&minute).await;
        for _ in 0..5 {
            let refused = check(&limit, "k").await;
            assert!(!refused.allowed);
            assert_eq!((refused.limit, refused.remaining), (2, 0));
            assert_eq!(refused.retry_after, 1);
        }
        // the refused requests counted nothing in the minute
        assert_eq!(get(&minute).await, counted);
        // so the minute still has its third request, when the second allows it
        let (third, _) = until_allowed(&limit, "k").await;
        assert_eq!((third.limit, third.remaining), (3, 0));
        // now the minute refuses, although the second would allow, and the minute's TAT
        // (60s after the first request) says when: 20s after the first request
        let counted = get(&minute).await;
        let start = Instant::now();
        let refused = loop {
            // until the second has room again, the second is the tightest
            let refused = check(&limit, "k").await;
            assert!(!refused.allowed);
            if refused.limit == 3 {
                break refused;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{refused:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(refused.remaining, 0);
        assert!((18..=20).contains(&refused.retry_after), "{refused:?}");
        assert!((59..=60).contains(&refused.reset), "{refused:?}");
        assert_eq!(get(&minute).await, counted);
    }

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: RateLimitParams = serde_json::from_value(params).unwrap();
        assert!(RateLimitPolicy.check(&params, &ctx()).is_empty());
        RateLimitPolicy.layer(params, &ctx()).unwrap()
    }

    #[tokio::test]
    async fn responses_carry_the_headers_of_the_tightest_limit() {
        let layer = layer(serde_json::json!({
            "limits": [{"requests": 2, "window": "hour"}, {"requests": 100, "window": "day"}],
            "backend": "redis",
            "redis": {"url": redis_url(), "keyPrefix": prefix(), "timeout": "2s"}
        }));
        crate::policy::ratelimit::tests::two_per_hour_then_429(&layer).await;

        // another consumer has its own count; without one, the address is the key
        let (_, response) = call(&layer, request_from("192.0.2.1", Some("bob"), &[])).await;
        assert_eq!(response.headers()["ratelimit-remaining"], "1");
        let (_, response) = call(&layer, request_from("192.0.2.1", None, &[])).await;
        assert_eq!(response.headers()["ratelimit-remaining"], "1");
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_or_answers_503() {
        // nothing listens on port 1
        let url = "redis://:s3cret@127.0.0.1:1/0";
        let open = layer(serde_json::json!({
            "limits": [{"requests": 1, "window": "day"}],
            "backend": "redis", "failOpen": true,
            "redis": {"url": url, "timeout": "20ms"}
        }));
        let closed = layer(serde_json::json!({
            "limits": [{"requests": 1, "window": "day"}],
            "backend": "redis",
            "redis": {"url": url, "timeout": "20ms"}
        }));
        // failOpen: the local limit, with its headers
        let (_, response) = call(&open, request_from("192.0.2.1", None, &[])).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        let (seen, response) = call_seen(&open, request_from("192.0.2.1", None, &[])).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 429);
        // not failOpen: 503
        for _ in 0..3 {
            let (seen, response) = call_seen(&closed, request_from("192.0.2.1", None, &[])).await;
            assert!(seen.is_none());
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            let body = text(response).await;
            assert!(body.contains("\"rate_limit_unavailable\""), "{body}");
            assert!(!body.contains("s3cret"));
        }
    }

    #[tokio::test]
    async fn a_redis_slower_than_the_timeout_is_unavailable() {
        // a server that accepts connections and never answers
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let closed = layer(serde_json::json!({
            "limits": [{"requests": 1, "window": "day"}],
            "backend": "redis",
            "redis": {"url": format!("redis://{addr}/0"), "timeout": "30ms"}
        }));
        for _ in 0..3 {
            let start = Instant::now();
            let (seen, response) = call_seen(&closed, request_from("192.0.2.1", None, &[])).await;
            assert!(seen.is_none());
            assert_eq!(response.status(), 503);
            // no request waits much longer than the timeout
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        }
        silent.abort();
    }

    /// A [`RedisRateLimitLayer`] of `requests` per minute for everything, around a service
    /// of plain bodies.
    fn node(
        redis: RedisConfig,
        requests: u64,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<crate::policy::filter::ResponseBody<String>>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone {
        let layer = RedisRateLimitLayer::new(
            RateLimitConfig {
                limits: vec![Limit {
                    requests,
                    window: Window::Minute,
                }],
                key: KeyKind::Api,
                ..RateLimitConfig::default()
            },
            redis,
        )
        .unwrap();
        tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new("upstream".to_string()))
            })
    }

    async fn send<S>(service: &S) -> Response<crate::policy::filter::ResponseBody<String>>
    where
        S: tower::Service<
                Request<()>,
                Response = Response<crate::policy::filter::ResponseBody<String>>,
                Error = std::convert::Infallible,
            > + Clone,
    {
        use tower::ServiceExt as _;
        let Ok(response) = service.clone().oneshot(Request::new(())).await;
        response
    }

    async fn body_text<B: http_body::Body>(response: Response<B>) -> String
    where
        B::Error: fmt::Debug,
    {
        use http_body_util::BodyExt as _;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn redis_config(prefix: &str) -> RedisConfig {
        RedisConfig {
            key_prefix: prefix.to_string(),
            timeout: Duration::from_secs(2),
            ..RedisConfig::new(redis_url())
        }
    }

    /// Two layers on the same server and prefix, each with its own connection (two
    /// gateway nodes), count together; another prefix counts apart.
    #[tokio::test]
    async fn layers_with_one_server_and_prefix_share_one_count() {
        let prefix = prefix();
        let (a, b) = (
            node(redis_config(&prefix), 3),
            node(redis_config(&prefix), 3),
        );
        for (service, remaining) in [(&a, "2"), (&b, "1"), (&a, "0")] {
            let response = send(service).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["ratelimit-limit"], "3");
            assert_eq!(response.headers()["ratelimit-remaining"], remaining);
            assert_eq!(body_text(response).await, "upstream");
        }
        for service in [&b, &a] {
            let response = send(service).await;
            assert_eq!(response.status(), 429);
            // T = 20s: the next request conforms 20 s after the third
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((19..=20).contains(&retry), "{retry}");
            assert_eq!(response.headers()["ratelimit-remaining"], "0");
            assert!(body_text(response).await.contains("\"rate_limited\""));
        }
        // the count is in Redis, under the layer's keys
        let key = format!("{prefix}{{|*|api}}:minute");
        assert!(get(&key).await.is_some(), "{key}");
        let apart = node(redis_config(&self::prefix()), 3);
        assert_eq!(send(&apart).await.status(), 200);
    }

    #[tokio::test]
    async fn a_layer_without_redis_falls_back_or_answers_503() {
        // nothing listens on port 1
        let down = |fail_open| RedisConfig {
            timeout: Duration::from_millis(20),
            fail_open,
            ..RedisConfig::new("redis://:s3cret@127.0.0.1:1/0")
        };
        let closed = node(down(false), 1);
        for _ in 0..3 {
            let response = send(&closed).await;
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            let body = body_text(response).await;
            assert!(body.contains("\"rate_limit_unavailable\""), "{body}");
            assert!(!body.contains("s3cret"));
        }
        // failOpen: the layer's own local limit, with its headers
        let open = node(down(true), 1);
        let response = send(&open).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(send(&open).await.status(), 429);
    }

    #[test]
    fn a_layer_config_is_checked_and_redacted() {
        let config = || RateLimitConfig {
            limits: vec![Limit {
                requests: 1,
                window: Window::Day,
            }],
            key: KeyKind::Api,
            ..RateLimitConfig::default()
        };
        let fields = |redis: RedisConfig| -> Vec<String> {
            RedisRateLimitLayer::new(config(), redis)
                .unwrap_err()
                .errors()
                .iter()
                .map(|e| e.field.clone())
                .collect()
        };
        assert_eq!(fields(RedisConfig::new("http://x")), ["redis.url"]);
        assert_eq!(
            fields(RedisConfig {
                timeout: Duration::ZERO,
                ..RedisConfig::new("redis://127.0.0.1/0")
            }),
            ["redis.timeout"]
        );
        let error = RedisRateLimitLayer::new(
            RateLimitConfig::default(),
            RedisConfig::new("redis://:s3cret@[::1"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("limits") && !error.contains("s3cret"),
            "{error}"
        );
        let redis = RedisConfig::new("redis://:s3cret@127.0.0.1:6379/0");
        assert!(!format!("{redis:?}").contains("s3cret"));
        let layer = RedisRateLimitLayer::new(config(), redis).unwrap();
        let debug = format!("{:?}", layer.filter());
        assert!(
            !debug.contains("s3cret") && debug.contains("***@127.0.0.1"),
            "{debug}"
        );
    }

    #[test]
    fn one_connection_per_url() {
        let a = Connection::shared("redis://127.0.0.1:6379/7").unwrap();
        let b = Connection::shared("redis://127.0.0.1:6379/7").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = Connection::shared("redis://127.0.0.1:6379/8").unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        // held weakly: once unused, the next policy gets a new one
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        assert!(Connection::shared("redis://127.0.0.1:6379/7").is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.5:6380/2"),
            "redis://***@10.0.0.5:6380/2"
        );
        assert_eq!(redact("redis://user:s3cret@cache/0"), "redis://***@cache/0");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(redact("s3cret"), "(not a URL)");

        let params: RateLimitParams = serde_json::from_value(serde_json::json!({
            "limits": [{"requests": 1, "window": "day"}],
            "backend": "redis",
            "redis": {"url": "redis://:s3cret@127.0.0.1:6379/0"}
        }))
        .unwrap();
        assert!(!format!("{params:?}").contains("s3cret"));
        let limit = RedisRateLimitFilter::build(&params, &ctx(), Connection::shared).unwrap();
        let debug = format!("{limit:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("***@127.0.0.1"), "{debug}");
        // errors do not repeat the URL
        let bad = RedisParams {
            url: RedisUrl("redis://:s3cret@[::1".into()),
            key_prefix: String::new(),
            timeout: HumanDuration::from_millis(50),
        };
        let errors = bad.check("redis");
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].to_string().contains("s3cret"));
        assert!(
            Connection::new("redis://:s3cret@[::1")
                .unwrap_err()
                .contains("not a Redis URL")
        );
    }

    #[test]
    fn keys_name_the_attachment_the_client_and_the_window() {
        let url = "redis://127.0.0.1:6379/0";
        let make = |source, ctx: &PolicyContext<'_>| {
            RedisRateLimitFilter::with_connection(
                Arc::new(Connection::new(url).unwrap()),
                &params(url, "gw:rl:"),
                ctx,
                &[(10, Window::Minute)],
                keys(source),
                true,
                None,
            )
        };
        let api = ctx();
        let by_consumer = make(KeySource::Consumer, &api);
        let part = by_consumer
            .part(&request_from("192.0.2.1", Some("alice"), &[]))
            .unwrap();
        assert_eq!(part, "consumer=alice");
        assert_eq!(
            by_consumer.key(&part, "minute"),
            "gw:rl:{orders|*|consumer=alice}:minute"
        );
        let part = by_consumer
            .part(&request_from("192.0.2.1", None, &[]))
            .unwrap();
        assert_eq!(part, "ip=192.0.2.1");
        let part = by_consumer
            .part(&request_from("[2001:db8:1:2::9]", None, &[]))
            .unwrap();
        assert_eq!(part, "ip=2001:db8:1:2::/64");
        let part = by_consumer
            .part(&request_from("192.0.2.1", Some("zoë"), &[]))
            .unwrap();
        assert!(
            part.starts_with("consumer#") && part.len() == 9 + 32,
            "{part}"
        );

        let operation = PolicyContext {
            operation: Some(OperationContext {
                method: "GET",
                path: "/items/{id}",
            }),
            ..ctx()
        };
        let by_header = make(
            KeySource::Header(http::HeaderName::from_static("x-api-key")),
            &operation,
        );
        let part = by_header
            .part(&request_from("192.0.2.1", None, &[("x-api-key", "k-123")]))
            .unwrap();
        // a header value may be a secret: only its digest is written
        assert!(
            part.starts_with("header#") && !part.contains("k-123"),
            "{part}"
        );
        assert_eq!(
            by_header
                .part(&request_from("192.0.2.1", None, &[("x-api-key", "k-123")]))
                .unwrap(),
            part
        );
        assert_eq!(
            by_header.key(&part, "second"),
            format!("gw:rl:{{orders|GET /items/{{id}}|{part}}}:second")
        );
        let by_route = make(KeySource::Api, &api);
        assert_eq!(
            by_route
                .part(&request_from("192.0.2.1", Some("a"), &[]))
                .unwrap(),
            "api"
        );
    }

    #[test]
    fn microseconds_stay_exact() {
        assert_eq!(
            Micros::new(3, Window::Second),
            Micros {
                interval: 333_333,
                burst: 999_999,
                requests: 3
            }
        );
        // more than one per microsecond: one per microsecond
        assert_eq!(
            Micros::new(u64::MAX, Window::Day),
            Micros {
                interval: 1,
                burst: 86_400_000_000,
                requests: 86_400_000_000
            }
        );
    }
}
