//! The custom runtime end to end, built on its own (a workspace build would unify its
//! features with the stock binaries' and give it every policy): in standalone mode it
//! serves an API behind `api-key`, and it refuses a configuration that names `jwt`, a
//! policy it was built without, saying so.

use std::path::Path;
use std::time::Duration;

use gw_e2e::{Process, Upstream, binary_alone, eventually, runtime_args};

/// The custom runtime serving the JSON file `config`.
fn start(config: &Path, data_dir: &Path) -> Process {
    let args = runtime_args(
        ["--config", &config.display().to_string()],
        "custom",
        data_dir,
    );
    Process::start(
        "custom",
        &binary_alone("custom-binary", "custom-binary"),
        &args,
        &[],
    )
}

/// An API on `/partners` behind `policy`, and a consumer with an API key, as JSON (this
/// build has no YAML parser).
fn config(upstream: &str, policy: &str) -> String {
    serde_json::json!([
        {
            "apiVersion": "gw/v1", "kind": "Api", "metadata": {"name": "partners"},
            "spec": {
                "context": "/partners",
                "upstream": {"endpoints": [{"url": upstream}]},
                "policies": [
                    {"name": policy},
                    {"name": "rate-limit", "params": {"limits": [{"requests": 100, "window": "second"}]}}
                ]
            }
        },
        {
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "acme"},
            "spec": {"credentials": [{"type": "api-key", "id": "k1", "key": "acme-example-key-0123456789"}]}
        }
    ])
    .to_string()
}

#[tokio::test]
async fn serves_its_policies_and_refuses_the_others() {
    let upstream = Upstream::start("partners").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apis.json");
    std::fs::write(&file, config(&upstream.url("/"), "api-key")).unwrap();
    let runtime = start(&file, &dir.path().join("data"));
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();
    let get = |key: Option<&'static str>| {
        let mut request = client.get(format!("http://{proxy}/partners/reports/1"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
    };
    eventually("the API to be served", Duration::from_secs(30), || async {
        get(None).await == 401
    })
    .await;
    assert_eq!(get(Some("acme-example-key-0123456789")).await, 200);
    assert_eq!(get(Some("not-the-key-0123456789")).await, 401);

    // jwt was left out of this build: a configuration that names it is refused at start
    let refused_dir = tempfile::tempdir().unwrap();
    let refused_file = refused_dir.path().join("apis.json");
    std::fs::write(&refused_file, config(&upstream.url("/"), "jwt")).unwrap();
    let mut refused = start(&refused_file, &refused_dir.path().join("data"));
    let code = refused.wait_exit(Duration::from_mins(1));
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let log = refused.log();
    assert!(
        log.contains("unknown policy")
            && log.contains("it is not compiled into this build of gw")
            && log.contains("`jwt` feature is off"),
        "{log}"
    );
}
