//! Hostile paths and headers, end to end, with raw HTTP: no spelling of a path reaches an API
//! other than the one its plain form reaches (path parameters, encoded `;`, case where the
//! upstream ignores it), no forwarding header a client writes reaches the upstream as the
//! client wrote it unless the client is a trusted proxy, and `Connection` cannot remove a
//! header a policy sets.

use std::fmt::Write as _;
use std::net::SocketAddr;

use gw_e2e::{Process, echo_upstream, raw_http, standalone};

const KEY: &str = "alice-key-0123456789abcdef";

/// The peer the runtime trusts as a proxy (`--trusted-proxies`); requests from 127.0.0.1
/// come from an untrusted client.
const PROXY_PEER: &str = "127.0.0.2";

struct Setup {
    runtime: Process,
    _upstreams: Vec<Process>,
    _dir: tempfile::TempDir,
}

/// An API document for one of the upstreams, with extra spec lines.
fn api(name: &str, context: &str, upstream: &Process, extra: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  upstream:\n    endpoints: [{{url: 'http://{}'}}]\n{extra}---\n",
        upstream.addr("http")
    )
}

/// The APIs of the attacks:
/// - `/app` (public) and `/app/admin` (api-key; the consumer's name and an upstream token
///   set by `request-headers`) on one servlet-like upstream;
/// - `/h` on the host `api.example.test` only;
/// - with `case_insensitive`: `/win` and `/win/admin` (api-key), both case-insensitive, for
///   an IIS-like upstream, and `/iis` case-insensitive with `/iis/admin` (api-key) exact,
///   an operator's slip.
///
/// Each test uses only the settings its attack needs, so that it fails on the code before
/// the fix for the attack itself, not for a setting that code did not know.
fn setup(case_insensitive: bool, flags: &[&str]) -> Setup {
    let public = echo_upstream("public");
    let admin = echo_upstream("admin");
    let host = echo_upstream("host");
    let protected = "  policies:\n    - {name: api-key}\n    - name: request-headers\n      params: {set: {x-consumer: '${consumer.name}', x-upstream-token: s3cret}}\n";
    let mut yaml = [
        api("public", "/app", &public, ""),
        api("admin", "/app/admin", &admin, protected),
        api("host", "/h", &host, "  hosts: [api.example.test]\n"),
        format!(
            "apiVersion: gw/v1\nkind: Consumer\nmetadata: {{name: alice}}\nspec:\n  credentials: [{{type: api-key, id: k1, key: {KEY}}}]\n---\n"
        ),
    ]
    .concat();
    if case_insensitive {
        let ci = "  caseInsensitive: true\n";
        yaml += &[
            api("win", "/win", &public, ci),
            api(
                "win-admin",
                "/win/admin",
                &admin,
                &format!("{ci}{protected}"),
            ),
            api("iis", "/iis", &public, ci),
            api("iis-admin", "/iis/admin", &admin, protected),
        ]
        .concat();
    }
    let (runtime, dir) = standalone(&yaml, flags);
    Setup {
        runtime,
        _upstreams: vec![public, admin, host],
        _dir: dir,
    }
}

fn request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("GET {target} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        text.push_str("Host: gw.test\r\n");
    }
    for (name, value) in headers {
        let _ = write!(text, "{name}: {value}\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

/// The JSON body of a raw response.
fn body(text: &str) -> serde_json::Value {
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default()
}

/// `(path, expected status, upstream that answers or error code, path it receives)`; 401 is
/// the protected API's api-key policy answering.
type Case<'a> = (&'a str, u16, &'a str, &'a str);

async fn expect(proxy: SocketAddr, table: &[Case<'_>]) {
    let mut failures = Vec::new();
    for &(path, status, who, upstream_path) in table {
        let (got, text) = raw_http(proxy, &request(path, &[])).await;
        let json = body(&text);
        let got_who = json["upstream"]
            .as_str()
            .or(json["error"]["code"].as_str())
            .unwrap_or("");
        let got_path = json["path"].as_str().unwrap_or("");
        if got != status || got_who != who || (status == 200 && got_path != upstream_path) {
            failures.push(format!(
                "{path}: expected {status} {who} {upstream_path}, got {got} {got_who} {got_path}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A servlet container drops `;x` and serves `/app/admin;x/users` as `/app/admin/users`: so
/// does routing, and the protected API answers.
#[tokio::test]
async fn path_parameters_do_not_skip_the_protected_api() {
    let s = setup(false, &[]);
    let proxy = s.runtime.addr("proxy");
    expect(
        proxy,
        &[
            ("/app/users", 200, "public", "/users"),
            ("/app/admin/users", 401, "missing_credentials", ""),
            ("/app/admin;x/users", 401, "missing_credentials", ""),
            ("/app;x/admin/users", 401, "missing_credentials", ""),
            ("/app/admin;jsessionid=1", 401, "missing_credentials", ""),
            // an encoded `;`, and a segment of parameters alone (read as `//`): refused
            ("/app/admin%3Bx/users", 400, "bad_path", ""),
            ("/app/admin%3bx/users", 400, "bad_path", ""),
            ("/app/;x/admin/users", 400, "bad_path", ""),
            // an exact API stays exact
            ("/APP/ADMIN/users", 404, "no_route", ""),
        ],
    )
    .await;
    // with the key, the protected upstream serves what follows the context, parameters kept
    let (status, text) = raw_http(
        proxy,
        &request("/app/admin;x/users;p=1", &[("X-API-Key", KEY)]),
    )
    .await;
    let json = body(&text);
    assert_eq!(status, 200, "{text}");
    assert_eq!(json["upstream"], "admin");
    assert_eq!(json["path"], "/users;p=1");
}

/// An upstream that ignores case (IIS) serves `/WIN/ADMIN/users` as `/win/admin/users`: a
/// case-insensitive API is reached so, and a spelling that a case-insensitive API's
/// upstream would read as an exact API's path is refused.
#[tokio::test]
async fn case_does_not_skip_the_protected_api() {
    let s = setup(true, &[]);
    let proxy = s.runtime.addr("proxy");
    expect(
        proxy,
        &[
            ("/win/admin/users", 401, "missing_credentials", ""),
            ("/WIN/ADMIN/users", 401, "missing_credentials", ""),
            ("/win/Admin./users", 401, "missing_credentials", ""),
            ("/win/adm%C4%B1n/users", 401, "missing_credentials", ""),
            ("/WIN/users", 200, "public", "/users"),
            ("/iis/admin/users", 401, "missing_credentials", ""),
            ("/iis/ADMIN/users", 400, "bad_path", ""),
            ("/IIS/admin./users", 400, "bad_path", ""),
            ("/iis/users", 200, "public", "/users"),
        ],
    )
    .await;
    let (status, text) = raw_http(proxy, &request("/WIN/Admin/users", &[("X-API-Key", KEY)])).await;
    let json = body(&text);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        (&json["upstream"], &json["path"]),
        (&"admin".into(), &"/users".into())
    );
}

/// `GET http://api.example.test/h/x` with `Host: evil.example` is routed on the target's
/// authority (RFC 9112: the Host header is ignored), and the upstream is told that host.
#[tokio::test]
async fn the_upstream_is_told_the_host_the_request_was_routed_on() {
    let s = setup(false, &[]);
    let proxy = s.runtime.addr("proxy");
    let (status, text) = raw_http(
        proxy,
        &request(
            "http://api.example.test/h/reset-password",
            &[("Host", "evil.example")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let json = body(&text);
    assert_eq!(json["upstream"], "host");
    assert_eq!(json["headers"]["x-forwarded-host"], "api.example.test");
    assert_eq!(
        json["headers"]["forwarded"],
        "for=127.0.0.1;proto=http;host=api.example.test"
    );
    // the Host header alone routes when the target has no authority
    let (status, text) = raw_http(proxy, &request("/h/x", &[("Host", "evil.example")])).await;
    assert_eq!(status, 404, "{text}");
}

const FORGED: [(&str, &str); 7] = [
    ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
    ("X-Real-IP", "6.6.6.6"),
    ("Forwarded", "for=203.0.113.9;proto=https;host=api.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "api.example"),
    // what Symfony and IIS route on, what Spring builds links from
    ("X-Original-URL", "/admin/users"),
    ("X-Forwarded-Prefix", "/evil"),
];

/// A client's forwarding headers never reach the upstream as the client wrote them.
#[tokio::test]
async fn a_clients_forwarding_headers_are_replaced() {
    let s = setup(false, &[]);
    let proxy = s.runtime.addr("proxy");
    let (status, text) = raw_http(proxy, &request("/app/x", &FORGED)).await;
    assert_eq!(status, 200, "{text}");
    let seen = &body(&text)["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "gw.test", "{seen}");
    assert_eq!(
        seen["forwarded"], "for=127.0.0.1;proto=http;host=gw.test",
        "{seen}"
    );
    assert!(seen.get("x-original-url").is_none(), "{seen}");
    assert!(seen.get("x-forwarded-prefix").is_none(), "{seen}");
}

/// A trusted proxy's forwarding headers are believed and extended; a client next to it is
/// still not believed.
#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_believed() {
    let s = setup(false, &["--trusted-proxies", PROXY_PEER]);
    let proxy = s.runtime.addr("proxy");
    let (status, text) =
        gw_e2e::raw_http_from(PROXY_PEER, proxy, &request("/app/x", &FORGED)).await;
    assert_eq!(status, 200, "{text}");
    let seen = &body(&text)["headers"];
    assert_eq!(
        seen["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 127.0.0.2",
        "{seen}"
    );
    // the client is the first address from the right that is not a trusted proxy
    assert_eq!(seen["x-real-ip"], "203.0.113.9", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "api.example", "{seen}");
    assert_eq!(seen["x-forwarded-prefix"], "/evil", "{seen}");
    assert_eq!(
        seen["forwarded"],
        "for=203.0.113.9;proto=https;host=api.example, for=127.0.0.2;proto=http;host=gw.test",
        "{seen}"
    );
    let (_, text) = raw_http(proxy, &request("/app/x", &FORGED)).await;
    assert_eq!(body(&text)["headers"]["x-real-ip"], "127.0.0.1", "{text}");
}

/// `Connection: x-consumer` does not remove the consumer's name, nor any other header a
/// policy sets; the hop-by-hop headers themselves still go.
#[tokio::test]
async fn connection_cannot_remove_a_header_a_policy_sets() {
    let s = setup(false, &[]);
    let proxy = s.runtime.addr("proxy");
    let target = "/app/admin/users";
    let mut text = format!(
        "GET {target} HTTP/1.1\r\nHost: gw.test\r\nX-API-Key: {KEY}\r\nX-Consumer: mallory\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n"
    );
    text.push_str("Connection: close, x-consumer, x-upstream-token, x-hop\r\n\r\n");
    let (status, text) = raw_http(proxy, text.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let json = body(&text);
    assert_eq!(json["upstream"], "admin");
    let seen = &json["headers"];
    assert_eq!(seen["x-consumer"], "alice", "{seen}");
    assert_eq!(seen["x-upstream-token"], "s3cret", "{seen}");
    for gone in ["x-hop", "keep-alive", "connection", "x-api-key"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
}
