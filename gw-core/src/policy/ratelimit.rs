//! `rate-limit`: refuses requests over a rate with 429, per consumer, credential, client
//! address, header value, or for the whole route.
//!
//! # The algorithm: GCRA
//!
//! Each limit of `requests` per `window` is a generic cell rate algorithm (GCRA, the
//! "virtual scheduling" form) with an emission interval `T = window / requests` and a
//! burst of `requests`. Each (key, window) keeps one number, its theoretical arrival time
//! `TAT`. A request arriving at `now` conforms when `max(TAT, now) + T <= now + requests × T`,
//! and a conforming request moves `TAT` to `max(TAT, now) + T`; a refused one changes
//! nothing. Exactly what that allows:
//!
//! - a key that has been idle for a whole window may send `requests` requests at once
//!   (the burst);
//! - after that, one request every `T`, as `T` elapses (the sustained rate is `requests`
//!   per window);
//! - over any span of length `d`, at most `requests + floor(d / T)` requests: a window
//!   that starts with a full burst can see up to `2 × requests` (the burst, then a
//!   window's worth of refill), unlike a fixed-window counter, but no span ever sees more
//!   than the burst plus what the rate has refilled.
//!
//! `T` is counted in whole nanoseconds, rounded down (a limit is at most one nanosecond
//! per request more generous than written). With several limits a request must conform
//! to every one of them, and only then does every one of them count it: a request that the
//! tightest limit refuses uses up nothing of the others. The check and the update are one
//! critical section per key.
//!
//! # State
//!
//! The `local` backend keeps the `TAT`s in this process, in `SHARDS` maps behind
//! their own mutexes, keyed by the request's key. Each attachment has its own state: an
//! API-level policy's layer is built once and shared by every operation of the API (one
//! count for the API), an operation-level one counts that operation. The state lasts as long
//! as the API's configuration. A key whose `TAT`s are
//! all past is the same as an absent one: such keys are swept when a shard reaches its
//! share of `CAPACITY`, and if the shard is still nearly full, the keys with the
//! smallest `TAT` (those closest to being forgotten anyway) are evicted, so that the
//! memory stays bounded whatever the number of clients.
//!
//! The `redis` backend (the `redis` module) keeps them in Redis instead, shared by every gateway
//! process that names the same server: the same GCRA, run by one Lua script per request.
//! The local backend decides synchronously in a [`Filter`]; the Redis one is a
//! [`DeferredFilter`](super::deferred::DeferredFilter) that awaits the script, so that the
//! local path never pays for it.
//!
//! # As a `tower` layer
//!
//! Outside a gateway, [`RateLimitLayer`] is the local backend as a `tower` middleware for
//! any stack, over any request and response bodies (and, with the `rate-limit-redis`
//! feature, `RedisRateLimitLayer` the Redis backend). Keys by consumer or credential read
//! the [`Consumer`] an authentication layer (such as
//! [`ApiKeyLayer`](super::apikey::ApiKeyLayer)) put in the request's extensions; keys by
//! client address read gw's [`ConnInfo`](crate::ConnInfo) there, which gw's listeners
//! insert (without it, a request counted by address is refused with 500
//! `connection_info_missing`).
//!
//! ```
//! use gw_core::policy::ratelimit::{KeyKind, Limit, RateLimitConfig, RateLimitLayer, Window};
//! use http::{Request, Response, StatusCode};
//! use tower::{Service as _, ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let limit = RateLimitLayer::new(RateLimitConfig {
//!     limits: vec![Limit { requests: 2, window: Window::Minute }],
//!     key: KeyKind::Api,
//!     ..RateLimitConfig::default()
//! })?;
//! let mut service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//!
//! for expected in [200, 200, 429] {
//!     let response = service.ready().await?.call(Request::new(())).await?;
//!     assert_eq!(response.status(), expected);
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "rate-limit-redis")]
mod redis;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

#[cfg(feature = "rate-limit-redis")]
use self::redis::{Connection, RedisParams};
#[cfg(feature = "rate-limit-redis")]
pub use self::redis::{RedisConfig, RedisRateLimit, RedisRateLimitFilter, RedisRateLimitLayer};
use super::deferred::OnResponse;
use super::filter::{ConfigError, FilterLayer, FilterService};
use super::ipfilter::{parse_cidrs, request_ip};
use super::{Cidr, Consumer, Filter, Phase, Policy, PolicyContext, RouteLayer, filter_layer};
use crate::body::Body;
use crate::model::FieldError;
use crate::model::secret::SecretField;

/// The params of `rate-limit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub(crate) struct RateLimitParams {
    /// The limits, each a number of requests per window; a request must be within all of
    /// them. At least one, and each window at most once.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// What a request is counted against: `consumer` (the authenticated consumer's name,
    /// or the client address when there is none), `credential` (the consumer's
    /// credential id, or the client address), `ip` (the client address), `header` (the
    /// value of the header named by `header`, or the client address when the request does
    /// not have it), or `api` (one count for everything the policy is attached to: the
    /// whole API at API level, the operation at operation level).
    #[serde(default)]
    pub key: KeyKind,
    /// The header whose value is the key, with `key: header`.
    #[serde(default)]
    pub header: Option<String>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed when the key
    /// is the client address; from any other peer the peer's address is the client's.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Whether responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` (default true). `Retry-After` is always sent with a 429.
    #[serde(default = "default_true")]
    pub headers: bool,
    /// Where the counts are kept: `local` (in each gateway process; the default) or
    /// `redis` (in the Redis server named by `redis`, shared by every gateway process that
    /// names it).
    #[serde(default)]
    // read only to choose Redis: without `rate-limit-redis`, `local` is its one value
    #[cfg_attr(not(feature = "rate-limit-redis"), allow(dead_code))]
    pub backend: BackendKind,
    /// The Redis server and how to use it, with `backend: redis` (and only then).
    #[cfg(feature = "rate-limit-redis")]
    #[serde(default)]
    pub redis: Option<RedisParams>,
    /// With `backend: redis`: what happens when Redis does not answer in time. `true`: each
    /// gateway process enforces the limits on its own (as with `backend: local`) until
    /// Redis answers again; `false` (the default): the request gets 503
    /// `rate_limit_unavailable`.
    #[cfg(feature = "rate-limit-redis")]
    #[serde(default)]
    pub fail_open: Option<bool>,
    /// Count and refuse requests before authentication runs (with `key: ip`, `header` or
    /// `api`): failed attempts count too, and a refused request costs no credential check
    /// (no password hash, no key lookup), which throttles password guessing and keeps a
    /// flood of bad credentials from taking the verification capacity. Default false: after
    /// authentication, where the consumer is known.
    #[serde(default)]
    pub before_authentication: bool,
}

fn default_true() -> bool {
    true
}

/// The typed configuration of a [`RateLimitLayer`]: the `rate-limit` policy's params with
/// the local backend, counted after authentication. The default counts per consumer and
/// sends the `RateLimit-*` headers; it has no limit yet (give one or more).
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// The limits; a request must be within all of them. At least one, and each window at
    /// most once.
    pub limits: Vec<Limit>,
    /// What a request is counted against (see [`KeyKind`]).
    pub key: KeyKind,
    /// The header whose value is the key, with [`KeyKind::Header`].
    pub header: Option<String>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed when the key
    /// is the client address.
    pub trusted_proxies: Vec<String>,
    /// Whether responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset`. `Retry-After` is always sent with a 429.
    pub headers: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            key: KeyKind::default(),
            header: None,
            trusted_proxies: Vec::new(),
            headers: true,
        }
    }
}

impl From<RateLimitConfig> for RateLimitParams {
    fn from(config: RateLimitConfig) -> Self {
        Self {
            limits: config.limits,
            key: config.key,
            header: config.header,
            trusted_proxies: config.trusted_proxies,
            headers: config.headers,
            backend: BackendKind::Local,
            #[cfg(feature = "rate-limit-redis")]
            redis: None,
            #[cfg(feature = "rate-limit-redis")]
            fail_open: None,
            before_authentication: false,
        }
    }
}

/// `rate-limit` with the local backend as a `tower::Layer` for any stack. Its services
/// ([`RateLimit`]) answer a request over a limit with 429 and `Retry-After`. Clones of the
/// layer, and the services they make, share the counts.
pub type RateLimitLayer = FilterLayer<RateLimitFilter>;

/// The service of a [`RateLimitLayer`] around `S`.
pub type RateLimit<S> = FilterService<RateLimitFilter, S>;

impl RateLimitLayer {
    /// Checks `config` (the same rules as the params of the `rate-limit` policy) and makes
    /// the limiter's state, empty.
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        FilterLayer::checked(&RateLimitPolicy, config.into(), |params| {
            RateLimitFilter::build(&params)
        })
    }
}

/// One limit: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Limit {
    /// The requests allowed per window (more than 0); also the largest burst.
    pub requests: u64,
    /// The window: `second`, `minute`, `hour` or `day`.
    pub window: Window,
}

/// A limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (86400 seconds).
    Day,
}

impl Window {
    /// The window's name, as written in the params.
    #[cfg(feature = "rate-limit-redis")]
    fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        })
    }
}

/// What a request is counted against.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The consumer's name; the client address without a consumer.
    #[default]
    Consumer,
    /// The consumer's credential id; the client address without one.
    Credential,
    /// The client address.
    Ip,
    /// The value of the header `header`; the client address without it.
    Header,
    /// One count for everything the policy is attached to.
    Api,
}

/// Where the counts are kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    /// In this gateway process.
    #[default]
    Local,
    /// In Redis, shared by every gateway process that uses the same server (with the
    /// `rate-limit-redis` feature).
    #[cfg(feature = "rate-limit-redis")]
    Redis,
}

/// The most limits a policy has: one per window.
const MAX_LIMITS: usize = 4;

/// The number of shards of the local state.
pub(crate) const SHARDS: usize = 16;

/// The most keys the local state of one policy attachment holds.
pub(crate) const CAPACITY: usize = 100_000;

/// `rate-limit`.
#[derive(Debug)]
pub(crate) struct RateLimitPolicy;

impl Policy for RateLimitPolicy {
    type Params = RateLimitParams;

    /// The password of the Redis URL.
    fn secret_params(&self, _params: &serde_json::Value) -> Vec<SecretField> {
        vec![SecretField::url_password("/redis/url")]
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn phase_of(&self, params: &RateLimitParams) -> Phase {
        if params.before_authentication {
            Phase::Admission
        } else {
            Phase::RateLimit
        }
    }

    fn check(&self, params: &RateLimitParams, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if params.before_authentication
            && matches!(params.key, KeyKind::Consumer | KeyKind::Credential)
        {
            errors.push(FieldError::new(
                "key",
                "with beforeAuthentication, use key ip, header or api: no consumer is known \
                 before authentication",
            ));
        }
        if params.limits.is_empty() {
            errors.push(FieldError::new("limits", "give at least one limit"));
        }
        for (i, limit) in params.limits.iter().enumerate() {
            if limit.requests == 0 {
                errors.push(FieldError::new(
                    format!("limits[{i}].requests"),
                    "must be more than 0",
                ));
            }
            if params.limits[..i].iter().any(|l| l.window == limit.window) {
                errors.push(FieldError::new(
                    format!("limits[{i}].window"),
                    "each window may have one limit only",
                ));
            }
        }
        match (&params.header, params.key) {
            (None, KeyKind::Header) => {
                errors.push(FieldError::new("header", "required with key: header"));
            }
            (Some(_), key) if key != KeyKind::Header => {
                errors.push(FieldError::new("header", "only with key: header"));
            }
            (Some(name), _) if HeaderName::from_bytes(name.as_bytes()).is_err() => {
                errors.push(FieldError::new(
                    "header",
                    format!("{name:?} is not a header name"),
                ));
            }
            _ => {}
        }
        parse_cidrs("trustedProxies", &params.trusted_proxies, &mut errors);
        #[cfg(feature = "rate-limit-redis")]
        match (params.backend, &params.redis) {
            (BackendKind::Redis, None) => {
                errors.push(FieldError::new("redis", "required with backend: redis"));
            }
            (BackendKind::Redis, Some(redis)) => errors.extend(redis.check("redis")),
            (BackendKind::Local, Some(_)) => {
                errors.push(FieldError::new("redis", "only with backend: redis"));
            }
            (BackendKind::Local, None) => {}
        }
        #[cfg(feature = "rate-limit-redis")]
        if params.fail_open.is_some() && params.backend != BackendKind::Redis {
            errors.push(FieldError::new("failOpen", "only with backend: redis"));
        }
        errors
    }

    #[cfg_attr(not(feature = "rate-limit-redis"), allow(unused_variables))] // ctx: Redis's
    fn layer(
        &self,
        params: RateLimitParams,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        #[cfg(feature = "rate-limit-redis")]
        if params.backend == BackendKind::Redis {
            return RedisRateLimitFilter::build(&params, ctx, Connection::shared)
                .map(|filter| RedisRateLimitLayer::from_filter(filter).into());
        }
        RateLimitFilter::build(&params).map(filter_layer)
    }
}

/// The local state of `limits`.
fn local(limits: &[Limit]) -> Result<LocalLimiter, String> {
    let quotas: Vec<Quota> = limits
        .iter()
        .map(|l| Quota::new(l.requests, l.window.duration()))
        .collect::<Result<_, _>>()?;
    LocalLimiter::new(&quotas, SHARDS, CAPACITY)
}

impl RateLimitFilter {
    /// The local backend's filter of checked `params`.
    fn build(params: &RateLimitParams) -> Result<Self, String> {
        Ok(Self {
            local: local(&params.limits)?,
            keys: Keys::build(params)?,
            headers: params.headers,
        })
    }
}

impl Keys {
    /// The keys of checked `params`.
    fn build(params: &RateLimitParams) -> Result<Self, String> {
        let mut errors = Vec::new();
        let trusted = parse_cidrs("trustedProxies", &params.trusted_proxies, &mut errors);
        if let Some(error) = errors.first() {
            return Err(error.to_string());
        }
        let source = match params.key {
            KeyKind::Consumer => KeySource::Consumer,
            KeyKind::Credential => KeySource::Credential,
            KeyKind::Ip => KeySource::Ip,
            KeyKind::Api => KeySource::Api,
            KeyKind::Header => {
                let name = params.header.as_deref().unwrap_or_default();
                KeySource::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("header: {name:?} is not a header name"))?,
                )
            }
        };
        Ok(Self {
            source,
            trusted,
            digest: [RandomState::new(), RandomState::new()],
        })
    }
}

/// One limit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Requests per window.
    requests: u64,
    /// The emission interval `T`: the window over `requests` (at least 1).
    interval: u64,
    /// `requests × T`: how far a key's `TAT` may run ahead of now and still let a request
    /// through.
    burst: u64,
}

impl Quota {
    pub(crate) fn new(requests: u64, window: Duration) -> Result<Self, String> {
        if requests == 0 {
            return Err("a limit needs more than 0 requests".to_string());
        }
        let window = u64::try_from(window.as_nanos()).map_err(|_| "window too long")?;
        let interval = (window / requests).max(1);
        Ok(Self {
            requests,
            interval,
            burst: interval.saturating_mul(requests),
        })
    }

    /// Whether a request at `now` conforms, given the `tat`.
    fn conforms(&self, tat: u64, now: u64) -> bool {
        tat.max(now).saturating_add(self.interval) <= now.saturating_add(self.burst)
    }

    /// The `TAT` after a conforming request at `now`.
    fn advance(&self, tat: u64, now: u64) -> u64 {
        tat.max(now).saturating_add(self.interval)
    }

    /// The requests that would conform at `now`, one after the other.
    fn remaining(&self, tat: u64, now: u64) -> u64 {
        let room = now.saturating_add(self.burst).saturating_sub(tat.max(now));
        (room / self.interval).min(self.requests)
    }
}

/// A key's `TAT`s, one per limit, in nanoseconds since the limiter's epoch; 0 (or any time
/// past) is the same as no request ever.
type Tats = [u64; MAX_LIMITS];

/// The time at which `tats` is the same as no request ever.
fn latest(tats: &Tats) -> u64 {
    tats.iter().copied().max().unwrap_or(0)
}

/// What the backend decided for one request, and what the response headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The tightest limit (the one with the fewest requests remaining): its requests.
    pub limit: u64,
    /// The requests remaining in the tightest limit.
    pub remaining: u64,
    /// Seconds (rounded up) until the tightest limit is whole again.
    pub reset: u64,
    /// For a refused request: seconds (rounded up, at least 1) until it would pass.
    pub retry_after: u64,
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Decision {
    /// The decision at `now` for a request that found `before` and was `allowed`.
    fn new(quotas: &[Quota], before: &Tats, allowed: bool, now: u64) -> Self {
        let mut tightest: Option<(u64, u64, u64)> = None;
        let mut wait = 0;
        for (quota, &tat) in quotas.iter().zip(before) {
            let tat = if allowed {
                quota.advance(tat, now)
            } else {
                wait = wait.max(
                    quota
                        .advance(tat, now)
                        .saturating_sub(quota.burst)
                        .saturating_sub(now),
                );
                tat
            };
            let remaining = quota.remaining(tat, now);
            let reset = tat.saturating_sub(now);
            // fewer remaining, or as few and longer until whole again
            let tighter = tightest.is_none_or(|(_, r, s)| (remaining, s) < (r, reset));
            if tighter {
                tightest = Some((quota.requests, remaining, reset));
            }
        }
        let (limit, remaining, reset) = tightest.unwrap_or_default();
        Self {
            allowed,
            limit,
            remaining,
            reset: reset.div_ceil(NANOS_PER_SEC),
            retry_after: if allowed {
                0
            } else {
                wait.div_ceil(NANOS_PER_SEC).max(1)
            },
        }
    }

    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, decimal(self.limit));
        headers.insert(RATELIMIT_REMAINING, decimal(self.remaining));
        headers.insert(RATELIMIT_RESET, decimal(self.reset));
    }
}

/// The decision's `RateLimit-*` headers on the response of a request let through, when
/// the policy sends them (`Some`).
impl OnResponse for Option<Decision> {
    fn on_response<B>(self, response: &mut Response<B>) {
        if let Some(decision) = self {
            decision.write_headers(response.headers_mut());
        }
    }
}

/// How many numbers [`DECIMALS`] holds.
const DECIMALS_LEN: usize = 10_000;

/// The numbers 0 to 9999 written with four digits each (`000000010002...9999`): the last
/// digits of a number's four are its decimal form, a header value made without allocating.
static DECIMALS: [u8; DECIMALS_LEN * 4] = {
    let mut table = [0u8; DECIMALS_LEN * 4];
    let mut n = 0;
    while n < DECIMALS_LEN {
        let mut i = 0;
        let mut rest = n;
        while i < 4 {
            // a digit, 0 to 9
            #[allow(clippy::cast_possible_truncation)]
            let digit = (rest % 10) as u8;
            table[n * 4 + 3 - i] = b'0' + digit;
            rest /= 10;
            i += 1;
        }
        n += 1;
    }
    table
};

/// `n` as a header value; below 10000, shared from [`DECIMALS`] rather than allocated.
fn decimal(n: u64) -> HeaderValue {
    if let Ok(i) = usize::try_from(n)
        && i < DECIMALS_LEN
    {
        let digits = match i {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            _ => 4,
        };
        let end = i * 4 + 4;
        let text = bytes::Bytes::from_static(&DECIMALS[end - digits..end]);
        if let Ok(value) = HeaderValue::from_maybe_shared(text) {
            return value;
        }
    }
    HeaderValue::from(n)
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One shard of the local state: the `TAT`s of its keys.
type Shard = Mutex<HashMap<Box<[u8]>, Tats>>;

/// The in-process GCRA state of one policy attachment: a pure structure, given the time.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    quotas: Box<[Quota]>,
    shards: Box<[Shard]>,
    /// The most keys a shard holds.
    shard_capacity: usize,
    /// Picks a key's shard; keyed at random, so that clients cannot aim at one shard.
    hasher: RandomState,
    /// The zero of [`LocalLimiter::now`].
    epoch: Instant,
}

impl LocalLimiter {
    /// State for `quotas` (1 to 4), in `shards` shards holding `capacity` keys in all.
    pub(crate) fn new(quotas: &[Quota], shards: usize, capacity: usize) -> Result<Self, String> {
        if quotas.is_empty() || quotas.len() > MAX_LIMITS {
            return Err(format!("a rate limit has 1 to {MAX_LIMITS} limits"));
        }
        let shards = shards.max(1);
        Ok(Self {
            quotas: quotas.into(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_capacity: capacity.div_ceil(shards).max(1),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        })
    }

    /// Nanoseconds since the limiter was made: the clock of [`LocalLimiter::decide`].
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Decides a request of `key` at `now` (nanoseconds, never going back) and, if every
    /// limit allows it, counts it in every limit.
    pub(crate) fn decide(&self, key: &[u8], now: u64) -> Decision {
        let quotas = &*self.quotas;
        let conforms = |tats: &Tats| quotas.iter().zip(tats).all(|(q, &t)| q.conforms(t, now));
        let advance = |tats: &mut Tats| {
            for (quota, tat) in quotas.iter().zip(tats.iter_mut()) {
                *tat = quota.advance(*tat, now);
            }
        };
        let shard = &self.shards[self.shard_of(key)];
        let (before, allowed) = {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(tats) = map.get_mut(key) {
                let before = *tats;
                let allowed = conforms(tats);
                if allowed {
                    advance(tats);
                }
                (before, allowed)
            } else {
                let before = Tats::default();
                let allowed = conforms(&before);
                if allowed {
                    let mut tats = before;
                    advance(&mut tats);
                    make_room(&mut map, self.shard_capacity, now);
                    map.insert(key.into(), tats);
                }
                (before, allowed)
            }
        };
        Decision::new(quotas, &before, allowed, now)
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        // the remainder is below the shard count, a usize
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        index
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    #[cfg(test)]
    fn tats(&self, key: &[u8]) -> Option<Tats> {
        self.shards[self.shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
    }

    #[cfg(test)]
    fn contains(&self, key: &[u8]) -> bool {
        self.tats(key).is_some()
    }
}

/// Makes room for one more key in a shard at its `capacity`: sweeps the keys whose `TAT`s
/// are all past, then, if the shard is still above seven eighths of its capacity, evicts
/// the keys with the smallest `TAT` down to that. Either way the next eighth of the
/// capacity is inserted without another pass, so the passes cost O(1) per insert,
/// amortized.
fn make_room(map: &mut HashMap<Box<[u8]>, Tats>, capacity: usize, now: u64) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, tats| latest(tats) > now);
    let target = capacity - (capacity / 8).max(1);
    if map.len() <= target {
        return;
    }
    let excess = map.len() - target;
    let mut latests: Vec<u64> = map.values().map(latest).collect();
    let (_, &mut threshold, _) = latests.select_nth_unstable(excess - 1);
    let below = latests.iter().filter(|&&t| t < threshold).count();
    let mut ties = excess - below;
    map.retain(|_, tats| {
        let t = latest(tats);
        if t < threshold {
            false
        } else if t == threshold && ties > 0 {
            ties -= 1;
            false
        } else {
            true
        }
    });
}

/// Where a request's key comes from.
#[derive(Debug)]
enum KeySource {
    Consumer,
    Credential,
    Ip,
    Header(HeaderName),
    Api,
}

/// What a request is counted by, before it is written as a key: one count for the
/// attachment, a name (a consumer's, a credential id, a header value), or the client's
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity<'a> {
    Api,
    Named(&'a [u8]),
    Address(IpAddr),
    /// Counted by address, but the request carries no connection information.
    Unknown,
}

/// Where a request's key comes from, and how it is written.
#[derive(Debug)]
struct Keys {
    source: KeySource,
    trusted: Vec<Cidr>,
    /// Two independently keyed hashers: the digest of a long key, secret to clients.
    digest: [RandomState; 2],
}

/// The compiled `rate-limit` policy with the local backend, and its counts: the [`Filter`]
/// of a [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimitFilter {
    local: LocalLimiter,
    keys: Keys,
    headers: bool,
}

/// A key made for the request rather than borrowed from it: a tag byte, then an address
/// (16 bytes) or a digest (16 bytes).
type KeyBuf = [u8; 17];

/// Names and header values longer than this are counted by a keyed 128-bit digest
/// instead, so that the state's memory is bounded per key as well as in keys.
const MAX_KEY_BYTES: usize = 64;

/// The 16 bytes an address is counted by: an IPv4 address as IPv4-mapped IPv6, an IPv6
/// address per /64 (a subscriber's block, whose addresses it can rotate freely).
fn address_octets(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)).to_be_bytes(),
    }
}

impl Keys {
    /// What the request is counted by.
    fn identity<'a, B>(&self, request: &'a Request<B>) -> Identity<'a> {
        let named = match &self.source {
            KeySource::Api => return Identity::Api,
            KeySource::Ip => None,
            KeySource::Consumer => request
                .extensions()
                .get::<Consumer>()
                .map(|c| c.name.as_bytes()),
            KeySource::Credential => request
                .extensions()
                .get::<Consumer>()
                .and_then(|c| c.credential.as_deref())
                .map(str::as_bytes),
            KeySource::Header(name) => request.headers().get(name).map(HeaderValue::as_bytes),
        };
        match named {
            Some(named) => Identity::Named(named),
            None => request_ip(request, &self.trusted).map_or(Identity::Unknown, Identity::Address),
        }
    }

    /// The request's key in this process's state, borrowed from the request where it can be
    /// (no allocation), or written into `buf`: a client address, or the digest of a long
    /// name or header value. The key of a policy is either what it names (a consumer,
    /// credential or header value) or the client address; made keys start with a byte that
    /// named keys cannot contain (0xFF and 0xFE never occur in UTF-8 names, 0x00 and 0x01
    /// never in header values), so that a name never shares the count of an address or of
    /// a digest.
    fn local<'a, B>(&self, request: &'a Request<B>, buf: &'a mut KeyBuf) -> Option<&'a [u8]> {
        let (address_tag, digest_tag) = if matches!(self.source, KeySource::Header(_)) {
            (0x00, 0x01)
        } else {
            (0xFF, 0xFE)
        };
        Some(match self.identity(request) {
            Identity::Api => &[],
            Identity::Named(named) if named.len() <= MAX_KEY_BYTES => named,
            Identity::Named(long) => {
                buf[0] = digest_tag;
                buf[1..9].copy_from_slice(&self.digest[0].hash_one(long).to_le_bytes());
                buf[9..].copy_from_slice(&self.digest[1].hash_one(long).to_le_bytes());
                &buf[..]
            }
            Identity::Address(ip) => {
                buf[0] = address_tag;
                buf[1..].copy_from_slice(&address_octets(ip));
                &buf[..]
            }
            Identity::Unknown => return None,
        })
    }

    /// What a name is called in a Redis key: the kind of the key.
    #[cfg(feature = "rate-limit-redis")]
    fn kind(&self) -> &'static str {
        match self.source {
            KeySource::Consumer => "consumer",
            KeySource::Credential => "credential",
            KeySource::Header(_) => "header",
            KeySource::Ip => "ip",
            KeySource::Api => "api",
        }
    }
}

/// The 429 for a refused `decision`, with the `RateLimit-*` headers when `headers`.
fn refusal(decision: &Decision, headers: bool) -> Response<Body> {
    let mut response = crate::error::json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests: the rate limit is exceeded",
    );
    let map = response.headers_mut();
    map.insert(http::header::RETRY_AFTER, decimal(decision.retry_after));
    if headers {
        decision.write_headers(map);
    }
    response
}

impl<ReqB, ResB> Filter<ReqB, ResB> for RateLimitFilter {
    /// The decision, when its headers go on the response.
    type State = Option<Decision>;

    fn request(&self, request: &mut Request<ReqB>) -> Result<Self::State, Response<Body>> {
        let mut buf = KeyBuf::default();
        let Some(key) = self.keys.local(request, &mut buf) else {
            return Err(crate::error::conn_info_missing());
        };
        let decision = self.local.decide(key, self.local.now());
        if decision.allowed {
            return Ok(self.headers.then_some(decision));
        }
        Err(refusal(&decision, self.headers))
    }

    fn response(&self, state: Self::State, response: &mut Response<ResB>) {
        state.on_response(response);
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::policy::PolicyRegistry;
    use crate::policy::testing::{call, call_seen, ctx, request_from, text};

    /// A limit that counts by address refuses a request without the connection's
    /// information (only an embedder's server sends one) rather than count every such
    /// client in one bucket; a limit by consumer does so only when it falls back to the
    /// address.
    #[test]
    fn an_address_is_never_guessed() {
        let limit = |key| {
            RateLimitFilter::build(&RateLimitParams::from(RateLimitConfig {
                limits: vec![Limit {
                    requests: 100,
                    window: Window::Minute,
                }],
                key,
                ..RateLimitConfig::default()
            }))
            .unwrap()
        };
        let refused = |filter: &RateLimitFilter, request: &mut Request<Body>| {
            Filter::<Body, Body>::request(filter, request)
                .err()
                .map(|response| response.status())
        };
        let mut bare = Request::new(crate::body::empty());
        assert_eq!(
            refused(&limit(KeyKind::Ip), &mut bare),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            refused(&limit(KeyKind::Consumer), &mut bare),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(refused(&limit(KeyKind::Api), &mut bare), None);
        let mut from_peer = request_from("192.0.2.1", None, &[]);
        assert_eq!(refused(&limit(KeyKind::Ip), &mut from_peer), None);
    }

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn quota(requests: u64, window: Window) -> Quota {
        Quota::new(requests, window.duration()).unwrap()
    }

    fn limiter(quotas: &[Quota]) -> LocalLimiter {
        LocalLimiter::new(quotas, SHARDS, CAPACITY).unwrap()
    }

    /// Sends `n` requests of `key` at `now`; returns how many passed.
    fn burst(limiter: &LocalLimiter, key: &[u8], now: u64, n: usize) -> usize {
        (0..n).filter(|_| limiter.decide(key, now).allowed).count()
    }

    #[test]
    fn a_burst_of_requests_then_one_per_interval() {
        // 5 per second: T = 200ms
        let l = limiter(&[quota(5, Window::Second)]);
        let t0 = 7 * SEC;
        let remaining: Vec<u64> = (0..5).map(|_| l.decide(b"k", t0).remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = l.decide(b"k", t0);
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
        // just before T: still refused; at T: one more, and only one
        assert!(!l.decide(b"k", t0 + 200 * MS - 1).allowed);
        assert_eq!(burst(&l, b"k", t0 + 200 * MS, 3), 1);
        // after two more intervals: two more
        assert_eq!(burst(&l, b"k", t0 + 600 * MS, 5), 2);
        // a window after the last request the key is whole again: the full burst
        assert_eq!(burst(&l, b"k", t0 + 1600 * MS, 9), 5);
        // another key was never affected
        assert_eq!(burst(&l, b"other", t0 + 600 * MS, 9), 5);
    }

    #[test]
    fn headers_report_the_tightest_limit() {
        let l = limiter(&[quota(10, Window::Minute), quota(3, Window::Second)]);
        let first = l.decide(b"k", SEC);
        // the second limit has 2 left, the minute limit 9
        assert_eq!((first.limit, first.remaining), (3, 2));
        // the second limit is whole again in T = 333ms: rounded up to 1s
        assert_eq!(first.reset, 1);
        assert_eq!(first.retry_after, 0);
        let first = limiter(&[quota(2, Window::Hour)]).decide(b"k", 0);
        // T = 30 min: whole again 30 minutes after one request
        assert_eq!((first.limit, first.remaining, first.reset), (2, 1, 1800));
    }

    #[test]
    fn the_tighter_limit_refuses_without_consuming_the_others() {
        // 2 per second and 3 per minute (T = 20s)
        let l = limiter(&[quota(2, Window::Second), quota(3, Window::Minute)]);
        assert_eq!(burst(&l, b"k", 0, 10), 2);
        let counted = l.tats(b"k");
        let refused = l.decide(b"k", 0);
        assert!(!refused.allowed);
        // the 9 refused requests changed nothing
        assert_eq!(l.tats(b"k"), counted);
        // the second limit refuses: it is the tightest, and whole again in 1s
        assert_eq!((refused.limit, refused.remaining, refused.reset), (2, 0, 1));
        assert_eq!(refused.retry_after, 1);
        // so the minute still has its third request
        let third = l.decide(b"k", SEC);
        assert!(third.allowed);
        assert_eq!((third.limit, third.remaining), (3, 0));
        // now the minute refuses, although the second would allow; and the second's
        // count is not touched either
        let counted = l.tats(b"k");
        let refused = l.decide(b"k", SEC);
        assert!(!refused.allowed);
        assert_eq!(l.tats(b"k"), counted);
        assert_eq!((refused.limit, refused.remaining), (3, 0));
        // the minute's TAT is 60s; a fourth request conforms at 80s - 60s = 20s
        assert_eq!(refused.retry_after, 19);
        assert_eq!(refused.reset, 59);
        assert!(!l.decide(b"k", 20 * SEC - 1).allowed);
        assert!(l.decide(b"k", 20 * SEC).allowed);
    }

    #[test]
    fn idle_keys_are_swept_before_live_ones_are_evicted() {
        // one shard of 8 keys, 1 per second
        let l = LocalLimiter::new(&[quota(1, Window::Second)], 1, 8).unwrap();
        for i in 0..8u8 {
            assert!(l.decide(&[b'a', i], 0).allowed);
        }
        assert_eq!(l.len(), 8);
        // ten seconds later every `a` key is idle: making room sweeps them all
        for i in 0..8u8 {
            assert!(l.decide(&[b'b', i], 10 * SEC).allowed);
        }
        assert_eq!(l.len(), 8);
        assert!((0..8u8).all(|i| l.contains(&[b'b', i])));
        assert!(!l.contains(&[b'a', 0]));
    }

    #[test]
    fn a_full_shard_evicts_the_smallest_tat() {
        // one shard of 8 keys, 1 per hour: every key stays live
        let l = LocalLimiter::new(&[quota(1, Window::Hour)], 1, 8).unwrap();
        for i in 0..8u64 {
            assert!(l.decide(&i.to_be_bytes(), i * SEC).allowed);
        }
        assert!(l.decide(b"new", 100 * SEC).allowed);
        assert_eq!(l.len(), 8);
        // key 0, the oldest, went; the others are still counted
        assert!(!l.contains(&0u64.to_be_bytes()));
        assert!((1..8u64).all(|i| l.contains(&i.to_be_bytes())));
        assert!(!l.decide(&1u64.to_be_bytes(), 101 * SEC).allowed);
        // a forgotten key starts afresh
        assert!(l.decide(&0u64.to_be_bytes(), 101 * SEC).allowed);
    }

    #[test]
    fn the_state_stays_within_its_capacity() {
        let l = LocalLimiter::new(&[quota(5, Window::Day)], SHARDS, 64).unwrap();
        for i in 0..10_000u64 {
            assert!(l.decide(&i.to_be_bytes(), i * MS).allowed);
            assert!(l.len() <= 64);
        }
        // the most recent key is still counted
        assert_eq!(l.decide(&9_999u64.to_be_bytes(), 10 * SEC).remaining, 3);
    }

    #[test]
    fn long_keys_are_counted_by_digest() {
        let make = |source| Keys {
            source,
            trusted: Vec::new(),
            digest: [RandomState::new(), RandomState::new()],
        };
        let by_header = make(KeySource::Header(HeaderName::from_static("x-key")));
        let key_of = |keys: &Keys, value: &str| -> Vec<u8> {
            let request = request_from("192.0.2.1", None, &[("x-key", value)]);
            let mut buf = KeyBuf::default();
            keys.local(&request, &mut buf).unwrap().to_vec()
        };
        let short = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(key_of(&by_header, &short), short.as_bytes());
        let long = "k".repeat(4000);
        let digest = key_of(&by_header, &long);
        assert_eq!(digest.len(), 17);
        assert_eq!(digest[0], 0x01);
        assert_eq!(key_of(&by_header, &long), digest);
        assert_ne!(key_of(&by_header, &format!("{long}x")), digest);
        // without the header: the address, behind its own tag
        let request = request_from("192.0.2.1", None, &[]);
        let mut buf = KeyBuf::default();
        let address = by_header.local(&request, &mut buf).unwrap();
        assert_eq!(address[0], 0x00);
        assert_eq!(&address[13..], [192, 0, 2, 1]);

        let by_consumer = make(KeySource::Consumer);
        let long_name = "n".repeat(100);
        let request = request_from("192.0.2.1", Some(&long_name), &[]);
        assert_eq!(by_consumer.local(&request, &mut buf).unwrap()[0], 0xFE);
        let request = request_from("192.0.2.1", Some("alice"), &[]);
        assert_eq!(by_consumer.local(&request, &mut buf).unwrap(), b"alice");
        let request = request_from("192.0.2.1", None, &[]);
        assert_eq!(by_consumer.local(&request, &mut buf).unwrap()[0], 0xFF);
    }

    #[test]
    fn header_numbers_are_decimal() {
        for n in [
            0,
            7,
            10,
            42,
            100,
            999,
            1000,
            1800,
            9999,
            10_000,
            86_400,
            u64::MAX,
        ] {
            assert_eq!(decimal(n), n.to_string().as_str(), "{n}");
        }
    }

    #[test]
    fn absurd_rates_do_not_overflow() {
        // more requests than nanoseconds in the window: T is 1ns
        let l = limiter(&[quota(u64::MAX, Window::Second), quota(1, Window::Day)]);
        let now = 10 * 365 * 86_400 * SEC;
        let first = l.decide(b"k", now);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining, first.reset), (1, 0, 86_400));
        assert!(!l.decide(b"k", now).allowed);
    }

    #[test]
    fn params_are_checked_with_paths() {
        let registry = PolicyRegistry::builtin();
        let fields = |params: serde_json::Value| -> Vec<String> {
            registry
                .validate_params("rate-limit", &params, &ctx())
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(serde_json::json!({
                "limits": [
                    {"requests": 10, "window": "second"},
                    {"requests": 0, "window": "minute"},
                    {"requests": 5, "window": "second"}
                ],
                "key": "header",
                "trustedProxies": ["10.0.0.0/8", "nope"]
            })),
            [
                "limits[1].requests",
                "limits[2].window",
                "header",
                "trustedProxies[1]"
            ]
        );
        assert_eq!(fields(serde_json::json!({})), ["limits"]);
        assert_eq!(fields(serde_json::Value::Null), ["limits"]);
        let one = serde_json::json!([{"requests": 1, "window": "day"}]);
        assert_eq!(
            fields(serde_json::json!({"limits": one, "header": "x-key"})),
            ["header"]
        );
        assert_eq!(
            fields(serde_json::json!({"limits": one, "key": "header", "header": "bad name"})),
            ["header"]
        );
        assert_eq!(
            fields(serde_json::json!({"limits": [{"requests": 1, "window": "week"}]})),
            ["limits[0].window"]
        );
        assert_eq!(
            fields(serde_json::json!({"limits": [{"requests": 1, "window": "day", "burst": 2}]})),
            ["limits[0].burst"]
        );
        #[cfg(feature = "rate-limit-redis")]
        assert_eq!(
            fields(serde_json::json!({"limits": one, "backend": "redis"})),
            ["redis"]
        );
        assert_eq!(
            fields(serde_json::json!({"limits": one, "backend": "memcached"})),
            ["backend"]
        );
        #[cfg(feature = "rate-limit-redis")]
        assert_eq!(
            fields(serde_json::json!({
                "limits": one, "failOpen": true, "redis": {"url": "redis://127.0.0.1/"}
            })),
            ["redis", "failOpen"]
        );
        #[cfg(feature = "rate-limit-redis")]
        assert_eq!(
            fields(serde_json::json!({
                "limits": one, "backend": "redis",
                "redis": {"url": "http://x", "timeout": "0ms", "keyprefix": "a"}
            })),
            ["redis.keyprefix", "redis.url", "redis.timeout"]
        );
        #[cfg(feature = "rate-limit-redis")]
        assert!(
            fields(serde_json::json!({
                "limits": one, "backend": "redis", "failOpen": true,
                "redis": {"url": "redis://:secret@127.0.0.1:6379/0", "keyPrefix": "app:",
                          "timeout": "20ms"}
            }))
            .is_empty()
        );
        assert!(
            fields(serde_json::json!({
                "limits": one, "key": "header", "header": "X-Api-Key",
                "backend": "local", "headers": false
            }))
            .is_empty()
        );
        assert_eq!(registry.phase("rate-limit"), Phase::RateLimit);
        // before authentication: counted by address (or header, or API), never by consumer
        assert_eq!(
            fields(serde_json::json!({"limits": one, "beforeAuthentication": true})),
            ["key"]
        );
        assert_eq!(
            fields(serde_json::json!({
                "limits": one, "beforeAuthentication": true, "key": "credential"
            })),
            ["key"]
        );
        let before = crate::model::PolicyRef {
            name: "rate-limit".to_string(),
            params: serde_json::json!({"limits": one, "beforeAuthentication": true, "key": "ip"}),
        };
        assert!(
            fields(before.params.clone()).is_empty(),
            "a valid pre-authentication limit"
        );
        assert_eq!(registry.phase_of(&before), Phase::Admission);
        let after = crate::model::PolicyRef {
            name: "rate-limit".to_string(),
            params: serde_json::json!({"limits": one}),
        };
        assert_eq!(registry.phase_of(&after), Phase::RateLimit);
    }

    /// A throttle before authentication and a limit per consumer after it, on one API: two
    /// policies of one name, in two phases. Twice in one phase is still an error.
    #[test]
    fn a_limit_before_authentication_and_one_after_may_both_be_listed() {
        let registry = PolicyRegistry::builtin();
        let ctx = crate::model::ValidationContext {
            policies: Some(&registry),
        };
        let api = |second_before: bool| {
            format!(
                "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: a}}\nspec:\n  context: /a\n  upstream:\n    endpoints: [{{url: 'http://127.0.0.1:9'}}]\n  policies:\n    - name: rate-limit\n      params: {{key: ip, beforeAuthentication: true, limits: [{{requests: 10, window: second}}]}}\n    - name: rate-limit\n      params: {{key: ip, beforeAuthentication: {second_before}, limits: [{{requests: 5, window: second}}]}}\n"
            )
        };
        let parse = |doc: String| {
            crate::model::ApiDefinition::parse_with(
                doc.as_bytes(),
                crate::model::Format::Yaml,
                &ctx,
            )
        };
        assert!(parse(api(false)).is_ok());
        let err = parse(api(true)).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    fn layer(params: serde_json::Value) -> RouteLayer {
        let params: RateLimitParams = serde_json::from_value(params).unwrap();
        assert!(RateLimitPolicy.check(&params, &ctx()).is_empty());
        RateLimitPolicy.layer(params, &ctx()).unwrap()
    }

    async fn status(layer: &RouteLayer, request: Request<Body>) -> u16 {
        call_seen(layer, request).await.1.status().as_u16()
    }

    /// With a limit of 2 per hour for `alice`: two requests pass with their `RateLimit-*`
    /// headers, the third is a 429 that names when to come back. Shared by both backends.
    pub(super) async fn two_per_hour_then_429(layer: &RouteLayer) {
        let (_, response) = call(layer, request_from("192.0.2.1", Some("alice"), &[])).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "2");
        assert_eq!(response.headers()["ratelimit-remaining"], "1");
        assert_eq!(response.headers()["ratelimit-reset"], "1800");
        assert_eq!(text(response).await, "upstream");
        let (_, response) = call(layer, request_from("192.0.2.1", Some("alice"), &[])).await;
        assert_eq!(response.headers()["ratelimit-remaining"], "0");

        let (seen, response) =
            call_seen(layer, request_from("192.0.2.1", Some("alice"), &[])).await;
        assert!(seen.is_none(), "the upstream must not be called");
        assert_eq!(response.status(), 429);
        // the next request conforms in T = 30 min
        assert_eq!(response.headers()["retry-after"], "1800");
        assert_eq!(response.headers()["ratelimit-limit"], "2");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "3600");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(text(response).await.contains("\"rate_limited\""));
    }

    #[tokio::test]
    async fn allowed_requests_carry_the_headers_and_refused_ones_get_429() {
        let layer = layer(serde_json::json!({"limits": [{"requests": 2, "window": "hour"}]}));
        two_per_hour_then_429(&layer).await;

        // another consumer, from the same address, has its own count
        assert_eq!(
            status(&layer, request_from("192.0.2.1", Some("bob"), &[])).await,
            200
        );
        // without a consumer, the address is the key
        assert_eq!(
            status(&layer, request_from("192.0.2.1", None, &[])).await,
            200
        );
        assert_eq!(
            status(&layer, request_from("192.0.2.1", None, &[])).await,
            200
        );
        assert_eq!(
            status(&layer, request_from("192.0.2.1", None, &[])).await,
            429
        );
        assert_eq!(
            status(&layer, request_from("192.0.2.2", None, &[])).await,
            200
        );
    }

    #[tokio::test]
    async fn headers_can_be_left_out() {
        let layer = layer(serde_json::json!({
            "limits": [{"requests": 1, "window": "day"}],
            "headers": false
        }));
        let (_, response) = call(&layer, request_from("192.0.2.1", None, &[])).await;
        assert!(response.headers().get("ratelimit-limit").is_none());
        let (_, response) = call_seen(&layer, request_from("192.0.2.1", None, &[])).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "86400");
        assert!(response.headers().get("ratelimit-remaining").is_none());
    }

    #[tokio::test]
    async fn ipv6_clients_are_counted_per_64() {
        let one = serde_json::json!([{"requests": 1, "window": "day"}]);
        let by_ip = layer(serde_json::json!({"limits": one, "key": "ip"}));
        assert_eq!(
            status(&by_ip, request_from("[2001:db8:1:2::1]", None, &[])).await,
            200
        );
        // another address of the same /64: the same count
        assert_eq!(
            status(&by_ip, request_from("[2001:db8:1:2:ffff::9]", None, &[])).await,
            429
        );
        // another /64: its own count
        assert_eq!(
            status(&by_ip, request_from("[2001:db8:1:3::1]", None, &[])).await,
            200
        );
        // IPv4, mapped or not, per address
        assert_eq!(
            status(&by_ip, request_from("192.0.2.1", None, &[])).await,
            200
        );
        assert_eq!(
            status(&by_ip, request_from("[::ffff:192.0.2.1]", None, &[])).await,
            429
        );
        assert_eq!(
            status(&by_ip, request_from("192.0.2.2", None, &[])).await,
            200
        );
    }

    #[tokio::test]
    async fn keys_by_credential_header_address_or_route() {
        let one = serde_json::json!([{"requests": 1, "window": "day"}]);

        let by_credential = layer(serde_json::json!({"limits": one, "key": "credential"}));
        assert_eq!(
            status(&by_credential, request_from("192.0.2.1", Some("a"), &[])).await,
            200
        );
        assert_eq!(
            status(&by_credential, request_from("192.0.2.9", Some("a"), &[])).await,
            429
        );
        assert_eq!(
            status(&by_credential, request_from("192.0.2.1", Some("b"), &[])).await,
            200
        );
        assert_eq!(
            status(&by_credential, request_from("192.0.2.1", None, &[])).await,
            200
        );
        assert_eq!(
            status(&by_credential, request_from("192.0.2.1", None, &[])).await,
            429
        );

        let by_header = layer(serde_json::json!({
            "limits": one, "key": "header", "header": "X-Tenant"
        }));
        let tenant = |t: &'static str| [("x-tenant", t)];
        assert_eq!(
            status(&by_header, request_from("192.0.2.1", None, &tenant("t1"))).await,
            200
        );
        assert_eq!(
            status(&by_header, request_from("192.0.2.2", None, &tenant("t1"))).await,
            429
        );
        assert_eq!(
            status(&by_header, request_from("192.0.2.1", None, &tenant("t2"))).await,
            200
        );
        // without the header: by address
        assert_eq!(
            status(&by_header, request_from("192.0.2.1", None, &[])).await,
            200
        );
        assert_eq!(
            status(&by_header, request_from("192.0.2.1", None, &[])).await,
            429
        );

        let by_ip = layer(serde_json::json!({
            "limits": one, "key": "ip", "trustedProxies": ["10.0.0.0/8"]
        }));
        let via = |client: &'static str| [("x-forwarded-for", client)];
        assert_eq!(
            status(
                &by_ip,
                request_from("10.0.0.1", Some("a"), &via("203.0.113.5"))
            )
            .await,
            200
        );
        // the same client through another trusted proxy
        assert_eq!(
            status(
                &by_ip,
                request_from("10.0.0.2", Some("b"), &via("203.0.113.5"))
            )
            .await,
            429
        );
        assert_eq!(
            status(&by_ip, request_from("10.0.0.1", None, &via("203.0.113.6"))).await,
            200
        );
        // an untrusted peer's header is ignored: its own address is the key
        assert_eq!(
            status(
                &by_ip,
                request_from("198.51.100.1", None, &via("203.0.113.7"))
            )
            .await,
            200
        );
        assert_eq!(
            status(&by_ip, request_from("203.0.113.7", None, &[])).await,
            200
        );

        let by_route = layer(serde_json::json!({"limits": one, "key": "api"}));
        assert_eq!(
            status(&by_route, request_from("192.0.2.1", Some("a"), &[])).await,
            200
        );
        assert_eq!(
            status(&by_route, request_from("192.0.2.2", Some("b"), &[])).await,
            429
        );
    }
}
