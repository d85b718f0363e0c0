//! The HA topology: two controllers on one PostgreSQL database, runtimes connected to
//! either. A deploy through one controller reaches the runtimes of the other.

use std::time::Duration;

use gw_e2e::{
    Admin, ControllerSpec, TOKEN, TestDatabase, Upstream, call, controller, eventually, median,
    millis, propagation, refused_hello, runtime,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_through_one_controller_reaches_a_runtime_on_another() {
    let db = TestDatabase::create().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = controller(&ControllerSpec::postgres(&db, "ctl-a"), dirs[0].path());
    let b = controller(&ControllerSpec::postgres(&db, "ctl-b"), dirs[1].path());
    let admin_a = Admin::new(a.addr("admin"), Some(TOKEN));
    let admin_b = Admin::new(b.addr("admin"), Some(TOKEN));
    admin_a.wait_ready().await;
    admin_b.wait_ready().await;
    let rt = runtime("rt-1", &[b.addr("sync")], dirs[2].path());
    let proxy = rt.addr("proxy");
    let up = Upstream::start("up").await;
    let client = reqwest::Client::new();

    // the fleet is shared: controller A lists the runtime connected to B
    eventually(
        "A to see the runtime on B",
        Duration::from_secs(20),
        || async {
            let (_, fleet) = admin_a.get_json("/api/v1/runtimes").await;
            fleet["items"].as_array().is_some_and(|items| {
                items.iter().any(|r| {
                    r["nodeId"] == "rt-1"
                        && r["controllerId"] == "ctl-b"
                        && r["status"] == "connected"
                })
            })
        },
    )
    .await;

    // propagation: from the 2xx of a deploy through A to the first 2xx through the runtime
    let mut times = propagation(&admin_a, proxy, &up.url(""), "svc", 9).await;
    let all = millis(&times);
    let median = median(&mut times);
    println!(
        "HA propagation, deploy through controller A -> first 2xx through a runtime on controller B: \
         median {:.1} ms over {} deploys (each: {} ms)",
        median.as_secs_f64() * 1000.0,
        times.len(),
        all
    );

    // wait=applied through A waits for the runtime on B
    let response = admin_a.deploy("svc-0", "/svc-zero", &up.url("")).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["applied"], serde_json::json!(["rt-1"]));
    assert_eq!(call(&client, proxy, "/svc-zero").await.0, 200);
    assert_eq!(call(&client, proxy, "/svc-0").await.0, 404);

    // both controllers agree on revisions
    let (_, list_a) = admin_a.get_json("/api/v1/apis").await;
    let (_, list_b) = admin_b.get_json("/api/v1/apis").await;
    assert_eq!(list_a["revision"], 10);
    assert_eq!(list_a, list_b);
    let (_, fleet) = admin_b.get_json("/api/v1/runtimes").await;
    assert_eq!(fleet["items"][0]["appliedRevision"], 10);
    assert_eq!(fleet["items"][0]["lag"], 0);
}

/// Version skew: a runtime that speaks another protocol version is refused with the reason,
/// and every controller lists it as refused, with that reason, until a compatible session
/// of the same runtime replaces the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_of_another_protocol_version_is_listed_as_refused() {
    let db = TestDatabase::create().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = controller(&ControllerSpec::postgres(&db, "ctl-a"), dirs[0].path());
    let b = controller(&ControllerSpec::postgres(&db, "ctl-b"), dirs[1].path());
    let admin_b = Admin::new(b.addr("admin"), Some(TOKEN));
    Admin::new(a.addr("admin"), Some(TOKEN)).wait_ready().await;
    admin_b.wait_ready().await;

    // what a runtime that speaks only the next protocol version would say
    let refusal = refused_hello(a.addr("sync"), "rt-next").await;
    let version = format!("protocol version {}", gw_sync::PROTOCOL_VERSION + 1);
    assert!(refusal.contains(&version), "{refusal}");

    // the other controller lists it too, from the store
    eventually(
        "the refused runtime in the fleet view",
        Duration::from_secs(20),
        || async {
            let (_, fleet) = admin_b.get_json("/api/v1/runtimes").await;
            fleet["items"].as_array().is_some_and(|items| {
                items.iter().any(|r| {
                    r["nodeId"] == "rt-next"
                        && r["status"] == "refused"
                        && r["refused"] == refusal.as_str()
                        && r["controllerId"] == "ctl-a"
                        && r["runtimeVersion"] == "9.0.0"
                })
            })
        },
    )
    .await;

    // the same node, upgraded: its session replaces the refusal
    let rt = runtime("rt-next", &[a.addr("sync")], dirs[2].path());
    eventually(
        "the upgraded runtime to be listed as connected",
        Duration::from_secs(20),
        || async {
            let (_, fleet) = admin_b.get_json("/api/v1/runtimes").await;
            fleet["items"].as_array().is_some_and(|items| {
                items.iter().any(|r| {
                    r["nodeId"] == "rt-next" && r["status"] == "connected" && r["refused"].is_null()
                })
            })
        },
    )
    .await;
    drop(rt);
}
