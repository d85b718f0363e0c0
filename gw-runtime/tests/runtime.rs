//! The runtime as a library: standalone file mode, rejection of what it cannot serve, and the
//! last-known-good cache.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gw_core::Gateway;
use gw_core::metrics::ProxyMetrics;
use gw_core::policy::PolicyRegistry;
use gw_runtime::cache::{CacheFile, DEFAULT_MAX_BYTES};
use gw_runtime::file_source::FileSource;
use gw_runtime::state::{ConfigState, Origin};
use gw_runtime::{ConfigSource, Runtime, RuntimeError, RuntimeOptions};
use gw_sync::client::Applier;
use gw_sync::proto::{Resource, ResourceRef};
use prometheus_client::registry::Registry;

fn api(name: &str, context: &str, extra: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  upstream: {{endpoints: [{{url: 'http://127.0.0.1:9'}}]}}\n{extra}"
    )
}

fn resource(name: &str, context: &str, revision: i64, extra: &str) -> Resource {
    let yaml = api(name, context, extra);
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    Resource {
        kind: "api".into(),
        name: name.into(),
        revision,
        body: serde_json::to_vec(&value).unwrap(),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn status(client: &reqwest::Client, addr: SocketAddr, path: &str) -> u16 {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn standalone_file_mode_reloads_and_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apis.yaml");
    std::fs::write(&path, api("a", "/a", "")).unwrap();
    let mut options = RuntimeOptions::new(ConfigSource::File(path.clone()));
    options.proxy_addr = loopback();
    options.status_addr = loopback();
    options.file_poll_interval = Duration::from_millis(50);
    let runtime = Runtime::bind(options).await.unwrap();
    let proxy = runtime.proxy_addr();
    let status_addr = runtime.status_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(runtime.run(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    // the upstream is down: 502 proves the route exists
    assert_eq!(status(&client, proxy, "/a").await, 502);
    assert_eq!(status(&client, proxy, "/b").await, 404);
    assert_eq!(status(&client, status_addr, "/status/ready").await, 200);

    // a second document appears
    std::fs::write(
        &path,
        format!("{}---\n{}", api("a", "/a", ""), api("b", "/b", "")),
    )
    .unwrap();
    eventually("the reload", async || {
        status(&client, proxy, "/b").await == 502
    })
    .await;

    // an invalid file is refused; the previous configuration stays
    std::fs::write(&path, api("a", "a-without-slash", "")).unwrap();
    let rejected = "gw_config_applies_total{source=\"file\",result=\"rejected\"} 1";
    eventually("the rejection", async || {
        let metrics = client
            .get(format!("http://{status_addr}/metrics"))
            .send()
            .await
            .unwrap();
        metrics.text().await.unwrap().contains(rejected)
    })
    .await;
    assert_eq!(status(&client, proxy, "/b").await, 502);

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_file_at_start_is_an_error_with_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apis.yaml");
    std::fs::write(&path, api("a", "no-slash", "  colour: red\n")).unwrap();
    let mut options = RuntimeOptions::new(ConfigSource::File(path));
    options.proxy_addr = loopback();
    options.status_addr = loopback();
    let err = Runtime::bind(options).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RuntimeError::File(_)), "{message}");
    assert!(message.contains("documents[0].spec.context"), "{message}");
    assert!(message.contains("documents[0].spec.colour"), "{message}");
}

/// A refused file is reported once (not again at every other poll), and kept for the status
/// server with the file, the reason and the time, until the file holds what is served again.
#[tokio::test]
async fn a_refused_reload_is_reported_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apis.yaml");
    let good = api("a", "/a", "");
    std::fs::write(&path, &good).unwrap();
    let state = Arc::new(config_state(None));
    let mut source = FileSource::new(path.clone(), Arc::clone(&state));
    let last = source.last_rejection();
    assert!(source.load().await.unwrap());
    assert_eq!(last.get(), None);

    std::fs::write(&path, api("a", "no-slash", "")).unwrap();
    let before = chrono::Utc::now();
    assert!(source.load().await.is_err());
    let rejected = last.get().expect("the rejection is kept");
    assert_eq!(rejected.file, path.display().to_string());
    assert!(
        rejected.reason.contains("documents[0].spec.context"),
        "{rejected:?}"
    );
    assert!(!rejected.superseded);
    let at = chrono::DateTime::parse_from_rfc3339(&rejected.at).expect("RFC 3339");
    assert!(at >= before - chrono::Duration::seconds(1), "{rejected:?}");
    // the same content again: not re-read, not reported again
    for _ in 0..3 {
        assert!(!source.load().await.unwrap());
    }
    assert_eq!(last.get().as_ref(), Some(&rejected));

    // a good file applies; the rejection stays, marked superseded
    std::fs::write(&path, api("b", "/b", "")).unwrap();
    assert!(source.load().await.unwrap());
    let superseded = last.get().unwrap();
    assert!(superseded.superseded);
    assert_eq!(superseded.reason, rejected.reason);

    // a refused file, then back to the content served: superseded without an apply
    std::fs::write(&path, "spec: [").unwrap();
    assert!(source.load().await.is_err());
    let syntax = last.get().unwrap();
    assert!(!syntax.superseded);
    assert!(syntax.reason.contains("malformed YAML"), "{syntax:?}");
    std::fs::write(&path, api("b", "/b", "")).unwrap();
    assert!(!source.load().await.unwrap());
    assert!(last.get().unwrap().superseded);
    // and the refused content, when it comes back, is refused (and reported) again
    std::fs::write(&path, "spec: [").unwrap();
    assert!(source.load().await.is_err());
    assert!(!last.get().unwrap().superseded);
}

fn config_state(cache: Option<CacheFile>) -> ConfigState {
    let gateway = Arc::new(Gateway::new(
        PolicyRegistry::new(),
        ProxyMetrics::unregistered(),
    ));
    ConfigState::new(gateway, "default".into(), cache, &mut Registry::default())
}

#[tokio::test]
async fn unknown_policies_are_rejected_and_the_old_config_stays() {
    let state = config_state(None);
    state
        .apply_snapshot(1, "store", vec![resource("a", "/a", 1, "")])
        .await
        .unwrap();
    let errors = state
        .apply_delta(
            2,
            vec![resource("b", "/b", 2, "  policies: [{name: rate-limit}]\n")],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        errors[0].contains("unknown policy \"rate-limit\""),
        "{errors:?}"
    );
    assert_eq!(state.revision(), 1);
    assert_eq!(state.gateway().config().apis().len(), 1);

    // so is a field this runtime does not know (a newer controller's), and a kind
    let errors = state
        .apply_delta(
            2,
            vec![resource("b", "/b", 2, "  retryBudget: 3\n")],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(errors[0].contains("retryBudget"), "{errors:?}");
    let mut unknown_kind = resource("b", "/b", 2, "");
    unknown_kind.kind = "plugin".into();
    let errors = state
        .apply_delta(2, vec![unknown_kind], vec![])
        .await
        .unwrap_err();
    assert!(errors[0].contains("plugin"), "{errors:?}");
    assert_eq!(state.revision(), 1);

    // a resource whose body names another API is refused too
    let mut mislabeled = resource("c", "/c", 3, "");
    mislabeled.name = "d".into();
    assert!(
        state
            .apply_delta(3, vec![mislabeled], vec![])
            .await
            .is_err()
    );

    // a delta that removes and adds
    state
        .apply_delta(
            4,
            vec![resource("c", "/c", 4, "")],
            vec![ResourceRef {
                kind: "api".into(),
                name: "a".into(),
            }],
        )
        .await
        .unwrap();
    let names: Vec<_> = state
        .gateway()
        .config()
        .apis()
        .map(|a| a.metadata.name.clone())
        .collect();
    assert_eq!(names, ["c"]);
}

#[tokio::test]
async fn the_cache_restores_the_last_applied_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config-cache.json");
    let first = config_state(Some(CacheFile::new(&path, DEFAULT_MAX_BYTES)));
    first
        .apply_snapshot(
            5,
            "store-a",
            vec![resource("a", "/a", 4, ""), resource("b", "/b", 5, "")],
        )
        .await
        .unwrap();

    let second = config_state(Some(CacheFile::new(&path, DEFAULT_MAX_BYTES)));
    assert_eq!(second.load_cache().await, Some(5));
    assert_eq!(
        second.applied(),
        (5, "store-a".to_string()),
        "resumes with the store id"
    );
    assert_eq!(second.origin(), Origin::Cache);
    assert_eq!(second.gateway().config().apis().len(), 2);

    // a cache of another group is ignored
    let gateway = Arc::new(Gateway::new(
        PolicyRegistry::new(),
        ProxyMetrics::unregistered(),
    ));
    let other = ConfigState::new(
        gateway,
        "edge".into(),
        Some(CacheFile::new(&path, DEFAULT_MAX_BYTES)),
        &mut Registry::default(),
    );
    assert_eq!(other.load_cache().await, None);

    // a damaged cache is ignored as a whole
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let third = config_state(Some(CacheFile::new(&path, DEFAULT_MAX_BYTES)));
    assert_eq!(third.load_cache().await, None);
    assert!(third.gateway().config().is_empty());
}

const CONSUMER: &str = "apiVersion: gw/v1\nkind: Consumer\nmetadata: {name: alice}\nspec:\n  credentials:\n    - {type: api-key, id: k, key: alice-clear-key-0123}\n    - {type: basic-auth, id: b, username: alice, password: 'correct horse'}\n";

/// Standalone mode: consumers in the file may give clear keys and passwords; they are
/// sealed at load (no clear secret reaches the gateway), and a file whose api-key has no key
/// is refused with the field path, without quoting the file.
#[tokio::test]
async fn a_file_s_consumers_are_sealed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, format!("{}---\n{CONSUMER}", api("a", "/a", ""))).unwrap();
    let state = Arc::new(config_state(None));
    let mut source = FileSource::new(path.clone(), Arc::clone(&state));
    assert!(source.load().await.unwrap());
    let config = state.gateway().config();
    let consumers = config.consumers();
    assert_eq!(
        consumers
            .by_api_key(b"alice-clear-key-0123")
            .map(|c| c.name.to_string())
            .as_deref(),
        Some("alice")
    );
    let alice = consumers.get("alice").unwrap();
    assert!(alice.is_sealed());
    let hash = consumers.by_username("alice").unwrap().hash.to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    // an api-key without a key: there is no controller to generate one
    std::fs::write(
        &path,
        CONSUMER.replace("key: alice-clear-key-0123", "label: x"),
    )
    .unwrap();
    let err = source.load().await.unwrap_err().to_string();
    assert!(
        err.contains("documents[0].spec.credentials[0].key"),
        "{err}"
    );
    assert!(
        err.contains("documents[0].spec.credentials[0].label"),
        "{err}"
    );

    // a syntax error is reported by position, without the line that holds the password
    std::fs::write(
        &path,
        CONSUMER.replace("password: 'correct horse'}", "password: 'correct horse'"),
    )
    .unwrap();
    let err = source.load().await.unwrap_err().to_string();
    assert!(err.contains("line"), "{err}");
    assert!(!err.contains("correct horse"), "{err}");

    // two consumers with one key: refused, naming them and not the key
    let bob = CONSUMER
        .replace("name: alice", "name: bob")
        .replace("username: alice", "username: bob");
    std::fs::write(&path, format!("{CONSUMER}---\n{bob}")).unwrap();
    let err = source.load().await.unwrap_err().to_string();
    assert!(
        err.contains("\"alice\" and \"bob\" share the same API key"),
        "{err}"
    );
    assert!(!err.contains("alice-clear-key"), "{err}");

    // the first file is still served
    assert!(state.gateway().config().consumers().get("alice").is_some());
}
