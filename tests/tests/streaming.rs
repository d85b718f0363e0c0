//! Bodies stream through the runtime without being held, and clients may speak HTTP/2
//! with prior knowledge (h2c).

use std::time::Duration;

use gw_e2e::{api_yaml, echo_upstream, standalone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body size of the streaming test: 100 MiB, or `GW_STREAM_TEST_MIB` MiB (the note of
/// the data-plane issue gives a run with 1024).
fn stream_size() -> u64 {
    std::env::var("GW_STREAM_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(100)
        * 1024
        * 1024
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status")
        * 1024
}

#[tokio::test]
async fn a_100_mb_body_streams_both_ways_in_bounded_memory() {
    let upstream = echo_upstream("big");
    let yaml = api_yaml("big", "/big", &format!("http://{}", upstream.addr("http")))
        + "    timeouts: {request: 10m}\n";
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let before = peak_rss(runtime.pid());
    let size = stream_size();
    // two minutes per 100 MiB, as a bound
    let limit = Duration::from_mins(2) * u32::try_from((size >> 20).div_ceil(100)).unwrap_or(1);

    // upload: 100 MiB written 64 KiB at a time; the upstream counts what arrives
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST /big/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    let mut sent = 0u64;
    while sent < size {
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    let mut response = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut response))
        .await
        .expect("the upload is answered")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["bodyBytes"].as_u64(), Some(size));

    // download: 100 MiB made by the upstream as it is read, counted here as it arrives
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "GET /big/_echo/bytes?n={size} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut head_len = None;
    let mut head = Vec::new();
    let read_all = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            if head_len.is_none() {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    head_len = Some(end + 4);
                    total = (head.len() - end - 4) as u64;
                }
            } else {
                total += n as u64;
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .expect("the download completes");
    assert!(head.starts_with(b"HTTP/1.1 200"));
    assert_eq!(total, size);

    // 2 x 100 MiB went through; the runtime's peak memory grew by buffers and the
    // allocator's working set (about 17 MiB in a debug build here), far from holding a body
    let after = peak_rss(runtime.pid());
    println!(
        "runtime peak RSS: {} MiB before, {} MiB after streaming 2 x {} MiB",
        before >> 20,
        after >> 20,
        size >> 20
    );
    assert!(
        after < before + 48 * 1024 * 1024,
        "peak RSS went from {before} to {after} bytes"
    );
}

#[tokio::test]
async fn clients_may_speak_h2c_with_prior_knowledge() {
    let upstream = echo_upstream("h2");
    let yaml = api_yaml("h2", "/h2", &format!("http://{}", upstream.addr("http")));
    let (runtime, _dir) = standalone(&yaml, &[]);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{}/h2/items?id=7", runtime.addr("proxy")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["upstream"], "h2");
    assert_eq!(json["path"], "/items");
    assert_eq!(json["query"], "id=7");
    // the upstream got HTTP/1.1 with a Host header made from the endpoint
    assert_eq!(json["headers"]["host"], upstream.addr("http").to_string());
    assert_eq!(
        json["headers"]["x-forwarded-host"],
        runtime.addr("proxy").to_string()
    );
}

/// A WebSocket server on loopback that echoes every message, prefixed with `echo:`.
async fn websocket_echo_server() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let reply = match message {
                        tokio_tungstenite::tungstenite::Message::Text(text) => {
                            tokio_tungstenite::tungstenite::Message::text(format!("echo:{text}"))
                        }
                        tokio_tungstenite::tungstenite::Message::Close(_) => break,
                        other => other,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_connections_pass_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let upstream = websocket_echo_server().await;
    let (runtime, _dir) = standalone(&api_yaml("ws", "/ws", &format!("http://{upstream}")), &[]);
    let url = format!("ws://{}/ws/chat", runtime.addr("proxy"));
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the WebSocket handshake goes through the gateway");
    assert_eq!(response.status(), 101);
    for i in 0..100 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo:hello {i}")));
    }
    let big = vec![7u8; 1024 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    // a second session while the first is open: the first's upstream connection is its
    // tunnel, never handed to another request
    let (mut second, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    second.send(Message::text("again")).await.unwrap();
    assert_eq!(
        second.next().await.unwrap().unwrap(),
        Message::text("echo:again")
    );
    ws.send(Message::text("first")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("echo:first")
    );
    // both tunnels count as open upstream connections
    let metrics = reqwest::get(format!("http://{}/metrics", runtime.addr("status")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = metrics
        .lines()
        .find(|l| l.starts_with("gw_upstream_connections{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok());
    assert_eq!(open, Some(2), "{metrics}");
    ws.close(None).await.unwrap();
    second.close(None).await.unwrap();
}

#[tokio::test]
async fn h2_upstreams_get_http2_and_trailers_pass_through() {
    use http_body_util::BodyExt;
    let upstream = echo_upstream("grpc-like");
    let yaml = api_yaml("h2up", "/svc", &format!("http://{}", upstream.addr("http")))
        + "    protocol: h2\n";
    let (runtime, _dir) = standalone(&yaml, &[]);
    // an HTTP/2 client (as a gRPC client is), with TE: trailers
    let stream = tokio::net::TcpStream::connect(runtime.addr("proxy"))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for i in 0..20 {
        let request = hyper::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/svc/pkg.Service/Call",
                runtime.addr("proxy")
            ))
            .header("te", "trailers")
            .header("x-echo-trailer", format!("status-{i}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"payload",
            )))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers reach the client");
        assert_eq!(trailers["x-echo-trailer"], format!("status-{i}"));
        let json: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["path"], "/pkg.Service/Call");
        assert_eq!(json["headers"]["te"], "trailers");
        assert_eq!(json["bodyBytes"], 7);
    }
}

#[tokio::test]
async fn server_sent_events_are_not_held_back() {
    let upstream = echo_upstream("sse");
    let yaml = api_yaml("sse", "/sse", &format!("http://{}", upstream.addr("http")));
    let (runtime, _dir) = standalone(&yaml, &[]);
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("http://{}/sse/_echo/sse", runtime.addr("proxy")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut next_event = async || {
        let mut event = Vec::new();
        while !event.ends_with(b"\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("the stream goes on");
            event.extend_from_slice(&chunk);
        }
        String::from_utf8(event).unwrap()
    };
    // the first event arrives while the upstream holds the second back
    assert_eq!(next_event().await, "data: first\n\n");
    let released = client
        .post(format!("http://{}/_echo/release", upstream.addr("http")))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 204);
    assert_eq!(next_event().await, "data: second\n\n");
}
