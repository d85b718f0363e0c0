//! A process's identity and its data directory: one process per directory (a second one is
//! refused, saying which process holds it), a node id kept in the directory so that a
//! restarted process is the same node, and a fleet view that shows a stopped runtime as
//! disconnected at once.

use std::path::Path;
use std::time::Duration;

use gw_e2e::{
    Admin, ControllerSpec, Process, TOKEN, TestDatabase, Upstream, binary, call, controller,
    eventually, runtime,
};

/// A controller in production mode on the SQLite store of `dir`.
fn sqlite_controller(node_id: &str, dir: &Path) -> Process {
    let spec = ControllerSpec {
        database_url: None,
        dev: false,
        all_in_one: false,
        node_id: node_id.to_string(),
    };
    controller(&spec, dir)
}

/// A runtime of `controllers` on `dir` with no `--node-id` (the harness removes `GW_NODE_ID`).
fn runtime_without_id(name: &str, controllers: &str, dir: &Path) -> Process {
    let args: Vec<String> = [
        "--controller",
        controllers,
        "--proxy-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
        "--heartbeat-seconds",
        "2",
        "--data-dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    // enrolled with a token of the controller, as the harness's runtimes are
    let addrs: Vec<std::net::SocketAddr> = controllers
        .split(',')
        .filter_map(|addr| addr.parse().ok())
        .collect();
    let envs = gw_e2e::sync_env(&addrs, "default");
    Process::start(name, &binary("gw-runtime"), &args, &envs)
}

/// The fleet view's runtimes as `(nodeId, status)`.
async fn fleet(admin: &Admin) -> Vec<(String, String)> {
    let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
    fleet["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|r| {
                    let field = |name: &str| r[name].as_str().unwrap_or_default().to_string();
                    (field("nodeId"), field("status"))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_fleet(admin: &Admin, what: &str, expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(node, status)| ((*node).to_string(), (*status).to_string()))
        .collect();
    eventually(what, Duration::from_secs(20), || async {
        fleet(admin).await == expected
    })
    .await;
}

/// Two runtimes, then two controllers, on one data directory: the second of each exits with
/// an error that names the directory and the first one's pid, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_dir_is_refused() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ctl = sqlite_controller("ctl", dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let up = Upstream::start("up").await;
    let client = reqwest::Client::new();
    let rt = runtime("rt-1", &[ctl.addr("sync")], dirs[1].path());
    wait_for_fleet(&admin, "the runtime to connect", &[("rt-1", "connected")]).await;
    assert_eq!(admin.deploy("one", "/one", &up.url("")).await.status(), 201);
    assert_eq!(call(&client, rt.addr("proxy"), "/one").await.0, 200);

    let mut second = runtime("rt-2", &[ctl.addr("sync")], dirs[1].path());
    let code = second.wait_exit(Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    let message = format!(
        "the data directory {} is in use by another gw process (pid {}); give each process its \
         own data directory (--data-dir)",
        dirs[1].path().display(),
        rt.pid()
    );
    assert!(second.logged(&message), "{}", second.log());
    // the first one still serves and still has its directory
    assert_eq!(call(&client, rt.addr("proxy"), "/one").await.0, 200);
    assert_eq!(
        call(&client, rt.addr("status"), "/status/ready").await.0,
        200
    );
    assert!(dirs[1].path().join("config-cache.json").exists());

    // the same for controllers (the SQLite file is in the directory)
    let mut other = sqlite_controller("ctl-2", dirs[0].path());
    let code = other.wait_exit(Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    let message = format!(
        "the data directory {} is in use by another gw process (pid {})",
        dirs[0].path().display(),
        ctl.pid()
    );
    assert!(other.logged(&message), "{}", other.log());
    assert_eq!(admin.get_json("/readyz").await.0, 200);
}

/// A runtime started without `--node-id` keeps the id it generated at its first start: after
/// a restart, `/status` shows the same id and the fleet view lists one runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_keeps_its_node_id() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ctl = sqlite_controller("ctl", dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let client = reqwest::Client::new();
    let sync = ctl.addr("sync").to_string();
    let mut rt = runtime_without_id("rt", &sync, dirs[1].path());
    let (_, status) = call(&client, rt.addr("status"), "/status").await;
    let id = status["nodeId"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(dirs[1].path().join("node-id")).unwrap(),
        format!("{id}\n")
    );
    wait_for_fleet(&admin, "the runtime to connect", &[(&id, "connected")]).await;

    assert_eq!(rt.terminate(), Some(0), "{}", rt.log());
    rt.restart(&[]);
    let (_, status) = call(&client, rt.addr("status"), "/status").await;
    assert_eq!(status["nodeId"], id.as_str(), "a new id after a restart");
    wait_for_fleet(
        &admin,
        "one runtime, connected again under its id",
        &[(&id, "connected")],
    )
    .await;
}

/// The quickstart's case: an all-in-one controller restarted without `--node-id` is the same
/// controller, and its runtime the same runtime; the fleet view lists one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_all_in_one_controller_keeps_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let args: Vec<String> = [
        "--all-in-one",
        "--dev",
        "--data-dir",
        &data_dir,
        "--admin-addr",
        "127.0.0.1:0",
        "--sync-addr",
        "127.0.0.1:0",
        "--proxy-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
        "--heartbeat-seconds",
        "2",
    ]
    .map(String::from)
    .to_vec();
    let mut ctl = Process::start("aio", &binary("gw-controller"), &args, &[]);
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let (_, ready) = admin.get_json("/readyz").await;
    let id = ready["controller"].as_str().unwrap().to_string();
    let runtime_id = format!("{id}-runtime");
    wait_for_fleet(
        &admin,
        "the embedded runtime to connect",
        &[(&runtime_id, "connected")],
    )
    .await;

    assert_eq!(ctl.terminate(), Some(0), "{}", ctl.log());
    ctl.restart(&[]);
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let (_, ready) = admin.get_json("/readyz").await;
    assert_eq!(ready["controller"], id.as_str(), "a new id after a restart");
    wait_for_fleet(
        &admin,
        "one runtime, connected again under its id",
        &[(&runtime_id, "connected")],
    )
    .await;
}

/// A runtime stopped with SIGTERM ends its sync stream itself, and the fleet view shows it
/// disconnected at once; one killed (its stream cut, not ended) is shown disconnected too,
/// once its controller sees the connection close, but the controller knows the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runtime_is_disconnected_at_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ctl = sqlite_controller("ctl", dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let mut stopped = runtime("rt-stopped", &[ctl.addr("sync")], dirs[1].path());
    let mut killed = runtime("rt-killed", &[ctl.addr("sync")], dirs[2].path());
    wait_for_fleet(
        &admin,
        "both runtimes to connect",
        &[("rt-killed", "connected"), ("rt-stopped", "connected")],
    )
    .await;

    stopped.send_term();
    eventually(
        "the stopped runtime to be disconnected",
        // at once, against the 35 s a silent session takes to turn stale; 10 s of room
        // for a loaded machine
        Duration::from_secs(10),
        || async {
            fleet(&admin).await
                == [
                    ("rt-killed".to_string(), "connected".to_string()),
                    ("rt-stopped".to_string(), "disconnected".to_string()),
                ]
        },
    )
    .await;
    assert_eq!(stopped.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        ctl.logged("runtime stopped: it ended its stream"),
        "{}",
        ctl.log()
    );

    killed.kill();
    eventually(
        "the killed runtime to be disconnected",
        Duration::from_secs(10),
        || async {
            fleet(&admin).await
                == [
                    ("rt-killed".to_string(), "disconnected".to_string()),
                    ("rt-stopped".to_string(), "disconnected".to_string()),
                ]
        },
    )
    .await;
    let goodbyes = ctl
        .log()
        .lines()
        .filter(|l| l.contains("runtime stopped: it ended its stream"))
        .count();
    assert_eq!(goodbyes, 1, "a killed runtime said goodbye?\n{}", ctl.log());
}

/// A runtime whose controller no longer answers (frozen here; cut off by the network alike)
/// still stops at once: its goodbye waits at most a second for the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_whose_controller_hangs_still_stops() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ctl = sqlite_controller("ctl", dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let mut rt = runtime("rt-1", &[ctl.addr("sync")], dirs[1].path());
    wait_for_fleet(&admin, "the runtime to connect", &[("rt-1", "connected")]).await;

    let signal = |which: &str| {
        let sent = std::process::Command::new("kill")
            .args([which, &ctl.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {which}");
    };
    signal("-STOP");
    rt.send_term();
    let code = rt.wait_exit(Duration::from_secs(10));
    signal("-CONT");
    assert_eq!(code, Some(0), "{}", rt.log());
    assert!(rt.logged("sync stream ended: stopping"), "{}", rt.log());
}

/// A controller that stops records the end of its runtimes' sessions before it exits: the
/// other controllers' fleet view shows them disconnected, not connected until they turn
/// stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_controller_records_its_runtimes_as_disconnected() {
    let db = TestDatabase::create().await;
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = controller(&ControllerSpec::postgres(&db, "ctl-a"), dirs[0].path());
    let b = controller(&ControllerSpec::postgres(&db, "ctl-b"), dirs[1].path());
    let admin_b = Admin::new(b.addr("admin"), Some(TOKEN));
    admin_b.wait_ready().await;
    // each knows controller A only, so that no other controller records it afterwards
    let names = ["rt-1", "rt-2", "rt-3", "rt-4"];
    let runtimes: Vec<Process> = names
        .iter()
        .zip(&dirs[2..])
        .map(|(name, dir)| runtime(name, &[a.addr("sync")], dir.path()))
        .collect();
    let connected: Vec<(&str, &str)> = names.iter().map(|n| (*n, "connected")).collect();
    wait_for_fleet(&admin_b, "the runtimes on A", &connected).await;

    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let disconnected: Vec<(String, String)> = names
        .iter()
        .map(|n| ((*n).to_string(), "disconnected".to_string()))
        .collect();
    // what A wrote before it exited: nothing changes these records any more
    assert_eq!(fleet(&admin_b).await, disconnected, "{}", a.log());
    drop(runtimes);
}

/// A runtime restarted with a clock behind its previous start is still the newer session:
/// its data directory keeps the previous start, and the new run's session epochs build on
/// it, so the fleet records the new session rather than keep the old run's record until it
/// is pruned. The test puts the fleet record and the directory where a previous run with a
/// clock one hour ahead left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_restarted_with_its_clock_behind_is_the_newer_session() {
    let db = TestDatabase::create().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ctl = controller(&ControllerSpec::postgres(&db, "ctl"), dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let mut rt = runtime("rt", &[ctl.addr("sync")], dirs[1].path());
    wait_for_fleet(&admin, "the runtime to connect", &[("rt", "connected")]).await;
    assert_eq!(rt.terminate(), Some(0), "{}", rt.log());
    wait_for_fleet(&admin, "the stop recorded", &[("rt", "disconnected")]).await;

    // the previous run started an hour ahead of the clock now
    let ahead_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    std::fs::write(
        dirs[1].path().join("session-start"),
        format!("{ahead_ms}\n"),
    )
    .unwrap();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let epoch = i64::try_from(ahead_ms * 1_000_000 + 1).unwrap();
    let updated = sqlx::query("UPDATE runtimes SET session_epoch = $1 WHERE node_id = 'rt'")
        .bind(epoch)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    pool.close().await;

    rt.restart(&[]);
    wait_for_fleet(
        &admin,
        "the restarted runtime recorded as connected",
        &[("rt", "connected")],
    )
    .await;
    assert!(
        rt.logged("the clock reads earlier than this node's previous start"),
        "{}",
        rt.log()
    );
}
