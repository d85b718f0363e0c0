//! gw's policies as plain `tower` layers in an axum service, with no gateway at all.
//!
//! [`app`] is an axum [`Router`] whose routes sit behind four of gw's built-in policies,
//! each built from its typed config: `cors` (answers browsers' preflights),
//! `request-size-limit` (refuses a request body over [`MAX_BODY_BYTES`] with 413), `api-key`
//! (refuses a request without a known key with 401, and tells the routes which consumer
//! sent it) and `rate-limit` (at most [`REQUESTS_PER_MINUTE`] requests a minute per
//! consumer, then 429). The layers are generic over the inner service and the body types,
//! so they stack on axum's `Router` as on any `tower` service.
//!
//! ```text
//! cargo run -p tower-layers
//! curl -i http://127.0.0.1:3000/hello                                      # 401
//! curl -i -H 'x-api-key: alice-key-0123456789' http://127.0.0.1:3000/hello # 200
//! curl -i -H 'x-api-key: alice-key-0123456789' -d 'remember the milk' http://127.0.0.1:3000/notes
//! ```

use axum::Router;
use axum::extract::Extension;
use axum::routing::{get, post};
use gw_core::consumers::{ConsumerSet, ConsumerStore};
use gw_core::policy::Consumer;
use gw_core::policy::apikey::ApiKeyLayer;
use gw_core::policy::cors::{CorsConfig, CorsLayer};
use gw_core::policy::ratelimit::{KeyKind, Limit, RateLimitConfig, RateLimitLayer, Window};
use gw_core::policy::sizelimit::{RequestSizeLimitConfig, RequestSizeLimitLayer};
use tower::ServiceBuilder;

/// The origin whose pages may call the service from a browser.
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// The requests a consumer may send per minute.
pub const REQUESTS_PER_MINUTE: u64 = 3;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: u64 = 64;

/// The consumers and their keys, as the documents gw's admin API takes. A real service
/// would read them from its own configuration; the keys are hashed when the set is built.
pub fn consumers() -> anyhow::Result<ConsumerStore> {
    let consumer = |name: &str, key: &str| {
        serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": name},
            "spec": {"credentials": [{"type": "api-key", "id": "key-1", "key": key}]}
        })
    };
    let set = ConsumerSet::from_documents([
        consumer("alice", "alice-key-0123456789"),
        consumer("bob", "bob-key-0123456789ab"),
    ])
    .map_err(|errors| anyhow::anyhow!(errors.join("; ")))?;
    Ok(ConsumerStore::new(set))
}

/// The service: `GET /hello` greets the consumer that the API key names, and `POST /notes`
/// takes a note of at most [`MAX_BODY_BYTES`].
pub fn app(consumers: ConsumerStore) -> anyhow::Result<Router> {
    let cors = CorsLayer::new(CorsConfig {
        allow_origins: vec![ALLOWED_ORIGIN.to_string()],
        allow_headers: Some(vec!["x-api-key".to_string()]),
        max_age: Some(600),
        ..CorsConfig::default()
    })?;
    let rate_limit = RateLimitLayer::new(RateLimitConfig {
        limits: vec![Limit {
            requests: REQUESTS_PER_MINUTE,
            window: Window::Minute,
        }],
        key: KeyKind::Consumer,
        ..RateLimitConfig::default()
    })?;
    let size_limit = RequestSizeLimitLayer::new(RequestSizeLimitConfig {
        max_bytes: MAX_BODY_BYTES,
    })?;
    // outermost first: preflights are answered before any key is asked for, a body
    // declared too large is refused before any key is checked, and the rate limit counts
    // per consumer, so it runs once the key has named one
    let policies = ServiceBuilder::new()
        .layer(cors)
        .layer(size_limit)
        .layer(ApiKeyLayer::new(consumers))
        .layer(rate_limit);
    Ok(Router::new()
        .route("/hello", get(hello))
        .route("/notes", post(note))
        .layer(policies))
}

/// Greets the consumer that `api-key` found.
async fn hello(Extension(consumer): Extension<Consumer>) -> String {
    format!("hello, {}\n", consumer.name)
}

/// Takes the consumer's note. The body arrives limited by `request-size-limit`: one that
/// did not declare its length and grows past the limit fails as it is read, and axum's
/// `String` extractor answers that with 413.
async fn note(Extension(consumer): Extension<Consumer>, note: String) -> String {
    format!("{} noted {} bytes\n", consumer.name, note.len())
}
