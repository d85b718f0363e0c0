//! The fault-injection suite: the HA topology on one machine, with faults injected while
//! traffic flows and deploys keep coming.
//!
//! Each case starts a PostgreSQL cluster of its own (from the local server binaries, so that
//! it can stop and start it), two controllers on it, three runtimes connected to both, an
//! upstream, continuous traffic from a bounded client loop and a deploy every 100 ms through
//! the controllers in turn. Then it injects its fault and checks what the issue promises:
//!
//! - a. kill -9 of a controller: no failed request, no acknowledged deploy lost; the
//!   runtimes reconnect to the other controller within 2 s and resume with a delta.
//! - b. PostgreSQL stopped for 10 s: no failed request; writes fail with 503
//!   `store_unavailable` only, within the store timeout; `/readyz` turns false; everything
//!   resumes without a restart.
//! - b2. one controller cut off from PostgreSQL while the other writes: when it is back, its
//!   watcher re-reads what it missed and its runtime converges.
//! - c. a runtime restarted while both controllers are down serves from its cache.
//! - d. SIGTERM of a runtime behind HAProxy checking `/status/ready`: no client-visible
//!   failure.
//! - e. every controller restarted in turn while deploying: no deploy lost, every runtime
//!   converges on the final revision.
//!
//! Each case prints its figures (`cargo test -p gw-e2e --test faults -- --nocapture`); they
//! are recorded in docs/RELIABILITY.md. The cases run one at a time: they measure timings.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gw_e2e::cluster::{HaProxy, PgCluster};
use gw_e2e::{
    Admin, ControllerSpec, Process, TOKEN, Upstream, api_yaml, call, controller_with, eventually,
    metric, runtime_with,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The store timeout the controllers run with: a write fails with 503 after it.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest any case runs its loops.
const LOOP_LIMIT: Duration = Duration::from_mins(3);

/// The cases measure timings: one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    SERIAL
        .get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// A client whose every request ends within 10 s.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

fn secs(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

/// Two controllers on a PostgreSQL cluster of the test's own, three runtimes connected to
/// both, an upstream, and the API `steady` that the traffic loop calls.
struct Fleet {
    controllers: Vec<Process>,
    admins: Vec<Admin>,
    /// Each controller's admin and sync addresses (kept across restarts).
    ports: Vec<(SocketAddr, SocketAddr)>,
    runtimes: Vec<Process>,
    up: Upstream,
    pg: PgCluster,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    /// The fleet on its own database cluster, the runtimes connected to both controllers.
    async fn start(runtime_extra: &[&str]) -> Self {
        let pg = tokio::task::block_in_place(PgCluster::start);
        Self::start_on(pg, [None, None], None, &[], runtime_extra).await
    }

    /// The fleet on `pg`. `database_urls[i]`, when given, is controller i's way to the
    /// database (a relay that can cut it off, say); with `only`, the runtimes know that one
    /// controller only.
    async fn start_on(
        pg: PgCluster,
        database_urls: [Option<String>; 2],
        only: Option<usize>,
        controller_extra: &[&str],
        runtime_extra: &[&str],
    ) -> Self {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut controllers = Vec::new();
        for (i, url) in database_urls.into_iter().enumerate() {
            let spec = ControllerSpec {
                database_url: Some(url.unwrap_or_else(|| pg.url())),
                dev: false,
                all_in_one: false,
                node_id: format!("ctl-{}", ["a", "b"][i]),
            };
            let timeout = STORE_TIMEOUT.as_millis().to_string();
            let mut extra = vec!["--store-timeout-ms", &timeout];
            extra.extend(controller_extra);
            controllers.push(controller_with(&spec, dirs[i].path(), &extra));
        }
        let admins: Vec<Admin> = controllers
            .iter()
            .map(|c| Admin::new(c.addr("admin"), Some(TOKEN)))
            .collect();
        for admin in &admins {
            admin.wait_ready().await;
        }
        let ports: Vec<_> = controllers
            .iter()
            .map(|c| (c.addr("admin"), c.addr("sync")))
            .collect();
        let syncs: Vec<SocketAddr> = match only {
            Some(i) => vec![ports[i].1],
            None => ports.iter().map(|p| p.1).collect(),
        };
        let runtimes: Vec<Process> = (0..3)
            .map(|i| {
                runtime_with(
                    &format!("rt-{}", i + 1),
                    &syncs,
                    dirs[2 + i].path(),
                    runtime_extra,
                )
            })
            .collect();
        let up = Upstream::start("up").await;
        let fleet = Self {
            controllers,
            admins,
            ports,
            runtimes,
            up,
            pg,
            _dirs: dirs,
        };
        let response = fleet.admins[0]
            .put_api(
                "steady",
                &api_yaml("steady", "/steady", &fleet.up.url("")),
                "",
            )
            .await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let client = client();
        for runtime in &fleet.runtimes {
            let proxy = runtime.addr("proxy");
            eventually(
                "every runtime to serve /steady",
                Duration::from_secs(30),
                || async { call(&client, proxy, "/steady").await.0 == 200 },
            )
            .await;
        }
        fleet
    }

    fn proxies(&self) -> Vec<SocketAddr> {
        self.runtimes.iter().map(|r| r.addr("proxy")).collect()
    }

    /// The sync address of controller `i`, as runtimes name it in their status (over TLS:
    /// the controllers serve sync from the cluster CA).
    fn sync_url(&self, i: usize) -> String {
        format!("https://{}", self.ports[i].1)
    }

    /// The controller each runtime is connected to (its index), per runtime.
    async fn connections(&self) -> Vec<Option<usize>> {
        let client = client();
        let mut out = Vec::new();
        for runtime in &self.runtimes {
            let (_, status) = call(&client, runtime.addr("status"), "/status").await;
            let to = status["sync"]["connectedTo"].as_str().unwrap_or_default();
            out.push((0..self.ports.len()).find(|&i| self.sync_url(i) == to));
        }
        out
    }

    /// Each runtime's sync session id, as the fleet view lists it (through controller 0).
    async fn sessions(&self) -> Vec<String> {
        let (status, fleet) = self.admins[0].get_json("/api/v1/runtimes").await;
        assert_eq!(status, 200, "{fleet}");
        let mut sessions: Vec<String> = fleet["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| format!("{} {}", r["nodeId"], r["sessionId"]))
            .collect();
        sessions.sort();
        assert_eq!(sessions.len(), self.runtimes.len(), "{fleet}");
        sessions
    }

    /// Restarts controller `i` on its ports after a SIGTERM and waits until it is ready.
    async fn restart_controller(&mut self, i: usize) {
        let (admin, sync) = self.ports[i];
        let controller = &mut self.controllers[i];
        let code = tokio::task::block_in_place(|| controller.terminate());
        assert_eq!(code, Some(0), "{} did not stop cleanly", "controller");
        controller.restart(&[
            ("--admin-addr", admin.to_string()),
            ("--sync-addr", sync.to_string()),
        ]);
        self.admins[i].wait_ready().await;
    }

    /// Checks that no acknowledged deploy is lost: each is in the store (through controller
    /// `via`), and every runtime serves every one of them.
    async fn check_deploys(&self, deploys: &Deploys, via: usize) {
        assert!(!deploys.acked.is_empty(), "no deploy was acknowledged");
        let admin = &self.admins[via];
        for (name, _) in &deploys.acked {
            let (status, _) = admin.get_json(&format!("/api/v1/apis/{name}")).await;
            assert_eq!(status, 200, "acknowledged deploy {name} is lost");
        }
        let newest = deploys.acked.iter().map(|d| d.1).max().unwrap_or(0);
        let client = client();
        for runtime in &self.runtimes {
            let status = runtime.addr("status");
            eventually(
                "every runtime to reach the newest acknowledged revision",
                Duration::from_secs(30),
                || async {
                    let (_, ready) = call(&client, status, "/status/ready").await;
                    ready["revision"].as_i64().unwrap_or(0) >= newest
                },
            )
            .await;
            let proxy = runtime.addr("proxy");
            for (name, _) in &deploys.acked {
                let (code, _) = call(&client, proxy, &format!("/{name}")).await;
                assert_eq!(
                    code, 200,
                    "a runtime does not serve acknowledged deploy {name}"
                );
            }
        }
    }

    /// Waits until every runtime serves the store's newest revision (read through
    /// controller `via`); returns it.
    async fn converge(&self, via: usize) -> i64 {
        let (status, list) = self.admins[via].get_json("/api/v1/apis").await;
        assert_eq!(status, 200);
        let newest = list["revision"].as_i64().expect("a revision");
        let client = client();
        for runtime in &self.runtimes {
            let status = runtime.addr("status");
            eventually(
                "every runtime to converge on the newest revision",
                Duration::from_secs(30),
                || async {
                    let (_, ready) = call(&client, status, "/status/ready").await;
                    ready["revision"].as_i64() == Some(newest)
                },
            )
            .await;
        }
        newest
    }
}

/// What the traffic loop saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// The slowest request.
    slowest: Duration,
    /// A loop stopped at its time limit, before the test stopped it.
    cut_short: bool,
    /// The first failures: when (since the loop started), where, what.
    failures: Vec<String>,
}

/// Continuous GETs of `/steady`, one loop per target, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Successful requests so far, over every loop.
    ok: Arc<AtomicU64>,
    loops: Vec<JoinHandle<Tally>>,
}

impl Traffic {
    fn start(targets: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let loops = targets
            .iter()
            .map(|&target| {
                let stop = Arc::clone(&stop);
                let ok = Arc::clone(&ok);
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOOP_LIMIT {
                        let url = format!("http://{target}/steady");
                        let sent = Instant::now();
                        let outcome = match client.get(&url).send().await {
                            Ok(response) if response.status() == 200 => response
                                .bytes()
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            Ok(response) => Err(format!("status {}", response.status())),
                            Err(err) => Err(err.to_string()),
                        };
                        tally.slowest = tally.slowest.max(sent.elapsed());
                        match outcome {
                            Ok(()) => {
                                tally.ok += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                tally.failed += 1;
                                if tally.failures.len() < 5 {
                                    tally.failures.push(format!(
                                        "{} after {}: {err}",
                                        target,
                                        secs(started.elapsed())
                                    ));
                                }
                            }
                        }
                        // a steady pace, not a flood: the controllers need the CPU too
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    tally.cut_short = !stop.load(Ordering::Relaxed);
                    tally
                })
            })
            .collect();
        Self { stop, ok, loops }
    }

    /// Waits until `count` more requests have succeeded.
    async fn wait_more(&self, count: u64) {
        let target = self.ok.load(Ordering::Relaxed) + count;
        eventually(
            "more successful requests",
            Duration::from_secs(30),
            || async { self.ok.load(Ordering::Relaxed) >= target },
        )
        .await;
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for task in self.loops {
            let tally = task.await.expect("the traffic loop");
            total.ok += tally.ok;
            total.failed += tally.failed;
            total.slowest = total.slowest.max(tally.slowest);
            total.cut_short |= tally.cut_short;
            total.failures.extend(tally.failures);
        }
        total
    }
}

/// What the deploy loop saw.
#[derive(Debug, Default)]
struct Deploys {
    /// Deploys answered 2xx: name and revision.
    acked: Vec<(String, i64)>,
    /// Failed deploys: which controller, the status (0: no answer), the error code, and how
    /// long the answer took.
    failed: Vec<(usize, u16, String, Duration)>,
}

/// A deploy of a new API every 100 ms through the controllers in turn, until stopped.
struct Deployer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Deploys>,
}

impl Deployer {
    fn start(admins: &[Admin], prefix: &'static str, upstream: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let admins = admins.to_vec();
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut deploys = Deploys::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0usize;
            while !flag.load(Ordering::Relaxed) {
                assert!(
                    started.elapsed() < LOOP_LIMIT,
                    "the deploy loop hit its time limit"
                );
                tick.tick().await;
                n += 1;
                let which = n % admins.len();
                let name = format!("{prefix}-{n}");
                let yaml = api_yaml(&name, &format!("/{name}"), &upstream);
                let sent = Instant::now();
                let response = admins[which]
                    .request(reqwest::Method::PUT, &format!("/api/v1/apis/{name}"))
                    .header("content-type", "application/yaml")
                    .body(yaml)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().is_success() => {
                        let revision = response
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim_matches('"').parse().ok())
                            .expect("a 2xx deploy carries its revision as ETag");
                        deploys.acked.push((name, revision));
                    }
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        let code = body["error"]["code"]
                            .as_str()
                            .or(body["code"].as_str())
                            .unwrap_or_default()
                            .to_string();
                        deploys.failed.push((which, status, code, sent.elapsed()));
                    }
                    Err(err) => {
                        deploys
                            .failed
                            .push((which, 0, err.to_string(), sent.elapsed()));
                    }
                }
            }
            deploys
        });
        Self { stop, task }
    }

    async fn finish(self) -> Deploys {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the deploy loop")
    }
}

/// Waits until the deploy loop has had `count` more deploys acknowledged (by watching the
/// store's revision grow through `admin`).
async fn wait_revisions(admin: &Admin, count: i64) {
    let (_, list) = admin.get_json("/api/v1/apis").await;
    let start = list["revision"].as_i64().unwrap_or(0);
    eventually(
        "more deploys to go through",
        Duration::from_secs(30),
        || async {
            let (_, list) = admin.get_json("/api/v1/apis").await;
            list["revision"].as_i64().unwrap_or(0) >= start + count
        },
    )
    .await;
}

fn assert_no_failures(tally: &Tally) {
    assert!(tally.ok > 0, "the traffic loop sent nothing");
    assert!(
        !tally.cut_short,
        "the traffic loop hit its time limit: the end of the case went unwatched"
    );
    assert_eq!(
        tally.failed, 0,
        "failed data-plane requests: {:?}",
        tally.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_loses_no_request_and_no_deploy() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(&[]).await;
    let traffic = Traffic::start(&fleet.proxies());
    let deployer = Deployer::start(&fleet.admins, "a", fleet.up.url(""));
    wait_revisions(&fleet.admins[0], 10).await;

    // kill the controller that holds the most runtimes (at least two of the three)
    let connections = fleet.connections().await;
    let on = |i: usize| connections.iter().filter(|c| **c == Some(i)).count();
    let victim = usize::from(on(1) > on(0));
    let survivor = 1 - victim;
    let moved: Vec<usize> = (0..3).filter(|&r| connections[r] == Some(victim)).collect();
    assert!(moved.len() >= 2, "runtimes' connections: {connections:?}");
    let before = updates(&fleet, &moved).await;
    assert!(
        before.iter().all(|(snapshots, _)| *snapshots >= 1),
        "no snapshot counted before the kill: {before:?}"
    );
    let killed = Instant::now();
    fleet.controllers[victim].kill();

    // each runtime of the dead controller reconnects to the other one (each timed on its own)
    let target = fleet.sync_url(survivor);
    let reconnects = futures_util::future::join_all(moved.iter().map(|&r| {
        let status = fleet.runtimes[r].addr("status");
        let (client, target) = (client(), target.clone());
        async move {
            loop {
                let (_, body) = call(&client, status, "/status").await;
                if body["sync"]["connectedTo"].as_str() == Some(target.as_str()) {
                    return killed.elapsed();
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(20),
                    "rt-{} never reconnected: {body}",
                    r + 1
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }))
    .await;
    let slowest = reconnects.iter().max().copied().unwrap_or_default();
    // they resumed from their revision: a delta, not the whole configuration again
    let after = updates(&fleet, &moved).await;
    for ((snapshots_before, deltas_before), (snapshots, deltas)) in before.iter().zip(&after) {
        assert_eq!(
            snapshots, snapshots_before,
            "a runtime got a snapshot on reconnecting"
        );
        assert!(
            deltas > deltas_before,
            "no delta on reconnecting: {before:?} {after:?}"
        );
    }
    wait_revisions(&fleet.admins[survivor], 10).await;
    let deploys = deployer.finish().await;
    let tally = traffic.finish().await;

    fleet.check_deploys(&deploys, survivor).await;
    assert_no_failures(&tally);
    for (which, status, code, _) in &deploys.failed {
        assert_eq!(
            *which, victim,
            "a deploy through the surviving controller failed: {status} {code}"
        );
    }
    println!(
        "case a (kill -9 controller): {} runtimes reconnected in {} (slowest; each: {:?}), \
         resumed with a delta; data-plane requests: {} ok, {} failed; deploys acknowledged: \
         {}, lost: 0; deploys refused by the dead controller: {}",
        moved.len(),
        secs(slowest),
        reconnects.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        tally.ok,
        tally.failed,
        deploys.acked.len(),
        deploys.failed.len()
    );
    assert!(
        slowest <= Duration::from_secs(2),
        "reconnecting took {slowest:?}"
    );
}

/// The snapshots and deltas each of `runtimes` has received.
async fn updates(fleet: &Fleet, runtimes: &[usize]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &r in runtimes {
        let status = fleet.runtimes[r].addr("status");
        let count = |kind: &'static str| async move {
            metric::<u64>(status, &format!("gw_sync_updates_total{{kind=\"{kind}\"}}")).await
        };
        let snapshots = count("snapshot").await.expect("the snapshot counter");
        // no delta yet is no series yet
        out.push((snapshots, count("delta").await.unwrap_or(0)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_database_outage_fails_writes_fast_and_no_request() {
    let _serial = serial().await;
    let fleet = Fleet::start(&[]).await;
    let traffic = Traffic::start(&fleet.proxies());
    let deployer = Deployer::start(&fleet.admins, "b", fleet.up.url(""));
    wait_revisions(&fleet.admins[0], 5).await;
    // each runtime's session, to tell afterwards that none was interrupted
    let sessions_before = fleet.sessions().await;

    let stopped = Instant::now();
    tokio::task::block_in_place(|| fleet.pg.stop());
    let client = client();
    // both controllers say they are not ready (each timed on its own)
    let unready = futures_util::future::join_all(fleet.admins.iter().map(|admin| async move {
        eventually("/readyz to turn false", Duration::from_secs(10), || async {
            admin.get_json("/readyz").await.0 == 503
        })
        .await;
        stopped.elapsed()
    }))
    .await;
    // the controllers keep their sync streams through the outage
    let connected_before = fleet.connections().await;
    assert!(connected_before.iter().all(Option::is_some));
    // the outage lasts 10 s (the scenario's length, not a wait for something)
    let outage = Duration::from_secs(10);
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        fleet.connections().await,
        connected_before,
        "a runtime lost its controller during the outage"
    );
    let during = deployer.finish().await;
    let down_for = stopped.elapsed();

    // recovery is timed from the restart of the database (its own start included)
    let back = Instant::now();
    tokio::task::block_in_place(|| fleet.pg.resume());
    // time to recover: the first deploy acknowledged after the database is back, and that
    // deploy served by every runtime
    let mut first_write = None;
    let name = "b-after";
    while first_write.is_none() {
        let response = fleet.admins[1]
            .request(reqwest::Method::PUT, &format!("/api/v1/apis/{name}"))
            .header("content-type", "application/yaml")
            .body(api_yaml(name, "/b-after", &fleet.up.url("")))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if response.is_ok_and(|r| r.status().is_success()) {
            first_write = Some(back.elapsed());
        } else {
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "writes never recovered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first_write = first_write.unwrap_or_default();
    for runtime in &fleet.runtimes {
        let proxy = runtime.addr("proxy");
        eventually(
            "the runtimes to serve the deploy made after the outage",
            Duration::from_secs(30),
            || async { call(&client, proxy, "/b-after").await.0 == 200 },
        )
        .await;
    }
    let served = back.elapsed();
    let mut ready_again = Duration::ZERO;
    for admin in &fleet.admins {
        eventually(
            "/readyz to turn true again",
            Duration::from_secs(30),
            || async { admin.get_json("/readyz").await.0 == 200 },
        )
        .await;
        ready_again = back.elapsed();
    }
    let tally = traffic.finish().await;
    assert_no_failures(&tally);

    // writes during the outage: 503 store_unavailable only, each within the store timeout
    // (plus the time to answer)
    let in_outage: Vec<_> = during
        .failed
        .iter()
        .filter(|(_, status, _, _)| *status != 0)
        .collect();
    assert!(
        !in_outage.is_empty(),
        "no write was attempted during the outage"
    );
    for (_, status, code, took) in &during.failed {
        assert_eq!(
            (*status, code.as_str()),
            (503, "store_unavailable"),
            "a write during the outage failed otherwise"
        );
        assert!(
            *took < STORE_TIMEOUT + Duration::from_secs(2),
            "a write took {took:?} to fail"
        );
    }
    let slowest_failure = during.failed.iter().map(|f| f.3).max().unwrap_or_default();
    fleet.check_deploys(&during, 0).await;
    let newest = fleet.converge(0).await;
    assert_eq!(
        fleet.sessions().await,
        sessions_before,
        "a runtime's sync session was interrupted by the outage"
    );
    println!(
        "case b (PostgreSQL stopped for {}): data-plane requests: {} ok, {} failed; /readyz \
         false after {} and {}; writes during the outage: {} refused with 503 \
         store_unavailable (slowest answer {}, store timeout {}); after the database came \
         back: first write acknowledged in {}, served by every runtime in {}, both \
         controllers ready in {}; final revision {newest}",
        secs(down_for),
        tally.ok,
        tally.failed,
        secs(unready[0]),
        secs(unready[1]),
        during.failed.len(),
        secs(slowest_failure),
        secs(STORE_TIMEOUT),
        secs(first_write),
        secs(served),
        secs(ready_again),
    );
    assert!(
        served <= Duration::from_secs(5),
        "recovery took {served:?} after the database came back"
    );
}

/// A TCP relay that a test can cut: while cut, it closes its connections and refuses new
/// ones, as a network partition between one controller and the database would.
struct Relay {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if *watch.borrow() {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_controller_cut_off_from_the_database_catches_up() {
    let _serial = serial().await;
    // controller A reaches the database through a relay that the test cuts; the runtimes
    // know only A, so only A's watcher can bring them what B writes meanwhile
    let pg = tokio::task::block_in_place(PgCluster::start);
    let relay = Relay::start(pg.addr()).await;
    let through_relay = format!("postgres://postgres@{}/gw", relay.addr);
    let fleet = Fleet::start_on(pg, [Some(through_relay), None], Some(0), &[], &[]).await;
    let client = client();
    let traffic = Traffic::start(&fleet.proxies());

    relay.set_cut(true);
    let cut = Instant::now();
    eventually(
        "controller A to see the database gone",
        Duration::from_secs(10),
        || async { fleet.admins[0].get_json("/readyz").await.0 == 503 },
    )
    .await;
    // writes through B while A cannot read them
    let mut written = Vec::new();
    for i in 0..5 {
        let name = format!("b2-{i}");
        let yaml = api_yaml(&name, &format!("/{name}"), &fleet.up.url(""));
        let response = fleet.admins[1].put_api(&name, &yaml, "").await;
        assert_eq!(response.status(), 201);
        written.push(name);
    }
    // A keeps its runtimes meanwhile
    assert!(fleet.connections().await.iter().all(|c| *c == Some(0)));
    relay.set_cut(false);
    let healed = Instant::now();
    // A's watcher reads what it missed, and its runtimes get it
    for runtime in &fleet.runtimes {
        let proxy = runtime.addr("proxy");
        for name in &written {
            eventually(
                "controller A's runtimes to get the writes made while A was cut off",
                Duration::from_secs(30),
                || async { call(&client, proxy, &format!("/{name}")).await.0 == 200 },
            )
            .await;
        }
    }
    let caught_up = healed.elapsed();
    let newest = fleet.converge(1).await;
    let tally = traffic.finish().await;
    assert_no_failures(&tally);
    println!(
        "case b2 (controller A cut off from PostgreSQL for {}, 5 writes through B meanwhile): \
         A's runtimes served them {} after the partition healed; final revision {newest}; \
         data-plane requests: {} ok, {} failed",
        secs(healed.duration_since(cut)),
        secs(caught_up),
        tally.ok,
        tally.failed
    );
    assert!(
        caught_up <= Duration::from_secs(5),
        "catching up took {caught_up:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_runtime_restarted_without_controllers_serves_its_cache() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(&[]).await;
    let deployer = Deployer::start(&fleet.admins, "c", fleet.up.url(""));
    wait_revisions(&fleet.admins[0], 5).await;
    let deploys = deployer.finish().await;
    fleet.check_deploys(&deploys, 0).await;
    let newest = fleet.converge(0).await;

    for controller in &mut fleet.controllers {
        controller.kill();
    }
    // the other runtimes keep serving while one restarts
    let others: Vec<SocketAddr> = fleet.proxies()[1..].to_vec();
    let traffic = Traffic::start(&others);
    let runtime = &mut fleet.runtimes[0];
    let restarted = Instant::now();
    let proxy = tokio::task::block_in_place(|| {
        runtime.restart(&[]);
        runtime.addr("proxy")
    });
    let client = client();
    loop {
        if call(&client, proxy, "/steady").await.0 == 200 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "the restarted runtime served nothing:\n{}",
            runtime.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = restarted.elapsed();
    for (name, _) in &deploys.acked {
        assert_eq!(call(&client, proxy, &format!("/{name}")).await.0, 200);
    }
    let status = runtime.addr("status");
    let (code, ready) = call(&client, status, "/status/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["source"], "cache");
    assert_eq!(ready["revision"], newest);
    assert_eq!(
        metric::<u64>(status, "gw_config_source{source=\"cache\"}").await,
        Some(1)
    );
    let tally = traffic.finish().await;
    assert_no_failures(&tally);
    println!(
        "case c (runtime restarted with both controllers down): first 2xx {} after the \
         process started, from its cache at revision {newest} ({} APIs); the other runtimes: \
         {} requests ok, {} failed",
        secs(first),
        deploys.acked.len() + 1,
        tally.ok,
        tally.failed
    );
    assert!(first <= Duration::from_secs(1), "the cache took {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_runtime_stopped_behind_haproxy_fails_no_request() {
    let _serial = serial().await;
    let drain = Duration::from_secs(2);
    let mut fleet = Fleet::start(&["--drain-seconds", "2"]).await;
    let backends: Vec<(String, SocketAddr, SocketAddr)> = fleet
        .runtimes
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("rt{}", i + 1), r.addr("proxy"), r.addr("status")))
        .collect();
    let lb = balance("/status/ready", &backends).await;
    let traffic = Traffic::start(&[lb.addr, lb.addr]);
    traffic.wait_more(100).await;

    let client = client();
    let status = fleet.runtimes[0].addr("status");
    let term = Instant::now();
    fleet.runtimes[0].send_term();
    lb.wait_state("rt1", "DOWN", Duration::from_secs(10)).await;
    let out_of_rotation = term.elapsed();
    // taken out for its readiness, while it still serves: not for a closed port
    let (code, ready) = call(&client, status, "/status/ready").await;
    assert_eq!((code, &ready["reason"]), (503, &"draining".into()));
    let runtime = &mut fleet.runtimes[0];
    let code = tokio::task::block_in_place(|| runtime.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "the runtime did not stop cleanly");
    let exited = term.elapsed();
    assert!(
        out_of_rotation < drain && exited >= drain,
        "out of rotation after {out_of_rotation:?}, exited after {exited:?}"
    );
    // traffic goes on through the others after the runtime is gone
    traffic.wait_more(200).await;
    let tally = traffic.finish().await;
    assert_no_failures(&tally);
    println!(
        "case d (SIGTERM to a runtime behind HAProxy checking /status/ready every 100 ms, \
         --drain-seconds 2): out of HAProxy's rotation {} after the signal, exited (code 0) \
         after {}; client requests through HAProxy: {} ok, {} failed, slowest {}",
        secs(out_of_rotation),
        secs(exited),
        tally.ok,
        tally.failed,
        secs(tally.slowest)
    );
}

/// HAProxy in front of `backends` (name, address, address checked), checking `check_path`;
/// returns once every server is in rotation.
async fn balance(check_path: &str, backends: &[(String, SocketAddr, SocketAddr)]) -> HaProxy {
    let named: Vec<(&str, SocketAddr, SocketAddr)> = backends
        .iter()
        .map(|(n, p, s)| (n.as_str(), *p, *s))
        .collect();
    let lb = tokio::task::block_in_place(|| HaProxy::start(check_path, &named));
    for (name, _, _) in &named {
        lb.wait_state(name, "UP", Duration::from_secs(20)).await;
    }
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_controllers_restarted_in_turn_lose_no_deploy() {
    let _serial = serial().await;
    // the controllers drain for 1 s on SIGTERM, behind HAProxy checking their /readyz
    let pg = tokio::task::block_in_place(PgCluster::start);
    let mut fleet = Fleet::start_on(pg, [None, None], None, &["--drain-seconds", "1"], &[]).await;
    let backends: Vec<(String, SocketAddr, SocketAddr)> = fleet
        .ports
        .iter()
        .enumerate()
        .map(|(i, (admin, _))| (format!("ctl{i}"), *admin, *admin))
        .collect();
    let lb = balance("/readyz", &backends).await;
    let through_lb = Admin::new(lb.addr, Some(TOKEN));
    let traffic = Traffic::start(&fleet.proxies());
    let deployer = Deployer::start(std::slice::from_ref(&through_lb), "e", fleet.up.url(""));
    wait_revisions(&fleet.admins[0], 5).await;
    let mut restarts = Vec::new();
    for i in 0..fleet.controllers.len() {
        let started = Instant::now();
        fleet.restart_controller(i).await;
        restarts.push(started.elapsed());
        // back in rotation before the next one goes
        lb.wait_state(&format!("ctl{i}"), "UP", Duration::from_secs(20))
            .await;
        wait_revisions(&fleet.admins[i], 5).await;
    }
    let deploys = deployer.finish().await;
    let tally = traffic.finish().await;
    assert_no_failures(&tally);
    assert!(
        deploys.failed.is_empty(),
        "deploys failed during the rolling restart: {:?}",
        deploys.failed
    );
    fleet.check_deploys(&deploys, 0).await;
    let newest = fleet.converge(1).await;
    println!(
        "case e (every controller restarted in turn, --drain-seconds 1, deploys through \
         HAProxy checking /readyz): restarts took {:?} (SIGTERM to ready); deploys \
         acknowledged: {}, failed: {}, lost: 0; every runtime converged on revision {newest}; \
         data-plane requests: {} ok, {} failed",
        restarts.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        deploys.acked.len(),
        deploys.failed.len(),
        tally.ok,
        tally.failed
    );
}
