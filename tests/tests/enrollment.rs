//! Runtime enrollment on the cluster's internal CA, between the real binaries: two
//! production controllers on one PostgreSQL database serve sync over mutual TLS from the CA
//! the first one made; runtimes enroll with tokens from the admin API, keep their
//! certificate, renew it without a failed request, and are cut off when revoked.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use gw_e2e::{
    Admin, ControllerSpec, Process, TestDatabase, call, controller_with, echo_upstream, eventually,
    median, millis, propagation, runtime_env,
};

/// Makes a token through `admin`: its text and the CA hash it carries.
async fn token(admin: &Admin, group: &str, uses: u32) -> (String, String) {
    let response = admin
        .request(reqwest::Method::POST, "/api/v1/enrollment-tokens")
        .json(&serde_json::json!({"group": group, "uses": uses, "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_string(),
        body["caHash"].as_str().unwrap().to_string(),
    )
}

async fn in_fleet(admin: &Admin, node: &str) -> bool {
    let (_, fleet) = admin.get_json("/api/v1/runtimes").await;
    fleet["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|r| r["nodeId"] == node))
}

/// A TLS handshake with the sync port at `sync`, trusting `ca_pem`, offering only
/// `version` and no client certificate: the version and ALPN protocol agreed, or the error.
async fn handshake(
    sync: std::net::SocketAddr,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<(rustls::ProtocolVersion, Option<Vec<u8>>), String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(sync).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sync.ip().to_string()).unwrap();
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|err| err.to_string())?;
    let session = stream.get_ref().1;
    Ok((
        session.protocol_version().unwrap(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

fn internal_ca_controller(db: &TestDatabase, node: &str, dir: &std::path::Path) -> Process {
    controller_with(
        &ControllerSpec::postgres(db, node),
        &dir.join(node),
        &["--sync-tls", "internal", "--runtime-cert-lifetime", "15s"],
    )
}

#[tokio::test]
async fn runtimes_enroll_with_tokens_renew_and_are_revoked() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let a = internal_ca_controller(&db, "ctl-a", dir.path());
    let admin_a = Admin::new(a.addr("admin"), Some(gw_e2e::TOKEN));
    admin_a.wait_ready().await;
    let b = internal_ca_controller(&db, "ctl-b", dir.path());
    let admin_b = Admin::new(b.addr("admin"), Some(gw_e2e::TOKEN));
    admin_b.wait_ready().await;
    // one CA for the cluster: tokens of either controller carry the same hash
    let (first, hash_a) = token(&admin_a, "default", 2).await;
    let (_, hash_b) = token(&admin_b, "default", 1).await;
    assert_eq!(hash_a, hash_b);
    assert!(a.logged("runtimes enroll with tokens"), "{}", a.log());

    // a token made through one controller enrolls at the other
    let rt1_dir = dir.path().join("rt-1");
    let rt1 = runtime_env(
        "rt-1",
        &[b.addr("sync")],
        &rt1_dir,
        &[],
        &[("GW_ENROLL_TOKEN", &first)],
    );
    eventually("rt-1 enrolled", Duration::from_secs(30), || async {
        rt1.logged("enrolled")
    })
    .await;
    assert!(!rt1.log().contains(&first), "the token reached a log");
    let identity = rt1_dir.join("sync-identity.json");
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // the sync port speaks TLS 1.3 (HTTP/2 by ALPN) with the cluster CA's certificate, and
    // nothing older
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&identity).unwrap()).unwrap();
    let ca_pem = kept["ca"].as_str().unwrap();
    let (version, alpn) = handshake(b.addr("sync"), ca_pem, &rustls::version::TLS13)
        .await
        .unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let refused = handshake(b.addr("sync"), ca_pem, &rustls::version::TLS12).await;
    assert!(refused.is_err(), "TLS 1.2 was spoken: {refused:?}");

    let upstream = echo_upstream("enrolled");
    let upstream_url = format!("http://{}", upstream.addr("http"));
    assert!(
        admin_a
            .deploy("orders", "/orders", &upstream_url)
            .await
            .status()
            .is_success()
    );
    let http = reqwest::Client::new();
    let proxy = rt1.addr("proxy");
    eventually("the API through rt-1", Duration::from_secs(30), || async {
        call(&http, proxy, "/orders/1").await.0 == 200
    })
    .await;
    let times = propagation(&admin_a, proxy, &upstream_url, "prop", 10).await;
    let mut sorted = times.clone();
    println!(
        "propagation over mutual TLS from the cluster CA, one runtime: median {:.1} ms ({})",
        median(&mut sorted).as_secs_f64() * 1000.0,
        millis(&times)
    );

    // the certificate (15 s) is renewed 10 s in, with traffic flowing: no request fails
    let started = Instant::now();
    let mut served = 0;
    while !rt1.logged("sync certificate renewed") {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "no renewal: {}",
            rt1.log()
        );
        assert_eq!(call(&http, proxy, "/orders/1").await.0, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 0);
    // and the stream goes on past the first certificate's expiry
    assert!(
        admin_a
            .deploy("after", "/after", &upstream_url)
            .await
            .status()
            .is_success()
    );
    eventually(
        "a deploy after the renewal",
        Duration::from_secs(30),
        || async { call(&http, proxy, "/after/1").await.0 == 200 },
    )
    .await;

    // the second use of the token; a third runtime finds it used up and is not served
    let rt2 = runtime_env(
        "rt-2",
        &[a.addr("sync")],
        &dir.path().join("rt-2"),
        &[],
        &[("GW_ENROLL_TOKEN", &first)],
    );
    eventually("rt-2 enrolled", Duration::from_secs(30), || async {
        rt2.logged("enrolled")
    })
    .await;
    let rt3 = runtime_env(
        "rt-3",
        &[a.addr("sync")],
        &dir.path().join("rt-3"),
        &[],
        &[("GW_ENROLL_TOKEN", &first)],
    );
    eventually("rt-3 refused", Duration::from_secs(30), || async {
        rt3.logged("used as many times as it allows")
    })
    .await;
    // a token of another group does not enroll a runtime of this one
    let (edge, _) = token(&admin_a, "edge", 1).await;
    let rt4 = runtime_env(
        "rt-4",
        &[a.addr("sync")],
        &dir.path().join("rt-4"),
        &[],
        &[("GW_ENROLL_TOKEN", &edge)],
    );
    eventually("rt-4 refused", Duration::from_secs(30), || async {
        rt4.logged("this token enrolls runtimes of group")
    })
    .await;
    // a plaintext runtime is not served
    let plain = runtime_env(
        "rt-plain",
        &[a.addr("sync")],
        &dir.path().join("rt-plain"),
        &[],
        &[("GW_ENROLL_TOKEN", "")],
    );
    eventually(
        "the plaintext runtime to fail",
        Duration::from_secs(30),
        || async { plain.logged("sync stream failed") },
    )
    .await;
    for node in ["rt-3", "rt-4", "rt-plain"] {
        assert!(
            !in_fleet(&admin_a, node).await,
            "{node} is in the fleet view"
        );
    }

    // revoked through controller a, rt-1's stream on controller b ends within seconds; it
    // keeps serving what it has, and is sent nothing more
    let revoked = Instant::now();
    let response = admin_a
        .request(reqwest::Method::DELETE, "/api/v1/runtimes/rt-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    eventually("rt-1 cut off", Duration::from_secs(30), || async {
        rt1.logged("revoked or replaced")
    })
    .await;
    println!(
        "revocation to the end of the stream: {:?}",
        revoked.elapsed()
    );
    assert_eq!(call(&http, proxy, "/orders/1").await.0, 200);
    assert!(
        admin_a
            .deploy("late", "/late", &upstream_url)
            .await
            .status()
            .is_success()
    );
    let rt2_proxy = rt2.addr("proxy");
    eventually(
        "the late API through rt-2",
        Duration::from_secs(30),
        || async { call(&http, rt2_proxy, "/late/1").await.0 == 200 },
    )
    .await;
    assert_eq!(
        call(&http, proxy, "/late/1").await.0,
        404,
        "a revoked runtime got a deploy"
    );

    // rt-2 restarts without its token: the certificate it kept is enough
    drop(rt2);
    let rt2 = runtime_env(
        "rt-2",
        &[a.addr("sync")],
        &dir.path().join("rt-2"),
        &[],
        &[],
    );
    let rt2_proxy = rt2.addr("proxy");
    assert!(
        admin_b
            .deploy("later", "/later", &upstream_url)
            .await
            .status()
            .is_success()
    );
    eventually(
        "rt-2 served after its restart",
        Duration::from_secs(30),
        || async { call(&http, rt2_proxy, "/later/1").await.0 == 200 },
    )
    .await;
}
