//! Restarts: a runtime resumes from its cache and its revision; a controller restart keeps
//! revisions, and new deploys still reach the runtimes.

use std::time::Duration;

use gw_e2e::{
    Admin, ControllerSpec, Process, TOKEN, TestDatabase, Upstream, api_yaml, call, controller,
    eventually, metric, runtime_with,
};

/// A controller on its own database and a runtime connected to it, with their directories.
struct Cluster {
    ctl: Process,
    admin: Admin,
    rt: Process,
    _dirs: [tempfile::TempDir; 2],
    _db: TestDatabase,
}

async fn cluster() -> Cluster {
    cluster_with(&[]).await
}

/// [`cluster`], the runtime started with `extra` arguments.
async fn cluster_with(extra: &[&str]) -> Cluster {
    let db = TestDatabase::create().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let spec = ControllerSpec::postgres(&db, "ctl");
    let ctl = controller(&spec, dirs[0].path());
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let rt = runtime_with("rt-1", &[ctl.addr("sync")], dirs[1].path(), extra);
    eventually(
        "the runtime to connect",
        Duration::from_secs(20),
        || async { ctl.logged("runtime connected") },
    )
    .await;
    Cluster {
        ctl,
        admin,
        rt,
        _dirs: dirs,
        _db: db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_restart_resumes_from_its_cache_and_revision() {
    // (binding `_dirs` and `_db` keeps them alive to the end of the test)
    let Cluster {
        mut ctl,
        admin,
        mut rt,
        _dirs,
        _db,
    } = cluster().await;
    let up = Upstream::start("up").await;
    let client = reqwest::Client::new();
    let first = admin.deploy("one", "/one", &up.url("")).await;
    assert_eq!(first.status(), 201);
    assert_eq!(call(&client, rt.addr("proxy"), "/one").await.0, 200);

    // a change while the runtime is down
    rt.kill();
    let second = admin
        .put_api("two", &api_yaml("two", "/two", &up.url("")), "")
        .await;
    assert_eq!(second.status(), 201);
    rt.restart(&[]);
    let proxy = rt.addr("proxy");
    eventually(
        "the missed change to arrive",
        Duration::from_secs(20),
        || async { call(&client, proxy, "/two").await.0 == 200 },
    )
    .await;
    assert_eq!(call(&client, proxy, "/one").await.0, 200);
    // it started from its cache at revision 1 and resumed with a delta from there
    assert!(
        rt.logged("serving the last-known-good configuration"),
        "{}",
        rt.log()
    );
    assert!(
        ctl.logged("\"applied\":1"),
        "the runtime did not say hello with its cached revision"
    );

    // with the controller gone too, a restarted runtime serves its cache
    ctl.kill();
    rt.restart(&[]);
    let proxy = rt.addr("proxy");
    assert_eq!(call(&client, proxy, "/one").await.0, 200);
    assert_eq!(call(&client, proxy, "/two").await.0, 200);
    let (status, ready) = call(&client, rt.addr("status"), "/status/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["source"], "cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_keeps_revisions() {
    let Cluster {
        mut ctl,
        admin,
        rt,
        _dirs,
        _db,
    } = cluster().await;
    let admin_addr = ctl.addr("admin");
    let sync_addr = ctl.addr("sync");
    let proxy = rt.addr("proxy");
    let up = Upstream::start("up").await;
    let client = reqwest::Client::new();
    for name in ["a", "b"] {
        let response = admin
            .put_api(
                name,
                &api_yaml(name, &format!("/{name}"), &up.url("")),
                "?wait=applied",
            )
            .await;
        assert!(response.status().is_success());
    }

    // same ports, so the runtime finds it again
    ctl.restart(&[
        ("--admin-addr", admin_addr.to_string()),
        ("--sync-addr", sync_addr.to_string()),
    ]);
    admin.wait_ready().await;
    let (_, list) = admin.get_json("/api/v1/apis").await;
    assert_eq!(list["revision"], 2, "revisions survive the restart");

    let response = admin
        .put_api("c", &api_yaml("c", "/c", &up.url("")), "")
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"3\"");
    eventually(
        "the new deploy to reach the runtime",
        Duration::from_secs(20),
        || async { call(&client, proxy, "/c").await.0 == 200 },
    )
    .await;
    assert_eq!(call(&client, proxy, "/a").await.0, 200);
}

/// `--ready-requires-controller`: ready only while connected to a controller; traffic goes on
/// without one, and readiness comes back with the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_can_require_a_controller() {
    let Cluster {
        mut ctl,
        admin,
        rt,
        _dirs,
        _db,
    } = cluster_with(&["--ready-requires-controller"]).await;
    let admin_addr = ctl.addr("admin");
    let sync_addr = ctl.addr("sync");
    let up = Upstream::start("up").await;
    let client = reqwest::Client::new();
    let status = rt.addr("status");
    let response = admin
        .put_api(
            "one",
            &api_yaml("one", "/one", &up.url("")),
            "?wait=applied",
        )
        .await;
    assert!(response.status().is_success());
    let (code, ready) = call(&client, status, "/status/ready").await;
    assert_eq!(
        (code, &ready["controller"].is_string()),
        (200, &true),
        "{ready}"
    );
    eventually(
        "gw_sync_connected to be 1",
        Duration::from_secs(10),
        || async { metric::<i64>(status, "gw_sync_connected ").await == Some(1) },
    )
    .await;

    ctl.kill();
    eventually(
        "readiness to turn 503 without a controller",
        Duration::from_secs(20),
        || async {
            let (code, ready) = call(&client, status, "/status/ready").await;
            code == 503 && ready["reason"] == "no controller connected"
        },
    )
    .await;
    // not ready, yet serving its configuration
    assert_eq!(call(&client, rt.addr("proxy"), "/one").await.0, 200);
    eventually(
        "gw_sync_connected to be 0",
        Duration::from_secs(10),
        || async { metric::<i64>(status, "gw_sync_connected ").await == Some(0) },
    )
    .await;

    ctl.restart(&[
        ("--admin-addr", admin_addr.to_string()),
        ("--sync-addr", sync_addr.to_string()),
    ]);
    eventually(
        "readiness to come back with the controller",
        Duration::from_secs(30),
        || async { call(&client, status, "/status/ready").await.0 == 200 },
    )
    .await;
    eventually(
        "gw_sync_connected to be 1",
        Duration::from_secs(10),
        || async { metric::<i64>(status, "gw_sync_connected ").await == Some(1) },
    )
    .await;
}

/// `POST /status/drain` with the drain token: not ready at once, traffic served through the
/// drain period, then a clean exit; without the token, or with another method, refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_request_turns_the_runtime_unready_then_stops_it() {
    const DRAIN_TOKEN: &str = "e2e-drain-token-0123456789";
    let up = Upstream::start("up").await;
    let (mut rt, _dir) = gw_e2e::standalone_env(
        &api_yaml("one", "/one", &up.url("")),
        &["--drain-seconds", "5"],
        &[("GW_DRAIN_TOKEN", DRAIN_TOKEN)],
    );
    let client = reqwest::Client::new();
    let (status, proxy) = (rt.addr("status"), rt.addr("proxy"));
    assert_eq!(call(&client, proxy, "/one").await.0, 200);
    let url = format!("http://{status}/status/drain");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 405);
    // a local process (or a sidecar that forwards anyone's request) without the token
    for token in [None, Some("wrong-token-0123456789")] {
        let mut request = client.post(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
    }
    assert_eq!(call(&client, status, "/status/ready").await.0, 200);

    let response = client
        .post(&url)
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    eventually("readiness to turn 503", Duration::from_secs(10), || async {
        let (code, ready) = call(&client, status, "/status/ready").await;
        code == 503 && ready["reason"] == "draining"
    })
    .await;
    // still serving while load balancers take it out
    assert_eq!(call(&client, proxy, "/one").await.0, 200);
    assert_eq!(
        rt.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        rt.log()
    );
    assert!(!rt.log().contains(DRAIN_TOKEN), "the token reached the log");
}

/// Without `GW_DRAIN_TOKEN` the drain endpoint is off, from loopback too: a local proxy or
/// sidecar would otherwise turn it into a remote stop switch. `--drain-endpoint loopback`
/// restores the old behaviour for hosts without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_drain_endpoint_is_off() {
    let up = Upstream::start("up").await;
    let yaml = api_yaml("one", "/one", &up.url(""));
    let client = reqwest::Client::new();
    let (rt, _dir) = gw_e2e::standalone(&yaml, &[]);
    let url = format!("http://{}/status/drain", rt.addr("status"));
    let response = client.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GW_DRAIN_TOKEN"),
        "{body}"
    );
    assert_eq!(
        call(&client, rt.addr("status"), "/status/ready").await.0,
        200
    );

    let (mut local, _dir) = gw_e2e::standalone(&yaml, &["--drain-endpoint", "loopback"]);
    let url = format!("http://{}/status/drain", local.addr("status"));
    assert_eq!(client.post(&url).send().await.unwrap().status(), 202);
    assert_eq!(local.wait_exit(Duration::from_secs(30)), Some(0));
}
