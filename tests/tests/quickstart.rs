//! The README's quickstart, step by step: the all-in-one gateway in development mode, the
//! echo upstream, the example API deployed with the README's request, and a call through.
//! And its standalone mode: the example file `examples/standalone.yaml`, every kind in it
//! served.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use gw_e2e::cluster::free_port;
use gw_e2e::{
    Admin, ControllerSpec, TestDatabase, binary, call, controller, echo_upstream, eventually,
    file_runtime,
};

#[tokio::test]
async fn readme_quickstart() {
    // the echo upstream, on a free port (the example points at 9001; the test rewrites that)
    let mut echo = Command::new(binary("echo-upstream"))
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(echo.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let echo_addr = line.trim().rsplit(' ').next().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let ctl = controller(
        &ControllerSpec {
            database_url: None,
            dev: true,
            all_in_one: true,
            node_id: "quickstart".into(),
        },
        dir.path(),
    );
    let admin = Admin::new(ctl.addr("admin"), None);
    admin.wait_ready().await;
    // before the deploy the runtime serves the controller's configuration, which has no API:
    // not ready, and it says why in those words
    let client = reqwest::Client::new();
    let status = ctl.addr("status");
    eventually(
        "the empty configuration to be applied",
        Duration::from_secs(10),
        || async {
            let (code, ready) = call(&client, status, "/status/ready").await;
            code == 503 && ready["reason"] == "no API in the configuration served"
        },
    )
    .await;

    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/orders-api.yaml"
    ))
    .unwrap();
    assert!(example.contains("http://127.0.0.1:9001/api"));
    let example = example.replace("127.0.0.1:9001", &echo_addr);
    let response = admin.put_api("orders", &example, "").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let proxy = ctl.addr("proxy");
    eventually("the API to be served", Duration::from_secs(10), || async {
        call(&client, proxy, "/orders/v1/items/42").await.0 == 200
    })
    .await;
    let (_, seen) = call(&client, proxy, "/orders/v1/items/42").await;
    assert_eq!(seen["path"], "/api/items/42");
    assert_eq!(seen["method"], "GET");
    // an operation the API does not declare
    assert_eq!(call(&client, proxy, "/orders/v1/other").await.0, 404);
    assert_eq!(call(&client, status, "/status/ready").await.0, 200);
    let _ = echo.kill();
    let _ = echo.wait();
}

/// The README's "Standalone mode": `gw-runtime --config examples/standalone.yaml` serves the
/// open API, the partner API to the example consumer's key only (and rate-limited), and
/// HTTPS with the example certificate.
#[tokio::test]
async fn readme_standalone_example() {
    let echo = echo_upstream("echo");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/standalone.yaml"
    ))
    .unwrap();
    assert!(example.contains("http://127.0.0.1:9001/"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("standalone.yaml");
    std::fs::write(
        &config,
        example.replace("127.0.0.1:9001", &echo.addr("http").to_string()),
    )
    .unwrap();
    let runtime = file_runtime(
        "standalone",
        &config,
        &dir.path().join("data"),
        &["--https-addr", "127.0.0.1:0"],
    );
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();

    let (status, seen) = call(&client, proxy, "/orders/v1/items/42").await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/api/items/42");

    let partners = format!("http://{proxy}/partners/v1/reports/7");
    let without = client.get(&partners).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let key = "acme-example-key-0123456789";
    assert!(example.contains(key), "the README quotes this key");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = client
            .get(&partners)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    // 5 a second per consumer: the first five pass (a slow machine may refill one)
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");

    // HTTPS for localhost, with the example certificate as the only trusted root
    let start = example.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end =
        example.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let mut pem = String::new();
    for line in example[start..end].lines() {
        pem.push_str(line.trim());
        pem.push('\n');
    }
    let https = runtime.addr("https");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .resolve("localhost", https)
        .build()
        .unwrap();
    let response = client
        .get(format!(
            "https://localhost:{}/orders/v1/items/1",
            https.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The README's high-availability walk on one machine, run as written: its shell blocks,
/// pasted into bash in order, with only the ports, the database and the binaries' directory
/// swapped for the test's own. Two controllers on one PostgreSQL database, two runtimes, a
/// deploy through one controller served by both runtimes, a controller stopped, a delete
/// that still reaches both.
#[tokio::test]
async fn readme_high_availability_on_one_machine() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("## High availability with PostgreSQL")
        .expect("the README's HA section");
    let end = start
        + readme[start..]
            .find("**Across machines**")
            .expect("the one-machine part ends where the multi-host one starts");
    let mut script = String::from("set -e\n");
    for block in readme[start..end].split("```sh\n").skip(1) {
        script.push_str(block.split("```").next().unwrap());
    }
    assert!(
        script.contains("kill $CTL_A"),
        "the walk stops a controller:\n{script}"
    );

    // the database: the test's own instead of the README's `gw`, created here
    let db = TestDatabase::create().await;
    let create = "psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE gw'";
    assert!(script.contains(create), "{script}");
    script = script.replace(create, "true");
    let url = "GW_DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw";
    assert!(script.contains(url), "{script}");
    script = script.replace(url, &format!("GW_DATABASE_URL={}", db.url()));
    // ports: the test's own free ones
    for port in [9090, 9091, 18000, 18001, 8080, 8081, 7085, 7086] {
        let written = format!("127.0.0.1:{port}");
        assert!(script.contains(&written), "{written} in:\n{script}");
        script = script.replace(&written, &format!("127.0.0.1:{}", free_port()));
    }
    // every port was written as an address, so none escaped the swap
    for port in [
        "9090", "9091", "18000", "18001", "8080", "8081", "7085", "7086",
    ] {
        assert!(!script.contains(port), "port {port} left in:\n{script}");
    }
    // stop whatever the walk left running
    script.push_str("\nkill $(jobs -p) 2>/dev/null || true\nwait\n");

    // a directory laid out like the repository: target/release holds this build's binaries,
    // and the example API points at the test's echo upstream
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_upstream("echo");
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(
        binary("gw-controller").parent().unwrap(),
        dir.path().join("target/release"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/orders-api.yaml"
    ))
    .unwrap();
    std::fs::write(
        dir.path().join("examples/orders-api.yaml"),
        example.replace("127.0.0.1:9001", &echo.addr("http").to_string()),
    )
    .unwrap();

    let output = tokio::process::Command::new("timeout")
        .args(["120", "bash", "-c", &script])
        .current_dir(dir.path())
        .env_remove("GW_ADMIN_TOKEN")
        .env_remove("GW_SYNC_TOKEN")
        .env_remove("GW_ENCRYPTION_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs = ["ctl-a", "ctl-b", "rt-1", "rt-2"]
        .map(|name| {
            std::fs::read_to_string(dir.path().join(format!("ha/{name}.log"))).unwrap_or_default()
        })
        .join("\n");
    let context = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{}\nlogs:\n{logs}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{context}");
    // the deploy answered once both runtimes applied it, and both served it
    assert!(stdout.contains(r#""applied":["rt-1","rt-2"]"#), "{context}");
    assert_eq!(
        stdout.matches(r#""path":"/api/items/42""#).count(),
        2,
        "{context}"
    );
    // after ctl-a stopped: the delete reached both runtimes, through ctl-b
    assert!(
        stdout.contains(r#"{"applied":["rt-1","rt-2"],"deleted":true"#),
        "{context}"
    );
    assert!(stdout.contains(r#""code":"no_route""#), "{context}");
}
