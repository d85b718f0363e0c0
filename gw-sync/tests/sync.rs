//! Server and client over real gRPC streams on loopback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gw_sync::SyncToken;
use gw_sync::client::{Applier, ClientOptions, ClientStatus, SyncClient};
use gw_sync::enroll::EnrollmentToken;
use gw_sync::pki::{CertFacts, ClusterCa, RuntimeIdentity, runtime_key_and_request};
use gw_sync::proto::{Resource, ResourceRef};
use gw_sync::server::{EnrollRefusal, Enroller, IssuedCertificate, RevisionAuthority};
use gw_sync::server::{FleetObserver, ServerOptions, SessionInfo, SyncServer};
use gw_sync::state::{DesiredState, Entry, StateChange};
use gw_sync::tls::{ClientTls, Identity, ServerTls, ServerTrust, client_config, server_config};
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A runtime's configuration in memory; refuses any resource named `bad`.
#[derive(Default)]
struct MemoryApplier {
    inner: Mutex<(i64, BTreeMap<String, i64>, Vec<&'static str>)>,
    store: Mutex<String>,
}

impl MemoryApplier {
    /// A runtime that already serves `revision` (from its cache), with resource `cached`.
    fn at(revision: i64, store: &str) -> Self {
        let applier = Self::default();
        *applier.store.lock().unwrap() = store.to_string();
        {
            let mut inner = applier.inner.lock().unwrap();
            inner.0 = revision;
            inner.1.insert("cached".into(), revision);
        }
        applier
    }
    fn revision(&self) -> i64 {
        self.inner.lock().unwrap().0
    }
    fn names(&self) -> Vec<String> {
        self.inner.lock().unwrap().1.keys().cloned().collect()
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.inner.lock().unwrap().2.clone()
    }
}

#[async_trait]
impl Applier for MemoryApplier {
    fn applied(&self) -> (i64, String) {
        (self.revision(), self.store.lock().unwrap().clone())
    }

    async fn apply_snapshot(
        &self,
        revision: i64,
        store_id: &str,
        resources: Vec<Resource>,
    ) -> Result<(), Vec<String>> {
        if resources.iter().any(|r| r.name == "bad") {
            return Err(vec!["bad is bad".into()]);
        }
        *self.store.lock().unwrap() = store_id.to_string();
        let mut inner = self.inner.lock().unwrap();
        inner.0 = revision;
        inner.1 = resources
            .into_iter()
            .map(|r| (r.name, r.revision))
            .collect();
        inner.2.push("snapshot");
        Ok(())
    }

    async fn apply_delta(
        &self,
        revision: i64,
        upserts: Vec<Resource>,
        removals: Vec<ResourceRef>,
    ) -> Result<(), Vec<String>> {
        if upserts.iter().any(|r| r.name == "bad") {
            return Err(vec!["bad is bad".into()]);
        }
        let mut inner = self.inner.lock().unwrap();
        inner.0 = revision;
        for r in upserts {
            inner.1.insert(r.name, r.revision);
        }
        for r in removals {
            inner.1.remove(&r.name);
        }
        inner.2.push("delta");
        Ok(())
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Events {
    fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|e| e.contains(needle))
    }
}

impl FleetObserver for Events {
    fn connected(&self, s: &SessionInfo, applied: i64) {
        self.0.lock().unwrap().push(format!(
            "connected {} {} {applied}",
            s.node_id, s.session_id
        ));
    }
    fn applied(&self, s: &SessionInfo, revision: i64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("applied {} {revision}", s.node_id));
    }
    fn rejected(&self, s: &SessionInfo, revision: i64, errors: &[String]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("rejected {} {revision} {errors:?}", s.node_id));
    }
    fn seen(&self, _: &SessionInfo, _: i64) {}
    fn disconnected(&self, s: &SessionInfo, applied: i64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("disconnected {} {applied}", s.node_id));
    }
    fn refused(&self, s: &SessionInfo, applied: i64, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("refused {} {applied} {reason}", s.node_id));
    }
}

fn change(revision: i64, name: &str, groups: &[&str]) -> StateChange {
    StateChange {
        revision,
        kind: "api".into(),
        name: name.into(),
        entry: Some(Entry {
            groups: groups.iter().map(ToString::to_string).collect(),
            resource: Resource {
                kind: "api".into(),
                name: name.into(),
                revision,
                body: b"{}".to_vec(),
            },
        }),
    }
}

fn delete(revision: i64, name: &str) -> StateChange {
    StateChange {
        revision,
        kind: "api".into(),
        name: name.into(),
        entry: None,
    }
}

struct Controller {
    address: String,
    task: JoinHandle<()>,
}

/// A server of `state` reporting to `events`, that waits briefly for a lagging state.
fn server(id: &str, state: &Arc<DesiredState>, events: &Arc<Events>) -> SyncServer {
    SyncServer::new(
        id,
        Arc::clone(state),
        Arc::clone(events) as Arc<dyn FleetObserver>,
        ServerOptions {
            catch_up_timeout: Duration::from_millis(200),
            ..ServerOptions::default()
        },
    )
}

async fn controller(id: &str, state: &Arc<DesiredState>, events: &Arc<Events>) -> Controller {
    serve(server(id, state, events)).await
}

async fn serve(server: SyncServer) -> Controller {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        server
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
    Controller { address, task }
}

fn client(
    controllers: Vec<String>,
    node: &str,
    group: &str,
    applier: &Arc<MemoryApplier>,
) -> JoinHandle<()> {
    client_with_token(controllers, node, group, applier, None)
}

fn client_with_token(
    controllers: Vec<String>,
    node: &str,
    group: &str,
    applier: &Arc<MemoryApplier>,
    token: Option<&str>,
) -> JoinHandle<()> {
    let mut options = ClientOptions::new(controllers, node.into(), group.into());
    options.token = token.map(|t| SyncToken::new(t).unwrap().unwrap());
    start(options, applier).0
}

/// Runs a client with `options` and quick retries; its task and its status.
fn start(
    mut options: ClientOptions,
    applier: &Arc<MemoryApplier>,
) -> (JoinHandle<()>, watch::Receiver<ClientStatus>) {
    options.initial_backoff = Duration::from_millis(20);
    options.max_backoff = Duration::from_millis(200);
    options.handshake_timeout = Duration::from_millis(300);
    let client = SyncClient::new(options, Arc::clone(applier));
    let status = client.status();
    (tokio::spawn(client.run()), status)
}

/// A runtime of group `default` that declares `kinds` in its Hello (none: a runtime that
/// predates the field).
fn client_of_kinds(
    controller: &str,
    node: &str,
    kinds: &[&str],
    applier: &Arc<MemoryApplier>,
) -> JoinHandle<()> {
    let mut options =
        ClientOptions::new(vec![controller.to_string()], node.into(), "default".into());
    options.supported_kinds = kinds.iter().map(ToString::to_string).collect();
    tokio::spawn(SyncClient::new(options, Arc::clone(applier)).run())
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn snapshot_then_deltas_per_group_with_acks() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"]), change(2, "b", &["edge"])]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    let _client = client(vec![ctl.address.clone()], "rt-1", "default", &rt);

    eventually("the snapshot", || rt.revision() == 2).await;
    assert_eq!(rt.names(), ["a"]);
    assert_eq!(rt.kinds(), ["snapshot"]);
    eventually("the ack", || events.contains("applied rt-1 2")).await;

    state.apply([change(3, "c", &["default", "edge"]), delete(4, "a")]);
    eventually("the delta", || rt.revision() == 4).await;
    assert_eq!(rt.names(), ["c"]);
    assert_eq!(*rt.kinds().last().unwrap(), "delta");

    // a change in another group still moves the runtime's revision, with an empty delta
    state.apply([change(5, "b", &["edge"])]);
    eventually("the empty delta", || rt.revision() == 5).await;
    assert_eq!(rt.names(), ["c"]);
}

/// `change`, for a resource of `kind`.
fn of_kind(kind: &str, revision: i64, name: &str, groups: &[&str]) -> StateChange {
    let mut change = change(revision, name, groups);
    change.kind = kind.into();
    if let Some(entry) = &mut change.entry {
        entry.resource.kind = kind.into();
    }
    change
}

/// `change`, for a certificate.
fn certificate(revision: i64, name: &str, groups: &[&str]) -> StateChange {
    of_kind(gw_sync::KIND_CERTIFICATE, revision, name, groups)
}

/// `change`, for a consumer.
fn consumer(revision: i64, name: &str, groups: &[&str]) -> StateChange {
    of_kind(gw_sync::KIND_CONSUMER, revision, name, groups)
}

/// Consumers go to the runtimes of the groups they name, and only to runtimes that declare
/// the kind: a runtime of the certificate era (which would refuse an unknown kind) gets
/// everything else, and never a consumer's removal either.
#[tokio::test]
async fn consumers_go_to_their_groups_and_only_to_runtimes_that_apply_them() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([
        change(1, "a", &["default", "edge"]),
        consumer(2, "alice", &["default"]),
        consumer(3, "bob", &["edge"]),
    ]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let current = Arc::new(MemoryApplier::default());
    let _current = client(vec![ctl.address.clone()], "rt-new", "default", &current);
    let edge = Arc::new(MemoryApplier::default());
    let _edge = client(vec![ctl.address.clone()], "rt-edge", "edge", &edge);
    let older = Arc::new(MemoryApplier::default());
    let _older = client_of_kinds(
        &ctl.address,
        "rt-old",
        &[gw_sync::KIND_API, gw_sync::KIND_CERTIFICATE],
        &older,
    );

    eventually("the snapshots", || {
        current.revision() == 3 && edge.revision() == 3 && older.revision() == 3
    })
    .await;
    assert_eq!(current.names(), ["a", "alice"]);
    assert_eq!(edge.names(), ["a", "bob"]);
    assert_eq!(older.names(), ["a"]);

    // alice moves to edge; a consumer named like the API comes and goes
    state.apply([
        consumer(4, "alice", &["edge"]),
        consumer(5, "a", &["default"]),
        StateChange {
            revision: 6,
            kind: gw_sync::KIND_CONSUMER.into(),
            name: "a".into(),
            entry: None,
        },
    ]);
    eventually("the deltas", || {
        current.revision() == 6 && edge.revision() == 6 && older.revision() == 6
    })
    .await;
    // (this applier keys by name only, so consumer a's removal also drops API a here)
    assert!(!current.names().contains(&"alice".to_string()));
    assert_eq!(edge.names(), ["a", "alice", "bob"]);
    assert_eq!(
        older.names(),
        ["a"],
        "the API stays: no consumer removal reached it"
    );
    assert_eq!(*older.kinds().last().unwrap(), "delta");
}

#[tokio::test]
async fn runtimes_are_sent_only_the_kinds_they_apply() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([
        change(1, "a", &["default"]),
        certificate(2, "site", &["default"]),
    ]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let current = Arc::new(MemoryApplier::default());
    let _current = client(vec![ctl.address.clone()], "rt-new", "default", &current);
    // a runtime that predates certificates: its Hello declares no kinds
    let older = Arc::new(MemoryApplier::default());
    let _older = client_of_kinds(&ctl.address, "rt-old", &[], &older);

    eventually("both snapshots", || {
        current.revision() == 2 && older.revision() == 2
    })
    .await;
    assert_eq!(current.names(), ["a", "site"]);
    assert_eq!(older.names(), ["a"]);

    // a certificate named like the API comes and goes: the older runtime, which removes by
    // name, must never see that removal (it would drop its API)
    state.apply([
        certificate(3, "a", &["default"]),
        StateChange {
            revision: 4,
            kind: "certificate".into(),
            name: "a".into(),
            entry: None,
        },
        change(5, "b", &["default"]),
    ]);
    eventually("both deltas", || {
        current.revision() == 5 && older.revision() == 5
    })
    .await;
    assert_eq!(older.names(), ["a", "b"]);
    assert_eq!(*older.kinds().last().unwrap(), "delta");
}

#[tokio::test]
async fn rejected_config_is_reported_and_fixed_by_the_next_change() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    let _client = client(vec![ctl.address.clone()], "rt-1", "default", &rt);
    eventually("the snapshot", || rt.revision() == 1).await;

    state.apply([change(2, "bad", &["default"])]);
    eventually("the rejection", || events.contains("rejected rt-1 2")).await;
    assert_eq!(rt.revision(), 1, "the rejected config must not be applied");

    // the fix: remove the bad resource; the delta from the last ack covers both changes
    state.apply([delete(3, "bad"), change(4, "d", &["default"])]);
    eventually("the fix", || rt.revision() == 4).await;
    assert_eq!(rt.names(), ["a", "d"]);
}

#[tokio::test]
async fn fails_over_to_another_controller_and_resumes_with_a_delta() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let a = controller("ctl-a", &state, &events).await;
    let b = controller("ctl-b", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    let _client = client(
        vec![a.address.clone(), b.address.clone()],
        "rt-1",
        "default",
        &rt,
    );
    eventually("the snapshot", || rt.revision() == 1).await;

    // kill the controller the runtime is on; the other one serves the same state
    let (dead, alive) = if events.contains("connected rt-1 ctl-a") {
        (a, b)
    } else {
        (b, a)
    };
    dead.task.abort();
    state.apply([change(2, "b", &["default"])]);
    eventually("resumed on the other controller", || rt.revision() == 2).await;
    assert_eq!(rt.names(), ["a", "b"]);
    assert_eq!(
        rt.kinds(),
        ["snapshot", "delta"],
        "resumed with a delta, not a snapshot"
    );
    alive.task.abort();
}

#[tokio::test]
async fn incompatible_runtime_is_refused_with_a_reason() {
    let state = Arc::new(DesiredState::new(1000));
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    // an invalid node id stands in for any Hello the controller must refuse
    let _client = client(vec![ctl.address.clone()], "bad node id!", "default", &rt);
    eventually("the refusal", || events.contains("refused bad node id!")).await;
    assert_eq!(rt.revision(), 0);
}

/// A runtime of the next release (it speaks this release's protocol too), and one from
/// before version negotiation, are served the version this controller speaks: a rolling
/// upgrade, controllers or runtimes first, leaves no runtime unserved.
#[tokio::test]
async fn runtimes_of_a_range_that_holds_this_version_are_served_it() {
    use gw_sync::proto::config_sync_client::ConfigSyncClient;
    use gw_sync::proto::{Hello, RuntimeMessage, controller_message, runtime_message};

    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let ours = gw_sync::PROTOCOL_VERSION;
    for (node, min, max) in [("rt-next", ours, ours + 1), ("rt-before", 0, ours)] {
        let mut client = ConfigSyncClient::connect(ctl.address.clone())
            .await
            .unwrap();
        let hello = Hello {
            node_id: node.into(),
            group: "default".into(),
            protocol_version: max,
            min_protocol_version: min,
            ..Hello::default()
        };
        let outbound = tokio_stream::iter([RuntimeMessage {
            message: Some(runtime_message::Message::Hello(hello)),
        }]);
        let mut inbound = client.stream(outbound).await.unwrap().into_inner();
        let message = inbound.message().await.unwrap().and_then(|m| m.message);
        let Some(controller_message::Message::Snapshot(snapshot)) = message else {
            panic!("{node}: no snapshot: {message:?}");
        };
        assert_eq!(snapshot.protocol_version, ours, "{node}");
        assert_eq!(snapshot.revision, 1, "{node}");
    }
}

/// A runtime of another protocol version (a version skew during an upgrade) is told why it
/// is refused, and the fleet hears of it with the revision it serves.
#[tokio::test]
async fn a_runtime_of_another_protocol_version_is_refused_with_the_versions() {
    use gw_sync::proto::config_sync_client::ConfigSyncClient;
    use gw_sync::proto::{Hello, RuntimeMessage, controller_message, runtime_message};

    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let mut client = ConfigSyncClient::connect(ctl.address.clone())
        .await
        .unwrap();
    let hello = Hello {
        node_id: "rt-next".into(),
        group: "default".into(),
        runtime_version: "9.0.0".into(),
        protocol_version: gw_sync::PROTOCOL_VERSION + 1,
        applied_revision: 7,
        ..Hello::default()
    };
    let outbound = tokio_stream::iter([RuntimeMessage {
        message: Some(runtime_message::Message::Hello(hello)),
    }]);
    let mut inbound = client.stream(outbound).await.unwrap().into_inner();
    let Some(controller_message::Message::Refusal(refusal)) =
        inbound.message().await.unwrap().and_then(|m| m.message)
    else {
        panic!("no refusal");
    };
    let expected = format!(
        "protocol version {} is not supported by this controller (it speaks {})",
        gw_sync::PROTOCOL_VERSION + 1,
        gw_sync::PROTOCOL_VERSION
    );
    assert!(refusal.reason.starts_with(&expected), "{}", refusal.reason);
    // the stream ends after the refusal
    assert!(inbound.message().await.unwrap().is_none());
    assert!(events.contains(&format!("refused rt-next 7 {expected}")));
    // nothing was sent but the refusal: no configuration reached it
    assert!(!events.contains("connected rt-next"));
}

#[tokio::test]
async fn stopping_the_server_ends_the_streams() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server = server("ctl-a", &state, &events);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let rt = Arc::new(MemoryApplier::default());
    let _client = client(vec![address], "rt-1", "default", &rt);
    eventually("the snapshot", || rt.revision() == 1).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("graceful shutdown waited on open streams")
        .unwrap()
        .unwrap();
    eventually("the disconnect", || events.contains("disconnected rt-1")).await;
}

/// A client stopped through `run_until` ends its stream itself and returns once the
/// controller has ended its side: by then the controller has recorded the disconnection.
/// Stopped while no controller answers, it returns at once.
#[tokio::test]
async fn a_stopped_client_ends_its_stream_and_the_controller_records_it_first() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = controller("ctl-a", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    let options = ClientOptions::new(vec![ctl.address.clone()], "rt-1".into(), "default".into());
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(
        SyncClient::new(options, Arc::clone(&rt)).run_until(async move {
            let _ = stopping.await;
        }),
    );
    eventually("the ack", || events.contains("applied rt-1 1")).await;
    assert!(!events.contains("disconnected rt-1"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("the client stops")
        .unwrap();
    assert!(
        events.contains("disconnected rt-1 1"),
        "the client returned before the controller recorded its end"
    );

    // nothing to say goodbye to: a black hole never answers the Hello
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_address = format!("http://{}", hole.local_addr().unwrap());
    let (accepted, mut connected) = tokio::sync::mpsc::channel(8);
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
            let _ = accepted.try_send(());
        }
    });
    let options = ClientOptions::new(vec![hole_address], "rt-2".into(), "default".into());
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(SyncClient::new(options, rt).run_until(async move {
        let _ = stopping.await;
    }));
    tokio::time::timeout(Duration::from_secs(5), connected.recv())
        .await
        .expect("the client connects");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_millis(500), client)
        .await
        .expect("a client waiting for an answer stops at once")
        .unwrap();
    ctl.task.abort();
}

#[tokio::test]
async fn a_controller_that_accepts_but_never_answers_is_left_for_another() {
    // a black hole: accepts connections and holds them without a word
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_address = format!("http://{}", hole.local_addr().unwrap());
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
        }
    });
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let good = controller("ctl-a", &state, &events).await;
    let rt = Arc::new(MemoryApplier::default());
    let _client = client(
        vec![hole_address.clone(), hole_address, good.address.clone()],
        "rt-1",
        "default",
        &rt,
    );
    eventually("the runtime to reach the answering controller", || {
        rt.revision() == 1
    })
    .await;
}

#[tokio::test]
async fn controllers_with_a_token_refuse_runtimes_without_it() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let server = server("ctl-a", &state, &events)
        .with_token(SyncToken::new("sync-secret-0123456789").unwrap());
    let ctl = serve(server).await;

    let intruder = Arc::new(MemoryApplier::default());
    let _a = client_with_token(
        vec![ctl.address.clone()],
        "intruder",
        "default",
        &intruder,
        Some("guessed-but-wrong-token"),
    );
    let anonymous = Arc::new(MemoryApplier::default());
    let _b = client(
        vec![ctl.address.clone()],
        "anonymous",
        "default",
        &anonymous,
    );
    let member = Arc::new(MemoryApplier::default());
    let _c = client_with_token(
        vec![ctl.address.clone()],
        "member",
        "default",
        &member,
        Some("sync-secret-0123456789"),
    );
    eventually("the member's snapshot", || member.revision() == 1).await;
    assert_eq!(intruder.revision(), 0);
    assert_eq!(anonymous.revision(), 0);
    assert!(!events.contains("connected intruder"));
    assert!(!events.contains("connected anonymous"));
}

struct Store(i64);

#[async_trait]
impl RevisionAuthority for Store {
    async fn newest_revision(&self) -> Option<i64> {
        Some(self.0)
    }
}

#[tokio::test]
async fn a_runtime_ahead_of_a_lagging_controller_is_not_rolled_back() {
    // this controller lags at revision 1; another one is at revision 3
    let lagging = Arc::new(DesiredState::new(1000));
    lagging.apply([change(1, "a", &["default"])]);
    let current = Arc::new(DesiredState::new(1000));
    current.apply([
        change(1, "a", &["default"]),
        change(2, "b", &["default"]),
        change(3, "c", &["default"]),
    ]);
    let events = Arc::new(Events::default());
    let behind =
        serve(server("ctl-behind", &lagging, &events).with_authority(Arc::new(Store(3)))).await;
    let ahead = controller("ctl-ahead", &current, &events).await;

    // the runtime serves revision 2 from its cache
    let rt = Arc::new(MemoryApplier::at(2, ""));
    let _client = client(
        vec![
            behind.address.clone(),
            behind.address.clone(),
            ahead.address.clone(),
        ],
        "rt-1",
        "default",
        &rt,
    );
    eventually("the runtime to reach revision 3", || rt.revision() == 3).await;
    assert!(
        rt.kinds().iter().all(|k| *k == "delta"),
        "rolled back with a snapshot: {:?}",
        rt.kinds()
    );
    assert!(
        rt.names().contains(&"cached".to_string()),
        "a delta keeps what the runtime had"
    );
}

#[tokio::test]
async fn a_runtime_ahead_of_a_restored_store_follows_the_store() {
    let restored = Arc::new(DesiredState::new(1000));
    restored.apply([change(1, "a", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = serve(server("ctl", &restored, &events).with_authority(Arc::new(Store(1)))).await;
    let rt = Arc::new(MemoryApplier::at(7, ""));
    let _client = client(vec![ctl.address.clone()], "rt-1", "default", &rt);
    eventually("the snapshot of the store's state", || rt.revision() == 1).await;
    assert_eq!(rt.kinds(), ["snapshot"]);
    assert_eq!(rt.names(), ["a"]);
}

#[tokio::test]
async fn a_runtime_from_another_store_gets_a_snapshot() {
    let state = Arc::new(DesiredState::new(1000));
    state.apply([
        change(1, "a", &["default"]),
        change(2, "b", &["default"]),
        change(3, "c", &["default"]),
    ]);
    let events = Arc::new(Events::default());
    let ctl = serve(server("ctl", &state, &events).with_store_id("store-b")).await;
    // revision 2 of another database: a delta from 2 would keep "cached" and miss "a" and "b"
    let rt = Arc::new(MemoryApplier::at(2, "store-a"));
    let _client = client(vec![ctl.address.clone()], "rt-1", "default", &rt);
    eventually("the snapshot", || rt.revision() == 3).await;
    assert_eq!(rt.kinds(), ["snapshot"]);
    assert_eq!(rt.names(), ["a", "b", "c"]);
    assert_eq!(rt.applied().1, "store-b");

    // once on the same store, changes come as deltas
    state.apply([change(4, "d", &["default"])]);
    eventually("the delta", || rt.revision() == 4).await;
    assert_eq!(rt.kinds(), ["snapshot", "delta"]);
}

/// A cluster CA and a TLS sync server of `state` on loopback: mutual TLS, where every stream
/// must come from a runtime whose certificate names it; anonymous clients finish the
/// handshake only with `allow_anonymous`.
async fn tls_controller(
    ca: &ClusterCa,
    state: &Arc<DesiredState>,
    events: &Arc<Events>,
    allow_anonymous: bool,
) -> Controller {
    let now = std::time::SystemTime::now();
    let issued = ca
        .issue_server(&["127.0.0.1".to_string()], now, Duration::from_hours(1))
        .unwrap();
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    let config = server_config(
        &Identity {
            chain_pem: &chain,
            key_pem: &issued.key_pem,
        },
        ca.cert_pem(),
        allow_anonymous,
    )
    .unwrap();
    let tls = Arc::new(ServerTls::new(config));
    let mut ctl = serve(server("ctl-tls", state, events).with_tls(tls)).await;
    ctl.address = ctl.address.replace("http://", "https://");
    ctl
}

/// Client options for `node` of `group` over TLS: trusting `ca` and presenting a
/// certificate of `ca` for `identity` (none: no certificate).
fn tls_options(
    ctl: &Controller,
    ca: &ClusterCa,
    node: &str,
    group: &str,
    identity: Option<&RuntimeIdentity>,
) -> ClientOptions {
    let mut options = ClientOptions::new(vec![ctl.address.clone()], node.into(), group.into());
    options.tls = Some(runtime_tls(ca, identity.map(|identity| (ca, identity))));
    options
}

/// A runtime's TLS: trusting `trusted` for controllers, and presenting a certificate for
/// `identity` issued by `issuer` (none: no certificate).
fn runtime_tls(
    trusted: &ClusterCa,
    presented: Option<(&ClusterCa, &RuntimeIdentity)>,
) -> Arc<ClientTls> {
    let issued = presented.map(|(issuer, identity)| {
        let request = runtime_key_and_request(&identity.node_id).unwrap();
        let cert = issuer
            .sign_runtime(
                &request.cert_pem,
                identity,
                std::time::SystemTime::now(),
                Duration::from_hours(1),
            )
            .unwrap();
        (cert, request.key_pem)
    });
    let presented = issued.as_ref().map(|(cert, key)| Identity {
        chain_pem: cert,
        key_pem: key,
    });
    let trust = ServerTrust::Ca(trusted.cert_pem().to_string());
    Arc::new(ClientTls::new(
        client_config(&trust, presented.as_ref()).unwrap(),
    ))
}

/// Waits until the client reports an error containing `needle`.
async fn fails_with(status: &mut watch::Receiver<ClientStatus>, needle: &str) {
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains(needle))),
    )
    .await
    .is_ok();
    assert!(
        seen,
        "no error with {needle:?}; last: {:?}",
        status.borrow().last_error
    );
}

#[tokio::test]
async fn over_mutual_tls_a_runtime_is_served_as_its_certificate_names_it() {
    let ca = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"]), change(2, "b", &["default"])]);
    let events = Arc::new(Events::default());
    let ctl = tls_controller(&ca, &state, &events, false).await;

    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let rt = Arc::new(MemoryApplier::default());
    let _client = start(tls_options(&ctl, &ca, "rt-1", "edge", Some(&identity)), &rt);
    eventually("the snapshot over TLS", || rt.revision() == 2).await;
    assert_eq!(rt.names(), ["a"]);
    state.apply([change(3, "c", &["edge"])]);
    eventually("a delta over TLS", || rt.revision() == 3).await;
    assert!(events.contains("connected rt-1"));
}

#[tokio::test]
async fn a_runtime_cannot_speak_for_another_node_or_group() {
    let ca = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"]), change(2, "b", &["payments"])]);
    let events = Arc::new(Events::default());
    let ctl = tls_controller(&ca, &state, &events, true).await;
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();

    // rt-1's certificate, another node's name
    let impostor = Arc::new(MemoryApplier::default());
    let (_a, mut status) = start(
        tls_options(&ctl, &ca, "rt-2", "edge", Some(&identity)),
        &impostor,
    );
    fails_with(&mut status, "this Hello says node").await;
    // rt-1's certificate, another group's configuration
    let greedy = Arc::new(MemoryApplier::default());
    let (_b, mut status) = start(
        tls_options(&ctl, &ca, "rt-1", "payments", Some(&identity)),
        &greedy,
    );
    fails_with(&mut status, "this Hello asks for group").await;
    // no certificate at all, on a port where enrollment lets it through the handshake
    let anonymous = Arc::new(MemoryApplier::default());
    let (_c, mut status) = start(tls_options(&ctl, &ca, "rt-3", "edge", None), &anonymous);
    fails_with(&mut status, "runtime certificate is required").await;

    assert_eq!(impostor.revision(), 0);
    assert_eq!(greedy.revision(), 0);
    assert_eq!(anonymous.revision(), 0);
    // none of them shows in the fleet view
    for node in ["rt-2", "rt-1", "rt-3"] {
        assert!(!events.contains(node), "{node} was recorded");
    }
}

#[tokio::test]
async fn a_tls_sync_port_refuses_plaintext_and_strangers() {
    let ca = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"])]);
    let events = Arc::new(Events::default());
    let ctl = tls_controller(&ca, &state, &events, false).await;

    // a plaintext runtime
    let plain = Arc::new(MemoryApplier::default());
    let (_a, mut status) = start(
        ClientOptions::new(
            vec![ctl.address.replace("https://", "http://")],
            "rt-1".into(),
            "edge".into(),
        ),
        &plain,
    );
    fails_with(&mut status, "transport error").await;
    // a runtime with a valid certificate that trusts another cluster: it refuses the
    // controller's certificate itself
    let other = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let mut options = tls_options(&ctl, &ca, "rt-1", "edge", None);
    options.tls = Some(runtime_tls(&other, Some((&ca, &identity))));
    let lost = Arc::new(MemoryApplier::default());
    let (_b, mut status) = start(options, &lost);
    fails_with(&mut status, "UnknownIssuer").await;
    // a runtime with a certificate of another cluster's CA: the controller refuses it in the
    // handshake
    let mut options = tls_options(&ctl, &ca, "rt-1", "edge", None);
    options.tls = Some(runtime_tls(&ca, Some((&other, &identity))));
    let forged = Arc::new(MemoryApplier::default());
    let (_c, mut status) = start(options, &forged);
    fails_with(&mut status, "UnknownCA").await;
    // an http:// address where TLS is on is a configuration error, said as such
    let mut options = tls_options(&ctl, &ca, "rt-1", "edge", Some(&identity));
    options.controllers = vec![ctl.address.replace("https://", "http://")];
    let misdialled = Arc::new(MemoryApplier::default());
    let (_d, mut status) = start(options, &misdialled);
    fails_with(&mut status, "sync TLS is on").await;

    for applier in [&plain, &lost, &forged, &misdialled] {
        assert_eq!(applier.revision(), 0);
    }
    assert!(!events.contains("connected"));
}

/// An enroller over a cluster CA, in memory: tokens by id (secret hash, group, uses left),
/// and the one certificate serial each node holds (none once revoked).
struct MemoryEnroller {
    ca: ClusterCa,
    tokens: Mutex<BTreeMap<String, (String, String, u32)>>,
    serials: Mutex<BTreeMap<String, String>>,
    calls: std::sync::atomic::AtomicUsize,
    changes: watch::Sender<u64>,
}

impl MemoryEnroller {
    fn new(ca: ClusterCa) -> Arc<Self> {
        Arc::new(Self {
            ca,
            tokens: Mutex::default(),
            serials: Mutex::default(),
            calls: std::sync::atomic::AtomicUsize::new(0),
            changes: watch::channel(0).0,
        })
    }

    fn token(&self, group: &str, uses: u32) -> EnrollmentToken {
        let token = EnrollmentToken::generate(self.ca.hash());
        self.tokens.lock().unwrap().insert(
            token.id().to_string(),
            (token.secret_hash(), group.to_string(), uses),
        );
        token
    }

    fn revoke(&self, node: &str) {
        self.serials.lock().unwrap().remove(node);
        self.changes.send_modify(|n| *n += 1);
    }

    fn issue(
        &self,
        identity: &RuntimeIdentity,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal> {
        let now = std::time::SystemTime::now();
        let pem = self
            .ca
            .sign_runtime(csr_pem, identity, now, Duration::from_hours(1))
            .map_err(|err| EnrollRefusal::Invalid(err.to_string()))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let facts = CertFacts::of_certificate(&der).unwrap();
        self.serials
            .lock()
            .unwrap()
            .insert(identity.node_id.clone(), facts.serial.clone());
        Ok(IssuedCertificate {
            certificate_pem: pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: facts.not_after,
            renew_after: facts.renew_after(),
        })
    }
}

#[async_trait]
impl Enroller for MemoryEnroller {
    async fn enroll(
        &self,
        token: &EnrollmentToken,
        identity: &RuntimeIdentity,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        {
            let mut tokens = self.tokens.lock().unwrap();
            let Some((hash, group, uses)) = tokens.get_mut(token.id()) else {
                return Err(EnrollRefusal::UnknownToken("unknown token".into()));
            };
            if !token.matches(hash) {
                return Err(EnrollRefusal::UnknownToken("unknown token".into()));
            }
            if *uses == 0 {
                return Err(EnrollRefusal::Unauthenticated("unknown token".into()));
            }
            if *group != identity.group {
                return Err(EnrollRefusal::Denied(format!("the token is for {group}")));
            }
            *uses -= 1;
        }
        self.issue(identity, csr_pem)
    }

    async fn renew(
        &self,
        identity: &RuntimeIdentity,
        cert: &CertFacts,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, EnrollRefusal> {
        if !self.admits(identity, cert) {
            return Err(EnrollRefusal::Unauthenticated("revoked".into()));
        }
        self.issue(identity, csr_pem)
    }

    fn admits(&self, identity: &RuntimeIdentity, cert: &CertFacts) -> bool {
        self.serials
            .lock()
            .unwrap()
            .get(&identity.node_id)
            .is_some_and(|serial| *serial == cert.serial)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// A TLS controller of `state` that enrolls with `enroller` (anonymous clients let through
/// the handshake, to enroll).
async fn enrolling_controller(
    enroller: &Arc<MemoryEnroller>,
    state: &Arc<DesiredState>,
    events: &Arc<Events>,
) -> Controller {
    let now = std::time::SystemTime::now();
    let ca = &enroller.ca;
    let issued = ca
        .issue_server(&["127.0.0.1".to_string()], now, Duration::from_hours(1))
        .unwrap();
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    let identity = Identity {
        chain_pem: &chain,
        key_pem: &issued.key_pem,
    };
    let tls = Arc::new(ServerTls::new(
        server_config(&identity, ca.cert_pem(), true).unwrap(),
    ));
    let server = server("ctl-enroll", state, events)
        .with_tls(tls)
        .with_enroller(Arc::clone(enroller) as Arc<dyn Enroller>);
    let mut ctl = serve(server).await;
    ctl.address = ctl.address.replace("http://", "https://");
    ctl
}

/// Enrolls `identity` with `token` at `ctl`: the runtime's TLS with the certificate it got.
async fn enrolled_tls(
    ctl: &Controller,
    token: &EnrollmentToken,
    identity: &RuntimeIdentity,
) -> Result<(Arc<ClientTls>, IssuedCertificate), gw_sync::enroll::EnrollError> {
    let request = runtime_key_and_request(&identity.node_id).unwrap();
    let issued = gw_sync::enroll::enroll(&ctl.address, token, identity, &request.cert_pem).await?;
    let config = client_config(
        &ServerTrust::Ca(issued.ca_pem.clone()),
        Some(&Identity {
            chain_pem: &issued.certificate_pem,
            key_pem: &request.key_pem,
        }),
    )
    .unwrap();
    Ok((Arc::new(ClientTls::new(config)), issued))
}

#[tokio::test]
async fn a_runtime_enrolls_with_a_token_and_is_served_as_its_certificate_names_it() {
    let enroller = MemoryEnroller::new(ClusterCa::generate(std::time::SystemTime::now()).unwrap());
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"])]);
    let events = Arc::new(Events::default());
    let ctl = enrolling_controller(&enroller, &state, &events).await;

    let token = enroller.token("edge", 1);
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let (tls, issued) = enrolled_tls(&ctl, &token, &identity).await.unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .unwrap();
    assert_eq!(RuntimeIdentity::of_certificate(&der).unwrap(), identity);
    assert!(issued.renew_after < issued.not_after);

    let mut options = ClientOptions::new(vec![ctl.address.clone()], "rt-1".into(), "edge".into());
    options.tls = Some(Arc::clone(&tls));
    let rt = Arc::new(MemoryApplier::default());
    let _client = start(options, &rt);
    eventually("the snapshot to the enrolled runtime", || {
        rt.revision() == 1
    })
    .await;

    // the token had one use
    let again = enrolled_tls(&ctl, &token, &RuntimeIdentity::new("edge", "rt-2").unwrap()).await;
    let err = again.expect_err("a spent token enrolled");
    assert!(
        !err.is_transient() && err.to_string().contains("unknown token"),
        "{err}"
    );
    // a token for another group does not enroll into this one
    let other = enroller.token("payments", 1);
    let err = enrolled_tls(&ctl, &other, &identity).await.unwrap_err();
    assert!(
        err.to_string().contains("the token is for payments"),
        "{err}"
    );
}

/// A client that keeps guessing tokens is refused for the rest of the minute before its
/// token is even looked up: the enroller is not asked, even for a good token. A spent token
/// is no guess: it does not count.
#[tokio::test]
async fn an_address_that_keeps_guessing_tokens_is_held_back() {
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let minute = || gw_sync::unix_millis() / 60_000;
    // the guesses are counted per minute: a sequence that straddles two is made again, at a
    // new controller
    for attempt in 0..3 {
        let enroller =
            MemoryEnroller::new(ClusterCa::generate(std::time::SystemTime::now()).unwrap());
        let state = Arc::new(DesiredState::new(1000));
        let events = Arc::new(Events::default());
        let ctl = enrolling_controller(&enroller, &state, &events).await;
        let started = minute();
        let spent = enroller.token("edge", 0);
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(enrolled_tls(&ctl, &spent, &identity).await.map(|_| ()));
        }
        for _ in 0..21 {
            let guess = EnrollmentToken::generate(enroller.ca.hash());
            outcomes.push(enrolled_tls(&ctl, &guess, &identity).await.map(|_| ()));
        }
        let calls = enroller.calls.load(std::sync::atomic::Ordering::SeqCst);
        let good = enroller.token("edge", 1);
        let last = enrolled_tls(&ctl, &good, &identity).await.map(|_| ());
        if minute() != started {
            assert!(attempt < 2, "three sequences straddled a minute");
            continue;
        }
        let held_back = |outcome: &Result<(), gw_sync::enroll::EnrollError>| {
            outcome.as_ref().is_err_and(|err| {
                assert!(
                    err.is_transient() || err.to_string().contains("unknown token"),
                    "{err}"
                );
                err.to_string().contains("too many failed enrollments")
            })
        };
        // the spent token and the first 20 guesses reach the enroller; then the address waits
        let reached: Vec<bool> = outcomes.iter().map(|o| !held_back(o)).collect();
        assert_eq!(reached, [vec![true; 25], vec![false]].concat());
        assert!(outcomes.iter().all(Result::is_err));
        assert!(held_back(&last), "{last:?}");
        assert_eq!(
            enroller.calls.load(std::sync::atomic::Ordering::SeqCst),
            calls
        );
        assert_eq!(calls, 25);
        return;
    }
}

#[tokio::test]
async fn a_token_is_never_sent_to_a_controller_of_another_cluster() {
    let enroller = MemoryEnroller::new(ClusterCa::generate(std::time::SystemTime::now()).unwrap());
    let state = Arc::new(DesiredState::new(1000));
    let events = Arc::new(Events::default());
    let ctl = enrolling_controller(&enroller, &state, &events).await;
    // a token that names another CA: the runtime refuses the controller in the handshake
    let elsewhere = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let token = EnrollmentToken::generate(elsewhere.hash());
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let err = enrolled_tls(&ctl, &token, &identity).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(enroller.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    // enrollment is never served in plaintext
    let plain = ctl.address.replace("https://", "http://");
    let err = gw_sync::enroll::enroll(&plain, &enroller.token("edge", 1), &identity, "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over TLS only"), "{err}");
}

#[tokio::test]
async fn a_renewed_certificate_replaces_the_old_and_a_revoked_runtime_is_cut_off() {
    let enroller = MemoryEnroller::new(ClusterCa::generate(std::time::SystemTime::now()).unwrap());
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"])]);
    let events = Arc::new(Events::default());
    let ctl = enrolling_controller(&enroller, &state, &events).await;
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let (tls, first) = enrolled_tls(&ctl, &enroller.token("edge", 1), &identity)
        .await
        .unwrap();

    // renewal over the certificate it renews
    let request = runtime_key_and_request("rt-1").unwrap();
    let renewed = gw_sync::enroll::renew(&ctl.address, tls.current(), &request.cert_pem)
        .await
        .unwrap();
    assert_ne!(renewed.certificate_pem, first.certificate_pem);
    // the old certificate no longer holds: a stream with it is refused
    let mut options = ClientOptions::new(vec![ctl.address.clone()], "rt-1".into(), "edge".into());
    options.tls = Some(Arc::clone(&tls));
    let stale = Arc::new(MemoryApplier::default());
    let (stale_client, mut status) = start(options.clone(), &stale);
    fails_with(&mut status, "revoked or replaced").await;
    // (it shares the runtime's TLS, which takes the renewed certificate next)
    stale_client.abort();
    assert_eq!(stale.revision(), 0);
    // with the new one, it is served
    tls.replace(
        client_config(
            &ServerTrust::Ca(renewed.ca_pem.clone()),
            Some(&Identity {
                chain_pem: &renewed.certificate_pem,
                key_pem: &request.key_pem,
            }),
        )
        .unwrap(),
    );
    let rt = Arc::new(MemoryApplier::default());
    let (_b, mut status) = start(options, &rt);
    eventually("the snapshot with the renewed certificate", || {
        rt.revision() == 1
    })
    .await;
    // a renewal without a certificate is refused
    let anonymous = client_config(&ServerTrust::Ca(renewed.ca_pem.clone()), None).unwrap();
    let err = gw_sync::enroll::renew(&ctl.address, anonymous, &request.cert_pem)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a runtime without one enrolls"),
        "{err}"
    );

    // revoked: the open stream ends, and the runtime is refused from then on
    enroller.revoke("rt-1");
    fails_with(&mut status, "revoked or replaced").await;
    sent_nothing_more(&state, &mut status, &rt).await;
}

/// Applies a change to `state`, waits for two more refused attempts of the runtime whose
/// status is `status`, and checks that the change did not reach `rt` (at revision 1).
async fn sent_nothing_more(
    state: &DesiredState,
    status: &mut watch::Receiver<ClientStatus>,
    rt: &MemoryApplier,
) {
    state.apply([change(2, "b", &["edge"])]);
    let attempts = status.borrow().failed_attempts;
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.failed_attempts >= attempts + 2),
    )
    .await
    .expect("the runtime stopped trying")
    .unwrap();
    assert_eq!(rt.revision(), 1, "a refused runtime was sent a change");
}

#[tokio::test]
async fn a_stream_ends_when_the_certificate_of_its_connection_expires() {
    let ca = ClusterCa::generate(std::time::SystemTime::now()).unwrap();
    let state = Arc::new(DesiredState::new(1000));
    state.apply([change(1, "a", &["edge"])]);
    let events = Arc::new(Events::default());
    let ctl = tls_controller(&ca, &state, &events, false).await;
    let identity = RuntimeIdentity::new("edge", "rt-1").unwrap();
    let request = runtime_key_and_request("rt-1").unwrap();
    // valid for two more seconds
    let cert = ca
        .sign_runtime(
            &request.cert_pem,
            &identity,
            std::time::SystemTime::now(),
            Duration::from_secs(2),
        )
        .unwrap();
    let config = client_config(
        &ServerTrust::Ca(ca.cert_pem().to_string()),
        Some(&Identity {
            chain_pem: &cert,
            key_pem: &request.key_pem,
        }),
    )
    .unwrap();
    let mut options = ClientOptions::new(vec![ctl.address.clone()], "rt-1".into(), "edge".into());
    options.tls = Some(Arc::new(ClientTls::new(config)));
    let rt = Arc::new(MemoryApplier::default());
    let (_client, mut status) = start(options, &rt);
    eventually("the snapshot", || rt.revision() == 1).await;
    // the stream does not outlive the certificate it was opened with, and the expired
    // certificate opens no other
    fails_with(&mut status, "expired").await;
    sent_nothing_more(&state, &mut status, &rt).await;
}
