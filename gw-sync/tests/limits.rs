//! The sync port's limits against hostile clients: connection caps, the first-stream
//! deadline, send and acknowledgement timeouts, and the budget of configuration messages in
//! flight. Each client here says Hello and then does not behave like a runtime.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gw_sync::proto::config_sync_client::ConfigSyncClient;
use gw_sync::proto::{
    ControllerMessage, Hello, Resource, RuntimeMessage, controller_message, runtime_message,
};
use gw_sync::server::{FleetObserver, ServerOptions, SessionInfo, SyncMetrics, SyncServer};
use gw_sync::state::{DesiredState, Entry, StateChange};
use prometheus_client::registry::Registry;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Quiet;

impl FleetObserver for Quiet {
    fn connected(&self, _: &SessionInfo, _: i64) {}
    fn applied(&self, _: &SessionInfo, _: i64) {}
    fn rejected(&self, _: &SessionInfo, _: i64, _: &[String]) {}
    fn seen(&self, _: &SessionInfo, _: i64) {}
    fn disconnected(&self, _: &SessionInfo, _: i64) {}
    fn refused(&self, _: &SessionInfo, _: i64, _: &str) {}
}

/// A desired state whose group `default` holds one API of `body_bytes`.
fn state(body_bytes: usize) -> Arc<DesiredState> {
    let state = Arc::new(DesiredState::new(100));
    state.apply([StateChange {
        revision: 1,
        kind: "api".into(),
        name: "big".into(),
        entry: Some(Entry {
            groups: vec!["default".into()],
            resource: Resource {
                kind: "api".into(),
                name: "big".into(),
                revision: 1,
                body: vec![b'x'; body_bytes],
            },
        }),
    }]);
    state
}

struct Server {
    addr: SocketAddr,
    registry: Arc<Registry>,
    _task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(state: Arc<DesiredState>, options: ServerOptions) -> Self {
        let mut registry = Registry::default();
        let metrics = SyncMetrics::register(&mut registry);
        let server = SyncServer::new("ctl", state, Arc::new(Quiet), options).with_metrics(metrics);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
        Self {
            addr,
            registry: Arc::new(registry),
            _task: task,
        }
    }

    /// The value of the metric line that starts with `line_start`.
    fn metric(&self, line_start: &str) -> i64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    }

    fn rejections(&self, limit: &str) -> i64 {
        self.metric(&format!(
            "gw_sync_limit_rejections_total{{limit=\"{limit}\"}}"
        ))
    }

    async fn eventually(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A stream that said Hello at revision 0 from `from`, and the sender of its next messages
/// (kept, so that the stream stays open).
struct Rogue {
    inbound: Streaming<ControllerMessage>,
    _tx: mpsc::Sender<RuntimeMessage>,
}

async fn hello(addr: SocketAddr, from: &str, node: &str) -> Rogue {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from.parse::<IpAddr>().unwrap()));
    let mut client = ConfigSyncClient::new(endpoint.connect().await.unwrap())
        .max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(4);
    tx.send(RuntimeMessage {
        message: Some(runtime_message::Message::Hello(Hello {
            node_id: node.into(),
            group: "default".into(),
            protocol_version: gw_sync::PROTOCOL_VERSION,
            heartbeat_interval_ms: 1000,
            supported_kinds: vec!["api".into()],
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Rogue { inbound, _tx: tx }
}

/// The next configuration message (heartbeats skipped) and how many heartbeats came first;
/// `None` when the stream ends first.
async fn next_config(rogue: &mut Rogue) -> Option<(controller_message::Message, usize)> {
    let mut beats = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), rogue.inbound.message())
            .await
            .expect("a message in time")
            .ok()??;
        match message.message? {
            controller_message::Message::Heartbeat(_) => beats += 1,
            other => return Some((other, beats)),
        }
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn connections_are_capped_in_total_and_per_address() {
    let server = Server::start(
        state(10),
        ServerOptions {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ServerOptions::default()
        },
    )
    .await;
    let mut a1 = connect_from(server.addr, "127.0.0.2").await;
    let mut a2 = connect_from(server.addr, "127.0.0.2").await;
    let mut a3 = connect_from(server.addr, "127.0.0.2").await;
    assert!(closed_within(&mut a3, Duration::from_secs(5)).await);
    let mut b1 = connect_from(server.addr, "127.0.0.3").await;
    let mut c1 = connect_from(server.addr, "127.0.0.4").await;
    assert!(closed_within(&mut c1, Duration::from_secs(5)).await);
    for kept in [&mut a1, &mut a2, &mut b1] {
        assert!(!closed_within(kept, Duration::from_millis(200)).await);
    }
    assert_eq!(server.metric("gw_sync_connections "), 3);
    assert_eq!(server.rejections("connections_per_address"), 1);
    assert_eq!(server.rejections("connections"), 1);
}

#[tokio::test]
async fn a_connection_that_opens_no_stream_is_closed() {
    let server = Server::start(
        state(10),
        ServerOptions {
            first_stream_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
    .await;
    let started = Instant::now();
    let mut idle = connect_from(server.addr, "127.0.0.2").await;
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    server
        .eventually("the slot back", |s| s.metric("gw_sync_connections ") == 0)
        .await;
    assert_eq!(server.rejections("first_stream_timeout"), 1);
}

#[tokio::test]
async fn a_runtime_that_never_acknowledges_is_disconnected_and_its_room_freed() {
    let server = Server::start(
        state(100 * 1024),
        ServerOptions {
            ack_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut rogue = hello(server.addr, "127.0.0.2", "rogue").await;
    server
        .eventually("the snapshot in flight", |s| {
            s.metric("gw_sync_inflight_bytes ") > 100 * 1024
        })
        .await;
    server
        .eventually("the ack timeout", |s| s.rejections("ack_timeout") == 1)
        .await;
    server
        .eventually("the room and the slot back", |s| {
            s.metric("gw_sync_inflight_bytes ") == 0 && s.metric("gw_sync_connections ") == 0
        })
        .await;
    // what was sent before arrives, then the stream fails
    while let Ok(Some(_)) = rogue.inbound.message().await {}
}

#[tokio::test]
async fn a_runtime_that_does_not_read_is_disconnected_by_the_send_timeout() {
    let server = Server::start(
        state(2 * 1024 * 1024),
        ServerOptions {
            // heartbeats pile up fast behind the unread snapshot
            heartbeat_interval: Duration::from_millis(20),
            send_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
    .await;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    let mut client = ConfigSyncClient::new(endpoint.connect().await.unwrap());
    let (tx, rx) = mpsc::channel(4);
    tx.send(RuntimeMessage {
        message: Some(runtime_message::Message::Hello(Hello {
            node_id: "reader-of-nothing".into(),
            group: "default".into(),
            protocol_version: gw_sync::PROTOCOL_VERSION,
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let _inbound = client.stream(ReceiverStream::new(rx)).await.unwrap();
    server
        .eventually("the send timeout", |s| s.rejections("send_timeout") == 1)
        .await;
    server
        .eventually("the room and the slot back", |s| {
            s.metric("gw_sync_inflight_bytes ") == 0 && s.metric("gw_sync_connections ") == 0
        })
        .await;
    assert_eq!(server.rejections("ack_timeout"), 0);
}

#[tokio::test]
async fn room_in_flight_is_bounded_over_every_session() {
    let server = Server::start(
        state(100 * 1024),
        ServerOptions {
            // less than one snapshot: it takes all of it
            max_inflight_bytes: 64 * 1024,
            ack_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut first = hello(server.addr, "127.0.0.2", "first").await;
    assert!(matches!(
        next_config(&mut first).await,
        Some((controller_message::Message::Snapshot(_), _))
    ));
    let mut second = hello(server.addr, "127.0.0.3", "second").await;
    // the second waits, with heartbeats, until the first is disconnected by its ack timeout
    let (message, beats) = next_config(&mut second).await.expect("a snapshot");
    assert!(matches!(message, controller_message::Message::Snapshot(_)));
    assert!(beats >= 1, "heartbeats while it waited");
    assert_eq!(server.rejections("ack_timeout"), 1);
    assert_eq!(
        server.metric("gw_sync_inflight_waits_total{limit=\"bytes\"}"),
        1
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_message_in_flight() {
    let server = Server::start(
        state(1024),
        ServerOptions {
            max_inflight_per_address: 1,
            ..ServerOptions::default()
        },
    )
    .await;
    let mut first = hello(server.addr, "127.0.0.2", "flood-1").await;
    assert!(next_config(&mut first).await.is_some());
    let mut second = hello(server.addr, "127.0.0.2", "flood-2").await;
    server
        .eventually("the second from the same address to wait", |s| {
            s.metric("gw_sync_inflight_waits_total{limit=\"per_address\"}") == 1
        })
        .await;
    // another address is served at once
    let mut other = hello(server.addr, "127.0.0.3", "runtime").await;
    let (_, beats) = next_config(&mut other).await.expect("a snapshot");
    assert_eq!(beats, 0);
    drop(first);
    assert!(next_config(&mut second).await.is_some());
}
