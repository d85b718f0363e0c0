//! What an operator is told when nothing happened: a write with `?wait=applied` that no
//! runtime applies (its groups have no connected runtime), and a change of a standalone
//! runtime's file that the runtime refuses.

use std::time::{Duration, Instant};

use gw_e2e::{
    Admin, ControllerSpec, TOKEN, Upstream, api_yaml, call, controller, eventually, runtime,
    standalone,
};
use reqwest::Method;

/// `?wait=applied` to a group no runtime serves answers 201/200 with `"applied": []`, and
/// says plainly that nothing applied the change: a `warning` in the body and a `Warning`
/// header. A write to a served group carries neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_applied_to_a_group_nobody_serves_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ControllerSpec {
        database_url: None,
        dev: false,
        all_in_one: false,
        node_id: "ctl".to_string(),
    };
    let ctl = controller(&spec, &dir.path().join("ctl"));
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let rt = runtime("rt-default", &[ctl.addr("sync")], &dir.path().join("rt"));
    let proxy = rt.addr("proxy");
    eventually(
        "the runtime to be connected",
        Duration::from_secs(30),
        || async {
            let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
            fleet["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|r| r["nodeId"] == "rt-default" && r["status"] == "connected")
            })
        },
    )
    .await;
    let upstream = Upstream::start("up").await;

    // a group with a runtime: applied by it, no warning
    let served = admin
        .put_api(
            "served",
            &api_yaml("served", "/served", &upstream.url("")),
            "?wait=applied",
        )
        .await;
    assert_eq!(served.status(), 201);
    assert!(served.headers().get("warning").is_none());
    let body: serde_json::Value = served.json().await.unwrap();
    assert_eq!(body["applied"], serde_json::json!(["rt-default"]), "{body}");
    assert!(body.get("warning").is_none(), "{body}");

    // a group nobody serves: stored, applied nowhere, and said so
    let yaml = format!(
        "{}  groups: [nobody]\n",
        api_yaml("lonely", "/lonely", &upstream.url(""))
    );
    let lonely = admin
        .put_api("lonely", &yaml, "?wait=applied&timeout=1m")
        .await;
    assert_eq!(lonely.status(), 201);
    let revision = lonely.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert_eq!(
        lonely.headers()["warning"],
        format!("299 gw \"no connected runtime serves group nobody; nothing applied revision {revision}\"")
            .as_str()
    );
    let body: serde_json::Value = lonely.json().await.unwrap();
    assert_eq!(body["applied"], serde_json::json!([]), "{body}");
    assert_eq!(body["warning"]["code"], "no_runtime", "{body}");
    let message = body["warning"]["message"].as_str().unwrap();
    assert!(
        message.contains("no connected runtime serves group \"nobody\"")
            && message.contains(&format!("revision {revision}")),
        "{message}"
    );
    // the runtime of the default group did not get it
    let client = reqwest::Client::new();
    assert_eq!(call(&client, proxy, "/lonely/x").await.0, 404);
    assert_eq!(call(&client, proxy, "/served/x").await.0, 200);

    // a delete that no runtime applies says so too
    let deleted = admin
        .request(Method::DELETE, "/api/v1/apis/lonely?wait=applied")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(deleted.headers().get("warning").is_some());
    let body: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(body["warning"]["code"], "no_runtime", "{body}");
}

/// Replaces `file` at once, as an editor or a deploy tool should (a write in place can be
/// read half done, and a half file refused or served).
fn replace(file: &std::path::Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    let next = file.with_extension("next");
    std::fs::write(&next, text)?;
    std::fs::rename(next, file)
}

/// A standalone runtime that refuses a change of its file shows the refusal (time, file,
/// reason) in `/status` and `/status/ready`, keeps serving the previous configuration and
/// stays ready; once the file is fixed, the refusal is kept, marked superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_shows_in_status() {
    let upstream = Upstream::start("up").await;
    let good = api_yaml("pets", "/pets", &upstream.url(""));
    let (rt, dir) = standalone(&good, &[]);
    let file = dir.path().join("apis.yaml");
    let proxy = rt.addr("proxy");
    let status = rt.addr("status");
    let client = reqwest::Client::new();
    eventually("the file to be served", Duration::from_secs(30), || async {
        call(&client, proxy, "/pets/1").await.0 == 200
    })
    .await;
    let (code, body) = call(&client, status, "/status").await;
    assert_eq!(code, 200);
    assert_eq!(
        body["lastRejectedReload"],
        serde_json::Value::Null,
        "{body}"
    );

    // a change the runtime refuses: a context without its slash
    replace(
        &file,
        api_yaml("pets", "pets-without-slash", &upstream.url("")),
    )
    .unwrap();
    rt.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let (_, body) = call(&client, status, "/status").await;
        if !body["lastRejectedReload"].is_null() {
            break body["lastRejectedReload"].clone();
        }
        assert!(Instant::now() < deadline, "no refusal in /status: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shown["file"], file.display().to_string(), "{shown}");
    let reason = shown["reason"].as_str().unwrap();
    assert!(
        reason.contains("documents[0].spec.context") && reason.contains("must start with '/'"),
        "{reason}"
    );
    assert_eq!(shown["superseded"], false, "{shown}");
    let at = shown["at"].as_str().unwrap();
    assert!(
        at.len() > 20 && at.contains('T') && at.ends_with('Z'),
        "{at}"
    );

    // still ready, still serving the previous file, and /status/ready shows it too
    let (code, ready) = call(&client, status, "/status/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["lastRejectedReload"], shown, "{ready}");
    assert_eq!(call(&client, proxy, "/pets/1").await.0, 200);

    // fixed: served, and the refusal stays, marked superseded
    let fixed = format!(
        "{good}---\n{}",
        api_yaml("toys", "/toys", &upstream.url(""))
    );
    replace(&file, fixed).unwrap();
    rt.reload();
    eventually(
        "the fixed file to be served",
        Duration::from_secs(30),
        || async { call(&client, proxy, "/toys/1").await.0 == 200 },
    )
    .await;
    let (_, body) = call(&client, status, "/status").await;
    let after = &body["lastRejectedReload"];
    assert_eq!(after["superseded"], true, "{body}");
    assert_eq!(after["reason"], shown["reason"], "{body}");
    assert_eq!(after["at"], shown["at"], "{body}");
}
