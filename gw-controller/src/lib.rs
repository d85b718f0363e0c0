//! gw's control plane, as a library. The `gw-controller` binary is a thin command line over
//! [`run`].
//!
//! A controller serves the admin REST API ([`admin`]), keeps its desired state equal to the
//! store through the change feed ([`watcher`]), serves that state to runtimes over the sync
//! protocol, and records the fleet ([`fleet`]). `GET /metrics` on the admin address tells an
//! operator how all of that goes ([`metrics`]). Several controllers share one PostgreSQL
//! database; a deploy through any of them reaches the runtimes of all of them. With
//! [`ControllerOptions::all_in_one`] it also runs a runtime in process (the single-node
//! topology, on the embedded SQLite store by default).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `all-in-one` | on | [`ControllerOptions::all_in_one`] runs gw-runtime's `Runtime` in process; without the feature, [`run`] refuses options that ask for it (`--all-in-one` says this build has no all-in-one mode) |
#![warn(missing_docs)]

pub mod admin;
#[cfg(feature = "all-in-one")]
mod all_in_one;
pub mod bundles;
pub mod cli;
pub mod cluster_ca;
pub mod enrollment;
pub mod fleet;
pub mod keys;
pub mod metrics;
pub mod reseal;
pub mod sealed;
pub mod watcher;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gw_core::conn::server::{ServerLimits, ServerMetrics};
use gw_core::policy::PolicyRegistry;
use gw_runtime::data_dir::{DataDir, DataDirError};
use gw_store::{Store, StoreError, StoreOptions};
use gw_sync::SyncToken;
use gw_sync::server::{RevisionAuthority, ServerOptions, SyncMetrics, SyncServer};
use gw_sync::state::DesiredState;
use gw_sync::tls::{ServerTls, Stamps};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{AdminOptions, AppState, DevGuard, OidcAuthenticator, OidcOptions};
use crate::bundles::{BundleExporter, BundleMetrics, BundleOptions};
use crate::fleet::FleetRecorder;
use crate::keys::KeyError;
use crate::metrics::{ControllerMetrics, MeasuredStore};
use crate::sealed::Sealer;

/// The runtime that all-in-one mode runs in process.
#[derive(Debug, Clone)]
pub struct AllInOne {
    /// Its traffic address.
    pub proxy_addr: SocketAddr,
    /// Its HTTPS traffic address, if any.
    pub https_addr: Option<SocketAddr>,
    /// Its status address.
    pub status_addr: SocketAddr,
    /// The proxies in front of it whose forwarding headers are believed
    /// (`gw-runtime --trusted-proxies`).
    pub trusted_proxies: Vec<gw_core::policy::Cidr>,
}

/// The sync port on the cluster's internal CA ([`ControllerOptions::sync_ca`]).
#[derive(Debug, Clone)]
pub struct SyncCaOptions {
    /// The names runtimes dial this controller by (DNS names or addresses), besides the
    /// host name and the listening address ([`enrollment::server_names`]).
    pub advertise_names: Vec<String>,
    /// How long a runtime's certificate is valid (it renews it two thirds in).
    pub runtime_cert_lifetime: Duration,
}

impl Default for SyncCaOptions {
    fn default() -> Self {
        Self {
            advertise_names: Vec::new(),
            runtime_cert_lifetime: Duration::from_hours(24),
        }
    }
}

/// Everything a controller needs. Its `Debug` output hides the secrets.
#[derive(Clone)]
pub struct ControllerOptions {
    /// `postgres://…` or `sqlite://…`; `None`: `sqlite://<data-dir>/gw.db`.
    pub database_url: Option<String>,
    /// Where the SQLite file, the development key, the node id and the all-in-one runtime's
    /// cache live; locked against other processes while the controller runs.
    pub data_dir: PathBuf,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Sync (gRPC) address for runtimes.
    pub sync_addr: SocketAddr,
    /// This controller's id. `None`: the id kept in the data directory
    /// (`<data_dir>/node-id`, generated there at the first start).
    pub node_id: Option<String>,
    /// Development mode: no admin token needed, a generated encryption key.
    pub dev: bool,
    /// Development mode: let the admin API listen on an address other than loopback.
    pub dev_allow_remote: bool,
    /// Development mode without an admin token: `Host` names accepted besides `localhost`
    /// and loopback addresses (see [`DevGuard`]).
    pub dev_allowed_hosts: Vec<String>,
    /// The admin bearer token (`GW_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// The encryption key, base64 (`GW_ENCRYPTION_KEY`).
    pub encryption_key: Option<String>,
    /// The previous encryption keys of a rotation, base64, comma-separated
    /// (`GW_ENCRYPTION_KEYS_PREVIOUS`): values sealed under them still open.
    pub previous_encryption_keys: Option<String>,
    /// A token runtimes must present on the sync port (`GW_SYNC_TOKEN`), checked besides
    /// their certificate; in development mode on a plaintext port, the only check. `None`:
    /// none asked.
    pub sync_token: Option<SyncToken>,
    /// HTTPS on the admin API from files (certificate and key), followed for renewals;
    /// `None`: plain HTTP.
    pub admin_tls: Option<gw_sync::tls::CertFiles>,
    /// Mutual TLS on the sync port from files (certificate, key, runtimes' CA), followed for
    /// renewals, instead of [`ControllerOptions::sync_ca`] (set that to `None`).
    pub sync_tls: Option<gw_sync::tls::ServerFiles>,
    /// Mutual TLS on the sync port from the cluster's internal CA (kept in the store, made
    /// by the first controller), with runtimes enrolled by tokens: the default. `None`: not
    /// from it, so from [`ControllerOptions::sync_tls`], or, in development mode only,
    /// plaintext ([`run`] refuses a plaintext sync port in production). Development mode
    /// serves what is set here too: the command line's `--dev` sets `None` unless
    /// `--sync-tls internal` is given.
    pub sync_ca: Option<SyncCaOptions>,
    /// Run a runtime in process too. A controller built without the `all-in-one` feature
    /// refuses to start with this set ([`ControllerError::Options`]).
    pub all_in_one: Option<AllInOne>,
    /// Longest wait for the database before answering 503.
    pub store_timeout: Duration,
    /// Safety poll of the change log (notifications make changes arrive sooner).
    pub poll_interval: Duration,
    /// Heartbeat interval of the sync streams of runtimes that do not ask for their own
    /// (and of the all-in-one runtime).
    pub heartbeat_interval: Duration,
    /// Revisions kept in the change log.
    pub change_retention: i64,
    /// Runtimes not seen for this long are removed from the fleet view.
    pub runtime_retention: Duration,
    /// Audit records older than this are deleted (`--audit-retention`).
    pub audit_retention: Duration,
    /// On shutdown, how long `/readyz` answers 503 (`draining`) while the controller still
    /// serves its admin API and its runtimes, so that load balancers send calls elsewhere
    /// first.
    pub drain_period: Duration,
    /// The policies deployments may use (and the all-in-one runtime can build).
    pub policies: PolicyRegistry,
    /// Admin API limits.
    pub admin: AdminOptions,
    /// The admin server's connection limits.
    pub admin_server: ServerLimits,
    /// The sync port's limits and timings; its heartbeat interval is
    /// [`ControllerOptions::heartbeat_interval`].
    pub sync: ServerOptions,
    /// The export of signed fallback bundles (`None`: no export).
    pub bundles: Option<BundleOptions>,
    /// OIDC for people on the admin API (`--oidc-issuer` and the rest): `None`, none.
    /// `GW_ADMIN_TOKEN` stays the break-glass admin either way.
    pub oidc: Option<OidcOptions>,
}

impl ControllerOptions {
    /// Options with the documented defaults.
    pub fn new() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("./gw-data"),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            sync_addr: SocketAddr::from(([127, 0, 0, 1], 18000)),
            node_id: None,
            dev: false,
            dev_allow_remote: false,
            dev_allowed_hosts: Vec::new(),
            admin_token: None,
            encryption_key: None,
            previous_encryption_keys: None,
            sync_token: None,
            sync_tls: None,
            sync_ca: Some(SyncCaOptions::default()),
            admin_tls: None,
            all_in_one: None,
            store_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            change_retention: 100_000,
            runtime_retention: Duration::from_hours(1),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            drain_period: Duration::ZERO,
            policies: PolicyRegistry::builtin(),
            admin: AdminOptions {
                max_body_bytes: gw_core::model::MAX_DOCUMENT_BYTES,
                default_wait: Duration::from_secs(30),
                max_wait: Duration::from_mins(5),
            },
            admin_server: ServerLimits::default(),
            sync: ServerOptions::default(),
            bundles: None,
            oidc: None,
        }
    }
}

impl std::fmt::Debug for ControllerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: bool| if secret { "<set>" } else { "<unset>" };
        f.debug_struct("ControllerOptions")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_password),
            )
            .field("data_dir", &self.data_dir)
            .field("admin_addr", &self.admin_addr)
            .field("sync_addr", &self.sync_addr)
            .field("node_id", &self.node_id)
            .field("dev", &self.dev)
            .field("dev_allow_remote", &self.dev_allow_remote)
            .field("dev_allowed_hosts", &self.dev_allowed_hosts)
            .field("admin_token", &set(self.admin_token.is_some()))
            .field("encryption_key", &set(self.encryption_key.is_some()))
            .field(
                "previous_encryption_keys",
                &set(self.previous_encryption_keys.is_some()),
            )
            .field("sync_token", &set(self.sync_token.is_some()))
            .field("sync_tls", &self.sync_tls)
            .field("sync_ca", &self.sync_ca)
            .field("admin_tls", &self.admin_tls)
            .field("all_in_one", &self.all_in_one)
            .field("store_timeout", &self.store_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("change_retention", &self.change_retention)
            .field("drain_period", &self.drain_period)
            .field("runtime_retention", &self.runtime_retention)
            .field("audit_retention", &self.audit_retention)
            .field("policies", &self.policies.names())
            .field("admin", &self.admin)
            .field("admin_server", &self.admin_server)
            .field("sync", &self.sync)
            .field("bundles", &self.bundles)
            .field("oidc", &self.oidc)
            .finish()
    }
}

/// `postgres://user:secret@host/db?password=x` -> `postgres://user:***@host/db?password=***`.
fn redact_password(url: &str) -> String {
    let url = redact_userinfo(url);
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Its secrets are missing or invalid.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data directory cannot be created, is in use by another process, or holds an
    /// invalid node id.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store cannot be used (bad URL, failed migration); retrying will not help.
    #[error(transparent)]
    Store(StoreError),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// The cluster's internal CA cannot be had.
    #[error(transparent)]
    ClusterCa(#[from] cluster_ca::ClusterCaError),
    /// The in-process runtime failed.
    #[error("the all-in-one runtime failed: {0}")]
    Runtime(#[from] gw_runtime::RuntimeError),
    /// A reseal stopped.
    #[error("the reseal stopped: {0}")]
    Reseal(#[from] reseal::ResealError),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ControllerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ControllerError::Bind { what, addr, source })
}

/// Opens the store, waiting (and saying so) while the database is unreachable.
async fn open_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, ControllerError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match gw_store::open(url, options).await {
            Ok(store) => return Ok(store),
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, "waiting for the database");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(ControllerError::Store(err)),
        }
    }
}

/// Why a controller built without the `all-in-one` feature refuses to start in that mode.
#[cfg(not(feature = "all-in-one"))]
const NO_ALL_IN_ONE: &str = "--all-in-one: this build of gw-controller has no all-in-one mode \
                             (it was built without the `all-in-one` feature); run a gw-runtime \
                             next to it with --controller <its sync address>";

/// Runs a controller until `shutdown` completes.
///
/// The admin API answers at once (`/healthz` alive, `/readyz` not ready); the sync listener
/// opens only once the desired state is loaded, so that no runtime is ever served an empty
/// state by a controller that has not read its database yet.
pub async fn run(
    options: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    if options.dev {
        tracing::warn!(
            "development mode: the admin API may run without a token and the encryption key is \
             generated into the data directory; never use --dev in production"
        );
    }
    #[cfg(not(feature = "all-in-one"))]
    if options.all_in_one.is_some() {
        return Err(ControllerError::Options(NO_ALL_IN_ONE.to_string()));
    }
    if let Some(node_id) = &options.node_id {
        gw_sync::validate_node_id(node_id)
            .map_err(|reason| ControllerError::Options(format!("--node-id: {reason}")))?;
    }
    check_dev_admin_addr(&options)?;
    check_sync_security(&options)?;
    // built now, so that a bad flag stops the controller at start; the JWKS's first fetch
    // starts here, and nothing waits for it: the break-glass token and named tokens work
    // whether the identity provider answers or not
    let oidc = options
        .oidc
        .as_ref()
        .map(OidcAuthenticator::new)
        .transpose()
        .map_err(|reason| ControllerError::Options(format!("OIDC: {reason}")))?;
    if let Some(oidc) = &options.oidc {
        // (not the JWKS URL: its query may hold a secret)
        tracing::info!(
            issuer = %oidc.issuer,
            mappings = oidc.roles.len(),
            "the admin API takes OIDC tokens of this issuer"
        );
    }
    let token = keys::admin_token(options.dev, options.admin_token.as_deref())?;
    if token.is_none() {
        tracing::warn!("no GW_ADMIN_TOKEN: the admin API accepts unauthenticated calls");
    }
    // read now, so that a file at fault stops the controller before it serves anything
    // (how the files looked just before, so that a renewal from now on is taken)
    let admin_tls = match &options.admin_tls {
        Some(files) => {
            let since = Stamps::of(&files.paths());
            let config = files
                .https_config()
                .map_err(|err| ControllerError::Options(format!("admin TLS: {err}")))?;
            Some((Arc::new(arc_swap::ArcSwap::new(config)), since))
        }
        None => None,
    };
    let sync_tls = match &options.sync_tls {
        Some(files) => {
            let since = Stamps::of(&files.paths());
            let config = files
                .load()
                .map_err(|err| ControllerError::Options(format!("sync TLS: {err}")))?;
            Some((Arc::new(ServerTls::new(config)), since))
        }
        None => None,
    };
    if options.sync_tls.is_some() && options.all_in_one.is_some() {
        return Err(ControllerError::Options(
            "--all-in-one enrolls its runtime with the cluster CA, and --sync-tls-cert serves \
             your own PKI's certificates, which it has none of: drop --sync-tls-cert (the \
             cluster CA is the default), or run the runtime as its own process"
                .to_string(),
        ));
    }
    // held until the controller stops: a second process on the directory is refused
    let data_dir = DataDir::open(&options.data_dir)?;
    let node_id = match &options.node_id {
        Some(node_id) => node_id.clone(),
        None => data_dir.node_id()?,
    };
    // loaded and checked now, so that a bad key stops the controller at start
    let encryption_key = keys::encryption_key(
        options.dev,
        options.encryption_key.as_deref(),
        &options.data_dir,
    )?;
    let sealer = Arc::new(sealer(&options, &encryption_key)?);
    let database_url = database_url(&options);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let desired = Arc::new(DesiredState::new(watcher::HISTORY));
    let mut metrics = prometheus_client::registry::Registry::default();
    let bundle_metrics = BundleMetrics::register(&mut metrics);
    let admin_metrics = ServerMetrics::register(&mut metrics, "gw_admin", "admin API");
    let sync_metrics = SyncMetrics::register(&mut metrics);
    let controller_metrics = ControllerMetrics::register(&mut metrics);
    let to_reseal = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    metrics.register(
        "gw_controller_secrets_to_reseal",
        "Stored APIs and certificates holding a secret sealed under a previous key (or in the \
         clear): 0 once a key rotation's reseal is done (counted every 5 minutes; -1 when it \
         cannot be counted)",
        to_reseal.clone(),
    );
    // without a token, the admin API answers anyone who reaches it: keep web pages out
    let dev_guard =
        (options.dev && token.is_none()).then(|| DevGuard::new(&options.dev_allowed_hosts));
    let state = Arc::new(AppState {
        store: OnceLock::new(),
        loaded: AtomicBool::new(false),
        desired: Arc::clone(&desired),
        token,
        policies: options.policies.clone(),
        controller_id: node_id.clone(),
        options: options.admin.clone(),
        stopping,
        all_in_one: options.all_in_one.is_some(),
        embedded: OnceLock::new(),
        sealer: Arc::clone(&sealer),
        consumer_writes: tokio::sync::Mutex::new(()),
        bundles: OnceLock::new(),
        metrics,
        requests: controller_metrics.admin.clone(),
        sampler: Arc::clone(&controller_metrics.sampler),
        draining: AtomicBool::new(false),
        dev_guard,
        sync_ca: OnceLock::new(),
        oidc: OnceLock::new(),
    });
    if let Some(oidc) = oidc {
        let _ = state.oidc.set(Arc::new(oidc));
    }
    let drain_period = options.drain_period;
    let draining = Arc::clone(&state);
    tokio::spawn(async move {
        shutdown.await;
        draining.draining.store(true, Ordering::Release);
        if !drain_period.is_zero() {
            tracing::info!(
                ?drain_period,
                "shutting down: /readyz answers 503; still serving for the drain period"
            );
            tokio::time::sleep(drain_period).await;
        }
        stop_tx.send_replace(true);
    });
    let admin_listener = bind("admin", options.admin_addr).await?;
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr().unwrap_or(options.admin_addr), "listening");
    let router = admin::router(Arc::clone(&state));
    // each request knows its client's address (the audit log records it)
    let make = move |peer| {
        hyper_util::service::TowerToHyperService::new(tower::Layer::layer(
            &axum::Extension(admin::ClientAddr(peer)),
            router.clone(),
        ))
    };
    // the certificate files are followed for as long as the admin API serves
    let follow: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match (
        &options.admin_tls,
        &admin_tls,
    ) {
        (Some(files), Some((tls, since))) => {
            tracing::info!(listener = "admin", cert = %files.cert.display(), "admin API over HTTPS");
            let (files, tls) = (files.clone(), Arc::clone(tls));
            Box::pin(gw_sync::tls::follow(
                "admin API",
                files.paths(),
                since.clone(),
                gw_sync::tls::FOLLOW_INTERVAL,
                move || {
                    tls.store(files.https_config()?);
                    Ok(())
                },
            ))
        }
        _ => Box::pin(std::future::pending()),
    };
    let serve = gw_core::conn::server::serve(
        admin_listener,
        options.admin_server.clone(),
        admin_metrics,
        admin_tls.map(|(tls, _)| tls),
        make,
        stopped(),
    );
    let admin = tokio::spawn(async move {
        tokio::select! {
            () = serve => {}
            () = follow => {}
        }
    });

    let store_options = StoreOptions {
        timeout: options.store_timeout,
        ..StoreOptions::default()
    };
    let backend = if database_url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    tracing::info!(backend, node = %node_id, "controller starting");
    let store = tokio::select! {
        store = open_store(&database_url, &store_options) => store?,
        () = stopped() => return Ok(()),
    };
    // every operation, whoever calls it, is measured
    let store: Arc<dyn Store> =
        Arc::new(MeasuredStore::new(store, controller_metrics.store.clone()));
    let _ = state.store.set(Arc::clone(&store));
    let revision = {
        let mut backoff = Duration::from_millis(200);
        loop {
            let opener = watcher::Opener { sealer: &sealer };
            match watcher::load(&store, &desired, opener).await {
                Ok(revision) => break revision,
                Err(err) if err.is_unavailable() => {
                    tracing::warn!(error = %err, "cannot load the desired state; retrying");
                }
                Err(err) => return Err(ControllerError::Store(err)),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    };
    // the cluster CA, once the store answers: the sync port serves nothing before it, and
    // the admin API is not ready before it (enrollment tokens need its hash)
    let internal = match &options.sync_ca {
        Some(ca_options) => {
            let internal = tokio::select! {
                internal = internal_tls(ca_options, options.sync_addr, &store, &sealer) => internal?,
                () = stopped() => return Ok(()),
            };
            let _ = state.sync_ca.set(internal.ca.hash());
            Some(internal)
        }
        None => None,
    };
    // the exporter is in place before the admin API says loaded: `POST /api/v1/bundles`
    // never answers `bundles_not_configured` on a controller that exports
    let exporter = options.bundles.clone().map(|bundle_options| {
        tracing::info!(
            bundles = %bundle_options.target,
            algorithm = bundle_options.key.algorithm(),
            interval = ?bundle_options.interval,
            keep = bundle_options.keep,
            "exporting fallback bundles"
        );
        let exporter = Arc::new(BundleExporter::new(
            Arc::clone(&desired),
            bundle_options,
            store.store_id(),
            &node_id,
            bundle_metrics,
        ));
        let _ = state.bundles.set(Arc::clone(&exporter));
        exporter
    });
    admin::mark_loaded(&state);

    let feed_healthy = Arc::new(AtomicBool::new(true));
    let mut tasks = vec![
        tokio::spawn(watcher::follow(
            Arc::clone(&store),
            Arc::clone(&desired),
            Arc::clone(&sealer),
            revision,
            options.poll_interval,
            feed_healthy,
        )),
        tokio::spawn(reseal::count_periodically(
            Arc::clone(&store),
            Arc::clone(&sealer),
            options.policies.clone(),
            to_reseal,
            Duration::from_mins(5),
        )),
        tokio::spawn(watcher::compact_periodically(
            Arc::clone(&store),
            options.change_retention,
            Duration::from_mins(10),
        )),
        tokio::spawn(prune_runtimes(
            Arc::clone(&store),
            options.runtime_retention,
            options.audit_retention,
        )),
    ];
    if let Some(exporter) = exporter {
        tasks.push(tokio::spawn(exporter.run()));
    }
    let recorder = Arc::new(
        FleetRecorder::new(node_id.clone()).with_metrics(controller_metrics.fleet.clone()),
    );
    let fleet_writer = tokio::spawn(Arc::clone(&recorder).write_loop(Arc::clone(&store)));

    if let Some(internal) = &internal {
        tasks.push(tokio::spawn(Arc::clone(&internal.enroller).follow()));
        tasks.push(tokio::spawn(enrollment::reissue_server_certificate(
            Arc::clone(&internal.tls),
            Arc::clone(&internal.ca),
            internal.names.clone(),
        )));
    }
    // the all-in-one runtime enrolls with the cluster CA like any other
    #[cfg(feature = "all-in-one")]
    let embedded_ca = internal.as_ref().map(|internal| Arc::clone(&internal.ca));
    let sync_listener = bind("sync", options.sync_addr).await?;
    let sync_addr = sync_listener.local_addr().unwrap_or(options.sync_addr);
    tracing::info!(listener = "sync", addr = %sync_addr, "listening");
    let server = SyncServer::new(
        &node_id,
        Arc::clone(&desired),
        recorder.clone(),
        ServerOptions {
            heartbeat_interval: options.heartbeat_interval,
            ..options.sync.clone()
        },
    )
    .with_metrics(sync_metrics)
    .with_token(options.sync_token.clone())
    .with_store_id(store.store_id())
    .with_authority(Arc::new(StoreAuthority(Arc::clone(&store))));
    // the TLS files are followed for as long as the sync port serves
    let mut follow: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
        Box::pin(std::future::pending());
    let server = match (&options.sync_tls, sync_tls) {
        (Some(files), Some((tls, since))) => {
            follow = Box::pin(Arc::clone(&tls).follow(
                files.clone(),
                since,
                gw_sync::tls::FOLLOW_INTERVAL,
            ));
            tracing::info!(
                listener = "sync",
                cert = %files.identity.cert.display(),
                client_ca = %files.client_ca.display(),
                "sync over TLS 1.3 with runtime certificates"
            );
            server.with_tls(tls)
        }
        _ => match internal {
            Some(internal) => {
                tracing::info!(
                    listener = "sync", ca = %internal.ca.hash(), names = ?internal.names,
                    "sync over TLS 1.3 from the cluster CA; runtimes enroll with tokens"
                );
                server
                    .with_tls(internal.tls)
                    .with_enroller(internal.enroller as Arc<dyn gw_sync::server::Enroller>)
            }
            None => server,
        },
    };
    let serve = server.serve(sync_listener, stopped());
    let sync = tokio::spawn(async move {
        tokio::select! {
            served = serve => served,
            () = follow => Ok(()),
        }
    });

    #[cfg(feature = "all-in-one")]
    let embedded = match &options.all_in_one {
        Some(aio) => {
            let enroll = match embedded_ca {
                Some(ca) => Some(all_in_one::enrollment_token(&store, &ca).await?),
                None => None,
            };
            let embedded = all_in_one::Embedded {
                node_id: &node_id,
                sync_addr,
                enroll,
            };
            Some(all_in_one::start(aio, &options, embedded, &state, stopped()).await?)
        }
        None => None,
    };
    tracing::info!(revision, "controller ready");

    stopped().await;
    tracing::info!("controller stopping");
    #[cfg(feature = "all-in-one")]
    if let Some(embedded) = embedded {
        all_in_one::stopped(embedded).await;
    }
    if let Ok(Err(err)) = sync.await {
        tracing::warn!(error = %err, "the sync server failed while stopping");
    }
    if let Err(err) = admin.await {
        tracing::warn!(error = %err, "the admin server panicked");
    }
    for task in tasks {
        task.abort();
    }
    // the runtimes' sessions have ended: their last state reaches the store before the
    // process exits, or the fleet view would show them connected until they turn stale
    recorder.stop();
    let mut fleet_writer = fleet_writer;
    let flush = options.store_timeout.min(FLEET_FLUSH_TIMEOUT);
    if tokio::time::timeout(flush, &mut fleet_writer)
        .await
        .is_err()
    {
        fleet_writer.abort();
        tracing::warn!(
            "could not record the runtimes' disconnection within {flush:?}; the fleet view \
             shows them as connected until they reconnect or turn stale"
        );
    }
    tracing::info!("controller stopped");
    drop(data_dir);
    Ok(())
}

/// The sync port's TLS from the cluster CA, as a controller starts it.
struct InternalTls {
    ca: Arc<gw_sync::pki::ClusterCa>,
    names: Vec<String>,
    tls: Arc<ServerTls>,
    enroller: Arc<enrollment::StoreEnroller>,
}

/// The store's URL: the one configured, or the SQLite file in the data directory.
fn database_url(options: &ControllerOptions) -> String {
    options
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", options.data_dir.join("gw.db").display()))
}

/// Reseals every secret stored under the current key of `options` (`gw-controller
/// reseal`): opens the store `options` name, with the keys they give, and reseals
/// ([`reseal::reseal`]). Safe while controllers serve.
pub async fn reseal_store(
    options: &ControllerOptions,
) -> Result<reseal::ResealReport, ControllerError> {
    let key = keys::encryption_key(
        options.dev,
        options.encryption_key.as_deref(),
        &options.data_dir,
    )?;
    let sealer = sealer(options, &key)?;
    let store_options = StoreOptions {
        timeout: options.store_timeout,
        ..StoreOptions::default()
    };
    let store = gw_store::open(&database_url(options), &store_options)
        .await
        .map_err(ControllerError::Store)?;
    Ok(reseal::reseal(store.as_ref(), &sealer, &options.policies).await?)
}

/// The controller's sealer: its encryption key, and the previous keys of a rotation.
fn sealer(
    options: &ControllerOptions,
    key: &keys::EncryptionKey,
) -> Result<Sealer, keys::KeyError> {
    let previous = keys::previous_keys(options.previous_encryption_keys.as_deref())?;
    let sealer = Sealer::with_previous(key, &previous);
    tracing::info!(key = sealer.key_id(), previous = ?sealer.previous_ids(), "encryption keys loaded");
    Ok(sealer)
}

/// Loads (or, first in the cluster, makes) the cluster CA, issues this controller's
/// server certificate and reads the enrollments; waits while the store does not answer.
async fn internal_tls(
    ca_options: &SyncCaOptions,
    sync_addr: SocketAddr,
    store: &Arc<dyn Store>,
    sealer: &Sealer,
) -> Result<InternalTls, ControllerError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let ca = Arc::new(cluster_ca::load_or_create(store.as_ref(), sealer).await?);
            let enroller = enrollment::StoreEnroller::load(
                Arc::clone(&ca),
                Arc::clone(store),
                ca_options.runtime_cert_lifetime,
            )
            .await
            .map_err(cluster_ca::ClusterCaError::Store)?;
            Ok::<_, cluster_ca::ClusterCaError>((ca, enroller))
        };
        match attempt.await {
            Ok((ca, enroller)) => {
                let names = enrollment::server_names(&ca_options.advertise_names, sync_addr);
                let config = enrollment::server_tls(&ca, &names)
                    .map_err(|err| ControllerError::Options(format!("sync certificate: {err}")))?;
                return Ok(InternalTls {
                    ca,
                    names,
                    tls: Arc::new(ServerTls::new(config)),
                    enroller: Arc::new(enroller),
                });
            }
            Err(cluster_ca::ClusterCaError::Store(err)) if err.is_unavailable() => {
                tracing::warn!(error = %err, "cannot read the cluster CA; retrying");
            }
            Err(err) => return Err(err.into()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The longest a stopping controller waits for the store to record the end of its runtimes'
/// sessions (less when the store timeout is shorter).
const FLEET_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// In development mode the admin API may run without credentials: it listens on loopback
/// addresses only, unless [`ControllerOptions::dev_allow_remote`] says otherwise.
fn check_dev_admin_addr(options: &ControllerOptions) -> Result<(), ControllerError> {
    let addr = options.admin_addr;
    if !options.dev || options.dev_allow_remote || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(ControllerError::Options(format!(
        "--dev: the admin API listens on loopback addresses only, since development mode may \
         run it without credentials, and --admin-addr {addr} is not one. Use --admin-addr \
         127.0.0.1:{port}, or pass --dev-allow-remote (GW_DEV_ALLOW_REMOTE=true) to listen on \
         {addr} anyway (then set GW_ADMIN_TOKEN, or list the names clients use in \
         --dev-allowed-hosts)",
        port = addr.port()
    )))
}

/// Why a production controller does not serve sync in plaintext, and what to do instead.
const PLAINTEXT_SYNC_REFUSED: &str = "the sync port would be plaintext (--sync-tls off) in \
    production mode: it hands the whole configuration, certificate private keys and credential \
    hashes included, to whoever reaches it. Serve it over mutual TLS from the cluster CA (the \
    default, --sync-tls internal; runtimes enroll with GW_ENROLL_TOKEN), or from your own PKI \
    (--sync-tls-cert, --sync-tls-key, --sync-client-ca), or run in development mode (--dev)";

/// How the sync port is protected, checked before anything opens: mutual TLS from the
/// cluster CA or from files (not both), and plaintext in development mode only (with a
/// warning). The one place the command line and the library refuse a plaintext sync port.
fn check_sync_security(options: &ControllerOptions) -> Result<(), ControllerError> {
    match (&options.sync_tls, &options.sync_ca) {
        (Some(_), Some(_)) => Err(ControllerError::Options(
            "--sync-tls internal serves the cluster CA's certificates, and --sync-tls-cert \
             your own: give one or the other (in the library, set sync_ca to None with \
             sync_tls)"
                .to_string(),
        )),
        (None, None) if !options.dev => {
            Err(ControllerError::Options(PLAINTEXT_SYNC_REFUSED.to_string()))
        }
        (None, None) => {
            tracing::warn!(
                token = options.sync_token.is_some(),
                "development mode: the sync port is plaintext; whoever reaches it can read the \
                 configuration, certificate private keys and credential hashes included (and \
                 with GW_SYNC_TOKEN, whoever sees the token once). Never expose it; production \
                 mode serves it over mutual TLS"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The store as the authority on revisions, for sessions whose runtime is ahead of this
/// controller.
struct StoreAuthority(Arc<dyn Store>);

#[async_trait::async_trait]
impl RevisionAuthority for StoreAuthority {
    async fn newest_revision(&self) -> Option<i64> {
        self.0.current_revision().await.ok()
    }
}

/// How long audit records are kept by default: 90 days.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_hours(90 * 24);

/// Removes, every minute: runtimes not seen for `retention` from the fleet view, enrollment
/// tokens expired for a day, enrollments whose certificate expired a week ago (not the
/// revoked ones), admin tokens revoked or expired 30 days ago, and audit records older than
/// `audit_retention`.
async fn prune_runtimes(store: Arc<dyn Store>, retention: Duration, audit_retention: Duration) {
    let days = chrono::Duration::days;
    loop {
        let now = chrono::Utc::now();
        let cutoff = now - chrono::Duration::from_std(retention).unwrap_or_default();
        pruned(
            store.prune_runtimes(cutoff).await,
            "runtimes not seen for the retention",
        );
        pruned(
            store.delete_expired_enrollment_tokens(now - days(1)).await,
            "enrollment tokens expired a day ago",
        );
        pruned(
            store.prune_runtime_enrollments(now - days(7)).await,
            "runtime enrollments expired a week ago",
        );
        pruned(
            store.prune_admin_tokens(now - days(30)).await,
            "admin tokens revoked or expired 30 days ago",
        );
        // a retention beyond the calendar keeps everything
        let cutoff = chrono::Duration::from_std(audit_retention)
            .ok()
            .and_then(|retention| now.checked_sub_signed(retention));
        if let Some(cutoff) = cutoff {
            pruned(
                store.prune_audit(cutoff).await,
                "audit records past their retention",
            );
        }
        tokio::time::sleep(Duration::from_mins(1)).await;
    }
}

/// Logs what one pruning removed (a store that does not answer is tried again next time).
fn pruned(outcome: Result<u64, StoreError>, what: &str) {
    match outcome {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed {what}"),
        Err(err) => tracing::debug!(error = %err, "{what}: pruning skipped"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dev_mode_binds_the_admin_api_to_loopback_unless_told_otherwise() {
        let mut options = super::ControllerOptions::new();
        options.dev = true;
        for addr in ["127.0.0.1:9090", "[::1]:9090", "127.0.0.2:0"] {
            options.admin_addr = addr.parse().unwrap();
            assert!(super::check_dev_admin_addr(&options).is_ok(), "{addr}");
        }
        options.admin_addr = "0.0.0.0:9090".parse().unwrap();
        let err = super::check_dev_admin_addr(&options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dev-allow-remote"), "{err}");
        assert!(err.contains("127.0.0.1:9090"), "{err}");
        options.dev_allow_remote = true;
        assert!(super::check_dev_admin_addr(&options).is_ok());
        // production mode requires a token anyway
        options.dev = false;
        options.dev_allow_remote = false;
        assert!(super::check_dev_admin_addr(&options).is_ok());
    }

    /// A plaintext sync port is refused in production before anything opens, saying why
    /// and what to do; development mode serves what it is given.
    #[tokio::test]
    async fn run_refuses_a_plaintext_sync_port_in_production() {
        assert!(
            super::ControllerOptions::new().sync_ca.is_some(),
            "the cluster CA by default"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut options = super::ControllerOptions::new();
        options.data_dir = dir.path().join("data");
        options.admin_token = Some("an-admin-token-0123456789abcdef".into());
        options.sync_ca = None;
        let err = super::run(options.clone(), async {}).await.unwrap_err();
        assert!(matches!(err, super::ControllerError::Options(_)), "{err:?}");
        let err = err.to_string();
        for reason in [
            "plaintext",
            "certificate private keys and credential hashes",
            "the default, --sync-tls internal",
            "--sync-tls-cert",
            "--dev",
        ] {
            assert!(err.contains(reason), "{reason}: {err}");
        }
        assert!(!dir.path().join("data").exists(), "nothing was opened");

        options.dev = true;
        assert!(
            super::check_sync_security(&options).is_ok(),
            "--dev: plaintext"
        );
        options.sync_ca = Some(super::SyncCaOptions::default());
        assert!(
            super::check_sync_security(&options).is_ok(),
            "--dev: what it set"
        );
        options.sync_tls = Some(gw_sync::tls::ServerFiles {
            identity: gw_sync::tls::CertFiles {
                cert: "cert.pem".into(),
                key: "key.pem".into(),
            },
            client_ca: "ca.pem".into(),
        });
        let err = super::check_sync_security(&options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one or the other"), "{err}");
        options.dev = false;
        options.sync_ca = None;
        assert!(super::check_sync_security(&options).is_ok(), "your own PKI");
    }

    /// OIDC options that do not hold stop the controller before it opens anything, with
    /// every problem (production or not, the JWKS is fetched over https or from loopback).
    #[tokio::test]
    async fn run_refuses_oidc_options_that_do_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = super::ControllerOptions::new();
        options.data_dir = dir.path().join("data");
        options.admin_token = Some("an-admin-token-0123456789abcdef".into());
        options.oidc = Some(super::OidcOptions::new(
            "https://sso.example.com",
            &["gw"],
            "http://sso.example.com/jwks",
        ));
        for dev in [false, true] {
            options.dev = dev;
            let err = super::run(options.clone(), async {})
                .await
                .unwrap_err()
                .to_string();
            for reason in [
                "invalid options: OIDC: ",
                "--oidc-jwks-url must be an https:// URL",
                "give at least one --oidc-role",
            ] {
                assert!(err.contains(reason), "{reason}: {err}");
            }
            assert!(!dir.path().join("data").exists(), "nothing was opened");
        }
    }

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(
            super::redact_password("postgres://gw:s3cret@db:5432/gw?sslmode=require"),
            "postgres://gw:***@db:5432/gw?sslmode=require"
        );
        assert_eq!(
            super::redact_password("postgres://gw@db/gw"),
            "postgres://gw@db/gw"
        );
        assert_eq!(
            super::redact_password("sqlite://./gw-data/gw.db"),
            "sqlite://./gw-data/gw.db"
        );
        let mut options = super::ControllerOptions::new();
        options.admin_token = Some("visible-if-leaked".into());
        options.database_url = Some("postgres://gw:s3cret@db/gw".into());
        let debug = format!("{options:?}");
        assert!(
            !debug.contains("visible-if-leaked") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    /// The groups runtimes may name in their Hello (gw-sync's rule) are the groups API
    /// definitions may name (the model's): every string of up to three characters over an
    /// alphabet of the edge cases, and lengths around the limit, get the same answer.
    #[test]
    fn runtime_groups_follow_the_models_name_rule() {
        let alphabet = ["a", "z", "0", "9", "-", "A", "_", ".", " ", "é"];
        let mut cases = vec![String::new()];
        for len in 1..=3 {
            let mut index = vec![0usize; len];
            loop {
                cases.push(index.iter().map(|&i| alphabet[i]).collect());
                let Some(pos) = index.iter().rposition(|&i| i + 1 < alphabet.len()) else {
                    break;
                };
                index[pos] += 1;
                index[pos + 1..].fill(0);
            }
        }
        for len in [62, 63, 64] {
            cases.push("a".repeat(len));
            cases.push(format!("{}-", "a".repeat(len - 1)));
        }
        cases.push(format!("{}é", "a".repeat(61)));
        for case in &cases {
            assert_eq!(
                gw_sync::validate_group(case).is_ok(),
                gw_core::model::validate_name(case).is_ok(),
                "{case:?}"
            );
        }
        assert!(cases.len() > 1000);
    }

    /// Built without the `all-in-one` feature, a controller asked for that mode stops before
    /// it opens anything, saying why.
    #[cfg(not(feature = "all-in-one"))]
    #[tokio::test]
    async fn all_in_one_is_refused_by_a_build_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = super::ControllerOptions::new();
        options.data_dir = dir.path().join("data");
        options.all_in_one = Some(super::AllInOne {
            proxy_addr: "127.0.0.1:0".parse().unwrap(),
            https_addr: None,
            status_addr: "127.0.0.1:0".parse().unwrap(),
            trusted_proxies: Vec::new(),
        });
        let err = super::run(options, async {}).await.unwrap_err().to_string();
        assert!(err.contains("no all-in-one mode"), "{err}");
        assert!(err.contains("gw-runtime"), "{err}");
        assert!(!dir.path().join("data").exists(), "nothing was opened");
    }
}
