//! Admin identities and roles in process: who may call what (the role matrix), an
//! operator's groups, the tokens' lifecycle, and authentication while the store is down.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{TimeDelta, Utc};
use gw_controller::admin::{AppState, NamedToken};
use gw_store::{AdminRole, NewAdminToken, StoreOptions};
use serde_json::{Value, json};

#[path = "support/fixtures.rs"]
mod fixtures;
mod support;
use fixtures::{BREAK_GLASS, api, call, certificate, consumer, controller, make_token};
use support::{send, send_raw, sqlite};

fn credential(name: &str) -> Value {
    json!({"type": "jwt", "id": "extra", "subject": format!("{name}-extra@example.com")})
}

/// A store holding an API, a certificate and a consumer in group `edge` and the same in
/// group `payments`, written by the break-glass admin.
async fn seed(state: &Arc<AppState>) {
    for (path, document) in [
        ("/api/v1/apis/edge-api", api("edge-api", &["edge"])),
        ("/api/v1/apis/pay-api", api("pay-api", &["payments"])),
        (
            "/api/v1/certificates/edge-cert",
            certificate("edge-cert", &["edge"]),
        ),
        (
            "/api/v1/certificates/pay-cert",
            certificate("pay-cert", &["payments"]),
        ),
        (
            "/api/v1/consumers/edge-user",
            consumer("edge-user", &["edge"]),
        ),
        (
            "/api/v1/consumers/pay-user",
            consumer("pay-user", &["payments"]),
        ),
    ] {
        let (status, body) = send(state, call("PUT", path, BREAK_GLASS, Some(&document))).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    }
}

/// What a caller gets from a call.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Let through: this status.
    Status(u16),
    /// 403 `forbidden`.
    Forbidden,
}

use Expect::{Forbidden as NO, Status as OK};

/// The callers, in the matrix's column order.
const CALLERS: [&str; 4] = ["break-glass", "admin", "operator", "viewer"];

/// A body for the caller `who` (`None`: no body).
type BodyOf = fn(&str) -> Option<Value>;

fn none(_: &str) -> Option<Value> {
    None
}

/// The role matrix as built: each admin call (with `WHO` standing for the caller's name, so
/// that each caller writes its own resources), and what each caller gets. The operator is
/// scoped to group `edge`; the resources written here are all in `edge`.
const MATRIX: &[(&str, &str, BodyOf, [Expect; 4])] = &[
    //                                                          break-glass admin    operator viewer
    // APIs
    (
        "GET",
        "/api/v1/apis",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/apis/edge-api",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "PUT",
        "/api/v1/apis/a-WHO",
        |w| Some(api(&format!("a-{w}"), &["edge"])),
        [OK(201), OK(201), OK(201), NO],
    ),
    (
        "POST",
        "/api/v1/apis",
        |w| Some(api(&format!("p-{w}"), &["edge"])),
        [OK(201), OK(201), OK(201), NO],
    ),
    (
        "DELETE",
        "/api/v1/apis/p-WHO",
        none,
        [OK(200), OK(200), OK(200), NO],
    ),
    // certificates
    (
        "GET",
        "/api/v1/certificates",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/certificates/edge-cert",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "PUT",
        "/api/v1/certificates/c-WHO",
        |w| Some(certificate(&format!("c-{w}"), &["edge"])),
        [OK(201), OK(201), OK(201), NO],
    ),
    (
        "DELETE",
        "/api/v1/certificates/c-WHO",
        none,
        [OK(200), OK(200), OK(200), NO],
    ),
    // consumers and their credentials
    (
        "GET",
        "/api/v1/consumers",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/consumers/edge-user",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "PUT",
        "/api/v1/consumers/u-WHO",
        |w| Some(consumer(&format!("u-{w}"), &["edge"])),
        [OK(201), OK(201), OK(201), NO],
    ),
    (
        "POST",
        "/api/v1/consumers/u-WHO/credentials",
        |w| Some(credential(w)),
        [OK(201), OK(201), OK(201), NO],
    ),
    (
        "DELETE",
        "/api/v1/consumers/u-WHO/credentials/extra",
        none,
        [OK(200), OK(200), OK(200), NO],
    ),
    (
        "DELETE",
        "/api/v1/consumers/u-WHO",
        none,
        [OK(200), OK(200), OK(200), NO],
    ),
    // enrollment tokens
    (
        "GET",
        "/api/v1/enrollment-tokens",
        none,
        [OK(200), OK(200), NO, NO],
    ),
    (
        "POST",
        "/api/v1/enrollment-tokens",
        |_| Some(json!({"group": "edge"})),
        [OK(201), OK(201), NO, NO],
    ),
    (
        "DELETE",
        "/api/v1/enrollment-tokens/0123456789abcdef",
        none,
        [OK(404), OK(404), NO, NO],
    ),
    // admin tokens
    ("GET", "/api/v1/tokens", none, [OK(200), OK(200), NO, NO]),
    (
        "POST",
        "/api/v1/tokens",
        |w| Some(json!({"name": format!("t-{w}"), "role": "viewer"})),
        [OK(201), OK(201), NO, NO],
    ),
    (
        "DELETE",
        "/api/v1/tokens/0123456789abcdef",
        none,
        [OK(404), OK(404), NO, NO],
    ),
    // the fleet
    (
        "GET",
        "/api/v1/runtimes",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "DELETE",
        "/api/v1/runtimes/rt-1",
        none,
        [OK(404), OK(404), NO, NO],
    ),
    (
        "DELETE",
        "/api/v1/runtimes/rt-1/enrollment",
        none,
        [OK(404), OK(404), NO, NO],
    ),
    // the audit log
    ("GET", "/api/v1/audit", none, [OK(200), OK(200), NO, NO]),
    // bundles (none configured here: 409 for those let through)
    ("POST", "/api/v1/bundles", none, [OK(409), OK(409), NO, NO]),
    // schemas and policies
    (
        "GET",
        "/api/v1/schema/api",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/schema/certificate",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/schema/consumer",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/policies",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
    (
        "GET",
        "/api/v1/policies/jwt",
        none,
        [OK(200), OK(200), OK(200), OK(200)],
    ),
];

/// Each caller against each admin call, as [`MATRIX`] says.
#[tokio::test]
async fn each_role_gets_what_the_matrix_says() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    seed(&state).await;
    let tokens = [
        BREAK_GLASS.to_string(),
        make_token(&state, &json!({"name": "ops", "role": "admin"})).await,
        make_token(
            &state,
            &json!({"name": "ci-deployer", "role": "operator", "groups": ["edge"]}),
        )
        .await,
        make_token(&state, &json!({"name": "dash", "role": "viewer"})).await,
    ];
    let names = [
        "GW_ADMIN_TOKEN (break-glass admin)",
        "token ops (admin)",
        "token ci-deployer (operator of groups [edge])",
        "token dash (viewer)",
    ];
    for (method, path, body, expected) in MATRIX {
        for (i, who) in CALLERS.iter().enumerate() {
            let path = path.replace("WHO", who);
            let body = body(who);
            let (status, answer) =
                send(&state, call(method, &path, &tokens[i], body.as_ref())).await;
            match expected[i] {
                OK(code) => assert_eq!(status.as_u16(), code, "{who}: {method} {path}: {answer}"),
                NO => {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{who}: {method} {path}: {answer}"
                    );
                    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
                    let message = answer["error"]["message"].as_str().unwrap();
                    assert!(message.starts_with(names[i]), "{message}");
                }
            }
        }
    }
}

/// The answer to a refused call names the caller, its role and what it lacks.
#[tokio::test]
async fn a_refusal_says_who_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let viewer = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    let operator = make_token(
        &state,
        &json!({"name": "ci-deployer", "role": "operator", "groups": ["edge"]}),
    )
    .await;
    for (token, method, path, body, message) in [
        (
            &viewer,
            "PUT",
            "/api/v1/apis/a",
            Some(api("a", &["edge"])),
            "token dash (viewer) cannot write APIs, certificates and consumers: a viewer only reads",
        ),
        (
            &operator,
            "GET",
            "/api/v1/tokens",
            None,
            "token ci-deployer (operator of groups [edge]) cannot manage admin tokens: that takes the admin role",
        ),
        (
            &operator,
            "DELETE",
            "/api/v1/runtimes/rt-1",
            None,
            "token ci-deployer (operator of groups [edge]) cannot revoke a runtime: that takes the admin role",
        ),
        (
            &operator,
            "POST",
            "/api/v1/bundles",
            None,
            "token ci-deployer (operator of groups [edge]) cannot export fallback bundles: bundles hold every group's configuration: that takes the admin role",
        ),
        (
            &operator,
            "PUT",
            "/api/v1/apis/pay",
            Some(api("pay", &["edge", "payments"])),
            "token ci-deployer (operator of groups [edge]) cannot write an API of group payments: \"pay\" is outside the token's groups",
        ),
    ] {
        let (status, answer) = send(&state, call(method, path, token, body.as_ref())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert_eq!(answer["error"]["message"], message);
    }
}

/// An operator of `edge` cannot create, move, change or delete what is in `payments`, nor
/// move what is in `edge` there; what it was refused is left as it was.
#[tokio::test]
async fn an_operator_cannot_touch_another_group_s_resources() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    seed(&state).await;
    let op = make_token(
        &state,
        &json!({"name": "ci-deployer", "role": "operator", "groups": ["edge"]}),
    )
    .await;
    let refused: Vec<(&str, &str, Option<Value>)> = vec![
        // create in another group
        (
            "PUT",
            "/api/v1/apis/new-pay",
            Some(api("new-pay", &["payments"])),
        ),
        ("POST", "/api/v1/apis", Some(api("new-pay", &["payments"]))),
        (
            "PUT",
            "/api/v1/certificates/new-pay",
            Some(certificate("new-pay", &["payments"])),
        ),
        (
            "POST",
            "/api/v1/consumers",
            Some(consumer("new-pay", &["payments"])),
        ),
        // a resource of payments moved into edge
        (
            "PUT",
            "/api/v1/apis/pay-api",
            Some(api("pay-api", &["edge"])),
        ),
        (
            "PUT",
            "/api/v1/certificates/pay-cert",
            Some(certificate("pay-cert", &["edge"])),
        ),
        (
            "PUT",
            "/api/v1/consumers/pay-user",
            Some(consumer("pay-user", &["edge"])),
        ),
        // a resource of edge moved (or spread) into payments
        (
            "PUT",
            "/api/v1/apis/edge-api",
            Some(api("edge-api", &["payments"])),
        ),
        (
            "PUT",
            "/api/v1/consumers/edge-user",
            Some(consumer("edge-user", &["edge", "payments"])),
        ),
        // deleted, or its credentials changed
        ("DELETE", "/api/v1/apis/pay-api", None),
        ("DELETE", "/api/v1/certificates/pay-cert", None),
        ("DELETE", "/api/v1/consumers/pay-user", None),
        (
            "POST",
            "/api/v1/consumers/pay-user/credentials",
            Some(credential("pay-user")),
        ),
        ("DELETE", "/api/v1/consumers/pay-user/credentials/sso", None),
    ];
    for (method, path, body) in &refused {
        let (status, answer) = send(&state, call(method, path, &op, body.as_ref())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("of group payments"),
            "{method} {path}: {message}"
        );
    }
    // nothing moved: the break-glass admin reads every resource where it was
    for (path, groups) in [
        ("/api/v1/apis/pay-api", json!(["payments"])),
        ("/api/v1/apis/edge-api", json!(["edge"])),
        ("/api/v1/consumers/pay-user", json!(["payments"])),
        ("/api/v1/consumers/edge-user", json!(["edge"])),
        ("/api/v1/certificates/pay-cert", json!(["payments"])),
    ] {
        let (status, body) = send(&state, call("GET", path, BREAK_GLASS, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["spec"]["groups"], groups, "{path}: {body}");
    }
    let (_, credentials) = send(
        &state,
        call("GET", "/api/v1/consumers/pay-user", BREAK_GLASS, None),
    )
    .await;
    assert_eq!(
        credentials["spec"]["credentials"].as_array().unwrap().len(),
        1,
        "{credentials}"
    );
    let (_, apis) = send(&state, call("GET", "/api/v1/apis", BREAK_GLASS, None)).await;
    assert_eq!(apis["items"].as_array().unwrap().len(), 2, "{apis}");
    // within its group it writes, and a missing resource is still a 404
    let (status, body) = send(
        &state,
        call(
            "PUT",
            "/api/v1/apis/edge-api",
            &op,
            Some(&api("edge-api", &["edge"])),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(&state, call("DELETE", "/api/v1/apis/nothing", &op, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// What any role reads of an API hides its secrets (admins' reads too: they are sealed at
/// rest and shown to no one), and writing such a definition back is refused rather than
/// deploying the placeholder.
#[tokio::test]
async fn no_role_reads_secrets_in_api_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let secret = "c2hhcmVkIHNlY3JldCBvZiAzMiBieXRlcyBvciBtb3JlISE=";
    let mut document = api("jwt-api", &["edge"]);
    document["spec"]["policies"] =
        json!([{"name": "jwt", "params": {"secret": secret, "algorithms": ["HS256"]}}]);
    let (status, body) = send(
        &state,
        call("PUT", "/api/v1/apis/jwt-api", BREAK_GLASS, Some(&document)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let op = make_token(
        &state,
        &json!({"name": "ci-deployer", "role": "operator", "groups": ["edge"]}),
    )
    .await;
    let viewer = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    for token in [BREAK_GLASS, &op, &viewer] {
        for path in ["/api/v1/apis/jwt-api", "/api/v1/apis"] {
            let (status, body) = send(&state, call("GET", path, token, None)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(!body.to_string().contains(secret), "{path}: {body}");
            assert!(body.to_string().contains("<redacted>"), "{path}: {body}");
        }
    }
    // the operator's read, written back
    let (_, read) = send(&state, call("GET", "/api/v1/apis/jwt-api", &op, None)).await;
    let (status, body) = send(
        &state,
        call("PUT", "/api/v1/apis/jwt-api", &op, Some(&read)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"], "spec.policies[0].params.secret",
        "{body}"
    );
}

/// A token is shown once; listings show its state and last use, never its secret; revoked,
/// expired, unknown and wrong tokens all get the same 401.
#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_like_wrong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = controller(Arc::clone(&store));
    let request = json!({"name": "ci", "role": "viewer", "expiresIn": "7d"});
    let response = send_raw(
        &state,
        call("POST", "/api/v1/tokens", BREAK_GLASS, Some(&request)),
    )
    .await;
    assert_eq!(response.0, StatusCode::CREATED);
    assert_eq!(response.1.get("cache-control").unwrap(), "no-store");
    let created: Value = serde_json::from_str(&response.2).unwrap();
    let text = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(text.starts_with(&format!("gwadm1.{id}.")), "{created}");
    assert_eq!(
        (created["name"].as_str(), created["role"].as_str()),
        (Some("ci"), Some("viewer"))
    );
    let lifetime = chrono::DateTime::parse_from_rfc3339(created["expiresAt"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(created["createdAt"].as_str().unwrap()).unwrap();
    assert_eq!(lifetime, TimeDelta::days(7));

    let (status, _) = send(&state, call("GET", "/api/v1/apis", &text, None)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = send(&state, call("GET", "/api/v1/tokens", BREAK_GLASS, None)).await;
    let item = &listed["items"][0];
    assert_eq!(item["state"], "active", "{listed}");
    assert!(item["lastUsedAt"].is_string(), "{listed}");
    let secret = text.rsplit('.').next().unwrap();
    assert!(!listed.to_string().contains(secret), "{listed}");

    // an expired token, stored as if made long ago
    let expired = NamedToken::generate();
    let long_ago = Utc::now() - TimeDelta::days(2);
    store
        .create_admin_token(
            &NewAdminToken {
                id: expired.id().to_string(),
                name: "old".into(),
                secret_hash: expired.secret_hash(),
                role: AdminRole::Admin,
                groups: vec![],
                created_at: long_ago,
                expires_at: Some(long_ago + TimeDelta::days(1)),
            },
            None,
        )
        .await
        .unwrap();

    let (status, _) = send(
        &state,
        call("DELETE", &format!("/api/v1/tokens/{id}"), BREAK_GLASS, None),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let wrong_secret = format!("gwadm1.{id}.{}", "0".repeat(32));
    let unknown = NamedToken::generate().reveal();
    let mut answers = Vec::new();
    for token in [
        text.as_str(),
        &expired.reveal(),
        &wrong_secret,
        &unknown,
        "gwadm1.x",
        "nonsense",
    ] {
        let (status, body) = send(&state, call("GET", "/api/v1/apis", token, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let (_, listed) = send(&state, call("GET", "/api/v1/tokens", BREAK_GLASS, None)).await;
    let states: Vec<(&str, &str)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("ci", "revoked"), ("old", "expired")]);
}

/// `POST /api/v1/tokens` refuses what it does not understand, with every problem at once.
#[tokio::test]
async fn token_requests_are_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let post = |body: Value| call("POST", "/api/v1/tokens", BREAK_GLASS, Some(&body));
    let (status, body) = send(
        &state,
        post(json!({"name": "a", "role": "viewer", "scope": "all"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_document", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("scope"),
        "{body}"
    );
    let (status, body) = send(&state, post(json!({"role": "viewer"}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_document"))
    );
    let (status, body) = send(
        &state,
        post(json!({"name": "Bad Name", "role": "root", "groups": ["Edge"], "expiresIn": "2y"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "validation_failed");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "role", "groups[0]", "expiresIn"], "{body}");
    for role in ["admin", "viewer"] {
        let (status, body) = send(
            &state,
            post(json!({"name": "a", "role": role, "groups": ["edge"]})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], "groups", "{body}");
    }
    let (status, body) = send(
        &state,
        post(json!({"name": "a", "role": "viewer", "expiresIn": "400d"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("between 1m and 365d"), "{body}");
    // a name is taken while its token is not revoked
    make_token(&state, &json!({"name": "a", "role": "viewer"})).await;
    let (status, body) = send(&state, post(json!({"name": "a", "role": "operator"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_exists");
}

/// A store that does not answer while a named token is checked: 503, never an open door;
/// `GW_ADMIN_TOKEN` still works, as it needs no store to be checked.
#[tokio::test]
async fn a_store_that_does_not_answer_refuses_named_tokens_with_503() {
    use sqlx::Connection as _;
    let db = gw_store::testing::TestDatabase::create().await;
    let store = gw_store::open(
        db.url(),
        &StoreOptions {
            timeout: std::time::Duration::from_millis(300),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let (state, _stop) = controller(store);
    let token = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    let (status, _) = send(&state, call("GET", "/api/v1/apis", &token, None)).await;
    assert_eq!(status, StatusCode::OK);

    // another session holds the tokens' table: reads of it wait past the store's timeout
    let mut blocker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE admin_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (status, body) = send(&state, call("GET", "/api/v1/apis", &token, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    let (status, body) = send(&state, call("GET", "/api/v1/apis", BREAK_GLASS, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let (status, _) = send(&state, call("GET", "/api/v1/apis", &token, None)).await;
    assert_eq!(status, StatusCode::OK);
}
