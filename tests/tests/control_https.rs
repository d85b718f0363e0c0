//! HTTPS on the control surfaces, from the operator's certificate files: the controller's
//! admin API (served over TLS, not in the clear, a renewed certificate taken without a
//! restart) and, when asked, the runtime's status port.

use std::path::Path;
use std::time::{Duration, SystemTime};

use gw_e2e::{ControllerSpec, TOKEN, controller_with, eventually};
use gw_sync::pki::ClusterCa;

/// Writes a certificate of `ca` for 127.0.0.1 and its key into `dir` (`admin.crt`,
/// `admin.key`), the key first.
fn certificate(dir: &Path, ca: &ClusterCa) {
    let issued = ca
        .issue_server(
            &["127.0.0.1".to_string()],
            SystemTime::now(),
            Duration::from_hours(1),
        )
        .unwrap();
    std::fs::write(dir.join("admin.key"), issued.key_pem).unwrap();
    std::fs::write(dir.join("admin.crt"), issued.cert_pem).unwrap();
}

/// A client that trusts `ca` only.
fn trusting(ca: &ClusterCa) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    let response = client.get(url).bearer_auth(TOKEN).send().await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test]
async fn the_admin_api_serves_https_from_files_and_takes_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(SystemTime::now()).unwrap();
    certificate(dir.path(), &ca);
    let cert = dir.path().join("admin.crt").display().to_string();
    let key = dir.path().join("admin.key").display().to_string();
    let ctl = controller_with(
        &ControllerSpec {
            database_url: None,
            dev: false,
            all_in_one: false,
            node_id: "ctl-https".into(),
        },
        &dir.path().join("ctl"),
        &["--admin-tls-cert", &cert, "--admin-tls-key", &key],
    );
    let addr = ctl.addr("admin");
    let https = format!("https://{addr}/api/v1/apis");
    let client = trusting(&ca);
    eventually(
        "the admin API over HTTPS",
        Duration::from_secs(30),
        || async { status(&client, &https).await == Some(200) },
    )
    .await;
    assert!(ctl.logged("admin API over HTTPS"));

    // plain HTTP on the same port gets no answer
    let plain = reqwest::Client::new();
    assert_eq!(
        status(&plain, &format!("http://{addr}/api/v1/apis")).await,
        None
    );

    // a certificate of another CA replaces it: clients that trust the new CA are served
    // without a restart, and ones that trust only the old CA no longer are
    let renewed = ClusterCa::generate(SystemTime::now()).unwrap();
    certificate(dir.path(), &renewed);
    let new_client = trusting(&renewed);
    eventually(
        "the renewed certificate",
        Duration::from_secs(30),
        || async { status(&new_client, &https).await == Some(200) },
    )
    .await;
    assert!(ctl.logged("TLS files changed: reloaded"));
    assert_eq!(status(&trusting(&ca), &https).await, None);
}

#[tokio::test]
async fn the_status_port_serves_https_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(SystemTime::now()).unwrap();
    certificate(dir.path(), &ca);
    let cert = dir.path().join("admin.crt").display().to_string();
    let key = dir.path().join("admin.key").display().to_string();
    let apis = gw_e2e::api_yaml("x", "/x", "http://127.0.0.1:9");
    let (rt, _config) = gw_e2e::standalone(
        &apis,
        &["--status-tls-cert", &cert, "--status-tls-key", &key],
    );
    let addr = rt.addr("status");
    let client = trusting(&ca);
    eventually(
        "the status port over HTTPS",
        Duration::from_secs(30),
        || async { status(&client, &format!("https://{addr}/status/ready")).await == Some(200) },
    )
    .await;
    let plain = reqwest::Client::new();
    assert_eq!(status(&plain, &format!("http://{addr}/status")).await, None);

    // a runtime given a certificate file that is not one does not start, and names it
    std::fs::write(dir.path().join("admin.crt"), "not a certificate").unwrap();
    let (mut broken, _config) = gw_e2e::standalone(
        &apis,
        &["--status-tls-cert", &cert, "--status-tls-key", &key],
    );
    assert_eq!(broken.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        broken.logged("status TLS") && broken.logged("admin.crt"),
        "{}",
        broken.log()
    );
}
