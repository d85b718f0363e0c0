//! OIDC for people on the admin API, in process: an identity provider's JWKS served on
//! loopback by the test, keys made here, tokens signed here. A person's token gets the role
//! its groups map to, its writes are audited under `oidc:<sub>`, invalid tokens are refused
//! with the reason, a key rotated at the provider is picked up, and a provider that does
//! not answer leaves the break-glass token and readiness alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gw_controller::admin::{AppState, OidcAuthenticator, OidcOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

// (certificates and consumers are not written here)
#[allow(dead_code)]
#[path = "support/fixtures.rs"]
mod fixtures;
mod support;
use fixtures::{BREAK_GLASS, api, call, controller, make_token};
use support::{send, send_raw, sqlite};

const ISSUER: &str = "https://sso.example.com/realms/ops";
const AUDIENCE: &str = "gw-admin";

/// A signing key of the identity provider (ES256).
struct Key {
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        Self {
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    /// A token with `claims`, signed by this key and naming `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.kid(), claims)
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The claims of `sub`, a member of `groups`, valid for ten minutes.
fn person(sub: &str, groups: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "aud": [AUDIENCE, "account"], "sub": sub, "groups": groups,
        "iat": now(), "exp": now() + 600, "email": format!("{sub}@example.com"),
    })
}

/// The identity provider's JWKS endpoint, on loopback: what it serves, and how many times
/// it was asked.
struct Idp {
    url: String,
    jwks: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(keys: &[&Key]) -> Self {
        let jwks = Arc::new(Mutex::new(Value::Null));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, counted) = (Arc::clone(&jwks), Arc::clone(&hits));
        let app = axum::Router::new().route(
            "/realms/ops/protocol/openid-connect/certs",
            axum::routing::get(move || {
                let body = served.lock().unwrap().clone();
                counted.fetch_add(1, Ordering::SeqCst);
                async move { axum::Json(body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let idp = Self {
            url: format!("http://{addr}/realms/ops/protocol/openid-connect/certs"),
            jwks,
            hits,
        };
        idp.serve(keys);
        idp
    }

    fn serve(&self, keys: &[&Key]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The OIDC options of the tests: `gw-admins` are admins, `team-a` operators of group
/// `team-a`, `auditors` viewers.
fn options(jwks_url: &str) -> OidcOptions {
    let mut options = OidcOptions::new(ISSUER, &[AUDIENCE], jwks_url);
    for mapping in [
        "gw-admins=admin",
        "team-a=operator:team-a",
        "auditors=viewer",
    ] {
        options.roles.push(mapping.parse().unwrap());
    }
    options
}

/// A controller with `GW_ADMIN_TOKEN` taking OIDC tokens whose keys `jwks_url` serves.
async fn controller_with_oidc(
    dir: &tempfile::TempDir,
    jwks_url: &str,
) -> (Arc<AppState>, tokio::sync::watch::Sender<bool>) {
    let (state, stop) = controller(sqlite(dir).await);
    let oidc = OidcAuthenticator::new(&options(jwks_url)).unwrap();
    state.oidc.set(Arc::new(oidc)).unwrap();
    (state, stop)
}

/// The value of `gw_admin_oidc_verifications_total{outcome}` in `GET /metrics`.
async fn verifications(state: &Arc<AppState>, outcome: &str) -> u64 {
    let (status, _, text) = send_raw(state, call("GET", "/metrics", "", None)).await;
    assert_eq!(status, StatusCode::OK);
    let series = format!("gw_admin_oidc_verifications_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// A viewer reads and cannot write; an operator of `team-a` writes there and not in
/// `team-b`; an admin makes tokens; several groups give the highest role; the audit log
/// names each person `oidc:<sub>` with the role they had.
#[tokio::test]
async fn people_get_the_role_their_groups_map_to() {
    let key = Key::new("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller_with_oidc(&dir, &idp.url).await;
    let viewer = key.sign(&person("carol", &["auditors", "unrelated"]));
    let operator = key.sign(&person("bob", &["team-a", "auditors"]));
    let admin = key.sign(&person("alice", &["gw-admins", "team-a"]));

    // the viewer reads, and is refused writes with the reason
    let (status, body) = send(&state, call("GET", "/api/v1/apis", &viewer, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &state,
        call(
            "PUT",
            "/api/v1/apis/a",
            &viewer,
            Some(&api("a", &["team-a"])),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["message"],
        "OIDC user carol (viewer) cannot write APIs, certificates and consumers: a viewer only \
         reads"
    );

    // the operator (also an auditor: the higher role wins) writes in team-a only
    let (status, body) = send(
        &state,
        call(
            "PUT",
            "/api/v1/apis/team-a-api",
            &operator,
            Some(&api("team-a-api", &["team-a"])),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &state,
        call(
            "PUT",
            "/api/v1/apis/team-b-api",
            &operator,
            Some(&api("team-b-api", &["team-b"])),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["message"],
        "OIDC user bob (operator of groups [team-a]) cannot write an API of group team-b: \
         \"team-b-api\" is outside the token's groups"
    );
    let (status, body) = send(&state, call("GET", "/api/v1/tokens", &operator, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // the admin makes a token, which then works
    let (status, made) = send(
        &state,
        call(
            "POST",
            "/api/v1/tokens",
            &admin,
            Some(&json!({"name": "ci", "role": "viewer"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let named = made["token"].as_str().unwrap();
    let (status, _) = send(&state, call("GET", "/api/v1/apis", named, None)).await;
    assert_eq!(status, StatusCode::OK);
    // as do the break-glass token and the tokens made by it
    let (status, _) = send(&state, call("GET", "/api/v1/tokens", BREAK_GLASS, None)).await;
    assert_eq!(status, StatusCode::OK);
    let other = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    let (status, _) = send(&state, call("GET", "/api/v1/apis", &other, None)).await;
    assert_eq!(status, StatusCode::OK);

    // the audit log names the people, as no named token could be named
    let (status, log) = send(
        &state,
        call("GET", "/api/v1/audit?limit=1000", BREAK_GLASS, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let records: Vec<(&str, &str, &str, &str)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            (
                r["actor"].as_str().unwrap(),
                r["role"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        records,
        [
            ("oidc:bob", "operator", "create", "api"),
            ("oidc:alice", "admin", "create", "admin-token"),
            ("break-glass", "admin", "create", "admin-token"),
        ],
        "{log}"
    );
    let (status, mine) = send(
        &state,
        call("GET", "/api/v1/audit?actor=oidc%3Abob", &admin, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["items"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["items"][0]["name"], "team-a-api", "{mine}");

    // one fetch of the JWKS served every token
    assert_eq!(idp.hits(), 1);
    assert_eq!(verifications(&state, "accepted").await, 7);
}

/// Each way a token can be wrong is refused with its own reason and status, and no answer
/// quotes the token.
#[tokio::test]
async fn invalid_tokens_are_refused_with_the_reason() {
    let key = Key::new("k1");
    let impostor = Key::new("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller_with_oidc(&dir, &idp.url).await;
    let mut expired = person("dave", &["gw-admins"]);
    // past the 30 s of leeway
    expired["exp"] = json!(now() - 120);
    let mut not_yet = person("dave", &["gw-admins"]);
    not_yet["nbf"] = json!(now() + 600);
    let mut other_audience = person("dave", &["gw-admins"]);
    other_audience["aud"] = json!("another-app");
    let mut other_issuer = person("dave", &["gw-admins"]);
    other_issuer["iss"] = json!("https://evil.example.com/realms/ops");
    let mut no_subject = person("dave", &["gw-admins"]);
    no_subject.as_object_mut().unwrap().remove("sub");
    let mut no_groups = person("dave", &["gw-admins"]);
    no_groups.as_object_mut().unwrap().remove("groups");
    let mut padded = person("dave", &["gw-admins"]);
    padded["padding"] = json!("x".repeat(9 * 1024));
    let good = key.sign(&person("dave", &["gw-admins"]));
    let mut parts = good.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "expired",
            key.sign(&expired),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token has expired",
        ),
        (
            "not yet valid",
            key.sign(&not_yet),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token is not valid yet",
        ),
        (
            "wrong audience",
            key.sign(&other_audience),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token's audience is not accepted",
        ),
        (
            "wrong issuer",
            key.sign(&other_issuer),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token's issuer is not accepted",
        ),
        (
            "signed by another key under the same kid",
            impostor.sign(&person("dave", &["gw-admins"])),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token's signature is not valid",
        ),
        (
            "signature cut off",
            format!("{header}.{payload}."),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token's signature is not valid",
        ),
        (
            "unsigned",
            format!(
                "{}.{payload}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#)
            ),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: the token's algorithm is not accepted",
        ),
        (
            "no subject",
            key.sign(&no_subject),
            StatusCode::UNAUTHORIZED,
            "the OIDC token is refused: its subject claim is missing",
        ),
        (
            "larger than 8 KiB",
            key.sign(&padded),
            StatusCode::UNAUTHORIZED,
            "the bearer token is larger than 8 KiB",
        ),
        (
            "groups mapped to no role",
            key.sign(&person("dave", &["engineering", "team-b"])),
            StatusCode::FORBIDDEN,
            "OIDC user dave has no role on this admin API: no value of the token's roles claim \
             is mapped to a role",
        ),
        (
            "no groups at all",
            key.sign(&no_groups),
            StatusCode::FORBIDDEN,
            "OIDC user dave has no role on this admin API",
        ),
    ];
    for (case, token, status, reason) in &cases {
        let (got, headers, body) = send_raw(&state, call("GET", "/api/v1/apis", token, None)).await;
        assert_eq!(got, *status, "{case}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(reason), "{case}: {message}");
        let code = if *status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "invalid_token"
        };
        assert_eq!(body["error"]["code"], code, "{case}");
        if *status == StatusCode::UNAUTHORIZED {
            assert!(
                headers.contains_key("www-authenticate"),
                "{case}: {headers:?}"
            );
        }
        for part in token.split('.').filter(|part| part.len() > 8) {
            assert!(!body.to_string().contains(part), "{case}: {body}");
        }
    }
    // the valid one passes, and every refusal was counted by its outcome
    let (status, body) = send(&state, call("GET", "/api/v1/apis", &good, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(verifications(&state, "expired").await, 1);
    assert_eq!(verifications(&state, "invalid").await, 8);
    assert_eq!(verifications(&state, "unmapped").await, 2);
    assert_eq!(verifications(&state, "accepted").await, 1);
    // none of that needed the JWKS more than once
    assert_eq!(idp.hits(), 1);
    // a bearer that is not shaped as a JWT is not taken for one: the usual 401
    let (status, body) = send(
        &state,
        call("GET", "/api/v1/apis", "wrong-admin-token", None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("an OIDC token of the configured issuer"),
        "{body}"
    );
}

/// The provider signs with a new key: the first token naming it makes the controller fetch
/// the JWKS again, and from then on both keys verify.
#[tokio::test]
async fn a_key_rotated_at_the_identity_provider_is_picked_up() {
    let (old, new) = (Key::new("2026-01"), Key::new("2026-02"));
    let idp = Idp::start(&[&old]).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller_with_oidc(&dir, &idp.url).await;
    let (status, body) = send(
        &state,
        call(
            "GET",
            "/api/v1/apis",
            &old.sign(&person("erin", &["auditors"])),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(idp.hits(), 1);

    idp.serve(&[&old, &new]);
    let (status, body) = send(
        &state,
        call(
            "GET",
            "/api/v1/apis",
            &new.sign(&person("erin", &["auditors"])),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(idp.hits(), 2, "fetched again for the new kid");
    for key in [&old, &new] {
        let token = key.sign(&person("erin", &["auditors"]));
        let (status, _) = send(&state, call("GET", "/api/v1/apis", &token, None)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // a kid the provider does not have: refused, and the JWKS is not fetched again so soon
    let stranger = Key::new("2099-01");
    let (status, body) = send(
        &state,
        call(
            "GET",
            "/api/v1/apis",
            &stranger.sign(&person("erin", &["auditors"])),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the OIDC token is refused: the token's key is unknown"
    );
    assert_eq!(idp.hits(), 2, "at most one fetch per 30 s for unknown kids");
}

/// An identity provider that never answered: OIDC tokens get 503 with the reason, while
/// `GW_ADMIN_TOKEN` works and the controller stays ready.
#[tokio::test]
async fn without_the_identity_provider_break_glass_still_works() {
    // a loopback port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller_with_oidc(&dir, &format!("http://{addr}/jwks")).await;
    let key = Key::new("k1");
    let token = key.sign(&person("alice", &["gw-admins"]));
    let (status, body) = send(&state, call("GET", "/api/v1/apis", &token, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "idp_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("use GW_ADMIN_TOKEN"),
        "{body}"
    );
    let (status, _) = send(&state, call("GET", "/api/v1/apis", BREAK_GLASS, None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(&state, call("GET", "/readyz", "", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(verifications(&state, "unavailable").await, 1);
}
