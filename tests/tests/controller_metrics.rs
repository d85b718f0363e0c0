//! The controller's metrics (`GET /metrics` on the admin address), as an operator alerts on
//! them: admin requests by route and status, store operations and failures, the pool, the
//! change feed's lag, the fleet by group and state, its revision lag, rejections and refusals.

use std::time::Duration;

use gw_e2e::cluster::PgCluster;
use gw_e2e::{
    Admin, ControllerSpec, TOKEN, TestDatabase, Upstream, api_yaml, controller, controller_from,
    controller_with, refused_hello, runtime,
};

/// The controller's `/metrics` text; empty when it does not answer.
async fn scrape(admin: std::net::SocketAddr) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match client.get(format!("http://{admin}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Scrapes until every series of `expected` has its value (the controller reads the store for
/// a scrape at most once a second, and the fleet is recorded in the background); returns the
/// last scrape.
async fn wait_for(admin: std::net::SocketAddr, what: &str, expected: &[(&str, f64)]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(admin).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, v)| value(&text, series) != Some(*v))
            .map(|(series, v)| format!("{series} = {:?}, not {v}", value(&text, series)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {wrong:#?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const API_BY_NAME: &str = "route=\"/api/v1/apis/{name}\"";

/// A controller on PostgreSQL with one runtime: admin requests are counted by route template
/// and status, the deploy by the store, the feed is up to date, and the fleet's series follow
/// the runtime from connected to disconnected, next to a refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reports_requests_the_store_the_feed_and_the_fleet() {
    let db = TestDatabase::create().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ctl = controller(&ControllerSpec::postgres(&db, "ctl-m"), dirs[0].path());
    let admin_addr = ctl.addr("admin");
    let admin = Admin::new(admin_addr, Some(TOKEN));
    admin.wait_ready().await;
    let mut rt = runtime("rt-1", &[ctl.addr("sync")], dirs[1].path());
    let upstream = Upstream::start("u").await;

    // connected, in the fleet and in the metrics, before anything is deployed
    wait_for(
        admin_addr,
        "the runtime to connect",
        &[
            (
                "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
                1.0,
            ),
            // a group's rejection series exists from its first runtime's connection
            ("gw_fleet_rejections_total{group=\"default\"}", 0.0),
        ],
    )
    .await;

    // a 404, a 400, a 201 and a 200
    let response = admin
        .request(reqwest::Method::GET, "/api/v1/apis/no-such-api")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = admin.put_api("broken", "spec: [not an api", "").await;
    assert_eq!(response.status(), 400);
    let response = admin.deploy("orders", "/orders", &upstream.url("/")).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let response = admin
        .request(reqwest::Method::GET, "/api/v1/apis")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // a path no route matches
    let response = admin
        .request(reqwest::Method::GET, "/api/v2/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let get_404 = format!("gw_admin_requests_total{{{API_BY_NAME},method=\"GET\",status=\"404\"}}");
    let put_400 = format!("gw_admin_requests_total{{{API_BY_NAME},method=\"PUT\",status=\"400\"}}");
    let put_201 = format!("gw_admin_requests_total{{{API_BY_NAME},method=\"PUT\",status=\"201\"}}");
    let text = wait_for(
        admin_addr,
        "the deploy to show",
        &[
            (&get_404, 1.0),
            (&put_400, 1.0),
            (&put_201, 1.0),
            (
                "gw_admin_requests_total{route=\"/api/v1/apis\",method=\"GET\",status=\"200\"}",
                1.0,
            ),
            (
                "gw_admin_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
                1.0,
            ),
            // one write reached the store (the 400 did not)
            (
                "gw_store_operation_duration_seconds_count{operation=\"put_api\"}",
                1.0,
            ),
            (
                "gw_store_errors_total{operation=\"put_api\",kind=\"unavailable\"}",
                0.0,
            ),
            ("gw_store_pool_max_connections", 10.0),
            ("gw_store_revision", 1.0),
            ("gw_controller_revision", 1.0),
            ("gw_controller_feed_lag_revisions", 0.0),
            ("gw_controller_feed_lag_seconds", 0.0),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
                1.0,
            ),
            ("gw_fleet_runtimes{group=\"default\",state=\"stale\"}", 0.0),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"disconnected\"}",
                0.0,
            ),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"refused\"}",
                0.0,
            ),
            ("gw_fleet_revision_lag_max{group=\"default\"}", 0.0),
            ("gw_fleet_rejections_total{group=\"default\"}", 0.0),
            ("gw_fleet_refusals_total", 0.0),
        ],
    )
    .await;
    // routes are templates, never raw paths
    assert!(
        !text.contains("no-such-api") && !text.contains("/api/v2"),
        "{text}"
    );
    let in_use = value(&text, "gw_store_pool_connections{state=\"in_use\"}").unwrap();
    let idle = value(&text, "gw_store_pool_connections{state=\"idle\"}").unwrap();
    // the change listener holds one connection at all times
    assert!(in_use >= 1.0 && in_use + idle <= 10.0, "{text}");
    let put_seconds = value(
        &text,
        "gw_store_operation_duration_seconds_sum{operation=\"put_api\"}",
    )
    .unwrap();
    assert!(put_seconds > 0.0 && put_seconds < 5.0, "{text}");

    // a runtime of another protocol version is refused at its Hello
    refused_hello(ctl.addr("sync"), "rt-next").await;
    wait_for(
        admin_addr,
        "the refusal to show",
        &[
            ("gw_fleet_refusals_total", 1.0),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"refused\"}",
                1.0,
            ),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
                1.0,
            ),
        ],
    )
    .await;

    // the runtime goes away
    rt.kill();
    wait_for(
        admin_addr,
        "the runtime to be disconnected",
        &[
            (
                "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
                0.0,
            ),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"disconnected\"}",
                1.0,
            ),
            (
                "gw_fleet_runtimes{group=\"default\",state=\"refused\"}",
                1.0,
            ),
        ],
    )
    .await;
}

/// A runtime that rejects a revision: the custom controller accepts a policy the stock runtime
/// does not have. The rejection counter moves, and the runtime is a revision behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_revision_counts_and_leaves_the_runtime_behind() {
    const GUARDED: &str = "
apiVersion: gw/v1
kind: Api
metadata: {name: guarded}
spec:
  context: /guarded
  upstream:
    endpoints: [{url: 'UPSTREAM'}]
  policies:
    - name: require-header
      params: {header: x-tenant, status: 422}
";
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ctl = controller_from(
        "custom-controller",
        &ControllerSpec {
            database_url: None,
            dev: true,
            all_in_one: false,
            node_id: "custom".into(),
        },
        dirs[0].path(),
    );
    let admin_addr = ctl.addr("admin");
    let admin = Admin::new(admin_addr, None);
    admin.wait_ready().await;
    let _rt = runtime("stock", &[ctl.addr("sync")], dirs[1].path());
    let upstream = Upstream::start("u").await;
    wait_for(
        admin_addr,
        "the runtime to connect",
        &[(
            "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
            1.0,
        )],
    )
    .await;

    let plain = api_yaml("plain", "/plain", &upstream.url("/"));
    let response = admin.put_api("plain", &plain, "?wait=applied").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    wait_for(
        admin_addr,
        "the first revision to be applied",
        &[
            ("gw_fleet_rejections_total{group=\"default\"}", 0.0),
            ("gw_fleet_revision_lag_max{group=\"default\"}", 0.0),
        ],
    )
    .await;

    let guarded = GUARDED.replace("UPSTREAM", &upstream.url("/"));
    let response = admin.put_api("guarded", &guarded, "?wait=applied").await;
    assert_eq!(response.status(), 502, "{}", response.text().await.unwrap());
    let put_502 = format!("gw_admin_requests_total{{{API_BY_NAME},method=\"PUT\",status=\"502\"}}");
    wait_for(
        admin_addr,
        "the rejection to show",
        &[
            ("gw_fleet_rejections_total{group=\"default\"}", 1.0),
            ("gw_store_revision", 2.0),
            ("gw_controller_revision", 2.0),
            // still connected, serving revision 1
            (
                "gw_fleet_runtimes{group=\"default\",state=\"connected\"}",
                1.0,
            ),
            ("gw_fleet_revision_lag_max{group=\"default\"}", 1.0),
            (&put_502, 1.0),
            // SQLite: the pool's bound is 8
            ("gw_store_pool_max_connections", 8.0),
        ],
    )
    .await;
}

/// The database stops: store failures are counted as `unavailable`, and what only the store
/// can tell (its newest revision, the feed's lag, the fleet) leaves the scrape instead of
/// showing old values; it comes back with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_counted_and_store_series_leave_while_it_is_down() {
    let pg = tokio::task::block_in_place(PgCluster::start);
    let dir = tempfile::tempdir().unwrap();
    let ctl = controller_with(
        &ControllerSpec {
            database_url: Some(pg.url()),
            dev: false,
            all_in_one: false,
            node_id: "ctl-down".into(),
        },
        dir.path(),
        &["--store-timeout-ms", "1000"],
    );
    let admin_addr = ctl.addr("admin");
    Admin::new(admin_addr, Some(TOKEN)).wait_ready().await;
    let text = wait_for(
        admin_addr,
        "the store's series",
        &[("gw_store_revision", 0.0), ("gw_controller_revision", 0.0)],
    )
    .await;
    let unavailable = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("gw_store_errors_total{") && l.contains("kind=\"unavailable\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(unavailable(&text) == 0.0, "{text}");

    tokio::task::block_in_place(|| pg.stop());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let text = scrape(admin_addr).await;
        if unavailable(&text) > 0.0
            && value(&text, "gw_store_revision").is_none()
            && !text.contains("gw_fleet_runtimes")
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no store failures counted while the database is down:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // what does not need the database is still there
    assert_eq!(value(&last, "gw_controller_revision"), Some(0.0), "{last}");
    assert_eq!(
        value(&last, "gw_store_pool_max_connections"),
        Some(10.0),
        "{last}"
    );

    tokio::task::block_in_place(|| pg.resume());
    wait_for(
        admin_addr,
        "the store's series to come back",
        &[
            ("gw_store_revision", 0.0),
            ("gw_controller_feed_lag_revisions", 0.0),
        ],
    )
    .await;
}
