//! The custom build end to end: the custom controller accepts `require-header` and its
//! all-in-one runtime applies it; a stock runtime refuses the configuration that uses it,
//! says why in the fleet view, and keeps serving what it had.

use std::time::Duration;

use gw_e2e::{
    Admin, ControllerSpec, Upstream, api_yaml, call, controller_from, eventually, runtime,
};

const GUARDED: &str = "
apiVersion: gw/v1
kind: Api
metadata: {name: guarded}
spec:
  context: /guarded
  upstream:
    endpoints: [{url: 'UPSTREAM'}]
  policies:
    - name: require-header
      params: {header: x-tenant, status: 422}
";

fn spec(all_in_one: bool) -> ControllerSpec {
    ControllerSpec {
        database_url: None,
        dev: true,
        all_in_one,
        node_id: "custom".to_string(),
    }
}

#[tokio::test]
async fn the_custom_build_applies_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller_from("custom-controller", &spec(true), dir.path());
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let upstream = Upstream::start("u").await;
    let client = reqwest::Client::new();

    // params are checked at deploy time, with their path
    let bad = GUARDED
        .replace("UPSTREAM", &upstream.url("/"))
        .replace("status: 422", "status: 503");
    let response = admin.put_api("guarded", &bad, "").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["details"][0]["field"], "spec.policies[0].params.status",
        "{body}"
    );

    let good = GUARDED.replace("UPSTREAM", &upstream.url("/"));
    let response = admin.put_api("guarded", &good, "?wait=applied").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let proxy = ctl.addr("proxy");
    let (status, body) = call(&client, proxy, "/guarded/x").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "header_required");
    let response = client
        .get(format!("http://{proxy}/guarded/x"))
        .header("x-tenant", "t1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stock_runtime_refuses_the_unknown_policy_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller_from("custom-controller", &spec(false), dir.path());
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let rt_dir = tempfile::tempdir().unwrap();
    let rt = runtime("stock", &[ctl.addr("sync")], rt_dir.path());
    let upstream = Upstream::start("u").await;
    let client = reqwest::Client::new();

    eventually(
        "the runtime to connect",
        Duration::from_secs(10),
        || async {
            let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
            fleet["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty())
        },
    )
    .await;
    let plain = api_yaml("plain", "/plain", &upstream.url("/"));
    let response = admin.put_api("plain", &plain, "?wait=applied").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let guarded = GUARDED.replace("UPSTREAM", &upstream.url("/"));
    let response = admin.put_api("guarded", &guarded, "?wait=applied").await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "apply_rejected", "{body}");
    let reason = body["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains("require-header"), "{body}");

    // the fleet view shows the rejection, from any controller
    let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
    let item = &fleet["items"][0];
    assert_eq!(item["nodeId"], "stock", "{fleet}");
    assert_eq!(item["appliedRevision"], 1, "{fleet}");
    assert_eq!(item["lastErrorRevision"], 2, "{fleet}");
    assert!(
        item["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("unknown policy \"require-header\"")),
        "{fleet}"
    );

    // the previous configuration is still served; the refused API is not
    let (status, _) = call(&client, rt.addr("proxy"), "/plain/x").await;
    assert_eq!(status, 200);
    let (status, _) = call(&client, rt.addr("proxy"), "/guarded/x").await;
    assert_eq!(status, 404);
}
