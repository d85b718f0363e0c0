//! `basic-auth`: authenticates a request by `Authorization: Basic`, against the consumers'
//! `basic-auth` credentials (argon2 or bcrypt hashes).
//!
//! Password hashes are slow on purpose, so the policy remembers the credentials it verified:
//! a request with the same user name and password as an earlier successful one, while that
//! credential's hash is unchanged, is accepted without hashing. The cache is keyed by a
//! keyed SHA-256 of the pair (never the password itself), bounded, and a revoked or changed
//! credential misses it. Verifications run on the blocking pool, at most a few at a time,
//! so a flood of wrong passwords cannot take the async threads.
//!
//! Outside a gateway, [`BasicAuthLayer`] is the same policy as a `tower` middleware for any
//! stack (its inner service must be `Clone + Send`: a verification awaits the blocking pool
//! before the call), against a [`ConsumerStore`] of your own:
//!
//! ```
//! use base64::Engine as _;
//! use gw_core::consumers::{ConsumerSet, ConsumerStore};
//! use gw_core::policy::Consumer;
//! use gw_core::policy::basicauth::BasicAuthLayer;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let consumers = ConsumerSet::from_documents([serde_json::json!({
//!     "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
//!     "spec": {"credentials": [
//!         {"type": "basic-auth", "id": "b1", "username": "alice", "password": "correct horse"}
//!     ]}
//! })])
//! .map_err(|errors| errors.join("; "))?;
//! let service = ServiceBuilder::new()
//!     .layer(BasicAuthLayer::new(ConsumerStore::new(consumers)))
//!     .service_fn(|request: Request<()>| async move {
//!         let name = request.extensions().get::<Consumer>().map(|c| c.name.to_string());
//!         Ok::<_, std::convert::Infallible>(Response::new(name.unwrap_or_default()))
//!     });
//!
//! let response = service.clone().oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!
//! let credentials = base64::engine::general_purpose::STANDARD.encode("alice:correct horse");
//! let request = Request::get("/").header("authorization", format!("Basic {credentials}"));
//! let response = service.oneshot(request.body(())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use super::deferred::{Decision, DeferredFilter, DeferredFuture, DeferredLayer, DeferredService};
use super::filter::ConfigError;
use super::{Consumer, Phase, Policy, PolicyContext, RouteLayer};
use crate::body::Body;
use crate::consumers::ConsumerStore;
use crate::error::unauthorized;
use crate::model::FieldError;

/// Verifications running at once, for the whole process (every basic-auth policy of every
/// API): one per core, at least two. Each argon2 verification holds about 19 MiB.
static VERIFYING: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(process_slots())));

/// The verification slots of the process: one per core, at least two.
fn process_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .max(2)
}

/// The verifications one policy may run at once by default: half the process's slots, so
/// that one API under a flood of bad passwords leaves the others room.
fn default_policy_slots() -> u32 {
    u32::try_from(process_slots() / 2).unwrap_or(1).max(1)
}

/// What an unknown user name is verified against, so that it takes as long as a known one
/// (no user enumeration by timing).
static DUMMY_HASH: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| {
    let hash = crate::credential::hash_password("gw dummy password").unwrap_or_default();
    Arc::from(hash.as_str())
});

/// Successful verifications remembered per policy.
const CACHE_CAPACITY: usize = 10_000;
/// How long a request waits for a verification slot before a 503.
const VERIFY_WAIT: Duration = Duration::from_secs(5);
/// The longest `Authorization` value looked at.
const MAX_AUTHORIZATION: usize = 4096;

/// The configuration of `basic-auth`: its params in an API definition, or the typed config
/// of a [`BasicAuthLayer`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm named in the `WWW-Authenticate` challenge (default `gw`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Password verifications this policy runs at once (1 to 64); more wait (at most 5 s,
    /// then 503). Verifications are slow on purpose: the default, half the process's
    /// verification slots (one per core), keeps one API under a flood of bad passwords from
    /// taking every slot. Requests over a `rate-limit` with `beforeAuthentication` cost no
    /// verification at all.
    #[serde(default)]
    pub max_concurrent_verifications: Option<u32>,
}

fn default_realm() -> String {
    "gw".to_string()
}

impl Default for BasicAuthConfig {
    fn default() -> Self {
        Self {
            realm: default_realm(),
            max_concurrent_verifications: None,
        }
    }
}

/// `basic-auth` as a `tower::Layer` for any stack. Its services ([`BasicAuth`]) answer a
/// request without valid credentials with 401 and a `WWW-Authenticate` challenge; a request
/// with them goes on without its `Authorization` header, with the consumer in its
/// extensions ([`Consumer`]). Clones share the cache of verified credentials and the
/// verification slots.
pub type BasicAuthLayer = DeferredLayer<BasicAuthFilter>;

/// The service of a [`BasicAuthLayer`] around `S`.
pub type BasicAuth<S> = DeferredService<BasicAuthFilter, S>;

/// The future of a [`BasicAuth`] call: an answer at once, the inner call (credentials
/// verified before), or a verification and then the inner call.
pub type ResponseFuture<F, ResB, E> = DeferredFuture<F, (), ResB, E>;

impl BasicAuthLayer {
    /// Authenticates against `consumers`' `basic-auth` credentials, with the realm `gw`.
    /// The store is read per request: a set stored into it later takes effect at once.
    pub fn new(consumers: ConsumerStore) -> Self {
        Self::from_filter(
            BasicAuthFilter::build(&BasicAuthConfig::default(), consumers)
                .unwrap_or_else(|_| unreachable!("the default realm is a valid header value")),
        )
    }

    /// Authenticates against `consumers` as `config` says.
    pub fn with_config(
        config: BasicAuthConfig,
        consumers: ConsumerStore,
    ) -> Result<Self, ConfigError> {
        Self::checked(&BasicAuthPolicy, config, |config| {
            BasicAuthFilter::build(&config, consumers)
        })
    }
}

/// `basic-auth`.
#[derive(Debug)]
pub(crate) struct BasicAuthPolicy;

impl Policy for BasicAuthPolicy {
    type Params = BasicAuthConfig;

    fn check(&self, params: &BasicAuthConfig, _ctx: &PolicyContext<'_>) -> Vec<FieldError> {
        if params
            .max_concurrent_verifications
            .is_some_and(|n| !(1..=64).contains(&n))
        {
            return vec![FieldError::new(
                "maxConcurrentVerifications",
                "must be 1 to 64",
            )];
        }
        if params.realm.is_empty()
            || params.realm.len() > 128
            || !params
                .realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
        {
            vec![FieldError::new(
                "realm",
                "must be 1 to 128 visible ASCII characters, without '\"' or '\\'",
            )]
        } else {
            Vec::new()
        }
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn layer(
        &self,
        params: BasicAuthConfig,
        ctx: &PolicyContext<'_>,
    ) -> Result<RouteLayer, String> {
        BasicAuthFilter::build(&params, ctx.consumers.clone())
            .map(|filter| BasicAuthLayer::from_filter(filter).into())
    }
}

/// The compiled `basic-auth` policy, with its cache of verified credentials: the
/// [`DeferredFilter`] of a [`BasicAuthLayer`].
pub struct BasicAuthFilter {
    challenge: HeaderValue,
    consumers: ConsumerStore,
    /// keyed digest of (user name, password) -> the hash it was verified against
    cache: Mutex<HashMap<[u8; 32], Arc<str>>>,
    cache_key: [u8; 32],
    /// The process's verification slots.
    verifying: Arc<Semaphore>,
    /// This policy's share of them.
    own: Arc<Semaphore>,
}

impl std::fmt::Debug for BasicAuthFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // not the cache nor its key
        f.debug_struct("BasicAuthFilter")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// What the request's credentials lead to without hashing.
enum Verdict {
    Refuse(Response<Body>),
    Accept(Consumer),
    Verify(Verification),
}

/// A password to verify against a hash: what a [`BasicAuthFilter`] decides after hashing.
pub struct Verification {
    /// `None` for an unknown user name: verified against a dummy hash, then refused.
    consumer: Option<Consumer>,
    hash: Arc<str>,
    password: Vec<u8>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the password
        f.debug_struct("Verification")
            .field("consumer", &self.consumer.as_ref().map(|c| &c.name))
            .finish_non_exhaustive()
    }
}

impl BasicAuthFilter {
    fn build(params: &BasicAuthConfig, consumers: ConsumerStore) -> Result<Self, String> {
        let challenge = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            params.realm
        ))
        .map_err(|e| e.to_string())?;
        Ok(BasicAuthFilter {
            challenge,
            consumers,
            cache: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
            verifying: Arc::clone(&VERIFYING),
            own: Arc::new(Semaphore::new(
                params
                    .max_concurrent_verifications
                    .unwrap_or_else(default_policy_slots) as usize,
            )),
        })
    }

    fn verdict<B>(&self, request: &Request<B>) -> Verdict {
        let refuse = |code: &str, message: &str| {
            Verdict::Refuse(unauthorized(code, message, &self.challenge))
        };
        let Some(value) = request.headers().get(http::header::AUTHORIZATION) else {
            return refuse("missing_credentials", "credentials are required");
        };
        let Some((username, password)) = parse_basic(value.as_bytes()) else {
            return refuse("invalid_credentials", "the credentials are not valid");
        };
        let consumers = self.consumers.load();
        let digest = self.digest(&username, &password);
        let Some(credential) = std::str::from_utf8(&username)
            .ok()
            .and_then(|name| consumers.by_username(name))
        else {
            return Verdict::Verify(Verification {
                consumer: None,
                hash: Arc::clone(&DUMMY_HASH),
                password,
                digest,
            });
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if cached.is_some_and(|hash| hash == credential.hash) {
            return Verdict::Accept(credential.consumer.clone());
        }
        Verdict::Verify(Verification {
            consumer: Some(credential.consumer.clone()),
            hash: Arc::clone(&credential.hash),
            password,
            digest,
        })
    }

    /// A keyed digest of the pair: the cache never holds a password, and its keys are
    /// useless outside this process.
    fn digest(&self, username: &[u8], password: &[u8]) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.cache_key);
        hasher.update((username.len() as u64).to_le_bytes());
        hasher.update(username);
        hasher.update(password);
        hasher.finalize().into()
    }

    fn remember(&self, digest: [u8; 32], hash: Arc<str>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            // forget about half, whichever the map yields first: cheaper than tracking age,
            // and a forgotten entry only costs one more verification
            let drop: Vec<[u8; 32]> = cache.keys().take(CACHE_CAPACITY / 2).copied().collect();
            for key in drop {
                cache.remove(&key);
            }
        }
        cache.insert(digest, hash);
    }
}

/// The user name and password of a `Basic` authorization value.
fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if value.len() > MAX_AUTHORIZATION {
        return None;
    }
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Marks the request as the consumer's and removes the password before it goes upstream.
fn admit<B>(request: &mut Request<B>, consumer: Consumer) {
    super::authenticate(request, consumer);
    request.headers_mut().remove(http::header::AUTHORIZATION);
}

impl DeferredFilter for BasicAuthFilter {
    type Pending = Verification;
    type State = ();

    fn decide<B>(&self, request: &mut Request<B>) -> Decision<(), Verification> {
        match self.verdict(request) {
            Verdict::Refuse(response) => Decision::Refuse(response),
            Verdict::Accept(consumer) => {
                admit(request, consumer);
                Decision::Accept(())
            }
            Verdict::Verify(verification) => Decision::Defer(verification),
        }
    }

    async fn settle<B: Send>(
        &self,
        verification: Verification,
        request: &mut Request<B>,
    ) -> Result<(), Response<Body>> {
        let Verification {
            consumer,
            hash,
            password,
            digest,
        } = verification;
        // this policy's share first, then one of the process's slots, both within the wait
        let permits = tokio::time::timeout(VERIFY_WAIT, async {
            let own = Arc::clone(&self.own).acquire_owned().await?;
            let process = Arc::clone(&self.verifying).acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((own, process))
        })
        .await;
        let Ok(Ok(permit)) = permits else {
            return Err(crate::error::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication_busy",
                "too many authentication attempts; try again",
            ));
        };
        let checked = Arc::clone(&hash);
        let valid = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::credential::verify_password(&password, &checked)
        })
        .await
        .unwrap_or(false);
        let Some(consumer) = consumer.filter(|_| valid) else {
            return Err(unauthorized(
                "invalid_credentials",
                "the credentials are not valid",
                &self.challenge,
            ));
        };
        self.remember(digest, hash);
        admit(request, consumer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::policy::testing::{call_seen, store_with, text};

    fn layer(store: &ConsumerStore) -> RouteLayer {
        let ctx = PolicyContext {
            consumers: store,
            ..crate::policy::testing::ctx()
        };
        BasicAuthPolicy
            .layer(
                BasicAuthConfig {
                    realm: "shop".into(),
                    max_concurrent_verifications: None,
                },
                &ctx,
            )
            .unwrap()
    }

    fn request(authorization: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri("/orders");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(body::empty()).unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[tokio::test]
    async fn verifies_caches_and_refuses() {
        let store = store_with(serde_json::json!([
            {"type": "basic-auth", "id": "b1", "username": "alice", "password": "correct horse"}
        ]));
        let layer = layer(&store);

        let (seen, response) = call_seen(&layer, request(None)).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"shop\", charset=\"UTF-8\""
        );
        assert!(text(response).await.contains("missing_credentials"));

        for wrong in [
            basic("alice", "wrong horse"),
            basic("bob", "correct horse"),
            "Bearer abc".to_string(),
            "Basic !!!".to_string(),
        ] {
            let (seen, response) = call_seen(&layer, request(Some(&wrong))).await;
            assert!(seen.is_none(), "{wrong}");
            assert_eq!(response.status(), 401, "{wrong}");
        }

        let good = basic("alice", "correct horse");
        let (seen, _) = call_seen(&layer, request(Some(&good))).await;
        let seen = seen.expect("the right password passes");
        assert!(
            seen.headers().get("authorization").is_none(),
            "not forwarded"
        );
        let consumer = seen.extensions().get::<Consumer>().unwrap();
        assert_eq!(
            (&*consumer.name, consumer.credential.as_deref()),
            ("alice", Some("b1"))
        );

        // remembered: the next one is decided without hashing
        match layer_shared_decision(&store, &good) {
            Some(true) => {}
            other => panic!("expected a cache hit, got {other:?}"),
        }
    }

    /// Whether a fresh policy decides `authorization` from its cache after one success.
    fn layer_shared_decision(store: &ConsumerStore, authorization: &str) -> Option<bool> {
        let shared = BasicAuthFilter {
            challenge: HeaderValue::from_static("Basic"),
            consumers: store.clone(),
            cache: Mutex::new(HashMap::new()),
            cache_key: [7; 32],
            verifying: Arc::new(Semaphore::new(1)),
            own: Arc::new(Semaphore::new(1)),
        };
        let request = request(Some(authorization));
        let Verdict::Verify(Verification { hash, digest, .. }) = shared.verdict(&request) else {
            return None;
        };
        shared.remember(digest, hash);
        Some(matches!(shared.verdict(&request), Verdict::Accept(_)))
    }

    #[tokio::test]
    async fn a_changed_password_misses_the_cache() {
        let store = store_with(serde_json::json!([
            {"type": "basic-auth", "id": "b1", "username": "alice", "password": "correct horse"}
        ]));
        let layer = layer(&store);
        let old = basic("alice", "correct horse");
        assert!(call_seen(&layer, request(Some(&old))).await.0.is_some());
        // the password changes: the remembered success no longer counts
        let changed = store_with(serde_json::json!([
            {"type": "basic-auth", "id": "b1", "username": "alice", "password": "battery staple"}
        ]));
        store.store(Arc::clone(&*changed.load()));
        let (seen, response) = call_seen(&layer, request(Some(&old))).await;
        assert!(seen.is_none());
        assert_eq!(response.status(), 401);
        let new = basic("alice", "battery staple");
        assert!(call_seen(&layer, request(Some(&new))).await.0.is_some());
    }

    /// One policy under a flood of wrong passwords waits for its own share of the process's
    /// verification slots without holding any of them, so another API's login is verified
    /// while the flood waits. The flood is held at its share by the test (its one slot taken
    /// before it starts), so what is checked does not depend on how long a hash takes.
    #[tokio::test]
    async fn a_flooded_policy_leaves_verification_slots_to_the_others() {
        let store = store_with(serde_json::json!([
            {"type": "basic-auth", "id": "b1", "username": "alice", "password": "correct horse"}
        ]));
        let process = Arc::new(Semaphore::new(2));
        let flooded_share = Arc::new(Semaphore::new(1));
        let policy = |own: &Arc<Semaphore>| {
            RouteLayer::from(BasicAuthLayer::from_filter(BasicAuthFilter {
                challenge: HeaderValue::from_static("Basic"),
                consumers: store.clone(),
                cache: Mutex::new(HashMap::new()),
                cache_key: [7; 32],
                verifying: Arc::clone(&process),
                own: Arc::clone(own),
            }))
        };
        let (flooded, quiet) = (policy(&flooded_share), policy(&Arc::new(Semaphore::new(1))));
        // the flooded policy's share is in use (by a verification the test stands for)
        let in_use = Arc::clone(&flooded_share).acquire_owned().await.unwrap();
        // local tasks (the verifications themselves run on the blocking pool)
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let flood: Vec<_> = (0..8)
                    .map(|i| {
                        let layer = flooded.clone();
                        tokio::task::spawn_local(async move {
                            let guess = basic("alice", &format!("guess {i}"));
                            call_seen(&layer, request(Some(&guess))).await.1.status()
                        })
                    })
                    .collect();
                // every request of the flood runs until it waits for its policy's share (one
                // thread runs these tasks: a few turns let each of them run as far as it can)…
                for _ in 0..16 {
                    tokio::task::yield_now().await;
                }
                // …and holds none of the process's slots
                assert_eq!(process.available_permits(), 2);
                let good = basic("alice", "correct horse");
                let (seen, _) = tokio::time::timeout(
                    Duration::from_secs(30),
                    call_seen(&quiet, request(Some(&good))),
                )
                .await
                .expect("the login is verified while the flood waits");
                assert!(seen.is_some());
                assert!(flood.iter().all(|task| !task.is_finished()));
                drop(in_use);
                for task in flood {
                    assert_eq!(task.await.unwrap(), 401);
                }
            })
            .await;
    }

    #[test]
    fn parses_basic_values() {
        assert_eq!(
            parse_basic(b"basic YTpiOmM="),
            Some((b"a".to_vec(), b"b:c".to_vec()))
        );
        assert_eq!(parse_basic(b"Basic"), None);
        assert_eq!(parse_basic(b"Basic bm9jb2xvbg=="), None);
    }
}
