//! The role matrix end to end: one production controller on PostgreSQL, a break-glass admin
//! that makes an admin, an operator of group `a` and a viewer, and every admin call sent by
//! each of the four. Each answer is checked against the table ([`MATRIX`]): its status, the
//! reason of a refusal, no secret in any answer, and the audit log:
//! one record (actor, role, action, kind, name, request id, source) per successful write,
//! none for a refused or failed one.
//!
//! The table must name every route of the admin router: [`routes_of_the_router`] reads them
//! from the router's source (`gw-controller/src/admin/mod.rs` and the routes every resource
//! kind gets, `admin/kind.rs`), so a route added without a row fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use gw_e2e::{Admin, ControllerSpec, TOKEN, controller};
use gw_store::testing::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

/// What a caller gets from a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Let through: this status.
    Status(u16),
    /// 403 `forbidden`, with a reason.
    Forbidden,
}

use Expect::{Forbidden as NO, Status as OK};

/// The callers, in the order of the matrix's columns (and of the calls: a viewer's and an
/// operator's refused call comes before the admins' successful one).
const CALLERS: [Caller; 4] = [
    Caller {
        who: "viewer",
        actor: "dash",
        role: "viewer",
    },
    Caller {
        who: "operator",
        actor: "deployer",
        role: "operator",
    },
    Caller {
        who: "admin",
        actor: "ops",
        role: "admin",
    },
    Caller {
        who: "root",
        actor: "break-glass",
        role: "admin",
    },
];

#[derive(Debug, Clone, Copy)]
struct Caller {
    /// What `WHO` stands for in the matrix's paths and bodies: each caller writes its own.
    who: &'static str,
    /// Its name in the audit log.
    actor: &'static str,
    role: &'static str,
}

/// The name of what a write records.
#[derive(Debug, Clone, Copy)]
enum Name {
    /// This text, `WHO` standing for the caller.
    Is(&'static str),
    /// The id of the token the caller made last.
    Last,
    /// The answer's field of this name.
    Answered(&'static str),
}

/// The audit record a successful write leaves: action, kind, name.
type Audit = Option<(&'static str, &'static str, Name)>;

/// A body for the caller `who` (`None`: no body).
type BodyOf = fn(&str) -> Option<Value>;

/// One admin call: the router's route (under `/api/v1`), the path sent (`WHO` for the
/// caller, `LAST` for the id of the token it made last), a body, what each caller gets, and
/// the audit record of a success.
struct Row {
    method: &'static str,
    route: &'static str,
    path: &'static str,
    body: BodyOf,
    expect: [Expect; 4],
    audit: Audit,
}

fn none(_: &str) -> Option<Value> {
    None
}

/// An API whose `request-headers` policy sets a secret header.
fn api(name: &str, groups: &[&str]) -> Value {
    api_with(name, groups, OWN_SECRET)
}

fn api_with(name: &str, groups: &[&str], secret: &str) -> Value {
    json!({
        "apiVersion": "gw/v1", "kind": "Api", "metadata": {"name": name},
        "spec": {"context": format!("/{name}"), "groups": groups,
                 "upstream": {"endpoints": [{"url": "http://127.0.0.1:9"}]},
                 "policies": [{"name": "request-headers",
                               "params": {"set": {"authorization": secret}}}]},
    })
}

fn certificate(name: &str, groups: &[&str]) -> Value {
    let key = rcgen::KeyPair::generate().unwrap();
    certificate_with(name, groups, &key)
}

fn certificate_with(name: &str, groups: &[&str], key: &rcgen::KeyPair) -> Value {
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
        .unwrap()
        .self_signed(key)
        .unwrap();
    json!({
        "apiVersion": "gw/v1", "kind": "Certificate", "metadata": {"name": name},
        "spec": {"groups": groups, "certificate": cert.pem(), "privateKey": key.serialize_pem()},
    })
}

fn consumer(name: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": name},
        "spec": {"groups": groups,
                 "credentials": [{"type": "jwt", "id": "sso", "subject": format!("{name}@example.com")}]},
    })
}

fn credential(who: &str) -> Value {
    json!({"type": "jwt", "id": format!("x-{who}"), "subject": format!("{who}-x@example.com")})
}

/// The secret in the APIs the callers write (a header a policy sets): each sends it, and
/// no answer shows it, not even to its writer.
const OWN_SECRET: &str = "Bearer upstream-secret-4f2a9c";
/// The secret in the APIs the break-glass admin seeded: shown to no one.
const SEED_SECRET: &str = "Bearer seeded-secret-77d1e0";
/// The password of the seeded consumer's basic-auth credential, never shown.
const PASSWORD: &str = "correct horse battery staple 7";

const API: &str = "api";
const CERT: &str = "certificate";
const CONSUMER: &str = "consumer";
const ENROLLMENT_TOKEN: &str = "enrollment-token";
const ADMIN_TOKEN: &str = "admin-token";
const RUNTIME: &str = "runtime";
const SECRETS: &str = "secrets";

/// The role matrix. The operator is scoped to group `a`; the break-glass admin seeded an API,
/// a certificate and a consumer in each of `a` and `b`, and an enrolled runtime `rt-1`.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //                                                                   viewer   operator admin    root
    // health, schemas and policies: anyone
    Row { method: "GET", route: "/healthz", path: "/healthz", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/readyz", path: "/readyz", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/schema/api", path: "/schema/api", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/schema/certificate", path: "/schema/certificate", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/schema/consumer", path: "/schema/consumer", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/policies", path: "/policies", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/policies/{name}", path: "/policies/jwt", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    // APIs
    Row { method: "GET", route: "/apis", path: "/apis", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/apis/{name}", path: "/apis/a-api", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "PUT", route: "/apis/{name}", path: "/apis/a-WHO", body: |w| Some(api(&format!("a-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", API, Name::Is("a-WHO"))) },
    Row { method: "PUT", route: "/apis/{name}", path: "/apis/a-WHO", body: |w| Some(api_with(&format!("a-{w}"), &["a"], "Bearer changed")), expect: [NO, OK(200), OK(200), OK(200)], audit: Some(("update", API, Name::Is("a-WHO"))) },
    Row { method: "PUT", route: "/apis/{name}", path: "/apis/a-WHO", body: |w| Some(api(&format!("a-{w}"), &["a", "a2"])), expect: [NO, NO, OK(200), OK(200)], audit: Some(("update", API, Name::Is("a-WHO"))) },
    Row { method: "PUT", route: "/apis/{name}", path: "/apis/b-WHO", body: |w| Some(api(&format!("b-{w}"), &["b"])), expect: [NO, NO, OK(201), OK(201)], audit: Some(("create", API, Name::Is("b-WHO"))) },
    Row { method: "PUT", route: "/apis/{name}", path: "/apis/bad-WHO", body: |_| Some(json!({"kind": "Api"})), expect: [NO, OK(400), OK(400), OK(400)], audit: None },
    Row { method: "POST", route: "/apis", path: "/apis", body: |w| Some(api(&format!("p-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", API, Name::Is("p-WHO"))) },
    Row { method: "POST", route: "/apis", path: "/apis", body: |w| Some(api(&format!("p-{w}"), &["a"])), expect: [NO, OK(409), OK(409), OK(409)], audit: None },
    Row { method: "DELETE", route: "/apis/{name}", path: "/apis/p-WHO", body: none, expect: [NO, OK(200), OK(200), OK(200)], audit: Some(("delete", API, Name::Is("p-WHO"))) },
    Row { method: "DELETE", route: "/apis/{name}", path: "/apis/p-WHO", body: none, expect: [NO, OK(404), OK(404), OK(404)], audit: None },
    Row { method: "DELETE", route: "/apis/{name}", path: "/apis/a-old", body: none, expect: [NO, OK(200), OK(404), OK(404)], audit: Some(("delete", API, Name::Is("a-old"))) },
    Row { method: "DELETE", route: "/apis/{name}", path: "/apis/b-api", body: none, expect: [NO, NO, OK(200), OK(404)], audit: Some(("delete", API, Name::Is("b-api"))) },
    // certificates
    Row { method: "GET", route: "/certificates", path: "/certificates", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/certificates/{name}", path: "/certificates/a-cert", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "PUT", route: "/certificates/{name}", path: "/certificates/c-WHO", body: |w| Some(certificate(&format!("c-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", CERT, Name::Is("c-WHO"))) },
    Row { method: "PUT", route: "/certificates/{name}", path: "/certificates/cb-WHO", body: |w| Some(certificate(&format!("cb-{w}"), &["b"])), expect: [NO, NO, OK(201), OK(201)], audit: Some(("create", CERT, Name::Is("cb-WHO"))) },
    Row { method: "POST", route: "/certificates", path: "/certificates", body: |w| Some(certificate(&format!("pc-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", CERT, Name::Is("pc-WHO"))) },
    Row { method: "DELETE", route: "/certificates/{name}", path: "/certificates/pc-WHO", body: none, expect: [NO, OK(200), OK(200), OK(200)], audit: Some(("delete", CERT, Name::Is("pc-WHO"))) },
    Row { method: "DELETE", route: "/certificates/{name}", path: "/certificates/b-cert", body: none, expect: [NO, NO, OK(200), OK(404)], audit: Some(("delete", CERT, Name::Is("b-cert"))) },
    // consumers and their credentials
    Row { method: "GET", route: "/consumers", path: "/consumers", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "GET", route: "/consumers/{name}", path: "/consumers/a-user", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "PUT", route: "/consumers/{name}", path: "/consumers/u-WHO", body: |w| Some(consumer(&format!("u-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", CONSUMER, Name::Is("u-WHO"))) },
    Row { method: "POST", route: "/consumers", path: "/consumers", body: |w| Some(consumer(&format!("pu-{w}"), &["a"])), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("create", CONSUMER, Name::Is("pu-WHO"))) },
    Row { method: "DELETE", route: "/consumers/{name}", path: "/consumers/pu-WHO", body: none, expect: [NO, OK(200), OK(200), OK(200)], audit: Some(("delete", CONSUMER, Name::Is("pu-WHO"))) },
    Row { method: "POST", route: "/consumers/{name}/credentials", path: "/consumers/u-WHO/credentials", body: |w| Some(credential(w)), expect: [NO, OK(201), OK(201), OK(201)], audit: Some(("add-credential", CONSUMER, Name::Is("u-WHO"))) },
    Row { method: "POST", route: "/consumers/{name}/credentials", path: "/consumers/b-user/credentials", body: |w| Some(json!({"type": "jwt", "id": format!("xb-{w}"), "subject": format!("{w}-b@example.com")})), expect: [NO, NO, OK(201), OK(201)], audit: Some(("add-credential", CONSUMER, Name::Is("b-user"))) },
    Row { method: "DELETE", route: "/consumers/{name}/credentials/{id}", path: "/consumers/u-WHO/credentials/x-WHO", body: none, expect: [NO, OK(200), OK(200), OK(200)], audit: Some(("revoke-credential", CONSUMER, Name::Is("u-WHO"))) },
    Row { method: "DELETE", route: "/consumers/{name}/credentials/{id}", path: "/consumers/u-WHO/credentials/x-WHO", body: none, expect: [NO, OK(404), OK(404), OK(404)], audit: None },
    // enrollment tokens
    Row { method: "GET", route: "/enrollment-tokens", path: "/enrollment-tokens", body: none, expect: [NO, NO, OK(200), OK(200)], audit: None },
    Row { method: "POST", route: "/enrollment-tokens", path: "/enrollment-tokens", body: |_| Some(json!({"group": "a", "ttl": "1h"})), expect: [NO, NO, OK(201), OK(201)], audit: Some(("create", ENROLLMENT_TOKEN, Name::Last)) },
    Row { method: "POST", route: "/enrollment-tokens", path: "/enrollment-tokens", body: |_| Some(json!({"group": "a", "uses": 0})), expect: [NO, NO, OK(400), OK(400)], audit: None },
    Row { method: "DELETE", route: "/enrollment-tokens/{id}", path: "/enrollment-tokens/LAST", body: none, expect: [NO, NO, OK(204), OK(204)], audit: Some(("revoke", ENROLLMENT_TOKEN, Name::Last)) },
    Row { method: "DELETE", route: "/enrollment-tokens/{id}", path: "/enrollment-tokens/0123456789abcdef", body: none, expect: [NO, NO, OK(404), OK(404)], audit: None },
    // admin tokens
    Row { method: "GET", route: "/tokens", path: "/tokens", body: none, expect: [NO, NO, OK(200), OK(200)], audit: None },
    Row { method: "POST", route: "/tokens", path: "/tokens", body: |w| Some(json!({"name": format!("t-{w}"), "role": "viewer"})), expect: [NO, NO, OK(201), OK(201)], audit: Some(("create", ADMIN_TOKEN, Name::Last)) },
    Row { method: "POST", route: "/tokens", path: "/tokens", body: |w| Some(json!({"name": format!("t-{w}"), "role": "viewer"})), expect: [NO, NO, OK(409), OK(409)], audit: None },
    Row { method: "DELETE", route: "/tokens/{id}", path: "/tokens/LAST", body: none, expect: [NO, NO, OK(204), OK(204)], audit: Some(("revoke", ADMIN_TOKEN, Name::Last)) },
    Row { method: "DELETE", route: "/tokens/{id}", path: "/tokens/0123456789abcdef", body: none, expect: [NO, NO, OK(404), OK(404)], audit: None },
    // the fleet, and revoking and forgetting an enrollment
    Row { method: "GET", route: "/runtimes", path: "/runtimes", body: none, expect: [OK(200), OK(200), OK(200), OK(200)], audit: None },
    Row { method: "DELETE", route: "/runtimes/{node}", path: "/runtimes/rt-1", body: none, expect: [NO, NO, OK(204), OK(204)], audit: Some(("revoke", RUNTIME, Name::Is("rt-1"))) },
    Row { method: "DELETE", route: "/runtimes/{node}", path: "/runtimes/rt-none", body: none, expect: [NO, NO, OK(404), OK(404)], audit: None },
    Row { method: "DELETE", route: "/runtimes/{node}/enrollment", path: "/runtimes/rt-1/enrollment", body: none, expect: [NO, NO, OK(204), OK(404)], audit: Some(("forget", RUNTIME, Name::Is("rt-1"))) },
    // the audit log, and bundles (none configured: 409 for those let through)
    Row { method: "GET", route: "/audit", path: "/audit", body: none, expect: [NO, NO, OK(200), OK(200)], audit: None },
    Row { method: "POST", route: "/bundles", path: "/bundles", body: none, expect: [NO, NO, OK(409), OK(409)], audit: None },
    // resealing the secrets under the current key (named by its id)
    Row { method: "POST", route: "/reseal", path: "/reseal", body: none, expect: [NO, NO, OK(200), OK(200)], audit: Some(("reseal", SECRETS, Name::Answered("key"))) },
];

/// The HTTP methods the router's source names in a route's handler.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The `.route(...)` calls in `source`: each template (with `{}` as `collection`) and the
/// methods of its handler.
fn parse_routes(source: &str, collection: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for call in source.split(".route(").skip(1) {
        let path = call
            .split('"')
            .nth(1)
            .expect("a route's path is a string literal")
            .replace("{}", collection)
            .replace("{{", "{")
            .replace("}}", "}");
        for (at, _) in call.match_indices('(') {
            let word_start = call[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let word = &call[word_start..at];
            if METHODS.contains(&word) {
                routes.insert((word.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// The routes of the admin router under `/api/v1`, read from its source.
fn routes_of_the_router() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gw-controller/src/admin");
    let module = std::fs::read_to_string(format!("{dir}/mod.rs")).unwrap();
    let kind = std::fs::read_to_string(format!("{dir}/kind.rs")).unwrap();
    let start = module.find("pub fn router(").expect("the router function");
    let end = start
        + module[start..]
            .find(".nest(\"/api/v1\", api)")
            .expect("the /api/v1 router nested");
    let api = &module[start..end];
    let mut routes = parse_routes(api, "");
    // the routes every resource kind gets (`kind::routes::<kind::Apis>`: `/apis`, …)
    let kind_start = kind.find("pub(super) fn routes<").expect("kind::routes");
    let kind_end = kind_start + kind[kind_start..].find("\n}\n").unwrap();
    let kind_routes = &kind[kind_start..kind_end];
    for part in api.split("kind::routes::<kind::").skip(1) {
        let name = part.split('>').next().unwrap().to_lowercase();
        routes.extend(parse_routes(kind_routes, &name));
    }
    routes
}

#[test]
fn the_matrix_has_a_row_for_every_route_of_the_router() {
    let routes = routes_of_the_router();
    // the reading of the source finds what is known to be there
    for known in [
        ("GET", "/apis/{name}"),
        ("DELETE", "/runtimes/{node}/enrollment"),
    ] {
        assert!(
            routes.contains(&(known.0.to_string(), known.1.to_string())),
            "{known:?} not found in {routes:?}"
        );
    }
    let rows: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|row| (row.method.to_string(), row.route.to_string()))
        .collect();
    let missing: Vec<_> = routes.difference(&rows).collect();
    let unknown: Vec<_> = rows.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes of the admin router without a row in MATRIX: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows of MATRIX that are no route of the admin router: {unknown:?}"
    );
}

/// Sends `method path` with `token`, `body` as JSON and `x-request-id: id`; the status
/// and the answer's text.
async fn send(
    admin: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    id: &str,
) -> (u16, String) {
    let client = Admin::new(admin, Some(token));
    let mut request = client
        .request(Method::from_bytes(method.as_bytes()).unwrap(), path)
        .header("x-request-id", id);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(id),
        "{method} {path}"
    );
    (status, response.text().await.unwrap())
}

/// Seeds, as the break-glass admin, an API, a certificate and a consumer in each of groups
/// `a` and `b`; returns the secrets that went in (the seeded certificates' private keys, the
/// consumer's generated API key and password).
async fn seed(admin: SocketAddr) -> Vec<String> {
    let mut secrets = Vec::new();
    let put = async |path: &str, document: Value| {
        let (status, text) = send(admin, TOKEN, "PUT", path, Some(&document), "seed").await;
        assert_eq!(status, 201, "{path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    for group in ["a", "b"] {
        for name in [format!("{group}-api"), format!("{group}-old")] {
            put(
                &format!("/api/v1/apis/{name}"),
                api_with(&name, &[group], SEED_SECRET),
            )
            .await;
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = key.serialize_pem();
        // the key's base64 lines (the PEM's first line is its label)
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string),
        );
        put(
            &format!("/api/v1/certificates/{group}-cert"),
            certificate_with(&format!("{group}-cert"), &[group], &key),
        )
        .await;
        let user = format!("{group}-user");
        let answer = put(
            &format!("/api/v1/consumers/{user}"),
            json!({
                "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": user},
                "spec": {"groups": [group], "credentials": [
                    {"type": "api-key", "id": "k1"},
                    {"type": "basic-auth", "id": "b1", "username": user, "password": PASSWORD},
                ]},
            }),
        )
        .await;
        let key = answer["generatedKeys"][0]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("a generated key: {answer}"));
        secrets.push(key.to_string());
    }
    secrets.push(PASSWORD.to_string());
    secrets
}

/// Makes a named token as the break-glass admin; its text.
async fn make_token(admin: SocketAddr, body: Value) -> String {
    let (status, text) = send(admin, TOKEN, "POST", "/api/v1/tokens", Some(&body), "seed").await;
    assert_eq!(status, 201, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Records `rt-1` as an enrolled runtime of group `a`, as an enrollment would.
async fn enroll_a_runtime(db: &TestDatabase) {
    let store = gw_store::open(db.url(), &gw_store::StoreOptions::default())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    assert!(
        store
            .enroll_runtime(&gw_store::EnrollmentRecord::new(
                "rt-1",
                "a",
                "01",
                now + chrono::Duration::hours(1),
                None,
                now,
            ))
            .await
            .unwrap()
    );
}

/// What one call of the matrix was, and what it got.
struct Sent {
    caller: usize,
    request_id: String,
    expect: Expect,
    audit: Audit,
    /// `name` with `WHO` and `LAST` replaced.
    name: Option<String>,
    status: u16,
    text: String,
}

#[tokio::test]
async fn each_role_gets_what_the_matrix_says_and_each_write_is_audited() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(&ControllerSpec::postgres(&db, "roles"), dir.path());
    let admin = ctl.addr("admin");
    Admin::new(admin, Some(TOKEN)).wait_ready().await;
    let mut secrets = seed(admin).await;
    enroll_a_runtime(&db).await;
    let tokens = [
        make_token(admin, json!({"name": "dash", "role": "viewer"})).await,
        make_token(
            admin,
            json!({"name": "deployer", "role": "operator", "groups": ["a"]}),
        )
        .await,
        make_token(admin, json!({"name": "ops", "role": "admin"})).await,
        TOKEN.to_string(),
    ];
    secrets.extend(tokens.iter().cloned());
    let described = [
        "token dash (viewer)",
        "token deployer (operator of groups [a])",
        "token ops (admin)",
        "GW_ADMIN_TOKEN (break-glass admin)",
    ];

    let mut last: [Option<String>; 4] = Default::default();
    let mut shown_once = BTreeMap::new();
    let mut sent = Vec::new();
    for (r, row) in MATRIX.iter().enumerate() {
        for (c, caller) in CALLERS.iter().enumerate() {
            let last_id = last[c].clone().unwrap_or_else(|| "none".to_string());
            let path = format!(
                "/api/v1{}",
                row.path
                    .replace("WHO", caller.who)
                    .replace("LAST", &last_id)
            );
            let request_id = format!("m{r}-{}", caller.who);
            let body = (row.body)(caller.who);
            let (status, text) = send(
                admin,
                &tokens[c],
                row.method,
                &path,
                body.as_ref(),
                &request_id,
            )
            .await;
            let what = format!("{} {path} as {}: {text}", row.method, caller.who);
            match row.expect[c] {
                OK(code) => assert_eq!(status, code, "{what}"),
                NO => {
                    assert_eq!(status, 403, "{what}");
                    let answer: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(answer["error"]["code"], "forbidden", "{what}");
                    let message = answer["error"]["message"].as_str().unwrap();
                    // who, what it wanted, and why not
                    assert!(message.starts_with(described[c]), "{what}");
                    assert!(message.contains(": "), "{what}");
                }
            }
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status == 201
                && row
                    .audit
                    .is_some_and(|(_, _, name)| matches!(name, Name::Last))
            {
                last[c] = answer["id"].as_str().map(str::to_string);
                // a token is shown once, to its maker: a secret in every other answer
                if let Some(token) = answer["token"].as_str() {
                    secrets.push(token.to_string());
                    shown_once.insert(request_id.clone(), token.to_string());
                }
            }
            let name = row.audit.map(|(_, _, name)| match name {
                Name::Is(text) => text.replace("WHO", caller.who),
                Name::Last => last[c].clone().unwrap_or_default(),
                Name::Answered(field) => answer[field].as_str().unwrap_or_default().to_string(),
            });
            sent.push(Sent {
                caller: c,
                request_id,
                expect: row.expect[c],
                audit: row.audit,
                name,
                status,
                text,
            });
        }
    }

    // no secret in anyone's answer: private keys, consumers' keys, passwords and hashes,
    // the secrets of API definitions, tokens but to their maker
    // (values, not field names: the schemas name the fields)
    let never = [
        "PRIVATE KEY",
        "$argon2id$v=",
        "\"keyHash\":\"",
        "\"passwordHash\":\"",
        "\"secretHash\":\"",
        OWN_SECRET,
    ];
    for call in &sent {
        for secret in &never {
            assert!(
                !call.text.contains(secret),
                "{}: {}",
                call.request_id,
                call.text
            );
        }
        for secret in &secrets {
            if shown_once.get(&call.request_id) == Some(secret) {
                continue;
            }
            assert!(
                !call.text.contains(secret.as_str()),
                "{} shows a secret: {}",
                call.request_id,
                call.text
            );
        }
        assert!(
            !call.text.contains(SEED_SECRET),
            "{}: {}",
            call.request_id,
            call.text
        );
    }

    // the audit log: one record per successful write, none for a refused or failed one
    let (status, text) = send(
        admin,
        TOKEN,
        "GET",
        "/api/v1/audit?limit=1000",
        None,
        "read",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let log: Value = serde_json::from_str(&text).unwrap();
    let mut by_request: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in log["items"].as_array().unwrap() {
        by_request
            .entry(record["requestId"].as_str().unwrap().to_string())
            .or_default()
            .push(record.clone());
    }
    let mut recorded = BTreeSet::new();
    for call in &sent {
        let records = by_request.remove(&call.request_id).unwrap_or_default();
        let succeeded = matches!(call.expect, OK(200..=299));
        let caller = CALLERS[call.caller];
        match call.audit.filter(|_| succeeded) {
            Some((action, kind, _)) => {
                recorded.insert((kind, action, caller.role));
                assert_eq!(records.len(), 1, "{}: {records:?}", call.request_id);
                let record = &records[0];
                assert_eq!(record["actor"], caller.actor, "{record}");
                assert_eq!(record["role"], caller.role, "{record}");
                assert_eq!(record["action"], action, "{record}");
                assert_eq!(record["kind"], kind, "{record}");
                assert_eq!(record["name"].as_str(), call.name.as_deref(), "{record}");
                assert_eq!(record["source"], "127.0.0.1", "{record}");
                assert!(record["at"].is_string(), "{record}");
                let shown = record.to_string();
                for secret in &secrets {
                    assert!(!shown.contains(secret.as_str()), "{shown}");
                }
            }
            None => assert!(
                records.is_empty(),
                "{} (status {}) was recorded: {records:?}",
                call.request_id,
                call.status
            ),
        }
    }
    // every kind of write was made and recorded, by the operator too where its role lets it
    let expected: BTreeSet<_> = [
        (API, "create"),
        (API, "update"),
        (API, "delete"),
        (CERT, "create"),
        (CERT, "delete"),
        (CONSUMER, "create"),
        (CONSUMER, "delete"),
        (CONSUMER, "add-credential"),
        (CONSUMER, "revoke-credential"),
        (ENROLLMENT_TOKEN, "create"),
        (ENROLLMENT_TOKEN, "revoke"),
        (ADMIN_TOKEN, "create"),
        (ADMIN_TOKEN, "revoke"),
        (RUNTIME, "revoke"),
        (RUNTIME, "forget"),
        (SECRETS, "reseal"),
    ]
    .into_iter()
    .collect();
    let by_admins: BTreeSet<_> = recorded
        .iter()
        .filter(|(_, _, role)| *role == "admin")
        .map(|(kind, action, _)| (*kind, *action))
        .collect();
    assert_eq!(by_admins, expected);
    let by_operator: BTreeSet<_> = recorded
        .iter()
        .filter(|(_, _, role)| *role == "operator")
        .map(|(kind, action, _)| (*kind, *action))
        .collect();
    assert_eq!(
        by_operator,
        expected
            .iter()
            .copied()
            .filter(|(kind, _)| [API, CERT, CONSUMER].contains(kind))
            .collect()
    );
    // what is left: the seeding, as the break-glass admin
    for (id, records) in &by_request {
        assert_eq!(id, "seed", "{records:?}");
        assert!(
            records.iter().all(|r| r["actor"] == "break-glass"),
            "{records:?}"
        );
    }
}
