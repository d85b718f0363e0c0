//! A real gRPC service through the gateway: gw's own sync protocol (a long-lived,
//! bidirectional gRPC stream over HTTP/2, ending with trailers) proxied by one runtime for
//! another, which receives its configuration through it.

use std::time::Duration;

use gw_e2e::{Admin, ControllerSpec, api_yaml, controller, echo_upstream, eventually, runtime};

#[tokio::test]
async fn a_bidirectional_grpc_stream_passes_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(
        &ControllerSpec {
            database_url: None,
            dev: true,
            all_in_one: false,
            node_id: "ctl-grpc".into(),
        },
        &dir.path().join("ctl"),
    );
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;

    // the edge proxies the sync service, over HTTP/2 to the controller; the context is
    // stripped, so the endpoint's base path puts the service name back
    let yaml = api_yaml(
        "sync",
        "/gw.sync.v1.ConfigSync",
        &format!("http://{}/gw.sync.v1.ConfigSync", ctl.addr("sync")),
    ) + "    protocol: h2\n";
    let (edge, _config) = gw_e2e::standalone(&yaml, &[]);
    // a runtime whose only "controller" is the edge
    let behind = runtime("rt-behind", &[edge.addr("proxy")], &dir.path().join("rt"));
    let proxy = behind.addr("proxy");
    eventually(
        "the runtime to sync through the gateway",
        Duration::from_secs(30),
        || async { behind.logged("sync stream established") },
    )
    .await;

    // a deploy reaches it through the stream
    let upstream = echo_upstream("grpc");
    let deployed = admin
        .deploy(
            "orders",
            "/orders",
            &format!("http://{}", upstream.addr("http")),
        )
        .await;
    assert!(deployed.status().is_success());
    let http = reqwest::Client::new();
    eventually(
        "the API behind the gateway",
        Duration::from_secs(30),
        || async { gw_e2e::call(&http, proxy, "/orders/x").await.0 == 200 },
    )
    .await;

    // the controller sees the runtime (its Hello and acks came through the gateway), and
    // the edge counted the stream as an answered gRPC call
    eventually("the fleet view", Duration::from_secs(30), || async {
        let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
        fleet.to_string().contains("rt-behind")
    })
    .await;
    let answered: Option<f64> = gw_e2e::metric(
        edge.addr("status"),
        "gw_requests_total{api=\"sync\",operation=\"*\",class=\"2xx\"}",
    )
    .await;
    assert!(answered.is_some_and(|n| n >= 1.0), "{answered:?}");
}
