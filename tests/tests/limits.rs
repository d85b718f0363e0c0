//! The runtime's limits and its path handling, end to end, with raw HTTP (a client library
//! would normalize the paths and refuse the oversize requests itself).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gw_e2e::{Process, echo_upstream, raw_http, standalone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    runtime: Process,
    public: Process,
    admin: Process,
    _dir: tempfile::TempDir,
}

fn setup(extra: &[&str]) -> Setup {
    let public = echo_upstream("public");
    let admin = echo_upstream("admin");
    let yaml = format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: public}}\nspec:\n  context: /public\n  maxRequestBodyBytes: 1000\n  upstream:\n    endpoints: [{{url: 'http://{}'}}]\n---\napiVersion: gw/v1\nkind: Api\nmetadata: {{name: admin}}\nspec:\n  context: /admin\n  upstream:\n    endpoints: [{{url: 'http://{}'}}]\n",
        public.addr("http"),
        admin.addr("http")
    );
    let (runtime, dir) = standalone(&yaml, extra);
    Setup {
        runtime,
        public,
        admin,
        _dir: dir,
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The JSON body of a raw response.
fn body(text: &str) -> serde_json::Value {
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default()
}

async fn metric(status: SocketAddr, line_start: &str) -> u64 {
    gw_e2e::metric(status, line_start).await.unwrap_or(0)
}

/// Every spelling of a path is refused, or routed exactly as its normalized form.
#[tokio::test]
async fn no_spelling_of_a_path_reaches_another_route() {
    let s = setup(&[]);
    let proxy = s.runtime.addr("proxy");
    // (request path, expected status, upstream that answers, path it receives)
    let table: &[(&str, u16, &str, &str)] = &[
        ("/public/x", 200, "public", "/x"),
        ("/admin/x", 200, "admin", "/x"),
        // dot segments and doubled slashes are resolved before routing
        ("/public/../admin/x", 200, "admin", "/x"),
        ("/public/./../admin/./x", 200, "admin", "/x"),
        ("//admin//x", 200, "admin", "/x"),
        ("/public/a/b/../../x", 200, "public", "/x"),
        // encoded separators and dots are refused in every case and position
        ("/public/%2e%2e/admin/x", 400, "bad_path", ""),
        ("/public/%2E%2E/admin/x", 400, "bad_path", ""),
        ("/public/.%2e/admin/x", 400, "bad_path", ""),
        ("/public/%2e./admin/x", 400, "bad_path", ""),
        ("/public/..%2fadmin/x", 400, "bad_path", ""),
        ("/public/..%2Fadmin/x", 400, "bad_path", ""),
        ("/public%2f..%2fadmin/x", 400, "bad_path", ""),
        ("/public/..%5cadmin/x", 400, "bad_path", ""),
        ("/public/..\\admin/x", 400, "bad_path", ""),
        ("/public/..;/admin/x", 400, "bad_path", ""),
        ("/public/.;/x", 400, "bad_path", ""),
        ("/../admin/x", 400, "bad_path", ""),
        // double encoding is not decoded: it stays a literal under /public
        (
            "/public/%252e%252e/admin/x",
            200,
            "public",
            "/%252e%252e/admin/x",
        ),
        // contexts are case-sensitive: another case is another path, served by no API
        ("/ADMIN/x", 404, "no_route", ""),
        ("/Admin/x", 404, "no_route", ""),
    ];
    let mut failures = Vec::new();
    for &(path, status, who, upstream_path) in table {
        let (got, text) = raw_http(proxy, &get(path)).await;
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
    drop((s.public, s.admin));
}

#[tokio::test]
async fn each_limit_answers_clearly_and_is_counted() {
    let s = setup(&[
        "--max-uri-bytes",
        "1024",
        "--max-header-bytes",
        "8192",
        "--header-read-timeout",
        "1",
    ]);
    let proxy = s.runtime.addr("proxy");
    let status = s.runtime.addr("status");

    // URI length: 414 with a JSON body
    let long = format!("/public/{}", "a".repeat(1100));
    let (code, text) = raw_http(proxy, &get(&long)).await;
    assert_eq!(code, 414, "{text}");
    assert_eq!(body(&text)["error"]["code"], "uri_too_long");

    // header size: 431 before routing
    let big_header = format!(
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(9000)
    );
    let (code, text) = raw_http(proxy, big_header.as_bytes()).await;
    assert_eq!(code, 431, "{text}");

    // body size, declared: 413 before anything goes upstream
    let post = |len: usize, chunked: bool| {
        let mut request = if chunked {
            format!(
                "POST /public/x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n"
            )
            .into_bytes()
        } else {
            format!(
                "POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        };
        request.extend(std::iter::repeat_n(b'x', len));
        if chunked {
            request.extend_from_slice(b"\r\n0\r\n\r\n");
        }
        request
    };
    let requests_before = upstream_requests(&s.public).await;
    let (code, text) = raw_http(proxy, &post(2000, false)).await;
    assert_eq!(code, 413, "{text}");
    assert_eq!(body(&text)["error"]["code"], "payload_too_large");
    assert_eq!(upstream_requests(&s.public).await, requests_before);
    // streamed past the limit: 413 too
    let (code, text) = raw_http(proxy, &post(2000, true)).await;
    assert_eq!(code, 413, "{text}");
    // within the limit, both ways: forwarded whole
    for chunked in [false, true] {
        let (code, text) = raw_http(proxy, &post(1000, chunked)).await;
        assert_eq!(code, 200, "{text}");
        assert_eq!(body(&text)["bodyBytes"], 1000);
    }

    // a client that never finishes its headers is cut off after the header read timeout
    let mut slow = tokio::net::TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\n")
        .await
        .unwrap();
    assert_closed_within(&mut slow, Duration::from_secs(10)).await;
    // and so is an idle keep-alive connection
    let mut idle = tokio::net::TcpStream::connect(proxy).await.unwrap();
    idle.write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert_closed_within(&mut idle, Duration::from_secs(10)).await;

    for (limit, at_least) in [
        ("uri_length", 1),
        ("header_size", 1),
        ("body_size", 2),
        ("header_timeout", 1),
    ] {
        let value = metric(
            status,
            &format!("gw_limit_rejections_total{{limit=\"{limit}\"}}"),
        )
        .await;
        assert!(value >= at_least, "{limit}: {value}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let s = setup(&["--max-connections", "2"]);
    let proxy = s.runtime.addr("proxy");
    let status = s.runtime.addr("status");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        // a request answered on each proves the connection was accepted and counted
        stream
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let _ = third
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    assert_closed_within(&mut third, Duration::from_secs(10)).await;
    assert_eq!(
        metric(status, "gw_limit_rejections_total{limit=\"connections\"}").await,
        1
    );
    assert_eq!(metric(status, "gw_downstream_connections ").await, 2);
    // a slot frees when a connection closes
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = raw_http(proxy, &get("/public/x")).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was not reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes the connection; fails after `limit`.
async fn assert_closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed within {limit:?}"
    );
}

async fn upstream_requests(upstream: &Process) -> u64 {
    let stats: serde_json::Value =
        reqwest::get(format!("http://{}/_echo/stats", upstream.addr("http")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    stats["requests"].as_u64().unwrap()
}
