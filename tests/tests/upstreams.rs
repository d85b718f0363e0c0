//! Upstream behaviour end to end: a real gw-runtime (standalone, config file) in front of
//! real `echo-upstream` processes that the tests stop, restart and make misbehave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gw_e2e::{Process, echo_upstream, eventually};

const DEADLINE: Duration = Duration::from_secs(20);

fn write_config(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An API on `context` balancing over `endpoints` (`url` lines), with extra `upstream` YAML.
fn api(name: &str, context: &str, endpoints: &[String], upstream: &str) -> String {
    let list = endpoints.iter().fold(String::new(), |mut list, e| {
        list.push_str("      - ");
        list.push_str(e);
        list.push('\n');
        list
    });
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: {context}\n  upstream:\n    endpoints:\n{list}{upstream}"
    )
}

fn endpoint(upstream: &Process, weight: u32) -> String {
    format!(
        "{{url: 'http://{}', weight: {weight}}}",
        upstream.addr("http")
    )
}

struct Gateway {
    runtime: Process,
    client: reqwest::Client,
    proxy: SocketAddr,
    status: SocketAddr,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Gateway {
    fn start(yaml: &str) -> Self {
        let (runtime, dir) = gw_e2e::standalone(yaml, &[]);
        Self {
            proxy: runtime.addr("proxy"),
            status: runtime.addr("status"),
            runtime,
            client: reqwest::Client::new(),
            config: dir.path().join("apis.yaml"),
            _dir: dir,
        }
    }

    /// Sends a request; the status and the answering upstream's name (or the error code).
    async fn send(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        self.send_with(method, path, &[]).await
    }

    async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.proxy));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let who = body["upstream"]
            .as_str()
            .or(body["error"]["code"].as_str())
            .unwrap_or("")
            .to_string();
        (status, who)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(reqwest::Method::GET, path).await
    }

    /// The value of the first metric line that starts with `name` and contains every one
    /// of `labels`.
    async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.status))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
            .find_map(|line| line.rsplit(' ').next()?.parse().ok())
    }

    async fn apis(&self) -> u64 {
        let response = self
            .client
            .get(format!("http://{}/status/ready", self.status))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        body["apis"].as_u64().unwrap_or(0)
    }
}

/// Asks an echo upstream directly (not through the gateway).
async fn control(upstream: &Process, method: reqwest::Method, path: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .request(method, format!("http://{}{path}", upstream.addr("http")))
        .send()
        .await
        .expect("the upstream answers");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or_default()
}

fn tally(answers: &[(u16, String)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (status, who) in answers {
        assert_eq!(*status, 200, "answer from {who}");
        *counts.entry(who.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn load_balancing_algorithms_distribute_as_configured() {
    let ups = [echo_upstream("a"), echo_upstream("b"), echo_upstream("c")];
    let weighted: Vec<String> = ups
        .iter()
        .zip([1, 2, 3])
        .map(|(u, w)| endpoint(u, w))
        .collect();
    let even: Vec<String> = ups.iter().map(|u| endpoint(u, 1)).collect();
    let yaml = [
        api("rr", "/rr", &weighted, ""),
        api(
            "lr",
            "/lr",
            &even,
            "    loadBalancing: {algorithm: least-request}\n",
        ),
        api(
            "hash",
            "/hash",
            &even,
            "    loadBalancing: {algorithm: consistent-hash, hashOn: {header: x-user}}\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::start(&yaml);

    // smooth weighted round robin is exact over whole cycles of sequential requests
    let mut answers = Vec::new();
    for _ in 0..600 {
        answers.push(gw.get("/rr/x").await);
    }
    let counts = tally(&answers);
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (100, 200, 300),
        "{counts:?}"
    );
    // ... and spreads a heavy endpoint's turns: never more than 3 turns in a row for c
    let longest_run = answers
        .windows(4)
        .filter(|w| w.iter().all(|(_, who)| who == "c"))
        .count();
    assert_eq!(longest_run, 0, "c got 4 turns in a row");

    // least request with nothing in flight: the random pick of two spreads evenly; with
    // 300 requests over 3 endpoints each expects 100 (standard deviation about 8)
    let mut answers = Vec::new();
    for _ in 0..300 {
        answers.push(gw.get("/lr/x").await);
    }
    let counts = tally(&answers);
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{counts:?}");
    }

    // consistent hash: a user always lands on the same endpoint; users spread out
    let mut homes = HashMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let id = format!("user-{user}");
            let (status, who) = gw
                .send_with(reqwest::Method::GET, "/hash/x", &[("x-user", &id)])
                .await;
            assert_eq!(status, 200);
            let home = homes.entry(id).or_insert_with(|| who.clone());
            assert_eq!(*home, who, "round {round}: user {user} moved");
        }
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(used.len(), 3, "40 users on {used:?}");
}

#[tokio::test]
async fn a_killed_endpoint_is_retried_ejected_and_brought_back() {
    let mut a = echo_upstream("a");
    let b = echo_upstream("b");
    let a_addr = a.addr("http");
    let a_label = format!("endpoint=\"http://{a_addr}\"");
    let yaml = api(
        "shop",
        "/shop",
        &[endpoint(&a, 1), endpoint(&b, 1)],
        "    timeouts: {connect: 1s}\n    outlierDetection: {consecutiveFailures: 2, baseEjection: 300ms, maxEjection: 1s}\n",
    );
    let gw = Gateway::start(&yaml);
    let answers: Vec<_> = futures_collect(&gw, 20, reqwest::Method::GET).await;
    let counts = tally(&answers);
    assert_eq!((counts["a"], counts["b"]), (10, 10));

    a.kill();
    // zero client-visible errors: connect failures and resets are retried on b
    let answers = futures_collect(&gw, 200, reqwest::Method::GET).await;
    let counts = tally(&answers);
    assert_eq!(counts.get("b"), Some(&200), "{counts:?}");
    // a request that never reached the upstream is retried whatever its method
    let answers = futures_collect(&gw, 20, reqwest::Method::POST).await;
    assert_eq!(tally(&answers).get("b"), Some(&20));
    let ejections = gw
        .metric("gw_upstream_ejections_total", &[&a_label])
        .await
        .unwrap_or(0.0);
    assert!(ejections >= 1.0, "a was not ejected ({ejections})");
    let retries = gw
        .metric("gw_upstream_retries_total", &["api=\"shop\""])
        .await
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "no retry counted");
    // ejected: most requests did not even try a (each ejection ends after at most 1 s and
    // costs two failed connects before the next one)
    let connect_errors = gw
        .metric("gw_upstream_errors_total", &[&a_label, "kind=\"connect\""])
        .await
        .unwrap_or(0.0);
    assert!(
        connect_errors < 110.0,
        "{connect_errors} connects tried on a dead endpoint in 220 requests"
    );

    a.restart(&[("--addr", a_addr.to_string())]);
    eventually("a takes traffic again", DEADLINE, || async {
        let (status, who) = gw.get("/shop/x").await;
        assert_eq!(status, 200);
        who == "a"
    })
    .await;
    eventually("a is reported healthy", DEADLINE, || async {
        gw.metric("gw_upstream_endpoint_healthy", &[&a_label]).await == Some(1.0)
    })
    .await;
}

/// `n` sequential requests with `method` to `/shop/x`.
async fn futures_collect(gw: &Gateway, n: usize, method: reqwest::Method) -> Vec<(u16, String)> {
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        answers.push(gw.send(method.clone(), "/shop/x").await);
    }
    answers
}

#[tokio::test]
async fn listed_statuses_are_retried_for_safe_requests_only() {
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    control(&a, reqwest::Method::POST, "/_echo/respond?status=503").await;
    let yaml = api(
        "shop",
        "/shop",
        &[endpoint(&a, 1), endpoint(&b, 1)],
        "    retries: {attempts: 1, statuses: [503], budgetPercent: 100}\n    outlierDetection: {consecutiveFailures: 0}\n",
    );
    let gw = Gateway::start(&yaml);
    let answers = futures_collect(&gw, 20, reqwest::Method::GET).await;
    assert_eq!(tally(&answers).get("b"), Some(&20));

    // a POST that reached a is not repeated: a's 503 goes to the client
    let answers = futures_collect(&gw, 20, reqwest::Method::POST).await;
    let from_a: Vec<_> = answers.iter().filter(|(_, who)| who == "a").collect();
    assert!(!from_a.is_empty(), "{answers:?}");
    assert!(
        from_a.iter().all(|(status, _)| *status == 503),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(status, who)| (who == "b") == (*status == 200)),
        "{answers:?}"
    );
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back_and_stop_with_their_config() {
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let a_label = format!("endpoint=\"http://{}\"", a.addr("http"));
    let health = "    outlierDetection: {consecutiveFailures: 0}\n    healthCheck: {path: /_echo/health, interval: 100ms, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 2}\n";
    let yaml = api("shop", "/shop", &[endpoint(&a, 1), endpoint(&b, 1)], health);
    let gw = Gateway::start(&yaml);
    eventually("a is probed", DEADLINE, || async {
        control(&a, reqwest::Method::GET, "/_echo/stats").await["healthProbes"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    })
    .await;

    control(&a, reqwest::Method::POST, "/_echo/health?status=503").await;
    eventually("a is reported unhealthy", DEADLINE, || async {
        gw.metric("gw_upstream_endpoint_healthy", &[&a_label]).await == Some(0.0)
    })
    .await;
    let answers = futures_collect(&gw, 20, reqwest::Method::GET).await;
    assert_eq!(tally(&answers).get("b"), Some(&20));

    // no healthy endpoint at all: 503 at once
    control(&b, reqwest::Method::POST, "/_echo/health?status=500").await;
    eventually("every endpoint is out", DEADLINE, || async {
        gw.get("/shop/x").await == (503, "no_healthy_endpoint".to_string())
    })
    .await;

    control(&a, reqwest::Method::POST, "/_echo/health?status=200").await;
    control(&b, reqwest::Method::POST, "/_echo/health?status=200").await;
    eventually("a takes traffic again", DEADLINE, || async {
        gw.get("/shop/x").await == (200, "a".to_string())
    })
    .await;

    // the configuration that owns the checks is replaced: its probes stop
    let other = echo_upstream("other");
    write_config(
        &gw.config,
        &api("other", "/other", &[endpoint(&other, 1)], ""),
    );
    eventually("the new configuration is applied", DEADLINE, || async {
        gw.get("/other/x").await == (200, "other".to_string())
    })
    .await;
    let probes = || async {
        control(&a, reqwest::Method::GET, "/_echo/stats").await["healthProbes"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = probes().await;
    // an observation window of ten probe intervals (not a synchronization sleep)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probes().await;
    assert!(
        after <= before + 1,
        "a replaced configuration still probes: {before} then {after}"
    );
    assert_eq!(gw.apis().await, 1);
    drop(gw.runtime);
}

#[tokio::test]
async fn the_circuit_breaker_answers_503_at_once_beyond_its_limits() {
    let a = echo_upstream("a");
    let yaml = api(
        "shop",
        "/shop",
        &[endpoint(&a, 1)],
        "    circuitBreaker: {maxConnections: 1, maxPending: 0}\n",
    );
    let gw = std::sync::Arc::new(Gateway::start(&yaml));
    let slow = hold_the_connection(&gw, &a, "8000").await;
    assert_eq!(gw.get("/shop/x").await, (503, "circuit_open".to_string()));
    let overflows = gw
        .metric("gw_upstream_overflows_total", &["api=\"shop\""])
        .await;
    assert_eq!(overflows, Some(1.0));
    assert_eq!(slow.await.unwrap(), (200, "a".to_string()));
    // the connection is free again
    assert_eq!(gw.get("/shop/x").await, (200, "a".to_string()));
}

#[tokio::test]
async fn configuration_swaps_under_load_drop_nothing() {
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let config_for = |up: &Process| api("shop", "/shop", &[endpoint(up, 1)], "");
    let gw = std::sync::Arc::new(Gateway::start(&config_for(&a)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // four clients with keep-alive connections, some requests slow enough to be in flight
    // across a swap
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let gw = std::sync::Arc::clone(&gw);
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && answers.len() < 20_000 {
                    let delay = if i == 0 { "200" } else { "0" };
                    answers.push(
                        gw.send_with(
                            reqwest::Method::GET,
                            "/shop/x",
                            &[("x-echo-delay-ms", delay)],
                        )
                        .await,
                    );
                }
                answers
            })
        })
        .collect();
    for (round, target) in ["b", "a", "b", "a"].into_iter().enumerate() {
        let up = if target == "a" { &a } else { &b };
        write_config(&gw.config, &config_for(up));
        eventually(&format!("swap {round} to {target}"), DEADLINE, || async {
            gw.get("/shop/x").await == (200, target.to_string())
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let answers = client.await.unwrap();
        total += answers.len();
        let failed: Vec<_> = answers
            .iter()
            .filter(|(status, _)| *status != 200)
            .collect();
        assert!(failed.is_empty(), "failed during swaps: {failed:?}");
    }
    assert!(total > 40, "only {total} requests were sent");
}

#[tokio::test]
async fn the_host_header_follows_the_configured_mode() {
    let a = echo_upstream("a");
    let yaml = [
        api("plain", "/plain", &[endpoint(&a, 1)], ""),
        api(
            "keep",
            "/keep",
            &[endpoint(&a, 1)],
            "    hostHeader: preserve\n",
        ),
        api(
            "fixed",
            "/fixed",
            &[endpoint(&a, 1)],
            "    hostHeader: {rewrite: orders.internal}\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::start(&yaml);
    let host_seen = |path: &'static str| {
        let gw = &gw;
        async move {
            let response = gw
                .client
                .get(format!("http://{}{path}", gw.proxy))
                .header("host", "api.example.com")
                .send()
                .await
                .unwrap();
            let json: serde_json::Value = response.json().await.unwrap();
            (
                json["headers"]["host"].as_str().unwrap_or("").to_string(),
                json["headers"]["x-forwarded-host"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        }
    };
    let endpoint_host = a.addr("http").to_string();
    assert_eq!(
        host_seen("/plain/x").await,
        (endpoint_host, "api.example.com".to_string())
    );
    assert_eq!(
        host_seen("/keep/x").await,
        ("api.example.com".to_string(), "api.example.com".to_string())
    );
    assert_eq!(
        host_seen("/fixed/x").await,
        ("orders.internal".to_string(), "api.example.com".to_string())
    );
}

/// Two APIs in front of the same plain-HTTP endpoint share its idle connections: one
/// connection serves both, one request after the other.
#[tokio::test]
async fn apis_at_the_same_address_share_idle_connections() {
    let a = echo_upstream("a");
    let label = format!("endpoint=\"http://{}\"", a.addr("http"));
    let yaml = format!(
        "{}---\n{}",
        api("shop", "/shop", &[endpoint(&a, 1)], ""),
        api("cart", "/cart", &[endpoint(&a, 1)], "")
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..3 {
        assert_eq!(gw.get("/shop/x").await, (200, "a".to_string()));
        assert_eq!(gw.get("/cart/x").await, (200, "a".to_string()));
    }
    // a connection counts for the API that holds it: cart, which used it last
    let held = |api: &'static str| {
        let gw = &gw;
        let label = label.clone();
        async move {
            gw.metric(
                "gw_upstream_connections",
                &[&format!("api=\"{api}\""), &label],
            )
            .await
        }
    };
    assert_eq!(held("shop").await, Some(0.0));
    assert_eq!(held("cart").await, Some(1.0));
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let a = echo_upstream("a");
    let label = format!("endpoint=\"http://{}\"", a.addr("http"));
    let yaml = api(
        "shop",
        "/shop",
        &[endpoint(&a, 1)],
        "    timeouts: {idle: 1s}\n",
    );
    let gw = Gateway::start(&yaml);
    assert_eq!(gw.get("/shop/x").await, (200, "a".to_string()));
    assert_eq!(
        gw.metric("gw_upstream_connections", &[&label]).await,
        Some(1.0)
    );
    eventually("the idle connection is closed", DEADLINE, || async {
        gw.metric("gw_upstream_connections", &[&label]).await == Some(0.0)
    })
    .await;
    // and a new one is opened for the next request
    assert_eq!(gw.get("/shop/x").await, (200, "a".to_string()));
}

#[tokio::test]
async fn a_request_waiting_at_the_connection_limit_gets_the_released_connection() {
    let a = echo_upstream("a");
    let yaml = api(
        "shop",
        "/shop",
        &[endpoint(&a, 1)],
        "    circuitBreaker: {maxConnections: 1, maxPending: 1}\n",
    );
    let gw = std::sync::Arc::new(Gateway::start(&yaml));
    let slow = hold_the_connection(&gw, &a, "1000").await;
    // waits for the one connection, then uses it: not 503, not a second connection
    assert_eq!(gw.get("/shop/next").await, (200, "a".to_string()));
    assert_eq!(slow.await.unwrap(), (200, "a".to_string()));
    assert_eq!(
        gw.metric("gw_upstream_overflows_total", &["api=\"shop\""])
            .await,
        Some(0.0)
    );
}

/// Sends a request that `upstream` answers after `delay_ms`, and returns once the upstream
/// has it: the request holds its connection until then.
async fn hold_the_connection(
    gw: &std::sync::Arc<Gateway>,
    upstream: &Process,
    delay_ms: &'static str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let before = control(upstream, reqwest::Method::GET, "/_echo/stats").await["requests"]
        .as_u64()
        .unwrap_or(0);
    let slow = {
        let gw = std::sync::Arc::clone(gw);
        tokio::spawn(async move {
            gw.send_with(
                reqwest::Method::GET,
                "/shop/slow",
                &[("x-echo-delay-ms", delay_ms)],
            )
            .await
        })
    };
    eventually(
        "the slow request reaches the upstream",
        DEADLINE,
        || async {
            control(upstream, reqwest::Method::GET, "/_echo/stats").await["requests"]
                .as_u64()
                .unwrap_or(0)
                > before
        },
    )
    .await;
    slow
}
