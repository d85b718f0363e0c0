//! TLS end to end, with a CA made in each test: the HTTPS listener choosing a certificate
//! by SNI, ALPN h2 and http/1.1, rotation without a restart (from a file and through the
//! controller), certificates in the last-known-good cache, and TLS to upstreams verified
//! against a private CA with a client certificate.

use std::net::SocketAddr;
use std::time::Duration;

use gw_e2e::{
    Admin, ControllerSpec, Issued, Process, TestCa, api_yaml, certificate_document, controller,
    echo_upstream, eventually, metric, runtime_with, standalone,
};

/// A client that trusts `ca`, sends every name to `addr`, and reports the peer certificate.
fn client(ca: &TestCa, addr: SocketAddr, names: &[&str], http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// `GET https://<name>:<port><path>`: the status, HTTP version, peer certificate and JSON
/// body; `Err` when the connection or the handshake fails.
async fn get(
    client: &reqwest::Client,
    name: &str,
    port: u16,
    path: &str,
) -> Result<(u16, reqwest::Version, Vec<u8>, serde_json::Value), String> {
    let response = client
        .get(format!("https://{name}:{port}{path}"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let peer = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let status = response.status().as_u16();
    let version = response.version();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, version, peer, body))
}

/// The certificate a fresh connection to `name` is served (empty when the handshake fails).
async fn served(ca: &TestCa, addr: SocketAddr, name: &str) -> Vec<u8> {
    handshake(ca, addr, name).await.unwrap_or_default()
}

/// A fresh request to `name`: the certificate served, or why it failed.
async fn handshake(ca: &TestCa, addr: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let fresh = client(ca, addr, &[name], false);
    get(&fresh, name, addr.port(), "/tls/")
        .await
        .map(|(_, _, peer, _)| peer)
}

/// Whether a handshake for `name` is refused by the server with a TLS alert (not merely
/// failing for another reason, such as a dead runtime).
async fn refused(ca: &TestCa, addr: SocketAddr, name: &str) -> bool {
    match handshake(ca, addr, name).await {
        Ok(_) => false,
        Err(err) => {
            assert!(err.contains("AlertReceived"), "expected a TLS alert: {err}");
            true
        }
    }
}

type HeldSender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/1.1 connection held open by the test (TLS 1.2 only when `tls12`, else 1.3): the
/// certificate it was served and its request sender.
async fn held_connection(
    ca: &TestCa,
    addr: SocketAddr,
    name: &str,
    tls12: bool,
) -> (Vec<u8>, HeldSender) {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[if tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    }])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let stream = connector.connect(server_name, tcp).await.unwrap();
    let session = stream.get_ref().1;
    let expected = if tls12 {
        rustls::ProtocolVersion::TLSv1_2
    } else {
        rustls::ProtocolVersion::TLSv1_3
    };
    assert_eq!(session.protocol_version(), Some(expected));
    let peer = session.peer_certificates().unwrap()[0].to_vec();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    (peer, sender)
}

/// A GET on a held connection; its status.
async fn send_held(sender: &mut HeldSender, host: &str, path: &str) -> u16 {
    let request = hyper::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn config(upstream: &Process, certificates: &[(&str, &Issued, &[&str])]) -> String {
    let mut yaml = api_yaml("tls", "/tls", &format!("http://{}", upstream.addr("http")));
    for (name, issued, sni) in certificates {
        yaml.push_str("---\n");
        yaml.push_str(&certificate_document(name, issued, sni));
        yaml.push('\n');
    }
    yaml
}

#[tokio::test]
async fn sni_chooses_the_certificate_alpn_the_protocol_and_rotation_needs_no_restart() {
    let ca = TestCa::new("gw test CA");
    let site_a = ca.issue(&["a.test"], 1, 2030);
    let site_b = ca.issue(&["*.b.test"], 2, 2030);
    // valid for other.test too, but listed only as the catch-all
    let fallback = ca.issue(&["default.test", "other.test"], 3, 2030);
    let upstream = echo_upstream("tls");
    let (runtime, dir) = standalone(
        &config(
            &upstream,
            &[
                ("site-a", &site_a, &[]),
                ("site-b", &site_b, &[]),
                ("fallback", &fallback, &["*"]),
            ],
        ),
        &["--https-addr", "127.0.0.1:0"],
    );
    let https = runtime.addr("https");
    let port = https.port();

    // HTTP/2 by ALPN, with the certificate of the name asked for
    let h2 = client(&ca, https, &["a.test", "x.b.test", "other.test"], false);
    let (status, version, peer, body) = get(&h2, "a.test", port, "/tls/hello").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(peer, site_a.der);
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    assert_eq!(body["path"], "/hello");
    let (_, _, peer, _) = get(&h2, "x.b.test", port, "/tls/").await.unwrap();
    assert_eq!(peer, site_b.der, "the wildcard covers one label");
    let (_, _, peer, _) = get(&h2, "other.test", port, "/tls/").await.unwrap();
    assert_eq!(
        peer, fallback.der,
        "a name no certificate covers gets the `*` one"
    );

    // HTTP/1.1 by ALPN
    let h1 = client(&ca, https, &["a.test"], true);
    let (status, version, peer, _) = get(&h1, "a.test", port, "/tls/").await.unwrap();
    assert_eq!((status, version), (200, reqwest::Version::HTTP_11));
    assert_eq!(peer, site_a.der);
    // a connection the test holds open across the changes below
    let (held_peer, mut held) = held_connection(&ca, https, "a.test", false).await;
    assert_eq!(held_peer, site_a.der);
    assert_eq!(send_held(&mut held, "a.test", "/tls/before").await, 200);
    // TLS 1.2 clients are served too
    let (peer, mut tls12) = held_connection(&ca, https, "x.b.test", true).await;
    assert_eq!(peer, site_b.der);
    assert_eq!(send_held(&mut tls12, "x.b.test", "/tls/").await, 200);

    // without a catch-all, an unknown name fails the handshake, and it is counted
    let only_a = config(&upstream, &[("site-a", &site_a, &[])]);
    std::fs::write(dir.path().join("apis.yaml"), only_a).unwrap();
    runtime.reload();
    eventually(
        "the catch-all certificate to go",
        Duration::from_secs(20),
        || async { refused(&ca, https, "other.test").await },
    )
    .await;
    // the server counts the failure after it has sent its alert, which the client may see
    // first
    eventually(
        "the handshake failure to be counted",
        Duration::from_secs(20),
        || async {
            metric::<f64>(runtime.addr("status"), "gw_tls_handshake_failures_total")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;

    // rotation: the file now holds a renewed certificate for a.test; new handshakes get it
    // while connections opened before keep working
    let renewed = ca.issue(&["a.test"], 4, 2031);
    std::fs::write(
        dir.path().join("apis.yaml"),
        config(&upstream, &[("site-a", &renewed, &[])]),
    )
    .unwrap();
    runtime.reload();
    eventually(
        "the renewed certificate",
        Duration::from_secs(20),
        || async { served(&ca, https, "a.test").await == renewed.der },
    )
    .await;
    assert_eq!(
        send_held(&mut held, "a.test", "/tls/after").await,
        200,
        "a connection opened before the rotation still works"
    );
    let expiry = metric::<f64>(
        runtime.addr("status"),
        "gw_tls_certificate_expiry_timestamp_seconds{certificate=\"site-a\"}",
    )
    .await;
    assert_eq!(
        expiry,
        Some(1_924_992_000.0),
        "2031-01-01 in the expiry metric"
    );
    drop(runtime);
}

#[tokio::test]
async fn a_malformed_certificate_in_the_file_keeps_the_previous_configuration() {
    let ca = TestCa::new("gw test CA");
    let site = ca.issue(&["a.test"], 1, 2030);
    let other = ca.issue(&["a.test"], 2, 2030);
    let upstream = echo_upstream("tls");
    let (runtime, dir) = standalone(
        &config(&upstream, &[("site", &site, &[])]),
        &["--https-addr", "127.0.0.1:0"],
    );
    let https = runtime.addr("https");
    assert_eq!(served(&ca, https, "a.test").await, site.der);

    // the key of another certificate: refused with the field, never quoting the key
    let mismatched = Issued {
        key_pem: other.key_pem.clone(),
        ..site.clone()
    };
    std::fs::write(
        dir.path().join("apis.yaml"),
        config(&upstream, &[("site", &mismatched, &[])]),
    )
    .unwrap();
    runtime.reload();
    eventually(
        "the refusal to be logged",
        Duration::from_secs(20),
        || async { runtime.logged("does not belong to the certificate") },
    )
    .await;
    assert!(runtime.logged("spec.privateKey"), "{}", runtime.log());
    let key_body: String = other.key_pem.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        !runtime.log().contains(&key_body),
        "a private key reached the log"
    );
    assert_eq!(
        served(&ca, https, "a.test").await,
        site.der,
        "still serving"
    );
}

#[tokio::test]
async fn certificates_deployed_through_the_controller_rotate_and_survive_in_the_cache() {
    let ca = TestCa::new("gw test CA");
    let first = ca.issue(&["api.test"], 1, 2030);
    let renewed = ca.issue(&["api.test"], 2, 2031);
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = controller(
        &ControllerSpec {
            database_url: None,
            dev: true,
            all_in_one: false,
            node_id: "ctl-tls".into(),
        },
        &dir.path().join("ctl"),
    );
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    let mut rt = runtime_with(
        "rt-tls",
        &[ctl.addr("sync")],
        &dir.path().join("rt"),
        &["--https-addr", "127.0.0.1:0"],
    );
    let https = rt.addr("https");
    let upstream = echo_upstream("tls");

    // a certificate whose key is not its own: 422 with the field
    let mismatched = Issued {
        key_pem: renewed.key_pem.clone(),
        ..first.clone()
    };
    let response = admin
        .request(reqwest::Method::PUT, "/api/v1/certificates/site")
        .header("content-type", "application/json")
        .body(certificate_document("site", &mismatched, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.to_string().contains("spec.privateKey"), "{body}");

    let put = |issued: &Issued| {
        admin
            .request(
                reqwest::Method::PUT,
                "/api/v1/certificates/site?wait=applied",
            )
            .header("content-type", "application/json")
            .body(certificate_document("site", issued, &[]))
            .send()
    };
    let response = put(&first).await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let deployed = admin
        .deploy("tls", "/tls", &format!("http://{}", upstream.addr("http")))
        .await;
    assert!(deployed.status().is_success());
    eventually("the API over HTTPS", Duration::from_secs(20), || async {
        served(&ca, https, "api.test").await == first.der
    })
    .await;

    // reads never show the key
    let (status, shown) = admin.get_json("/api/v1/certificates/site").await;
    assert_eq!(status, 200);
    assert!(shown["spec"].get("privateKey").is_none(), "{shown}");
    assert_eq!(shown["spec"]["certificate"], first.cert_pem.as_str());
    let (_, list) = admin.get_json("/api/v1/certificates").await;
    assert_eq!(
        list["items"][0]["serverNames"],
        serde_json::json!(["api.test"])
    );
    assert_eq!(list["items"][0]["notAfter"], "2030-01-01T00:00:00Z");
    assert!(!list.to_string().contains("PRIVATE KEY"), "{list}");

    // an API may not name a client certificate that does not exist
    let yaml = api_yaml(
        "mtls",
        "/mtls",
        &format!("https://{}", upstream.addr("http")),
    ) + "    tls: {clientCertificate: missing}\n";
    let response = admin.put_api("mtls", &yaml, "").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.to_string().contains("does not exist"), "{body}");

    // rotation through the controller
    let response = put(&renewed).await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    eventually(
        "the renewed certificate",
        Duration::from_secs(20),
        || async { served(&ca, https, "api.test").await == renewed.der },
    )
    .await;

    // with no controller, a restarted runtime serves the certificate from its cache
    let (admin_addr, sync_addr) = (ctl.addr("admin"), ctl.addr("sync"));
    ctl.kill();
    rt.restart(&[("--https-addr", https.to_string())]);
    eventually("HTTPS from the cache", Duration::from_secs(20), || async {
        served(&ca, https, "api.test").await == renewed.der
    })
    .await;
    eventually(
        "the cache to be named in the log",
        Duration::from_secs(10),
        || async { rt.logged("serving the last-known-good configuration") },
    )
    .await;

    // deleted: the name is no longer served
    ctl.restart(&[
        ("--admin-addr", admin_addr.to_string()),
        ("--sync-addr", sync_addr.to_string()),
    ]);
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    // not while an API presents it to its upstream, nor narrowed to groups the API is not in
    let yaml = api_yaml("mtls", "/mtls", "https://upstream.test:8443")
        + "    tls: {clientCertificate: site}\n";
    assert!(admin.put_api("mtls", &yaml, "").await.status().is_success());
    let delete = || {
        admin
            .request(reqwest::Method::DELETE, "/api/v1/certificates/site")
            .send()
    };
    let response = delete().await.unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "in_use", "{body}");
    let mut narrowed: serde_json::Value =
        serde_json::from_str(&certificate_document("site", &renewed, &[])).unwrap();
    narrowed["spec"]["groups"] = serde_json::json!(["edge"]);
    let response = admin
        .request(reqwest::Method::PUT, "/api/v1/certificates/site")
        .json(&narrowed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(admin.delete_api("mtls").await.status(), 200);
    let response = delete().await.unwrap();
    assert_eq!(response.status(), 200);
    eventually("the certificate to go", Duration::from_secs(30), || async {
        refused(&ca, https, "api.test").await
    })
    .await;
}

#[tokio::test]
async fn upstream_tls_is_verified_against_a_private_ca_with_a_client_certificate() {
    let ca = TestCa::new("gw upstream CA");
    let server = ca.issue(&["upstream.test"], 10, 2030);
    let client_cert = ca.issue(&["gateway.test"], 11, 2030);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, client_ca) = (
        write("server.pem", &server.cert_pem),
        write("server.key", &server.key_pem),
        write("ca.pem", &ca.pem),
    );
    let upstream = Process::start(
        "tls-upstream",
        &gw_e2e::binary("echo-upstream"),
        &[
            "--addr",
            "127.0.0.1:0",
            "--name",
            "secure",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &client_ca,
        ]
        .map(String::from),
        &[],
    );
    let url = format!("https://{}", upstream.addr("https"));
    let ca_json = serde_json::to_string(&ca.pem).unwrap();
    let tls = format!(
        "    tls: {{ca: {ca_json}, serverName: upstream.test, clientCertificate: gateway}}\n"
    );
    let yaml = [
        api_yaml("secure", "/secure", &url)
            + &tls
            + "    healthCheck: {path: /_echo/health, interval: 1s}\n",
        api_yaml("secure-h2", "/h2", &url) + &tls + "    protocol: h2\n",
        // the system's CAs do not know the test CA
        api_yaml("untrusted", "/untrusted", &url) + "    tls: {serverName: upstream.test}\n",
        // the upstream requires a client certificate
        api_yaml("anonymous", "/anonymous", &url)
            + &format!("    tls: {{ca: {ca_json}, serverName: upstream.test}}\n"),
        // the certificate is for upstream.test, not for the IP address
        api_yaml("wrong-name", "/wrong-name", &url) + &format!("    tls: {{ca: {ca_json}}}\n"),
        certificate_document("gateway", &client_cert, &[]),
    ]
    .join("---\n");
    let (runtime, config) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let http = reqwest::Client::new();

    let (status, body) = gw_e2e::call(&http, proxy, "/secure/hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "secure");
    assert_eq!(body["tls"]["serverName"], "upstream.test");
    assert_eq!(body["tls"]["alpn"], "http/1.1");
    assert_eq!(body["tls"]["clientCertificate"], true);

    let (status, body) = gw_e2e::call(&http, proxy, "/h2/hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tls"]["alpn"], "h2");
    assert_eq!(body["version"], "HTTP/2.0");

    // each refused for its own reason, which the runtime logs
    for (path, cause) in [
        ("/untrusted/x", "UnknownIssuer"),
        ("/wrong-name/x", "not valid for name"),
        ("/anonymous/x", "CertificateRequired"),
    ] {
        let (status, body) = gw_e2e::call(&http, proxy, path).await;
        assert_eq!(status, 502, "{path}: {body}");
        // the log line reaches the harness through a pipe, maybe after the answer
        eventually(
            &format!("{cause} in the log"),
            Duration::from_secs(10),
            || async { runtime.logged(cause) },
        )
        .await;
    }

    // the health check probes over TLS too
    eventually(
        "a health probe over TLS",
        Duration::from_secs(20),
        || async {
            let (_, stats) = gw_e2e::call(&http, proxy, "/secure/_echo/stats").await;
            stats["healthProbes"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;

    // the client certificate is renewed by another CA, which the upstream does not trust:
    // the API is rebuilt with it, and its requests are refused from then on
    let stranger = TestCa::new("another CA").issue(&["gateway.test"], 12, 2030);
    let renewed = yaml.replace(
        &certificate_document("gateway", &client_cert, &[]),
        &certificate_document("gateway", &stranger, &[]),
    );
    assert_ne!(renewed, yaml);
    std::fs::write(config.path().join("apis.yaml"), renewed).unwrap();
    runtime.reload();
    eventually(
        "the renewed client certificate in use",
        Duration::from_secs(20),
        || async { gw_e2e::call(&http, proxy, "/h2/hello").await.0 == 502 },
    )
    .await;
}
