//! The audit log in process: one record for each kind of write, with its author, none for a
//! write that fails, digests that follow the content and hold no secret, and
//! `GET /api/v1/audit`'s filters and pages.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::Utc;
use gw_controller::admin::{AppState, ClientAddr};
use serde_json::{Value, json};

#[path = "support/fixtures.rs"]
mod fixtures;
mod support;
use fixtures::{BREAK_GLASS, api, call, certificate, consumer, controller, make_token};
use support::{send, send_raw, sqlite};

/// The whole audit log, oldest first, read by the break-glass admin.
async fn log(state: &Arc<AppState>) -> Vec<Value> {
    let (status, body) = send(
        state,
        call("GET", "/api/v1/audit?limit=1000", BREAK_GLASS, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut items = body["items"].as_array().unwrap().clone();
    items.reverse();
    items
}

/// `(actor, action, kind, name)` of each record.
fn summary(records: &[Value]) -> Vec<[String; 4]> {
    records
        .iter()
        .map(|r| {
            ["actor", "action", "kind", "name"].map(|f| r[f].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// `call`, expecting `status`; the answer's body.
async fn expect(
    state: &Arc<AppState>,
    (method, path, token): (&str, &str, &str),
    body: Option<&Value>,
    status: StatusCode,
) -> Value {
    let (got, answer) = send(state, call(method, path, token, body)).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    answer
}

#[tokio::test]
async fn each_write_is_recorded_once_with_its_author() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let (state, _stop) = controller(Arc::clone(&store));
    let ops = make_token(&state, &json!({"name": "ops", "role": "admin"})).await;
    let ops_id = log(&state).await[0]["name"].as_str().unwrap().to_string();
    let created = StatusCode::CREATED;
    let ok = StatusCode::OK;
    let gone = StatusCode::NO_CONTENT;

    expect(
        &state,
        ("PUT", "/api/v1/apis/pets", &ops),
        Some(&api("pets", &["edge"])),
        created,
    )
    .await;
    let mut changed = api("pets", &["edge"]);
    changed["spec"]["context"] = json!("/pets/v2");
    expect(
        &state,
        ("PUT", "/api/v1/apis/pets", &ops),
        Some(&changed),
        ok,
    )
    .await;
    let cert = certificate("web", &["edge"]);
    expect(
        &state,
        ("PUT", "/api/v1/certificates/web", &ops),
        Some(&cert),
        created,
    )
    .await;
    let mut alice = consumer("alice", &["edge"]);
    alice["spec"]["credentials"] =
        json!([{"type": "api-key", "id": "given", "key": "alice-given-key-0123456789"}]);
    expect(
        &state,
        ("PUT", "/api/v1/consumers/alice", &ops),
        Some(&alice),
        created,
    )
    .await;
    let added = expect(
        &state,
        ("POST", "/api/v1/consumers/alice/credentials", &ops),
        Some(&json!({"type": "api-key", "id": "made"})),
        created,
    )
    .await;
    let generated = added["key"].as_str().unwrap().to_string();
    expect(
        &state,
        ("DELETE", "/api/v1/consumers/alice/credentials/given", &ops),
        None,
        ok,
    )
    .await;
    expect(&state, ("DELETE", "/api/v1/apis/pets", &ops), None, ok).await;
    let join = expect(
        &state,
        ("POST", "/api/v1/enrollment-tokens", &ops),
        Some(&json!({"group": "edge"})),
        created,
    )
    .await;
    let join_id = join["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/enrollment-tokens/{join_id}");
    expect(&state, ("DELETE", &path, &ops), None, gone).await;
    let viewer = expect(
        &state,
        ("POST", "/api/v1/tokens", &ops),
        Some(&json!({"name": "dash", "role": "viewer"})),
        created,
    )
    .await;
    let viewer_id = viewer["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tokens/{viewer_id}");
    expect(&state, ("DELETE", &path, BREAK_GLASS), None, gone).await;
    let now = Utc::now();
    store
        .enroll_runtime(&gw_store::EnrollmentRecord::new(
            "rt-1",
            "edge",
            "01",
            now + chrono::Duration::hours(24),
            None,
            now,
        ))
        .await
        .unwrap();
    expect(
        &state,
        ("DELETE", "/api/v1/runtimes/rt-1", &ops),
        None,
        gone,
    )
    .await;
    expect(
        &state,
        ("DELETE", "/api/v1/runtimes/rt-1/enrollment", &ops),
        None,
        gone,
    )
    .await;

    let records = log(&state).await;
    let row = |actor: &str, action: &str, kind: &str, name: &str| {
        [actor, action, kind, name].map(str::to_string)
    };
    assert_eq!(
        summary(&records),
        vec![
            row("break-glass", "create", "admin-token", &ops_id),
            row("ops", "create", "api", "pets"),
            row("ops", "update", "api", "pets"),
            row("ops", "create", "certificate", "web"),
            row("ops", "create", "consumer", "alice"),
            row("ops", "add-credential", "consumer", "alice"),
            row("ops", "revoke-credential", "consumer", "alice"),
            row("ops", "delete", "api", "pets"),
            row("ops", "create", "enrollment-token", &join_id),
            row("ops", "revoke", "enrollment-token", &join_id),
            row("ops", "create", "admin-token", &viewer_id),
            row("break-glass", "revoke", "admin-token", &viewer_id),
            row("ops", "revoke", "runtime", "rt-1"),
            row("ops", "forget", "runtime", "rt-1"),
        ]
    );
    let [
        _,
        create,
        update,
        cert_record,
        alice_created,
        add,
        revoke,
        delete,
        ..,
    ] = &records[..]
    else {
        panic!("{records:?}")
    };
    assert_eq!(add["detail"], "made");
    assert_eq!(revoke["detail"], "given");
    assert_eq!(records[10]["detail"], "dash (viewer)");
    assert!(records.iter().all(|r| r["role"] == "admin"), "{records:?}");
    // resource writes carry their revision and the digests of before and after
    assert!(create["before"].is_null());
    assert!(create["after"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(update["before"], create["after"]);
    assert_ne!(update["after"], update["before"]);
    assert_eq!(delete["before"], update["after"]);
    assert!(delete["after"].is_null());
    assert_eq!(add["before"], alice_created["after"]);
    assert_eq!(revoke["before"], add["after"]);
    assert_eq!(
        update["revision"].as_i64().unwrap(),
        create["revision"].as_i64().unwrap() + 1
    );
    assert!(records[8]["revision"].is_null(), "not a resource write");
    // no secret anywhere: keys given and generated, the private key, the tokens' texts
    let text = serde_json::to_string(&records).unwrap();
    for secret in [
        "alice-given-key-0123456789",
        &generated,
        cert["spec"]["privateKey"].as_str().unwrap(),
        "PRIVATE KEY",
        &ops,
        viewer["token"].as_str().unwrap(),
        join["token"].as_str().unwrap(),
        BREAK_GLASS,
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(cert_record["after"].as_str().unwrap().len() == 7 + 64);
}

#[tokio::test]
async fn the_request_id_and_the_client_address_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let mut request = call(
        "PUT",
        "/api/v1/apis/pets",
        BREAK_GLASS,
        Some(&api("pets", &["edge"])),
    );
    request
        .headers_mut()
        .insert("x-request-id", "deploy-42".parse().unwrap());
    request
        .extensions_mut()
        .insert(ClientAddr("192.0.2.7:51000".parse().unwrap()));
    let (status, headers, body) = send_raw(&state, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["x-request-id"], "deploy-42");
    // without one (or with one that is not plain), the controller makes one and answers it
    let mut request = call("DELETE", "/api/v1/apis/pets", BREAK_GLASS, None);
    request
        .headers_mut()
        .insert("x-request-id", "two words".parse().unwrap());
    let (status, headers, body) = send_raw(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let made = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32, "{made}");

    let records = log(&state).await;
    assert_eq!(records[0]["requestId"], "deploy-42");
    assert_eq!(records[0]["source"], "192.0.2.7");
    assert_eq!(records[1]["requestId"], made.as_str());
    assert!(records[1]["source"].is_null());
}

#[tokio::test]
async fn a_failed_write_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let viewer = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    expect(
        &state,
        ("PUT", "/api/v1/apis/pets", BREAK_GLASS),
        Some(&api("pets", &["edge"])),
        StatusCode::CREATED,
    )
    .await;
    let before = log(&state).await.len();

    let mut invalid = api("pets", &["edge"]);
    invalid["spec"]["context"] = json!("no-leading-slash");
    let pets = api("pets", &["edge"]);
    let taken = json!({"name": "dash", "role": "viewer"});
    for (method, path, token, body, status) in [
        ("PUT", "/api/v1/apis/pets", BREAK_GLASS, Some(&invalid), 400),
        ("POST", "/api/v1/apis", BREAK_GLASS, Some(&pets), 409),
        (
            "PUT",
            "/api/v1/apis/pets",
            viewer.as_str(),
            Some(&pets),
            403,
        ),
        ("DELETE", "/api/v1/apis/nothing", BREAK_GLASS, None, 404),
        ("POST", "/api/v1/tokens", BREAK_GLASS, Some(&taken), 409),
        (
            "DELETE",
            "/api/v1/tokens/0123456789abcdef",
            BREAK_GLASS,
            None,
            404,
        ),
        (
            "DELETE",
            "/api/v1/enrollment-tokens/0123456789abcdef",
            BREAK_GLASS,
            None,
            404,
        ),
        ("DELETE", "/api/v1/runtimes/rt-9", BREAK_GLASS, None, 404),
    ] {
        let status = StatusCode::from_u16(status).unwrap();
        expect(&state, (method, path, token), body, status).await;
    }
    let mut stale = call("PUT", "/api/v1/apis/pets", BREAK_GLASS, Some(&pets));
    stale
        .headers_mut()
        .insert("if-match", "\"99\"".parse().unwrap());
    let (status, _) = send(&state, stale).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);

    assert_eq!(log(&state).await.len(), before);
}

#[tokio::test]
async fn the_log_is_filtered_and_paged_and_only_admins_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _stop) = controller(sqlite(&dir).await);
    let ops = make_token(&state, &json!({"name": "ops", "role": "admin"})).await;
    let operator = make_token(&state, &json!({"name": "ci", "role": "operator"})).await;
    for name in ["a", "b", "c"] {
        let path = format!("/api/v1/apis/{name}");
        expect(
            &state,
            ("PUT", &path, &ops),
            Some(&api(name, &["edge"])),
            StatusCode::CREATED,
        )
        .await;
    }
    let path = "/api/v1/certificates/web";
    let cert = certificate("web", &["edge"]);
    expect(
        &state,
        ("PUT", path, &operator),
        Some(&cert),
        StatusCode::CREATED,
    )
    .await;
    let get = |query: &str| call("GET", &format!("/api/v1/audit{query}"), BREAK_GLASS, None);
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };

    let (_, body) = send(&state, get("?actor=ops&kind=api")).await;
    assert_eq!(names(&body), ["c", "b", "a"], "newest first: {body}");
    assert!(body["next"].is_null());
    let (_, body) = send(&state, get("?actor=ci")).await;
    assert_eq!(names(&body), ["web"]);
    let (_, body) = send(&state, get("?kind=api&name=b")).await;
    assert_eq!(names(&body), ["b"]);
    let (_, body) = send(&state, get("?since=2999-01-01T00:00:00Z")).await;
    assert_eq!(names(&body), Vec::<String>::new());
    let (_, body) = send(
        &state,
        get("?since=2000-01-01T00:00:00%2B02:00&kind=certificate"),
    )
    .await;
    assert_eq!(names(&body), ["web"]);

    // pages of two: the cursor of one is where the next starts
    let (_, first) = send(&state, get("?kind=api&limit=2")).await;
    assert_eq!(names(&first), ["c", "b"]);
    let cursor = first["next"].as_str().unwrap();
    let (_, second) = send(&state, get(&format!("?kind=api&limit=2&cursor={cursor}"))).await;
    assert_eq!(names(&second), ["a"]);
    assert!(second["next"].is_null());

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?since=yesterday",
        "?cursor=x",
        "?who=me",
    ] {
        let (status, body) = send(&state, get(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // admins only: it names every token and client address
    let viewer = make_token(&state, &json!({"name": "dash", "role": "viewer"})).await;
    for token in [&operator, &viewer] {
        let (status, body) = send(&state, call("GET", "/api/v1/audit", token, None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, _) = send(&state, call("GET", "/api/v1/audit", &ops, None)).await;
    assert_eq!(status, StatusCode::OK);
}
