//! Signed fallback bundles, end to end: a controller exports each group's configuration to a
//! directory or to S3-compatible object storage (moto's server on loopback), and a runtime
//! that starts with no cache while no controller answers serves the newest bundle that
//! verifies, refusing tampered, unsigned and foreign ones.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gw_e2e::cluster::{ensure_peer, free_port};
use gw_e2e::{
    Admin, ControllerSpec, ENCRYPTION_KEY, Process, SYNC_TOKEN, TOKEN, Upstream, api_yaml, binary,
    call, controller_with, eventually, metric, runtime_with,
};

const WAIT: Duration = Duration::from_secs(30);

/// A fresh Ed25519 key pair in PEM files (`signing.pem`, `verify.pem`) in `dir`, as
/// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write them; their paths.
fn ed25519_keys(dir: &Path) -> (String, String) {
    let (private, public) = gw_bundle::key::testing::ed25519_pem();
    let signing = dir.join("signing.pem");
    let verify = dir.join("verify.pem");
    std::fs::write(&signing, private).unwrap();
    std::fs::write(&verify, public).unwrap();
    (signing.display().to_string(), verify.display().to_string())
}

/// A loopback address where nothing listens (connections are refused) for as long as it is
/// held: the port stays bound (never listening), so that no other test's process takes it.
struct DeadAddress {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

fn dead_address() -> DeadAddress {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    DeadAddress {
        _socket: socket,
        addr,
    }
}

fn spec(node_id: &str) -> ControllerSpec {
    ControllerSpec {
        database_url: None,
        dev: false,
        all_in_one: false,
        node_id: node_id.to_string(),
    }
}

/// `/status/ready`'s status and body.
async fn ready(status: SocketAddr) -> (u16, serde_json::Value) {
    call(&reqwest::Client::new(), status, "/status/ready").await
}

/// Whether `text` has `line` as a whole line (a metric and its value, not a prefix of a
/// longer value).
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim_end() == line)
}

/// Waits until the runtime serves `source` at `revision`.
async fn wait_source(runtime: &Process, source: &str, revision: i64) {
    let status = runtime.addr("status");
    eventually(
        &format!("the runtime to serve revision {revision} from {source}"),
        WAIT,
        || async move {
            let (code, body) = ready(status).await;
            code == 200 && body["source"] == source && body["revision"] == revision
        },
    )
    .await;
}

/// The bundle files of `group` in `dir`, by revision, newest first.
fn bundle_files(dir: &Path, group: &str) -> Vec<(i64, std::path::PathBuf)> {
    let mut files: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(dir.join(group))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let revision = name.strip_suffix(".gwb")?.parse().ok()?;
                    Some((revision, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
}

/// A controller on SQLite that exports to `bundles` (a directory), signed with the key file
/// `signing`, every `interval`.
fn dir_controller(
    name: &str,
    data_dir: &Path,
    bundles: &Path,
    signing: &str,
    interval: &str,
) -> Process {
    controller_with(
        &spec(name),
        data_dir,
        &[
            "--bundle-dir",
            &bundles.display().to_string(),
            "--bundle-signing-key",
            signing,
            "--bundle-interval",
            interval,
            "--bundle-keep",
            "3",
        ],
    )
}

/// The controller's `GET /metrics`.
async fn controller_metrics(admin: &Admin) -> String {
    admin
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("admin API answers")
        .text()
        .await
        .expect("a text body")
}

/// The controller's `gw_bundle_exports_total{result="failed"}` (0 before the first).
async fn failures(admin: &Admin) -> u64 {
    controller_metrics(admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("gw_bundle_exports_total{result=\"failed\"} "))
        .map_or(0, |n| n.parse().expect("a count"))
}

/// `POST /api/v1/bundles`: the status and body.
async fn export(admin: &Admin) -> (u16, serde_json::Value) {
    let response = admin
        .request(reqwest::Method::POST, "/api/v1/bundles")
        .send()
        .await
        .expect("admin API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_runtime_with_no_cache_and_no_controller_serves_the_newest_bundle_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    let (signing, verify) = ed25519_keys(dir.path());
    let upstream = Upstream::start("bundled").await;
    let bundle_dir = bundles.display().to_string();
    let mut controller = dir_controller(
        "bundle-ctl",
        &dir.path().join("ctl"),
        &bundles,
        &signing,
        "200ms",
    );
    let admin = Admin::new(controller.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let sync = controller.addr("sync");
    let admin_addr = controller.addr("admin");

    // on demand, with nothing deployed: nothing to export
    let (code, body) = export(&admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"], serde_json::json!([]), "{body}");
    // the route is authenticated like the others
    let anonymous = Admin::new(controller.addr("admin"), None);
    let (code, _) = export(&anonymous).await;
    assert_eq!(code, 401);

    let response = admin
        .put_api("items", &api_yaml("items", "/items", &upstream.url("")), "")
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let edge = "apiVersion: gw/v1\nkind: Api\nmetadata: {name: edge-only}\nspec:\n  context: /edge\n  groups: [edge]\n  upstream: {endpoints: [{url: 'http://127.0.0.1:9'}]}\n";
    let response = admin.put_api("edge-only", edge, "").await;
    assert!(response.status().is_success(), "{}", response.status());
    let revision: i64 = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches(['"', 'W', '/']).parse().unwrap())
        .expect("an ETag with the revision");

    // the periodic export writes both groups at the newest revision
    eventually("the periodic export", WAIT, || {
        let bundles = bundles.clone();
        async move {
            bundle_files(&bundles, "default").first().map(|f| f.0) == Some(revision)
                && bundle_files(&bundles, "edge").first().map(|f| f.0) == Some(revision)
        }
    })
    .await;
    // and on demand, answering what it wrote
    let (code, body) = export(&admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["failed"], serde_json::json!([]), "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["group"], "default");
    assert_eq!(items[0]["revision"], revision);
    assert_eq!(items[0]["resources"], 1);
    let location = items[0]["location"].as_str().unwrap();
    assert!(
        location.ends_with(&format!("default/{revision:020}.gwb")),
        "{location}"
    );
    assert!(Path::new(location).exists(), "{location}");
    let good = std::fs::read(location).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(location).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // the controller counts its exports
    let metrics = controller_metrics(&admin).await;
    assert!(
        metrics.contains("gw_bundle_exports_total{result=\"written\"}"),
        "{metrics}"
    );
    assert!(
        has_line(&metrics, &format!("gw_bundle_exported_revision {revision}")),
        "{metrics}"
    );
    // a join token while the controller answers: the runtime started below, while it is
    // down, enrolls with it once it is back (the harness keeps it for this controller)
    gw_e2e::sync_env(&[sync], "default");
    controller.kill();

    // newer bundles that must all be refused: tampered, unsigned, another group's
    let good_text = String::from_utf8(good.clone()).unwrap();
    // the same length, so that only the signature can tell
    let tampered = good_text.replace("/items", "/stole");
    assert_ne!(tampered, good_text);
    let folder = bundles.join("default");
    std::fs::write(
        folder.join(format!("{:020}.gwb", revision + 1)),
        tampered.as_bytes(),
    )
    .unwrap();
    let (_, content) = good_text.split_once('\n').unwrap();
    std::fs::write(folder.join(format!("{:020}.gwb", revision + 2)), content).unwrap();
    let foreign = std::fs::read(&bundle_files(&bundles, "edge")[0].1).unwrap();
    std::fs::write(folder.join(format!("{:020}.gwb", revision + 3)), foreign).unwrap();

    // a fresh runtime (empty data dir) whose controller is down
    let started = Instant::now();
    let runtime = runtime_with(
        "bundle-rt",
        &[sync],
        &dir.path().join("rt"),
        &[
            "--fallback-bundle",
            &bundle_dir,
            "--bundle-verify-key",
            &verify,
        ],
    );
    wait_source(&runtime, "bundle", revision).await;
    let loaded_in = started.elapsed();
    println!("time from start to serving the bundle: {loaded_in:?}");
    let proxy = runtime.addr("proxy");
    let (code, body) = call(&reqwest::Client::new(), proxy, "/items/1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["upstream"], "bundled");
    let (code, _) = call(&reqwest::Client::new(), proxy, "/stole/1").await;
    assert_eq!(code, 404);
    assert_eq!(
        metric::<i64>(
            runtime.addr("status"),
            "gw_config_source{source=\"bundle\"}"
        )
        .await,
        Some(1)
    );
    assert!(
        runtime.logged("for group \\\"edge\\\""),
        "{}",
        runtime.log()
    );
    assert!(
        runtime.logged("not a signed gw bundle"),
        "{}",
        runtime.log()
    );
    assert!(runtime.logged("bad signature"), "{}", runtime.log());
    // the state is served before the line is logged
    let serving = &runtime;
    eventually(
        "the runtime to log that it serves a bundle",
        WAIT,
        || async move { serving.logged("serving a fallback bundle") },
    )
    .await;
    assert_eq!(
        metric::<i64>(
            runtime.addr("status"),
            "gw_config_applies_total{source=\"bundle\",result=\"rejected\"}"
        )
        .await,
        Some(3)
    );

    // the controller returns (same store): its configuration replaces the bundle's, resumed
    // from the bundle's revision
    controller.restart(&[
        ("--sync-addr", sync.to_string()),
        ("--admin-addr", admin_addr.to_string()),
    ]);
    admin.wait_ready().await;
    wait_source(&runtime, "controller", revision).await;
    // it exports again at once: the names planted above its revision are left alone, and
    // its own bundle survives pruning (keep 3) rather than give way to them
    eventually("the export of the restarted controller", WAIT, || async {
        let metrics = controller_metrics(&admin).await;
        has_line(&metrics, &format!("gw_bundle_exported_revision {revision}"))
    })
    .await;
    // the warning comes after the bundle is written, not always before the metric is set
    let warned = &controller;
    eventually("the warning about the names above", WAIT, || async move {
        warned.logged("bundle names above the revision just written")
    })
    .await;
    let newest_valid = folder.join(format!("{revision:020}.gwb"));
    assert!(
        newest_valid.exists(),
        "{:?}",
        bundle_files(&bundles, "default")
    );
    // a delta from the bundle's revision, no snapshot
    let status = runtime.addr("status");
    assert_eq!(
        metric::<i64>(status, "gw_sync_updates_total{kind=\"snapshot\"}").await,
        None
    );
    assert!(
        metric::<i64>(status, "gw_sync_updates_total{kind=\"delta\"}")
            .await
            .is_some_and(|n| n >= 1)
    );
    assert!(
        controller.logged(&format!("\"applied\":{revision}")),
        "the Hello carried the bundle's revision:\n{}",
        controller.log()
    );
    // ... and the runtime's cache now holds it
    let cache = dir.path().join("rt").join("config-cache.json");
    eventually("the cache to be written", WAIT, || {
        let cache = cache.clone();
        async move { cache.exists() }
    })
    .await;
    let response = admin
        .put_api(
            "more",
            &api_yaml("more", "/more", &upstream.url("")),
            "?wait=applied",
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let (code, _) = call(&reqwest::Client::new(), proxy, "/more/1").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric::<i64>(
            runtime.addr("status"),
            "gw_config_source{source=\"bundle\"}"
        )
        .await,
        Some(0)
    );
}

#[tokio::test]
async fn a_runtime_refuses_bundles_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    let (signing, _) = ed25519_keys(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, wrong_verify) = ed25519_keys(other.path());
    let bundle_dir = bundles.display().to_string();
    let mut controller = dir_controller(
        "refuse-ctl",
        &dir.path().join("ctl"),
        &bundles,
        &signing,
        "1h",
    );
    let admin = Admin::new(controller.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let response = admin
        .put_api(
            "items",
            &api_yaml("items", "/items", "http://127.0.0.1:9"),
            "",
        )
        .await;
    assert!(response.status().is_success());
    let (code, body) = export(&admin).await;
    assert_eq!(code, 200, "{body}");
    controller.kill();

    // signed with another key: refused, nothing served, and it says why
    let dead = dead_address();
    let runtime = runtime_with(
        "refuse-rt",
        &[dead.addr],
        &dir.path().join("rt"),
        &[
            "--fallback-bundle",
            &bundle_dir,
            "--bundle-verify-key",
            &wrong_verify,
        ],
    );
    let status = runtime.addr("status");
    eventually("the refusal, then the end of the attempt", WAIT, || async {
        runtime.logged("refusing fallback bundle")
            && runtime.logged("bad signature")
            && runtime.logged("no fallback bundle could be loaded")
    })
    .await;
    let (code, body) = ready(status).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["source"], "none");

    // a bad key, or none, stops the runtime at start with the reason
    let mut no_key = runtime_with(
        "nokey-rt",
        &[dead.addr],
        &dir.path().join("rt2"),
        &["--fallback-bundle", &bundle_dir],
    );
    assert_ne!(no_key.wait_exit(WAIT), Some(0));
    assert!(no_key.logged("--bundle-verify-key"), "{}", no_key.log());
    let mut private = runtime_with(
        "private-rt",
        &[dead.addr],
        &dir.path().join("rt3"),
        &[
            "--fallback-bundle",
            &bundle_dir,
            "--bundle-verify-key",
            &signing,
        ],
    );
    assert_ne!(private.wait_exit(WAIT), Some(0));
    assert!(private.logged("public key only"), "{}", private.log());
}

/// moto's S3-compatible server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    /// Its stderr, for the failure messages.
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Installs moto_server when missing and starts it (the blocking parts off the async
    /// workers), waiting until it listens or exits.
    async fn start() -> Self {
        tokio::task::spawn_blocking(|| ensure_peer("moto_server"))
            .await
            .expect("the installation does not panic");
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("moto_server starts");
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            // a real S3 answer (ListBuckets) from a moto that is still running: not merely a
            // port that accepts, nor another program that took the port
            let answers = moto.answers().await;
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", moto.stderr());
            }
            if answers {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer:\n{}",
                moto.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        moto
    }

    /// Whether moto answers a ListBuckets request.
    async fn answers(&self) -> bool {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let Ok(response) = client.get(format!("{}/", self.endpoint)).send().await else {
            return false;
        };
        response.status().is_success()
            && response
                .text()
                .await
                .is_ok_and(|body| body.contains("ListAllMyBucketsResult"))
    }

    /// What moto_server wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Creates a bucket (moto accepts any credentials).
    async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("moto answers");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// The keys under `prefix` in `bucket` (ListObjectsV2, from the XML).
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = reqwest::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}",
            self.endpoint
        ))
        .await
        .expect("moto answers")
        .text()
        .await
        .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn bundles_round_trip_through_s3_compatible_storage() {
    let moto = Moto::start().await;
    moto.create_bucket("gw-bundles").await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("from-s3").await;
    let secret = "s3-bundle-hmac-secret-0123456789abcdef";
    let aws = |extra: &[(&str, &str)]| {
        let mut envs: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
        envs.push(("GW_SYNC_TOKEN".into(), SYNC_TOKEN.into()));
        envs
    };
    let url = "s3://gw-bundles/prod/gw";
    let start_controller = |name: &str, bundle_url: &str, endpoint: &str| {
        let mut envs = aws(&[("GW_BUNDLE_SIGNING_KEY", secret)]);
        envs.extend([
            ("GW_ADMIN_TOKEN".to_string(), TOKEN.to_string()),
            ("GW_ENCRYPTION_KEY".to_string(), ENCRYPTION_KEY.to_string()),
        ]);
        let data = dir.path().join(name).display().to_string();
        Process::start(
            name,
            &binary("gw-controller"),
            &[
                "--data-dir",
                &data,
                "--admin-addr",
                "127.0.0.1:0",
                "--sync-addr",
                "127.0.0.1:0",
                "--node-id",
                name,
                "--bundle-url",
                bundle_url,
                "--bundle-s3-endpoint",
                endpoint,
                "--bundle-interval",
                "1h",
            ]
            .map(String::from),
            &envs,
        )
    };
    let mut controller = start_controller("s3-ctl", url, &moto.endpoint);
    let admin = Admin::new(controller.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    assert!(
        !controller.log().contains(secret),
        "the key never reaches a log"
    );
    let response = admin
        .put_api("items", &api_yaml("items", "/items", &upstream.url("")), "")
        .await;
    assert!(response.status().is_success());

    let (code, body) = export(&admin).await;
    assert_eq!(code, 200, "{body}");
    let item = &body["items"][0];
    let revision = item["revision"].as_i64().unwrap();
    assert_eq!(
        item["location"],
        format!("{url}/default/{revision:020}.gwb"),
        "{body}"
    );
    assert_eq!(
        moto.keys("gw-bundles", "prod/gw/").await,
        [format!("prod/gw/default/{revision:020}.gwb")]
    );
    controller.kill();

    let dead = dead_address();
    let runtime_args = |node: &str, data: &str| -> Vec<String> {
        [
            "--controller",
            &dead.addr.to_string(),
            "--node-id",
            node,
            "--proxy-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--fallback-bundle",
            url,
            "--bundle-s3-endpoint",
            &moto.endpoint,
        ]
        .map(String::from)
        .to_vec()
    };
    let started = Instant::now();
    let runtime = Process::start(
        "s3-rt",
        &binary("gw-runtime"),
        &runtime_args("s3-rt", &dir.path().join("rt").display().to_string()),
        &aws(&[("GW_BUNDLE_VERIFY_KEY", secret)]),
    );
    wait_source(&runtime, "bundle", revision).await;
    println!(
        "time from start to serving the bundle from S3: {:?}",
        started.elapsed()
    );
    let (code, body) = call(&reqwest::Client::new(), runtime.addr("proxy"), "/items/1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["upstream"], "from-s3");
    assert!(!runtime.log().contains(secret));

    // another secret: refused
    let wrong = Process::start(
        "s3-wrong",
        &binary("gw-runtime"),
        &runtime_args("s3-wrong", &dir.path().join("rt2").display().to_string()),
        &aws(&[(
            "GW_BUNDLE_VERIFY_KEY",
            "another-hmac-secret-0123456789abcdef",
        )]),
    );
    eventually("the refusal", WAIT, || async {
        wrong.logged("bad signature")
    })
    .await;
    let (code, body) = ready(wrong.addr("status")).await;
    assert_eq!(code, 503, "{body}");

    // a failing export (no such bucket) is an error of its own: the admin API and the sync
    // stream carry on
    let broken = start_controller("s3-broken", "s3://no-such-bucket/gw", &moto.endpoint);
    let admin = Admin::new(broken.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let response = admin
        .put_api("items", &api_yaml("items", "/items", &upstream.url("")), "")
        .await;
    assert!(response.status().is_success());
    let failed_before = failures(&admin).await;
    let (code, body) = export(&admin).await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["error"]["code"], "bundle_export_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("s3://no-such-bucket/gw"),
        "{body}"
    );
    // a summary of S3's answer (its status and code), never its body
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("NoSuchBucket"), "{body}");
    assert!(!message.contains('<'), "{body}");
    // counted (a periodic tick may have failed as well: compared, not equal)
    let failed_after = failures(&admin).await;
    assert!(
        failed_after > failed_before,
        "{failed_before} -> {failed_after}"
    );
    assert_eq!(admin.get_json("/readyz").await.0, 200);
    let synced = runtime_with(
        "s3-synced",
        &[broken.addr("sync")],
        &dir.path().join("rt3"),
        &[],
    );
    wait_source(&synced, "controller", 1).await;
    assert!(!broken.log().contains(secret));

    // an object storage that refuses connections: the round stops at the listing, and the
    // group is reported as not attempted rather than tried against it too
    let dead = dead_address();
    let unreachable = start_controller("s3-unreachable", url, &format!("http://{}", dead.addr));
    let admin = Admin::new(unreachable.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    let response = admin
        .put_api("items", &api_yaml("items", "/items", &upstream.url("")), "")
        .await;
    assert!(response.status().is_success());
    let (code, body) = export(&admin).await;
    assert_eq!(code, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot connect"), "{body}");
    assert!(
        message.contains("group \"default\": not attempted"),
        "{body}"
    );
}
