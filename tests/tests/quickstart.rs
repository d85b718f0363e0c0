//! The README's quickstart, step by step: the all-in-one gateway in development mode, the
//! echo upstream, the example API deployed with the README's request, and a call through.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use gw_e2e::{Admin, ControllerSpec, binary, call, controller, eventually};

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

    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/orders-api.yaml"
    ))
    .unwrap();
    assert!(example.contains("http://127.0.0.1:9001/api"));
    let example = example.replace("127.0.0.1:9001", &echo_addr);
    let response = admin.put_api("orders", &example, "").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let client = reqwest::Client::new();
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
    let _ = echo.kill();
    let _ = echo.wait();
}
