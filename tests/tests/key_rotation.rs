//! Key rotation of the secrets at rest, across an HA pair with traffic flowing: two
//! production controllers on one PostgreSQL database and a runtime; an API whose HS256
//! `jwt` secret and injected `Authorization` are sealed, and a certificate. The controllers
//! restart one at a time with the new key as a previous one, then as the current one; a
//! reseal rewrites every stored value; they restart with the new key alone. No request
//! fails, every controller opens every value, and the store holds values sealed under the
//! new key only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gw_e2e::{
    Admin, ControllerSpec, ENCRYPTION_KEY, Process, TOKEN, TestCa, TestDatabase, Upstream, binary,
    certificate_document, controller, eventually, hs256, metric, runtime,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The HS256 key the API's `jwt` policy verifies with (36 bytes).
const SECRET: &[u8] = b"rotation-secret-rotation-secret-0123";
/// What the API injects upstream as `Authorization`.
const INJECTED: &str = "Bearer upstream-credential";

/// The id a sealed value carries of the key it is sealed under: the first 8 hex digits of
/// the key's SHA-256.
fn key_id(key: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let first = digest.as_ref();
    format!(
        "{:08x}",
        u32::from_be_bytes([first[0], first[1], first[2], first[3]])
    )
}

fn api(upstream: &str, phase: &str) -> String {
    json!({
        "apiVersion": "gw/v1",
        "kind": "Api",
        "metadata": {"name": "secure"},
        "spec": {
            "context": "/secure",
            "upstream": {"endpoints": [{"url": upstream}]},
            "policies": [
                {"name": "jwt", "params": {"algorithms": ["HS256"], "secret": STANDARD.encode(SECRET)}},
                {"name": "request-headers", "params": {
                    "set": {"Authorization": INJECTED, "x-phase": phase},
                }},
            ],
        },
    })
    .to_string()
}

/// Deploys the API through `admin` (waiting for the runtime to apply it) and waits until
/// traffic shows `phase`.
async fn deploy(
    admin: &Admin,
    client: &reqwest::Client,
    proxy: std::net::SocketAddr,
    upstream: &str,
    phase: &str,
) {
    let response = admin
        .request(Method::PUT, "/api/v1/apis/secure?wait=applied")
        .header("content-type", "application/json")
        .body(api(upstream, phase))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{status}: {body}");
    for secret in [STANDARD.encode(SECRET).as_str(), INJECTED] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    eventually(
        &format!("traffic to show phase {phase}"),
        Duration::from_secs(20),
        || async {
            get(client, proxy)
                .await
                .is_some_and(|seen| seen["headers"]["x-phase"] == phase)
        },
    )
    .await;
}

/// One authenticated request through the runtime: what the upstream saw, when it answered
/// 200 and saw the injected credential.
async fn get(client: &reqwest::Client, proxy: std::net::SocketAddr) -> Option<Value> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hs256(&json!({"sub": "e2e", "exp": exp}), SECRET);
    let response = client
        .get(format!("http://{proxy}/secure/items"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let seen: Value = response.json().await.ok()?;
    (seen["headers"]["authorization"] == INJECTED).then_some(seen)
}

/// Restarts `controller` on the addresses it bound, with `key` current and `previous` (none:
/// unset), and waits until it is ready (it loads and opens every stored value first).
async fn restart(controller: &mut Process, key: &str, previous: Option<&str>) {
    let pinned = [
        ("--admin-addr", controller.addr("admin").to_string()),
        ("--sync-addr", controller.addr("sync").to_string()),
    ];
    match previous {
        Some(previous) => controller.restart_env(
            &pinned,
            &[
                ("GW_ENCRYPTION_KEY", key),
                ("GW_ENCRYPTION_KEYS_PREVIOUS", previous),
            ],
            &[],
        ),
        None => controller.restart_env(
            &pinned,
            &[("GW_ENCRYPTION_KEY", key)],
            &["GW_ENCRYPTION_KEYS_PREVIOUS"],
        ),
    }
    Admin::new(controller.addr("admin"), Some(TOKEN))
        .wait_ready()
        .await;
}

/// Waits until `sent` has counted 20 more requests: traffic flowed through this step.
async fn traffic_flows(sent: &AtomicU64) {
    let mark = sent.load(Ordering::Relaxed);
    eventually("20 more requests", Duration::from_secs(30), || async {
        sent.load(Ordering::Relaxed) >= mark + 20
    })
    .await;
}

/// Waits until `controller`'s `gw_controller_secrets_to_reseal` (counted at its start) is
/// `expected`.
async fn secrets_to_reseal(controller: &Process, expected: i64) {
    let admin = controller.addr("admin");
    eventually(
        &format!("gw_controller_secrets_to_reseal {expected}"),
        Duration::from_secs(20),
        || async {
            metric::<i64>(admin, "gw_controller_secrets_to_reseal").await == Some(expected)
        },
    )
    .await;
}

/// Every sealed value the store holds (the rows, the change log, the cluster CA).
async fn sealed_values(db: &TestDatabase) -> Vec<String> {
    fn collect(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::String(text) if text.starts_with("gw-sealed:") => into.push(text.clone()),
            Value::Object(fields) => fields.values().for_each(|v| collect(v, into)),
            Value::Array(items) => items.iter().for_each(|v| collect(v, into)),
            _ => {}
        }
    }
    let store = gw_store::open(db.url(), &gw_store::StoreOptions::default())
        .await
        .unwrap();
    let snapshot = store.snapshot().await.unwrap();
    let mut sealed = Vec::new();
    for spec in snapshot
        .apis
        .iter()
        .map(|a| &a.spec)
        .chain(snapshot.resources.iter().map(|r| &r.spec))
    {
        collect(spec, &mut sealed);
    }
    for change in store.changes_since(0, 1000).await.unwrap() {
        if let gw_store::ChangeOp::Upsert(spec) = &change.op {
            collect(spec, &mut sealed);
        }
    }
    // the CA exists: the value offered is not kept
    let ca: Value =
        serde_json::from_str(&store.cluster_secret("sync-ca", "{}").await.unwrap()).unwrap();
    collect(&ca, &mut sealed);
    sealed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_reseal_across_two_controllers_with_traffic_flowing() {
    let db = TestDatabase::create().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let old_key = ENCRYPTION_KEY.to_string();
    let new_key = STANDARD.encode([9u8; 32]);
    let (old_id, new_id) = (key_id(&[7u8; 32]), key_id(&[9u8; 32]));
    let mut a = controller(&ControllerSpec::postgres(&db, "ctl-a"), dirs[0].path());
    let mut b = controller(&ControllerSpec::postgres(&db, "ctl-b"), dirs[1].path());
    let admin_a = Admin::new(a.addr("admin"), Some(TOKEN));
    let admin_b = Admin::new(b.addr("admin"), Some(TOKEN));
    admin_a.wait_ready().await;
    admin_b.wait_ready().await;
    let up = Upstream::start("up").await;
    let upstream = up.url("");
    let client = reqwest::Client::new();

    // a certificate (its key sealed), then the API, before the runtime joins
    let ca = TestCa::new("rotation");
    let issued = ca.issue(&["site.test"], 1, 2040);
    let response = admin_a
        .request(Method::PUT, "/api/v1/certificates/site")
        .header("content-type", "application/json")
        .body(certificate_document("site", &issued, &[]))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let rt = runtime("rt-1", &[a.addr("sync"), b.addr("sync")], dirs[2].path());
    let proxy = rt.addr("proxy");
    deploy(&admin_a, &client, proxy, &upstream, "start").await;

    // traffic, all along: every request must pass the HS256 check and carry the injected
    // credential upstream
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = tokio::spawn({
        let (stop, sent, failed, client) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
            client.clone(),
        );
        async move {
            let deadline = Instant::now() + Duration::from_mins(10);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                if get(&client, proxy).await.is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                // a pace, not a wait for a condition
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // 1. the new key as a previous one, everywhere (it opens nothing yet)
    restart(&mut a, &old_key, Some(&new_key)).await;
    traffic_flows(&sent).await;
    restart(&mut b, &old_key, Some(&new_key)).await;
    traffic_flows(&sent).await;
    deploy(&admin_b, &client, proxy, &upstream, "new-key-previous").await;

    // 2. the new key current, the old one previous: a controller writing under the new key
    // while its peer still writes under the old one, each opening the other's
    restart(&mut a, &new_key, Some(&old_key)).await;
    traffic_flows(&sent).await;
    deploy(&admin_a, &client, proxy, &upstream, "half-swapped").await;
    restart(&mut b, &new_key, Some(&old_key)).await;
    traffic_flows(&sent).await;
    deploy(&admin_b, &client, proxy, &upstream, "new-key-current").await;
    // the certificate is left to reseal (the API was written under the new key)
    secrets_to_reseal(&b, 1).await;
    let before: Vec<String> = sealed_values(&db).await;
    assert!(before.iter().any(|v| v.contains(&old_id)), "{before:?}");

    // 3. the reseal, from the command line (as an operator's job would run it): the
    // certificate and the CA were under the old key, the API is under the new one already;
    // two older versions of the API in the change log
    let revision = admin_a.get_json("/api/v1/apis").await.1["revision"].clone();
    let output = std::process::Command::new(binary("gw-controller"))
        .args(["--database-url", db.url(), "--data-dir"])
        .arg(dirs[3].path())
        .arg("reseal")
        .env("GW_ENCRYPTION_KEY", &new_key)
        .env("GW_ENCRYPTION_KEYS_PREVIOUS", &old_key)
        .env_remove("GW_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report,
        json!({"resealed": 2, "alreadyCurrent": 1, "changesResealed": 2}),
        "{stdout}"
    );
    // no revision taken: runtimes were sent nothing
    assert_eq!(
        admin_a.get_json("/api/v1/apis").await.1["revision"],
        revision
    );
    // the admin call, through the other controller: nothing left, and audited
    let response = admin_b
        .request(Method::POST, "/api/v1/reseal")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resealed"], 0, "{body}");
    assert_eq!(body["alreadyCurrent"], 3, "{body}");
    assert_eq!(body["key"], new_id.as_str());
    let (_, audit) = admin_a.get_json("/api/v1/audit?kind=secrets").await;
    assert_eq!(audit["items"][0]["action"], "reseal", "{audit}");

    // every value under the new key, none under the old one
    let after = sealed_values(&db).await;
    assert_eq!(after.len(), before.len(), "{after:?}");
    let prefix = format!("gw-sealed:v1:{new_id}:");
    assert!(after.iter().all(|v| v.starts_with(&prefix)), "{after:?}");

    // 4. the old key dropped: each controller starts (it opens every stored value, the
    // cluster CA's key included) and serves writes
    restart(&mut a, &new_key, None).await;
    traffic_flows(&sent).await;
    restart(&mut b, &new_key, None).await;
    traffic_flows(&sent).await;
    deploy(&admin_a, &client, proxy, &upstream, "old-key-dropped").await;
    secrets_to_reseal(&a, 0).await;
    secrets_to_reseal(&b, 0).await;

    stop.store(true, Ordering::Release);
    traffic.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("key rotation with traffic: {sent} requests, {failed} failed");
    assert!(sent >= 6 * 20, "{sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    for controller in [&a, &b] {
        let log = controller.log();
        for secret in [
            STANDARD.encode(SECRET).as_str(),
            INJECTED,
            &old_key,
            &new_key,
        ] {
            assert!(!log.contains(secret), "{secret} in a controller's log");
        }
    }
    drop(rt);
}
