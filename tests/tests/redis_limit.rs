//! `rate-limit` with `backend: redis` through real runtimes: one limit for the whole
//! cluster, and what happens when Redis goes away and comes back.
//!
//! The first test uses the Redis of the test machine (`GW_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379/0`) under a key prefix of its own; the second starts and kills a
//! `redis-server` of its own on a free port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gw_e2e::{Upstream, eventually, standalone};

/// The Redis the first test uses.
fn redis_url() -> String {
    std::env::var("GW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A key prefix no other run uses.
fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("gw:e2e:{}:{nanos}:", std::process::id())
}

/// An API document named `name` at `/name` in front of `upstream`, with a `rate-limit` of
/// `params` (YAML flow mapping entries).
fn api(name: &str, upstream: &Upstream, params: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {name}}}\nspec:\n  context: /{name}\n  upstream:\n    endpoints: [{{url: '{}'}}]\n  policies:\n    - name: rate-limit\n      params: {{{params}}}\n---\n",
        upstream.url("/")
    )
}

/// `GET url`: the status, the headers, and the JSON body (`Null` if none); status 0 when
/// the gateway does not answer.
async fn get(
    client: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json().await.unwrap_or(serde_json::Value::Null);
            (status, headers, body)
        }
        Err(_) => (
            0,
            reqwest::header::HeaderMap::new(),
            serde_json::Value::Null,
        ),
    }
}

/// Sends 3N requests to `path`, request `i` through `proxies[i % 2]`, one after the other
/// or all at once; asserts that exactly N pass (less the refill, see below) and the rest
/// get 429. Returns how many passed through each runtime.
async fn alternate(
    client: &reqwest::Client,
    proxies: [std::net::SocketAddr; 2],
    path: &str,
    n: usize,
    at_once: bool,
) -> [usize; 2] {
    let send = |i: usize| {
        let url = format!("http://{}{path}", proxies[i % 2]);
        async move { (i % 2, get(client, &url).await.0) }
    };
    let start = Instant::now();
    let statuses = if at_once {
        futures_util::future::join_all((0..3 * n).map(send)).await
    } else {
        let mut statuses = Vec::new();
        for i in 0..3 * n {
            statuses.push(send(i).await);
        }
        statuses
    };
    let elapsed = start.elapsed();
    let passed = |runtime: usize| {
        statuses
            .iter()
            .filter(|&&(r, status)| r == runtime && status == 200)
            .count()
    };
    let ok = passed(0) + passed(1);
    let limited = statuses.iter().filter(|&&(_, s)| s == 429).count();
    eprintln!(
        "cluster-wide ({}): {ok} of {} requests passed ({} through a, {} through b), \
         {limited} got 429, in {elapsed:?}",
        if at_once {
            "all at once"
        } else {
            "one after the other"
        },
        3 * n,
        passed(0),
        passed(1)
    );
    assert_eq!(ok + limited, 3 * n, "only 200s and 429s: {statuses:?}");
    // one atomic script per request: no race between the runtimes. The only tolerance is
    // the refill: one more request per T = window / N that the requests themselves took.
    let refilled = usize::try_from(elapsed.as_secs() / 3).unwrap_or(usize::MAX);
    assert!(
        (n..=n + refilled).contains(&ok),
        "{ok} passed, {n} expected (+{refilled} refilled)"
    );
    [passed(0), passed(1)]
}

#[tokio::test]
async fn a_limit_holds_for_the_whole_cluster() {
    const N: usize = 20;
    let upstream = Upstream::start("u").await;
    let prefix = unique_prefix();
    let limit = |n: usize| {
        format!(
            "key: api, backend: redis, limits: [{{requests: {n}, window: minute}}], \
             redis: {{url: '{}', keyPrefix: '{prefix}', timeout: 2s}}",
            redis_url()
        )
    };
    // `warm` makes both runtimes connect to Redis (the connection is per URL, shared by
    // the APIs) before the others are measured; T = 60s / 20 = 3s for both
    let yaml = [
        api("warm", &upstream, &limit(1000)),
        api("sequential", &upstream, &limit(N)),
        api("burst", &upstream, &limit(N)),
    ]
    .concat();
    let (a, _a_dir) = standalone(&yaml, &[]);
    let (b, _b_dir) = standalone(&yaml, &[]);
    let proxies = [a.addr("proxy"), b.addr("proxy")];
    let client = reqwest::Client::new();
    for proxy in proxies {
        assert_eq!(get(&client, &format!("http://{proxy}/warm/x")).await.0, 200);
    }

    let [through_a, through_b] = alternate(&client, proxies, "/sequential/x", N, false).await;
    // one after the other, alternating: each runtime let through half the limit
    assert_eq!((through_a, through_b), (N / 2, N / 2));
    alternate(&client, proxies, "/burst/x", N, true).await;

    // and both runtimes see each count used up
    for proxy in proxies {
        for path in ["/sequential/x", "/burst/x"] {
            let (status, headers, body) = get(&client, &format!("http://{proxy}{path}")).await;
            assert_eq!(status, 429, "{body}");
            assert_eq!(headers["ratelimit-limit"], "20");
            assert_eq!(headers["ratelimit-remaining"], "0");
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
}

/// A `redis-server` of the test's own, on 127.0.0.1, with a password and no persistence;
/// killed when dropped.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: &'static str,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port.
    fn start(password: &'static str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        assert_ne!(port, 6379, "never the shared server's port");
        let mut server = Self {
            child: None,
            port,
            password,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.restart();
        server
    }

    /// (Re)starts the server on its port and waits until it answers.
    fn restart(&mut self) {
        self.kill();
        gw_e2e::cluster::ensure_peer("redis-server");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", self.password])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_outage_falls_back_or_refuses_then_recovers() {
    const PASSWORD: &str = "e2e-redis-pass-7f3a";
    let mut redis = RedisServer::start(PASSWORD);
    let upstream = Upstream::start("u").await;
    let redis_params = format!(
        "redis: {{url: '{}', keyPrefix: '{}', timeout: 200ms}}",
        redis.url(),
        unique_prefix()
    );
    let yaml = [
        api(
            "open",
            &upstream,
            &format!(
                "key: api, backend: redis, failOpen: true, \
                 limits: [{{requests: 5, window: hour}}], {redis_params}"
            ),
        ),
        api(
            "closed",
            &upstream,
            &format!(
                "key: api, backend: redis, failOpen: false, \
                 limits: [{{requests: 1000, window: minute}}], {redis_params}"
            ),
        ),
    ]
    .concat();
    let (runtime, _dir) = standalone(&yaml, &[]);
    let proxy = runtime.addr("proxy");
    let client = reqwest::Client::new();
    let open = format!("http://{proxy}/open/x");
    let closed = format!("http://{proxy}/closed/x");

    // Redis up: both count in Redis; the open API uses 2 of its 5
    for remaining in ["4", "3"] {
        let (status, headers, body) = get(&client, &open).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["ratelimit-remaining"], remaining);
    }
    assert_eq!(get(&client, &closed).await.0, 200);

    redis.kill();

    // not failOpen: 503 rate_limit_unavailable
    eventually(
        "the closed API to answer 503",
        Duration::from_secs(30),
        || async { get(&client, &closed).await.0 == 503 },
    )
    .await;
    let (status, _, body) = get(&client, &closed).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "rate_limit_unavailable");

    // failOpen: this runtime's own limit, from a fresh local count: 5, then 429
    for remaining in ["4", "3", "2", "1", "0"] {
        let (status, headers, body) = get(&client, &open).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["ratelimit-remaining"], remaining);
    }
    let (status, _, body) = get(&client, &open).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");

    redis.restart();

    // both recover by themselves; the open API's local count is used up, so a 200 there
    // comes from Redis (empty after the restart: a fresh count of 5)
    eventually(
        "the closed API to recover",
        Duration::from_secs(30),
        || async { get(&client, &closed).await.0 == 200 },
    )
    .await;
    eventually(
        "the open API to count in Redis again",
        Duration::from_secs(30),
        || async { get(&client, &open).await.0 == 200 },
    )
    .await;
    let (status, headers, _) = get(&client, &open).await;
    assert_eq!(status, 200);
    assert_eq!(headers["ratelimit-remaining"], "3");

    // each transition logged once, for the one connection both APIs share; never the
    // password
    let log = runtime.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("Redis is unavailable"), 1, "{log}");
    assert_eq!(count("Redis is available again"), 1, "{log}");
    assert!(log.contains("redis://***@127.0.0.1"), "{log}");
    assert!(!log.contains(PASSWORD), "the password was logged");
}
