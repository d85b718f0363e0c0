//! Mutual TLS on the sync channel with the operator's own PKI (files), between the real
//! binaries: a runtime is served as its certificate names it, a plaintext runtime is not
//! served at all, a runtime whose certificate names another node does not start, and a
//! renewed controller certificate is taken without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gw_e2e::{
    Admin, ControllerSpec, Process, TOKEN, controller_with, echo_upstream, eventually, median,
    millis, propagation,
};
use gw_sync::pki::{ClusterCa, RuntimeIdentity, runtime_key_and_request};

const HOUR: Duration = Duration::from_hours(1);

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Writes a controller certificate of `ca` for 127.0.0.1 (and its key) into `dir`, over
/// what is there.
fn controller_certificate(dir: &Path, ca: &ClusterCa) {
    let issued = ca
        .issue_server(&["127.0.0.1".to_string()], SystemTime::now(), HOUR)
        .unwrap();
    // the key first: a follower that looks in between sees a key without its certificate,
    // which does not load, and keeps what it has
    write(dir, "tls.key", &issued.key_pem);
    write(dir, "tls.crt", &issued.cert_pem);
}

/// The runtime's files for `node` of `group` under `dir`; the flags that name them.
fn runtime_files(dir: &Path, ca: &ClusterCa, group: &str, node: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let request = runtime_key_and_request(node).unwrap();
    let identity = RuntimeIdentity::new(group, node).unwrap();
    let cert = ca
        .sign_runtime(&request.cert_pem, &identity, SystemTime::now(), HOUR)
        .unwrap();
    vec![
        "--controller-ca".to_string(),
        write(dir, "ca.crt", ca.cert_pem()),
        "--sync-tls-cert".to_string(),
        write(dir, "tls.crt", &cert),
        "--sync-tls-key".to_string(),
        write(dir, "tls.key", &request.key_pem),
    ]
}

fn runtime(node: &str, ctl: &Process, dir: &Path, extra: &[String]) -> Process {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    gw_e2e::runtime_with(node, &[ctl.addr("sync")], &dir.join(node), &extra)
}

async fn in_fleet(admin: &Admin, node: &str) -> bool {
    let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
    fleet["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|r| r["nodeId"] == node))
}

#[tokio::test]
async fn runtimes_sync_over_mutual_tls_with_files_of_the_operator_s_pki() {
    let dir = tempfile::tempdir().unwrap();
    let pki: PathBuf = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = ClusterCa::generate(SystemTime::now()).unwrap();
    controller_certificate(&pki, &ca);
    let client_ca = write(&pki, "ca.crt", ca.cert_pem());
    let cert = pki.join("tls.crt").display().to_string();
    let key = pki.join("tls.key").display().to_string();
    let spec = ControllerSpec {
        database_url: None,
        dev: false,
        all_in_one: false,
        node_id: "ctl-tls".into(),
    };
    let ctl = controller_with(
        &spec,
        &dir.path().join("ctl"),
        &[
            "--sync-tls-cert",
            &cert,
            "--sync-tls-key",
            &key,
            "--sync-client-ca",
            &client_ca,
        ],
    );
    let admin = Admin::new(ctl.addr("admin"), Some(TOKEN));
    admin.wait_ready().await;
    assert!(ctl.logged("sync over TLS 1.3 with runtime certificates"));

    // a runtime with its certificate is served, and a deploy reaches it
    let files = runtime_files(&dir.path().join("rt-1-pki"), &ca, "default", "rt-1");
    let rt = runtime("rt-1", &ctl, dir.path(), &files);
    let upstream = echo_upstream("tls-sync");
    let deployed = admin
        .deploy(
            "orders",
            "/orders",
            &format!("http://{}", upstream.addr("http")),
        )
        .await;
    assert!(deployed.status().is_success());
    let http = reqwest::Client::new();
    let proxy = rt.addr("proxy");
    eventually("the API through rt-1", Duration::from_secs(30), || async {
        gw_e2e::call(&http, proxy, "/orders/1").await.0 == 200
    })
    .await;

    // a plaintext runtime is not served, nor shown in the fleet view
    let plain = runtime("rt-plain", &ctl, dir.path(), &[]);
    eventually(
        "the plaintext runtime to fail",
        Duration::from_secs(30),
        || async { plain.logged("sync stream failed") },
    )
    .await;
    assert!(!in_fleet(&admin, "rt-plain").await);

    // a runtime whose certificate is another node's does not start, and says why
    let other = runtime_files(&dir.path().join("rt-2-pki"), &ca, "default", "rt-2");
    let mut impostor = runtime("rt-3", &ctl, dir.path(), &other);
    assert_eq!(impostor.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        impostor.logged("names node") && impostor.logged("and this runtime is node"),
        "{}",
        impostor.log()
    );

    // the controller's certificate is renewed in place: taken without a restart, and new
    // connections are served with it
    controller_certificate(&pki, &ca);
    eventually(
        "the renewed certificate to be taken",
        Duration::from_secs(30),
        || async { ctl.logged("TLS files changed: reloaded") },
    )
    .await;
    let files = runtime_files(&dir.path().join("rt-4-pki"), &ca, "default", "rt-4");
    let late = runtime("rt-4", &ctl, dir.path(), &files);
    let proxy = late.addr("proxy");
    eventually("the API through rt-4", Duration::from_secs(30), || async {
        gw_e2e::call(&http, proxy, "/orders/1").await.0 == 200
    })
    .await;
    assert!(in_fleet(&admin, "rt-1").await && in_fleet(&admin, "rt-4").await);
    assert!(!in_fleet(&admin, "rt-plain").await);

    // what TLS costs a change on its way: the same propagation through this controller and
    // through one with a plaintext sync port, each with one runtime (printed, not asserted:
    // a figure, not a limit)
    drop(late);
    let upstream_url = format!("http://{}", upstream.addr("http"));
    let mut over_tls = propagation(&admin, rt.addr("proxy"), &upstream_url, "tls", 9).await;
    let plain_spec = ControllerSpec {
        node_id: "ctl-plain".into(),
        ..spec
    };
    let plain_ctl = gw_e2e::controller(&plain_spec, &dir.path().join("ctl-plain"));
    let plain_admin = Admin::new(plain_ctl.addr("admin"), Some(TOKEN));
    plain_admin.wait_ready().await;
    let plain_rt = runtime("rt-p", &plain_ctl, dir.path(), &[]);
    let plain_proxy = plain_rt.addr("proxy");
    let warmup = propagation(&plain_admin, plain_proxy, &upstream_url, "warm", 1).await;
    assert_eq!(warmup.len(), 1);
    let mut plaintext = propagation(&plain_admin, plain_proxy, &upstream_url, "plain", 9).await;
    println!(
        "sync propagation, deploy -> first 2xx through the runtime (SQLite, loopback): \
         mutual TLS median {:.1} ms ({} ms), plaintext median {:.1} ms ({} ms)",
        median(&mut over_tls).as_secs_f64() * 1000.0,
        millis(&over_tls),
        median(&mut plaintext).as_secs_f64() * 1000.0,
        millis(&plaintext),
    );
}

/// A controller `node` on the SQLite store of its data directory.
fn sqlite(node: &str, dev: bool) -> ControllerSpec {
    ControllerSpec {
        database_url: None,
        dev,
        all_in_one: false,
        node_id: node.into(),
    }
}

/// Production mode never serves sync in plaintext: `--sync-tls off` without `--dev` stops
/// the controller before it listens, saying why and what to do instead.
#[test]
fn a_plaintext_sync_port_is_refused_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sqlite("ctl-plain", false);
    let mut ctl = controller_with(&spec, &dir.path().join("ctl"), &["--sync-tls", "off"]);
    assert_eq!(
        ctl.wait_exit(Duration::from_secs(30)),
        Some(1),
        "{}",
        ctl.log()
    );
    for reason in [
        "plaintext (--sync-tls off) in production mode",
        "certificate private keys and credential hashes",
        "the default, --sync-tls internal",
        "--sync-tls-cert",
        "--dev",
    ] {
        assert!(ctl.logged(reason), "{reason}: {}", ctl.log());
    }
    assert!(!ctl.logged("\"listening\""), "{}", ctl.log());
}

/// `--dev` keeps plaintext possible (its default), and says so; a plaintext runtime is
/// served.
#[tokio::test]
async fn development_mode_serves_plaintext_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sqlite("ctl-dev", true);
    let ctl = controller_with(&spec, &dir.path().join("ctl"), &[]);
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let sync = ctl.addr("sync");
    eventually("the warning", Duration::from_secs(30), || async {
        ctl.logged("the sync port is plaintext")
    })
    .await;
    assert!(!ctl.logged("sync over TLS 1.3"), "{}", ctl.log());
    let rt = gw_e2e::runtime("rt-dev", &[sync], &dir.path().join("rt-dev"));
    eventually(
        "the plaintext runtime served",
        Duration::from_secs(30),
        || async { in_fleet(&admin, "rt-dev").await },
    )
    .await;
    assert!(!rt.logged("\"enrolled\""), "{}", rt.log());
}
