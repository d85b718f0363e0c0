//! Every error a user can see reads as gw's own words: a broad set of admin API errors
//! (preconditions, bodies that do not parse or validate, bad queries, paths, tokens, routes)
//! and of command lines of both binaries (bad flags, missing or invalid files, no
//! arguments) is triggered, every message collected, and none may show Rust or library
//! internals: `Some(`, `None`, `Ok(`, `Err(`, library function, option and crate names, Rust
//! type names, `Debug` structures, Rust paths or a backtrace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gw_e2e::{Admin, ControllerSpec, TOKEN, api_yaml, binary, controller};
use reqwest::Method;

/// What no user-visible text may contain.
const FORBIDDEN: &[&str] = &[
    "Some(",
    "Ok(",
    "Err(",
    "from_str",
    "from_slice",
    "from_multiple",
    "serde",
    "saphyr",
    "sqlx",
    "tonic",
    "hyper",
    "axum",
    "rustls",
    "x509",
    "nom error",
    "Options",
    "Policy in",
    "Option<",
    "Vec<",
    "struct ",
    "enum ",
    "Der(",
    "Tag(",
    "backtrace",
    "panicked",
];

/// Rust's primitive type names, as whole words.
const RUST_TYPES: &[&str] = &[
    "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize", "f32", "f64",
];

/// Why `text` does not read as gw's own words, if it does not.
fn problems(text: &str) -> Vec<String> {
    let mut found: Vec<String> = FORBIDDEN
        .iter()
        .filter(|needle| text.contains(**needle))
        .map(|needle| format!("contains {needle:?}"))
        .collect();
    // whole words (`If-None-Match` is one)
    let words = text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-');
    for word in words {
        if word == "None" {
            found.push("contains None".to_string());
        }
        if RUST_TYPES.contains(&word) {
            found.push(format!("names the Rust type {word}"));
        }
    }
    // a Rust path (`gw_runtime::cli`, `Error::Io`); the tests use no IPv6 address
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("::") {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 2).copied();
        if before.is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && after.is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            found.push("holds a Rust path (`a::b`)".to_string());
            break;
        }
    }
    // a Debug structure: `Name { field: ...`
    for (i, _) in text.match_indices(" { ") {
        let name = text[..i]
            .rsplit(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or("");
        let field = text[i + 3..].split(':').next().unwrap_or("");
        if name.starts_with(|c: char| c.is_ascii_uppercase())
            && !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            found.push(format!("prints a Debug structure ({name} {{ {field}: ...)"));
        }
    }
    found
}

/// Every string of a JSON value.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The texts collected, by case.
#[derive(Default)]
struct Texts(Vec<(String, String)>);

impl Texts {
    /// Sends `request`; its status must be `status` and its body a JSON error, whose texts
    /// are kept. Returns the error's message.
    async fn admin(&mut self, case: &str, status: u16, request: reqwest::RequestBuilder) -> String {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let got = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(got, status, "{case}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{case}: the error is not JSON: {text}"));
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: no error.message: {text}"))
            .to_string();
        assert!(
            body["error"]["code"].is_string(),
            "{case}: no error.code: {text}"
        );
        let mut texts = Vec::new();
        strings(&body["error"], &mut texts);
        for text in texts {
            self.0.push((case.to_string(), text));
        }
        message
    }

    /// Runs a binary that must fail; keeps what it printed that is not a JSON log line.
    fn cli(&mut self, case: &str, name: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .args(["--log-format", "json"])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("GW_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{case}: {name} did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = child.wait_with_output().expect("the output");
        assert!(!status.success(), "{case}: {name} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let printed: Vec<&str> = stderr
            .lines()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_err())
            .collect();
        let printed = printed.join("\n");
        assert!(
            printed.starts_with("error: "),
            "{case}: {name} printed no error: {stderr}"
        );
        self.0.push((case.to_string(), printed.clone()));
        printed
    }

    /// Fails, listing every text that does not read as gw's own words. (Every text is
    /// printed: `--nocapture` shows them all.)
    fn check(&self) {
        for (case, text) in &self.0 {
            eprintln!("{case}: {text}");
        }
        let mut cases: Vec<&str> = self.0.iter().map(|(case, _)| case.as_str()).collect();
        cases.dedup();
        eprintln!("{} texts of {} cases checked", self.0.len(), cases.len());
        let failures: Vec<String> = self
            .0
            .iter()
            .filter_map(|(case, text)| {
                let problems = problems(text);
                (!problems.is_empty())
                    .then(|| format!("{case}: {}\n    {text}", problems.join(", ")))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} texts do not read as gw's own words:\n{}",
            failures.len(),
            self.0.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    for leaky in [
        "\"petstore\" is at revision Some(2), not 1",
        "\"petstore\" is at revision None, not 1",
        "multiple YAML documents detected; use from_str_multiple or from_str_multiple_with_options",
        "duplicate mapping key: a, set DuplicateKeyPolicy in Options if acceptable",
        "invalid type: integer `42`, expected struct ApiDefinition",
        "invalid value: integer `-1`, expected u32",
        "not valid X.509: Parsing Error: Der(UnexpectedTag { expected: Some(Tag(16)), actual: Tag(0) })",
        "budget breached: Depth { depth: 300 }",
        "   0: anyhow::error::<impl core::convert::From<E> for anyhow::Error>::from",
    ] {
        assert!(!problems(leaky).is_empty(), "{leaky}");
    }
    for fine in [
        "\"petstore\" is at revision 2, not 1; read it again and retry with its current ETag",
        "invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
        "cannot listen on 127.0.0.1:8080 (proxy): Address already in use (os error 98)",
        "unknown variant `nope`, expected one of `round-robin`, `least-request`",
        "a parameter takes a whole segment, like /items/{id}",
        "API \"pets\" already exists (If-None-Match: *)",
    ] {
        assert!(problems(fine).is_empty(), "{fine}: {:?}", problems(fine));
    }
}

const YAML: &str = "application/yaml";
const JSON: &str = "application/json";

fn api(name: &str) -> String {
    api_yaml(name, &format!("/{name}"), "http://127.0.0.1:9/")
}

/// `api(name)` with `line` added under `spec:` (indented by two spaces).
fn api_with(name: &str, line: &str) -> String {
    api(name).replacen("spec:\n", &format!("spec:\n  {line}\n"), 1)
}

fn consumer(credentials: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Consumer\nmetadata: {{name: acme}}\nspec:\n  credentials: {credentials}\n"
    )
}

fn certificate(name: &str, certificate: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Certificate\nmetadata: {{name: {name}}}\nspec:\n  certificate: \"{certificate}\"\n  privateKey: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"\n"
    )
}

fn etag(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_errors_read_as_gw_s_words() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ControllerSpec {
        database_url: None,
        dev: false,
        all_in_one: false,
        node_id: "ctl".to_string(),
    };
    let ctl = controller(&spec, dir.path());
    let addr = ctl.addr("admin");
    let admin = Admin::new(addr, Some(TOKEN));
    admin.wait_ready().await;
    let mut texts = Texts::default();
    let send = |method: Method, path: &str, content_type: &str, body: &str| {
        admin
            .request(method, path)
            .header("content-type", content_type)
            .body(body.to_string())
    };
    let put = |path: &str, body: &str| send(Method::PUT, path, YAML, body);
    let post = |path: &str, body: &str| send(Method::POST, path, YAML, body);

    // preconditions: a stale If-Match, and If-Match on a deleted resource
    let first = admin.put_api("pets", &api("pets"), "").await;
    assert_eq!(first.status(), 201);
    let first = etag(&first);
    let second = admin.put_api("pets", &api("pets"), "").await;
    assert_eq!(second.status(), 200);
    let second = etag(&second);
    let stale = texts
        .admin(
            "stale If-Match",
            412,
            put("/api/v1/apis/pets", &api("pets")).header("if-match", &first),
        )
        .await;
    let (a, b) = (second.trim_matches('"'), first.trim_matches('"'));
    assert!(
        stale.contains(&format!("\"pets\" is at revision {a}, not {b}")),
        "{stale}"
    );
    texts
        .admin(
            "stale If-Match on a delete",
            412,
            admin
                .request(Method::DELETE, "/api/v1/apis/pets")
                .header("if-match", &first),
        )
        .await;
    assert_eq!(admin.delete_api("pets").await.status(), 200);
    let gone = texts
        .admin(
            "If-Match on a deleted API",
            412,
            put("/api/v1/apis/pets", &api("pets")).header("if-match", &second),
        )
        .await;
    assert!(gone.contains("\"pets\" does not exist"), "{gone}");
    texts
        .admin(
            "If-Match on a delete of a deleted API",
            412,
            admin
                .request(Method::DELETE, "/api/v1/apis/pets")
                .header("if-match", &second),
        )
        .await;
    texts
        .admin(
            "delete of a deleted API",
            404,
            admin.request(Method::DELETE, "/api/v1/apis/pets"),
        )
        .await;
    texts
        .admin(
            "If-Match that is no ETag",
            412,
            put("/api/v1/apis/pets", &api("pets")).header("if-match", "garbage"),
        )
        .await;
    texts
        .admin(
            "If-None-Match other than *",
            400,
            put("/api/v1/apis/pets", &api("pets")).header("if-none-match", "\"3\""),
        )
        .await;
    assert_eq!(admin.put_api("pets", &api("pets"), "").await.status(), 201);
    texts
        .admin(
            "If-None-Match * on an existing API",
            412,
            put("/api/v1/apis/pets", &api("pets")).header("if-none-match", "*"),
        )
        .await;
    texts
        .admin(
            "POST of an existing name",
            409,
            post("/api/v1/apis", &api("pets")),
        )
        .await;

    // bodies that do not parse
    let several = texts
        .admin(
            "several YAML documents",
            400,
            post("/api/v1/apis", &format!("{}---\n{}", api("a"), api("b"))),
        )
        .await;
    assert!(several.contains("several YAML documents"), "{several}");
    for (case, body) in [
        ("malformed YAML", "a: [1, 2\n".to_string()),
        ("duplicate YAML key", "a: 1\na: 2\n".to_string()),
        (
            "deeply nested YAML",
            format!("a: {}{}\n", "[".repeat(2000), "]".repeat(2000)),
        ),
        ("unknown YAML anchor", "a: &x 1\nb: *y\n".to_string()),
        ("bad !!binary", "a: !!binary \"zz\"\n".to_string()),
        ("unclosed quote", "a: \"b\n".to_string()),
        ("tab indentation", "a:\n\t- b\n".to_string()),
        ("empty body", String::new()),
        ("a list", "[1, 2]".to_string()),
        ("a number", "42".to_string()),
    ] {
        texts.admin(case, 400, post("/api/v1/apis", &body)).await;
    }
    texts
        .admin(
            "invalid UTF-8",
            400,
            admin
                .request(Method::POST, "/api/v1/apis")
                .header("content-type", YAML)
                .body(vec![0xff, 0xfe, 0x00]),
        )
        .await;
    texts
        .admin(
            "malformed JSON",
            400,
            send(Method::POST, "/api/v1/apis", JSON, "{\"a\": "),
        )
        .await;
    texts
        .admin(
            "JSON of the wrong shape",
            400,
            send(Method::POST, "/api/v1/apis", JSON, "\"just a string\""),
        )
        .await;
    texts
        .admin(
            "wrong content type",
            415,
            send(Method::POST, "/api/v1/apis", "text/plain", &api("c")),
        )
        .await;
    // (on a connection of its own: the controller closes it after the 413, unread body and
    // all)
    texts
        .admin(
            "oversize body",
            413,
            Admin::new(addr, Some(TOKEN))
                .request(Method::POST, "/api/v1/apis")
                .header("content-type", YAML)
                .body("a".repeat(1024 * 1024 + 1)),
        )
        .await;

    // bodies that do not validate
    let endpoint = |extra: &str| {
        api("c").replace(
            "      - url: http://127.0.0.1:9/\n",
            &format!("      - url: http://127.0.0.1:9/\n        {extra}\n"),
        )
    };
    for (case, body) in [
        ("unknown field", api("c").replace("context:", "contxt:")),
        (
            "a number for a string",
            api("c").replace("context: /c", "context: 5"),
        ),
        (
            "null for a string",
            api("c").replace("context: /c", "context: ~"),
        ),
        ("a negative weight", endpoint("weight: -1")),
        ("a huge weight", endpoint("weight: 99999999999")),
        ("a fractional weight", endpoint("weight: 1.5")),
        ("a number for a list", api_with("c", "policies: 5")),
        ("a mapping for a list", api_with("c", "operations: {a: 1}")),
        (
            "a number for policy params",
            api_with("c", "policies: [{name: cors, params: 7}]"),
        ),
        (
            "bad rate-limit params",
            api_with(
                "c",
                "policies: [{name: rate-limit, params: {requests: -1}}]",
            ),
        ),
        (
            "an unknown policy",
            api_with("c", "policies: [{name: nope}]"),
        ),
        (
            "an unknown algorithm",
            api("c").replace(
                "  upstream:\n",
                "  upstream:\n    loadBalancing: {algorithm: nope}\n",
            ),
        ),
        (
            "a number for a duration",
            api("c").replace("  upstream:\n", "  upstream:\n    timeouts: {connect: 5}\n"),
        ),
        (
            "a missing client certificate",
            api("c")
                .replace("http://127.0.0.1:9/", "https://127.0.0.1:9/")
                .replace(
                    "  upstream:\n",
                    "  upstream:\n    tls: {clientCertificate: nope}\n",
                ),
        ),
        (
            "a context without a slash",
            api("c").replace("context: /c", "context: c"),
        ),
        (
            "a bad method",
            api_with("c", "operations: [{method: 'GE T', path: /x}]"),
        ),
        ("a bad group", api_with("c", "groups: [Bad_Group]")),
        (
            "a bad upstream URL",
            api("c").replace("http://127.0.0.1:9/", "ftp://x"),
        ),
    ] {
        texts.admin(case, 400, post("/api/v1/apis", &body)).await;
    }
    texts
        .admin(
            "a name that differs from the URL's",
            400,
            put("/api/v1/apis/d", &api("c")),
        )
        .await;
    texts
        .admin(
            "a route taken by another API",
            409,
            put(
                "/api/v1/apis/other",
                &api("pets").replace("name: pets", "name: other"),
            ),
        )
        .await;

    // queries, paths, routes, tokens
    for (case, query) in [
        ("an unsupported wait", "?wait=bogus"),
        ("a malformed timeout", "?wait=applied&timeout=abc"),
        ("a timeout too long", "?wait=applied&timeout=1h"),
        ("an unknown query parameter", "?revision=abc"),
        ("a timeout without wait", "?timeout=1s"),
    ] {
        texts
            .admin(
                case,
                400,
                put(&format!("/api/v1/apis/pets{query}"), &api("pets")),
            )
            .await;
    }
    texts
        .admin(
            "a bad name",
            400,
            admin.request(Method::GET, "/api/v1/apis/Bad_Name"),
        )
        .await;
    texts
        .admin(
            "a name that is not UTF-8",
            400,
            admin.request(Method::GET, "/api/v1/apis/%FF"),
        )
        .await;
    texts
        .admin(
            "an unknown API",
            404,
            admin.request(Method::GET, "/api/v1/apis/nope"),
        )
        .await;
    texts
        .admin(
            "an unknown route",
            404,
            admin.request(Method::GET, "/api/v1/nope"),
        )
        .await;
    texts
        .admin(
            "a route outside the API",
            404,
            admin.request(Method::GET, "/nope"),
        )
        .await;
    texts
        .admin(
            "a method not allowed",
            405,
            admin.request(Method::PATCH, "/api/v1/apis"),
        )
        .await;
    texts
        .admin(
            "an unknown policy's schema",
            404,
            admin.request(Method::GET, "/api/v1/policies/nope"),
        )
        .await;
    texts
        .admin(
            "a policy name that is not UTF-8",
            400,
            admin.request(Method::GET, "/api/v1/policies/%FF"),
        )
        .await;
    texts
        .admin(
            "bundles not configured",
            409,
            admin.request(Method::POST, "/api/v1/bundles"),
        )
        .await;
    texts
        .admin(
            "a wrong token",
            401,
            Admin::new(addr, Some("wrong-token-0123456789abcdef"))
                .request(Method::GET, "/api/v1/apis"),
        )
        .await;
    texts
        .admin(
            "no token",
            401,
            Admin::new(addr, None).request(Method::GET, "/api/v1/apis"),
        )
        .await;

    // consumers
    let created = put(
        "/api/v1/consumers/acme",
        &consumer("[{id: k1, type: api-key}]"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let acme = etag(&created);
    for (case, credentials) in [
        ("credentials that are a number", "5"),
        (
            "a credential that is a string",
            "[\"secret-key-0123456789\"]",
        ),
        (
            "a key that is a number",
            "[{id: k1, type: api-key, key: 5}]",
        ),
        ("an unknown credential type", "[{id: k1, type: nope}]"),
    ] {
        texts
            .admin(
                case,
                400,
                put("/api/v1/consumers/acme", &consumer(credentials)),
            )
            .await;
    }
    texts
        .admin(
            "several consumer documents",
            400,
            put(
                "/api/v1/consumers/acme",
                &format!("{}---\n{}", consumer("[]"), consumer("[]")),
            ),
        )
        .await;
    let add = |name: &str, body: &str| {
        send(
            Method::POST,
            &format!("/api/v1/consumers/{name}/credentials"),
            JSON,
            body,
        )
    };
    texts
        .admin(
            "a credential id taken",
            409,
            add("acme", "{\"id\": \"k1\", \"type\": \"api-key\"}"),
        )
        .await;
    texts
        .admin(
            "a credential for an unknown consumer",
            404,
            add("nobody", "{\"id\": \"k2\", \"type\": \"api-key\"}"),
        )
        .await;
    texts
        .admin(
            "a credential id that is a number",
            400,
            add("acme", "{\"id\": 5}"),
        )
        .await;
    texts
        .admin("a malformed credential", 400, add("acme", "["))
        .await;
    texts
        .admin(
            "an unknown credential",
            404,
            admin.request(Method::DELETE, "/api/v1/consumers/acme/credentials/zz"),
        )
        .await;
    texts
        .admin(
            "a stale If-Match on a consumer",
            412,
            admin
                .request(Method::DELETE, "/api/v1/consumers/acme")
                .header("if-match", "\"99\""),
        )
        .await;
    let deleted = admin
        .request(Method::DELETE, "/api/v1/consumers/acme")
        .header("if-match", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    texts
        .admin(
            "If-Match on a deleted consumer",
            412,
            admin
                .request(Method::DELETE, "/api/v1/consumers/acme")
                .header("if-match", &acme),
        )
        .await;

    // certificates
    let bad_der = "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n";
    let unterminated = "-----BEGIN CERTIFICATE-----\\nAAAA\\n";
    for (case, pem) in [
        ("a certificate that is not PEM", "nope"),
        ("a certificate that is not X.509", bad_der),
        ("a PEM section without its end", unterminated),
    ] {
        texts
            .admin(
                case,
                400,
                put("/api/v1/certificates/site", &certificate("site", pem)),
            )
            .await;
    }
    texts
        .admin(
            "an unknown certificate",
            404,
            admin.request(Method::DELETE, "/api/v1/certificates/site"),
        )
        .await;

    texts.check();
}

#[test]
fn command_line_errors_read_as_gw_s_words() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let invalid = write(
        "invalid.yaml",
        &api("a").replace("context: /a", "context: 5"),
    );
    let malformed = write("malformed.yaml", "a: [1, 2\n");
    let duplicate = write("duplicate.yaml", &format!("{}---\n{}", api("a"), api("a")));
    let a_dir: &Path = dir.path();
    let a_dir = a_dir.to_str().unwrap();
    let local = [
        "--proxy-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        extra
            .iter()
            .map(ToString::to_string)
            .chain(local.iter().map(ToString::to_string))
            .collect()
    };
    let mut texts = Texts::default();
    let runtime = |texts: &mut Texts, case: &str, args: &[String], envs: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        texts.cli(case, "gw-runtime", &args, envs)
    };

    // gw-runtime
    let none = texts.cli("gw-runtime without arguments", "gw-runtime", &[], &[]);
    assert!(
        none.contains("--controller") && none.contains("--config"),
        "{none}"
    );
    texts.cli("an unknown flag", "gw-runtime", &["--bogus"], &[]);
    let both = ["--config", missing, "--controller", "127.0.0.1:1"];
    texts.cli("both sources", "gw-runtime", &both, &[]);
    let args: Vec<String> = ["--config", missing]
        .iter()
        .map(ToString::to_string)
        .chain(with(&[]))
        .collect();
    let read = runtime(&mut texts, "a missing file", &args, &[]);
    assert_eq!(
        read.matches("No such file").count(),
        1,
        "each cause once: {read}"
    );
    for (case, file) in [
        ("an invalid file", invalid.as_str()),
        ("a malformed file", malformed.as_str()),
        ("a file with one name twice", duplicate.as_str()),
        ("a directory for a file", a_dir),
    ] {
        let args: Vec<String> = ["--config", file]
            .iter()
            .map(ToString::to_string)
            .chain(with(&[]))
            .collect();
        runtime(&mut texts, case, &args, &[]);
    }
    for (case, flags) in [
        (
            "a bad address",
            &["--controller", "127.0.0.1:1", "--proxy-addr", "nowhere"][..],
        ),
        (
            "a value out of range",
            &["--controller", "127.0.0.1:1", "--max-header-bytes", "5"][..],
        ),
        (
            "a malformed duration",
            &[
                "--controller",
                "127.0.0.1:1",
                "--status-idle-timeout",
                "soon",
            ][..],
        ),
        ("an empty controller list", &["--controller", ""][..]),
        (
            "a bad node id",
            &["--controller", "127.0.0.1:1", "--node-id", "bad id!"][..],
        ),
        (
            "a bad group",
            &["--controller", "127.0.0.1:1", "--group", "Bad_Group"][..],
        ),
        (
            "a bad trusted proxy",
            &[
                "--controller",
                "127.0.0.1:1",
                "--trusted-proxies",
                "10.1.2.3/8",
            ][..],
        ),
        (
            "a bad OTLP endpoint",
            &["--controller", "127.0.0.1:1", "--otel-endpoint", "nowhere"][..],
        ),
        (
            "--ready-requires-controller with a file",
            &["--config", "x.yaml", "--ready-requires-controller"][..],
        ),
    ] {
        runtime(&mut texts, case, &with(flags), &[]);
    }
    runtime(
        &mut texts,
        "a short drain token",
        &with(&["--controller", "127.0.0.1:1"]),
        &[("GW_DRAIN_TOKEN", "short")],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let args: Vec<String> = [
        "--controller",
        "127.0.0.1:1",
        "--status-addr",
        &taken,
        "--proxy-addr",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    runtime(&mut texts, "a port in use", &args, &[]);

    // gw-controller
    let ctl_data = dir.path().join("ctl");
    let ctl_data = ctl_data.to_str().unwrap();
    let ctl = |extra: &[&str]| -> Vec<String> {
        [
            "--data-dir",
            ctl_data,
            "--admin-addr",
            "127.0.0.1:0",
            "--sync-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .chain(extra.iter())
        .map(ToString::to_string)
        .collect()
    };
    let controller = |texts: &mut Texts, case: &str, args: &[String], envs: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        texts.cli(case, "gw-controller", &args, envs)
    };
    let token = ("GW_ADMIN_TOKEN", TOKEN);
    let key = ("GW_ENCRYPTION_KEY", gw_e2e::ENCRYPTION_KEY);
    controller(&mut texts, "gw-controller without a token", &ctl(&[]), &[]);
    controller(
        &mut texts,
        "gw-controller without a key",
        &ctl(&[]),
        &[token],
    );
    controller(
        &mut texts,
        "a short admin token",
        &ctl(&[]),
        &[("GW_ADMIN_TOKEN", "short"), key],
    );
    controller(
        &mut texts,
        "a malformed encryption key",
        &ctl(&[]),
        &[token, ("GW_ENCRYPTION_KEY", "not-base64!")],
    );
    controller(
        &mut texts,
        "an unknown controller flag",
        &ctl(&["--bogus"]),
        &[],
    );
    controller(
        &mut texts,
        "a bad admin address",
        &["--dev", "--data-dir", ctl_data, "--admin-addr", "nowhere"].map(ToString::to_string),
        &[],
    );
    controller(
        &mut texts,
        "a bad database URL",
        &ctl(&["--dev", "--database-url", "mysql://x"]),
        &[],
    );
    controller(
        &mut texts,
        "a file for a data directory",
        &[
            "--dev",
            "--data-dir",
            invalid.as_str(),
            "--admin-addr",
            "127.0.0.1:0",
            "--sync-addr",
            "127.0.0.1:0",
        ]
        .map(ToString::to_string),
        &[],
    );
    controller(
        &mut texts,
        "bundles without a key",
        &ctl(&["--dev", "--bundle-dir", a_dir]),
        &[],
    );
    controller(
        &mut texts,
        "a bundle URL that is not S3",
        &ctl(&["--dev", "--bundle-url", "http://x"]),
        &[],
    );
    controller(
        &mut texts,
        "a bad node id",
        &ctl(&["--dev", "--node-id", "bad id!"]),
        &[],
    );

    texts.check();
}
