//! gw's data plane runtime, as a library: embed it in your own service or build your own
//! binary around it. The `gw-runtime` binary is a thin command line over [`Runtime`].
//!
//! A runtime gets its configuration from a source ([`ConfigSource`]): the stream of one of
//! several controllers (resumed from the revision it serves, kept in a last-known-good cache
//! on disk so that it can serve after a restart while no controller answers), or a file
//! (standalone mode). It proxies traffic through [`gw_core::Gateway`] and serves `/status`,
//! `/status/ready` and `/metrics` on a separate address.
//!
//! ```no_run
//! # async fn example() -> Result<(), gw_runtime::RuntimeError> {
//! use gw_runtime::{ConfigSource, Runtime, RuntimeOptions};
//!
//! let options = RuntimeOptions::new(ConfigSource::File("apis.yaml".into()));
//! let runtime = Runtime::bind(options).await?;
//! println!("proxy on {}", runtime.proxy_addr());
//! runtime.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Features
//!
//! Both are on by default; an embedder that needs neither builds with
//! `default-features = false`.
//!
//! | feature | what it adds | what it brings |
//! |---|---|---|
//! | `bundles` | signed fallback bundles: [`fallback`], [`RuntimeOptions::fallback`] | gw-bundle, object_store, reqwest |
//! | `cli` | the command line of the `gw-runtime` binary: [`cli`] (with the fallback-bundle flags when `bundles` is on) | clap, anyhow, mimalloc |
//!
//! The `gw-runtime` binary needs `cli`.
#![warn(missing_docs)]

pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data_dir;
mod enrollment;
#[cfg(feature = "bundles")]
pub mod fallback;
pub mod file_source;
pub mod listener;
pub mod logging;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gw_core::Gateway;
use gw_core::metrics::ProxyMetrics;
use gw_core::otel::{OtelConfig, OtelMetrics, Tracing};
use gw_core::policy::PolicyRegistry;
use gw_core::upstream::TrafficLimits;
use gw_sync::SyncToken;
use gw_sync::client::{ClientOptions, SyncClient};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::CacheFile;
use crate::data_dir::DataDir;
#[cfg(feature = "bundles")]
use crate::fallback::FallbackOptions;
use crate::file_source::{FileError, FileSource};
use crate::listener::ListenerOptions;
use crate::state::ConfigState;
use crate::status::StatusContext;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The sync stream of one of these controllers (`host:port` or `http://host:port`).
    Controllers(Vec<String>),
    /// A YAML or JSON file of API, certificate and consumer documents, reloaded when it
    /// changes.
    File(PathBuf),
}

/// Everything a runtime needs; [`RuntimeOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The configuration source.
    pub source: ConfigSource,
    /// The gateway group served (controller mode).
    pub group: String,
    /// This runtime's id in the fleet view. `None`: the id kept in the data directory
    /// (`<data_dir>/node-id`, generated there at the first start) in controller mode, a new
    /// one at every start without a data directory or in standalone mode.
    pub node_id: Option<String>,
    /// Traffic address.
    pub proxy_addr: SocketAddr,
    /// HTTPS traffic address (`None`: no HTTPS listener). The certificates come with the
    /// configuration (`kind: Certificate`).
    pub https_addr: Option<SocketAddr>,
    /// Status and metrics address (default: loopback; `/metrics` names upstream URLs and
    /// consumers, so expose it only where probes and Prometheus need it).
    pub status_addr: SocketAddr,
    /// The status server's connection limits.
    pub status_limits: gw_core::conn::server::ServerLimits,
    /// Where the last-known-good cache and the node id live (controller mode), locked
    /// against other processes while the runtime runs ([`data_dir::DataDir`]); `None`: no
    /// cache.
    pub data_dir: Option<PathBuf>,
    /// The address shown for this runtime in the fleet view (default: as the controller sees
    /// it).
    pub advertise_address: Option<String>,
    /// The policies this runtime can build.
    pub policies: PolicyRegistry,
    /// Downstream connection limits and the drain timeout.
    pub listener: ListenerOptions,
    /// The longest request URI accepted; 414 beyond it.
    pub max_uri_bytes: usize,
    /// The proxies in front of the runtime whose forwarding headers are believed
    /// ([`Gateway::with_trusted_proxies`]); empty: none.
    pub trusted_proxies: Vec<gw_core::policy::Cidr>,
    /// How often the configuration file is checked for changes.
    pub file_poll_interval: Duration,
    /// Heartbeat interval of the sync stream.
    pub heartbeat_interval: Duration,
    /// The token controllers require on the sync stream, if any.
    pub sync_token: Option<SyncToken>,
    /// HTTPS on the status port from files (certificate and key), followed for renewals;
    /// `None`: plain HTTP.
    pub status_tls: Option<gw_sync::tls::CertFiles>,
    /// TLS to the controllers from files (the controllers' CA, this runtime's certificate
    /// and key), followed for renewals; `None`: plaintext. The certificate must name this
    /// runtime's node id and group.
    pub sync_tls: Option<gw_sync::tls::ClientFiles>,
    /// The token to enroll with (`GW_ENROLL_TOKEN`): the runtime gets its sync certificate
    /// from the cluster's internal CA, keeps it in the data directory and renews it. A
    /// runtime that enrolled before uses the certificate it kept, with or without a token.
    pub enroll_token: Option<gw_sync::enroll::EnrollmentToken>,
    /// After the shutdown signal, how long the runtime keeps serving while `/status/ready`
    /// says 503, so that load balancers take it out before it stops accepting connections.
    pub drain_period: Duration,
    /// Whether `/status/ready` also requires a live connection to a controller (controller
    /// mode): the stricter meaning API7 documents, for operators who would rather take a
    /// runtime that lost its control plane out of rotation. By default a runtime with a
    /// configuration is ready, connected or not (it serves its last-known-good one).
    pub ready_requires_controller: bool,
    /// Whether `POST /status/drain` may drain and stop the runtime (as `drain_access`
    /// allows). Off where the runtime is part of a larger process (the controller's
    /// all-in-one mode), which has its own shutdown.
    pub drain_endpoint: bool,
    /// Who may drain: with a token, whoever presents it; from loopback, any local process.
    /// Neither (the default): the endpoint is off.
    pub drain_access: status::DrainAccess,
    /// OpenTelemetry trace export (`None`: no export). An empty `service_instance_id` is
    /// filled with the node id.
    pub otel: Option<OtelConfig>,
    /// Signed fallback bundles to serve when the runtime starts with no cache while no
    /// controller answers (controller mode; `None`: none).
    #[cfg(feature = "bundles")]
    pub fallback: Option<FallbackOptions>,
    /// What clients' request bodies and WebSocket tunnels may hold: read-ahead, the pace
    /// of request bodies, tunnel idle timeout and lifetime.
    pub traffic: TrafficLimits,
}

impl RuntimeOptions {
    /// Options with the defaults: group `default`, traffic on `127.0.0.1:8080`, status
    /// on `127.0.0.1:7085` (loopback, as every default address of gw), no cache, a node id
    /// generated at start.
    pub fn new(source: ConfigSource) -> Self {
        Self {
            source,
            group: "default".to_string(),
            node_id: None,
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https_addr: None,
            status_addr: SocketAddr::from(([127, 0, 0, 1], 7085)),
            status_limits: status_limits(),
            data_dir: None,
            advertise_address: None,
            policies: PolicyRegistry::builtin(),
            listener: ListenerOptions::default(),
            max_uri_bytes: gw_core::gateway::DEFAULT_MAX_URI_BYTES,
            trusted_proxies: Vec::new(),
            file_poll_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(10),
            sync_token: None,
            sync_tls: None,
            enroll_token: None,
            status_tls: None,
            drain_period: Duration::ZERO,
            ready_requires_controller: false,
            drain_endpoint: true,
            drain_access: status::DrainAccess::default(),
            otel: None,
            #[cfg(feature = "bundles")]
            fallback: None,
            traffic: TrafficLimits::default(),
        }
    }
}

/// The sync stream's TLS, as read at start.
#[derive(Debug)]
struct SyncTls {
    tls: Arc<gw_sync::tls::ClientTls>,
    /// What the certificate names.
    identity: gw_sync::pki::RuntimeIdentity,
    /// How the files looked just before they were read.
    since: gw_sync::tls::Stamps,
}

/// Loads the sync stream's TLS files and checks that the certificate names this runtime:
/// a controller would refuse it otherwise, and an endless reconnect loop would say less.
fn sync_tls(
    files: &gw_sync::tls::ClientFiles,
    node_id: &str,
    group: &str,
) -> Result<SyncTls, RuntimeError> {
    let since = gw_sync::tls::Stamps::of(&files.paths());
    let (config, identity) = files
        .load()
        .map_err(|err| RuntimeError::Options(format!("sync TLS: {err}")))?;
    if identity.node_id != node_id || identity.group != group {
        return Err(RuntimeError::Options(format!(
            "sync TLS: {} names node {:?} of group {:?}, and this runtime is node {node_id:?} \
             of group {group:?} (--node-id, --group): controllers serve a runtime only as its \
             certificate names it, so give --node-id and --group as the certificate does",
            files.identity.cert.display(),
            identity.node_id,
            identity.group,
        )));
    }
    Ok(SyncTls {
        tls: Arc::new(gw_sync::tls::ClientTls::new(config)),
        identity,
        since,
    })
}

/// The status server's default limits: 256 connections, 64 per client address, 5 s for a
/// request head, 30 s idle.
pub fn status_limits() -> gw_core::conn::server::ServerLimits {
    gw_core::conn::server::ServerLimits {
        max_connections: 256,
        max_connections_per_address: 64,
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_header_bytes: 16 * 1024,
        drain_timeout: Duration::from_secs(1),
    }
}

/// Completes on SIGTERM or Ctrl-C: the shutdown signal of gw's binaries.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Raises the process's open-files limit to its hard limit, and warns when even that is
/// below `needed` descriptors (a connection limit that the process cannot reach: accepts
/// and upstream connects would fail with "too many open files" first). Returns the limit.
pub fn raise_open_files_limit(needed: u64) -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            if limit < needed {
                tracing::warn!(
                    limit,
                    needed,
                    "the open-files limit is below what the connection limits need; raise it \
                     (ulimit -n, LimitNOFILE=) or lower --max-connections"
                );
            } else {
                tracing::debug!(limit, "open-files limit");
            }
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read or raise the open-files limit");
            None
        }
    }
}

/// A node id that is unique per process: the host name and a random suffix.
pub fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gw".to_string());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Starts the trace export of `config`, its `service.instance.id` the node id unless it has
/// one, its metrics in `registry`.
fn start_tracing(
    config: &OtelConfig,
    node_id: &str,
    registry: &mut Registry,
) -> Result<Tracing, RuntimeError> {
    let mut config = config.clone();
    if config.service_instance_id.is_empty() {
        node_id.clone_into(&mut config.service_instance_id);
    }
    Ok(Tracing::start(&config, OtelMetrics::register(registry))?)
}

/// How long a stopping runtime waits for its controller to end the sync stream after
/// ending its own side (see [`gw_sync::client`]).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
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
    /// The configuration file could not be served.
    #[error(transparent)]
    File(#[from] FileError),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// The trace export cannot start.
    #[error(transparent)]
    Otel(#[from] gw_core::otel::OtelError),
    /// The data directory is held by another process, or its node id file is invalid.
    #[error(transparent)]
    DataDir(#[from] data_dir::DataDirError),
}

/// A runtime with its listeners bound and its first configuration (cache or file) applied.
#[derive(Debug)]
pub struct Runtime {
    options: RuntimeOptions,
    /// The node id: given, kept in the data directory, or generated.
    node_id: String,
    /// The data directory, locked until [`Runtime::run`] returns (controller mode).
    data_dir: Option<DataDir>,
    /// The start time this run's sync sessions are ordered by ([`DataDir::session_start`]).
    session_start: Option<u64>,
    proxy: TcpListener,
    https: Option<TcpListener>,
    status: TcpListener,
    state: Arc<ConfigState>,
    registry: Registry,
    file: Option<FileSource>,
    /// The sync stream's TLS, the identity its certificate names, and how its files looked
    /// when they were read (controller mode).
    sync_tls: Option<SyncTls>,
    /// The status port's TLS, and how its files looked when they were read.
    status_tls: Option<(gw_core::conn::server::TlsConfig, gw_sync::tls::Stamps)>,
    /// The certificate from the cluster's internal CA (controller mode, enrolled or to be).
    enrollment: Option<enrollment::Enrollment>,
}

impl Runtime {
    /// Binds the listeners and applies the first configuration: the file in standalone mode
    /// (an invalid file is an error), the last-known-good cache in controller mode (if there
    /// is a valid one).
    pub async fn bind(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        if let ConfigSource::Controllers(list) = &options.source {
            if list.is_empty() {
                return Err(RuntimeError::Options(
                    "give at least one controller address, or a configuration file".to_string(),
                ));
            }
            // what a controller would refuse, refused here with a clear message instead of
            // an endless reconnect loop
            gw_sync::validate_group(&options.group)
                .map_err(|reason| RuntimeError::Options(format!("--group: {reason}")))?;
            if let Some(node_id) = &options.node_id {
                gw_sync::validate_node_id(node_id)
                    .map_err(|reason| RuntimeError::Options(format!("--node-id: {reason}")))?;
            }
        }
        // before the listeners: a second process on the directory is told so, whatever else
        // the two share
        let data_dir = match (&options.source, &options.data_dir) {
            (ConfigSource::Controllers(_), Some(dir)) => Some(DataDir::open(dir)?),
            _ => None,
        };
        // sessions of this node are ordered by it: never below the previous run's start
        let session_start = data_dir
            .as_ref()
            .map(|dir| dir.session_start(gw_sync::unix_millis()))
            .transpose()?;
        let node_id = match (&options.node_id, &data_dir) {
            (Some(node_id), _) => node_id.clone(),
            (None, Some(dir)) => dir.node_id()?,
            (None, None) => default_node_id(),
        };
        let status_tls = match &options.status_tls {
            Some(files) => {
                let since = gw_sync::tls::Stamps::of(&files.paths());
                let config = files
                    .https_config()
                    .map_err(|err| RuntimeError::Options(format!("status TLS: {err}")))?;
                Some((Arc::new(arc_swap::ArcSwap::new(config)), since))
            }
            None => None,
        };
        let sync_tls = match (&options.source, &options.sync_tls) {
            (ConfigSource::Controllers(_), Some(_)) if options.enroll_token.is_some() => {
                return Err(RuntimeError::Options(
                    "GW_ENROLL_TOKEN gets a certificate from the cluster's CA, and \
                     --sync-tls-cert gives one of your own: give one or the other"
                        .to_string(),
                ));
            }
            (ConfigSource::Controllers(_), Some(files)) => {
                Some(sync_tls(files, &node_id, &options.group)?)
            }
            (ConfigSource::File(_), Some(_)) => {
                return Err(RuntimeError::Options(
                    "sync TLS is for a runtime of controllers, not one serving a file".to_string(),
                ));
            }
            _ => None,
        };
        // with a token, or a certificate kept from an earlier enrollment
        let enrolled_before = data_dir
            .as_ref()
            .is_some_and(|dir| dir.path().join(enrollment::IDENTITY_FILE).exists());
        let enrollment = match &options.source {
            ConfigSource::Controllers(_)
                if sync_tls.is_none() && (options.enroll_token.is_some() || enrolled_before) =>
            {
                let identity = gw_sync::pki::RuntimeIdentity::new(&options.group, &node_id)
                    .map_err(|err| RuntimeError::Options(err.to_string()))?;
                Some(enrollment::Enrollment::start(
                    data_dir.as_ref().map(DataDir::path),
                    identity,
                    options.enroll_token.clone(),
                )?)
            }
            ConfigSource::File(_) if options.enroll_token.is_some() => {
                return Err(RuntimeError::Options(
                    "GW_ENROLL_TOKEN is for a runtime of controllers, not one serving a file"
                        .to_string(),
                ));
            }
            _ => None,
        };
        let bind = |what, addr, backlog| {
            listener::bind(addr, backlog).map_err(|source| RuntimeError::Bind {
                what,
                addr,
                source,
            })
        };
        let backlog = options.listener.listen_backlog;
        let proxy = bind("proxy", options.proxy_addr, backlog)?;
        let https = match options.https_addr {
            Some(addr) => Some(bind("https", addr, backlog)?),
            None => None,
        };
        let status = bind("status", options.status_addr, 128)?;

        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let mut gateway = Gateway::new(options.policies.clone(), metrics)
            .with_max_uri_bytes(options.max_uri_bytes)
            .with_traffic_limits(options.traffic)
            .with_trusted_proxies(options.trusted_proxies.clone());
        if let Some(config) = &options.otel {
            gateway = gateway.with_tracing(start_tracing(config, &node_id, &mut registry)?);
        }
        let gateway = Arc::new(gateway);
        let cache = data_dir.as_ref().map(|dir| {
            CacheFile::new(
                dir.path().join("config-cache.json"),
                cache::DEFAULT_MAX_BYTES,
            )
        });
        let state = Arc::new(ConfigState::new(
            gateway,
            options.group.clone(),
            cache,
            &mut registry,
        ));
        let file = match &options.source {
            ConfigSource::File(path) => {
                let mut source = FileSource::new(path.clone(), Arc::clone(&state));
                source.load().await?;
                Some(source)
            }
            ConfigSource::Controllers(_) => {
                state.load_cache().await;
                None
            }
        };
        Ok(Self {
            options,
            node_id,
            data_dir,
            session_start,
            proxy,
            https,
            status,
            state,
            registry,
            file,
            sync_tls,
            status_tls,
            enrollment,
        })
    }

    /// This runtime's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Where traffic is served.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr().unwrap_or(self.options.proxy_addr)
    }

    /// Where HTTPS traffic is served, if it is.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where status and metrics are served.
    pub fn status_addr(&self) -> SocketAddr {
        self.status.local_addr().unwrap_or(self.options.status_addr)
    }

    /// The gateway, for embedders that serve it on listeners of their own.
    pub fn gateway(&self) -> &Arc<Gateway> {
        self.state.gateway()
    }

    /// The applied configuration's state: revision and origin.
    pub fn config_state(&self) -> &Arc<ConfigState> {
        &self.state
    }

    /// Serves until `shutdown` completes (or `POST /status/drain` is accepted);
    /// then turns unready, keeps serving for the drain period, stops accepting connections,
    /// waits for in-flight requests (at most the listener's drain timeout) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RuntimeError> {
        let proxy_addr = self.proxy_addr();
        let status_addr = self.status_addr();
        let https_addr = self.https_addr();
        let Self {
            options,
            node_id,
            data_dir,
            session_start,
            proxy,
            https,
            status,
            state,
            registry,
            file,
            sync_tls,
            status_tls,
            enrollment,
        } = self;

        let file_rejection = file.as_ref().map(FileSource::last_rejection);
        // the sync client stops after the listeners, with a goodbye to its controller
        let (goodbye, farewell) = tokio::sync::oneshot::channel::<()>();
        let farewell = async move {
            let _ = farewell.await;
        };
        let (source_task, sync_status) = match (options.source, file) {
            (ConfigSource::File(_), Some(file)) => {
                (tokio::spawn(file.watch(options.file_poll_interval)), None)
            }
            (ConfigSource::Controllers(controllers), _) => {
                #[cfg(feature = "bundles")]
                let count = controllers.len();
                let addresses = controllers.clone();
                let mut client_options =
                    ClientOptions::new(controllers, node_id.clone(), options.group.clone());
                client_options.runtime_version = env!("CARGO_PKG_VERSION").to_string();
                client_options.supported_policies = options.policies.names();
                client_options.supported_kinds =
                    gw_sync::KINDS.iter().map(ToString::to_string).collect();
                client_options.advertise_address =
                    options.advertise_address.clone().unwrap_or_default();
                client_options.heartbeat_interval = options.heartbeat_interval;
                client_options.token.clone_from(&options.sync_token);
                // the TLS files are followed for as long as the client runs
                let follow: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                    match (&sync_tls, &options.sync_tls) {
                        (Some(sync), Some(files)) => {
                            client_options.tls = Some(Arc::clone(&sync.tls));
                            Box::pin(Arc::clone(&sync.tls).follow(
                                files.clone(),
                                sync.identity.clone(),
                                sync.since.clone(),
                                gw_sync::tls::FOLLOW_INTERVAL,
                            ))
                        }
                        _ => Box::pin(std::future::pending()),
                    };
                if let Some(enrollment) = &enrollment {
                    client_options.tls = Some(enrollment.tls());
                }
                client_options.goodbye_timeout = GOODBYE_TIMEOUT;
                client_options.session_start_ms = session_start;
                let client = SyncClient::new(client_options, Arc::clone(&state));
                let sync_status = client.status();
                let client = async move {
                    let mut farewell = std::pin::pin!(farewell);
                    // a certificate first, then the stream with it, renewed as it ages
                    let renew: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match enrollment
                    {
                        Some(mut enrollment) => {
                            if !enrollment.is_enrolled() {
                                tokio::select! {
                                    () = &mut farewell => return,
                                    () = enrollment.enroll(&addresses) => {}
                                }
                            }
                            Box::pin(async move {
                                enrollment.renew_forever(addresses).await;
                                // nothing left to renew: the stream goes on as it can
                                std::future::pending::<()>().await;
                            })
                        }
                        None => Box::pin(std::future::pending()),
                    };
                    tokio::select! {
                        () = client.run_until(farewell) => {}
                        () = follow => {}
                        () = renew => {}
                    }
                };
                #[cfg(feature = "bundles")]
                let source = match options.fallback.clone() {
                    // no cache was loaded: the bundle, should no controller answer
                    Some(fallback) if state.origin() == state::Origin::None => {
                        let bundle =
                            fallback::run(Arc::clone(&state), sync_status.clone(), count, fallback);
                        tokio::spawn(async move {
                            tokio::join!(client, bundle);
                        })
                    }
                    _ => tokio::spawn(client),
                };
                #[cfg(not(feature = "bundles"))]
                let source = tokio::spawn(client);
                (source, Some(sync_status))
            }
            (ConfigSource::File(_), None) => {
                return Err(RuntimeError::Options(
                    "the file source was not loaded".into(),
                ));
            }
        };

        let mut registry = registry;
        if let Some(status) = &sync_status {
            let connected = prometheus_client::metrics::gauge::Gauge::<i64>::default();
            registry.register(
                "gw_sync_connected",
                "1 while a sync stream to a controller is open (controller mode)",
                connected.clone(),
            );
            let mut status = status.clone();
            // follows the client's status; ends with the client
            tokio::spawn(async move {
                loop {
                    let open = status.borrow_and_update().connected_to.is_some();
                    connected.set(i64::from(open));
                    if status.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        let status_metrics = gw_core::conn::server::ServerMetrics::register(
            &mut registry,
            "gw_status",
            "status server",
        );
        let drain_requests = status::DrainMetrics::register(&mut registry);
        let context = Arc::new(StatusContext {
            node_id: node_id.clone(),
            group: options.group.clone(),
            state: Arc::clone(&state),
            sync: sync_status,
            file_rejection,
            draining: std::sync::atomic::AtomicBool::new(false),
            requires_controller: options.ready_requires_controller,
            drain: options.drain_endpoint.then(tokio::sync::Notify::new),
            drain_access: options.drain_access.clone(),
            drain_requests,
            registry,
        });
        // the certificate files are followed for as long as the status port serves
        let follow: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
            match (&options.status_tls, &status_tls) {
                (Some(files), Some((tls, since))) => {
                    let (files, tls) = (files.clone(), Arc::clone(tls));
                    Box::pin(gw_sync::tls::follow(
                        "status port",
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
        let serve = status::serve(
            status,
            Arc::clone(&context),
            options.status_limits.clone(),
            status_metrics,
            status_tls.map(|(tls, _)| tls),
        );
        let status_task = tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                () = follow => {}
            }
        });
        tracing::info!(listener = "proxy", addr = %proxy_addr, "listening");
        if let Some(addr) = https_addr {
            tracing::info!(listener = "https", %addr, "listening");
        }
        tracing::info!(listener = "status", addr = %status_addr, "listening");
        tracing::info!(node = %node_id, group = %options.group, "runtime started");

        let draining = Arc::clone(&context);
        let drain_period = options.drain_period;
        let shutdown = async move {
            let requested = async {
                match &draining.drain {
                    Some(drain) => drain.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => {}
                () = requested => {}
            }
            draining.draining.store(true, Ordering::Release);
            if !drain_period.is_zero() {
                tracing::info!(
                    ?drain_period,
                    "shutting down: no longer ready; still serving for the drain period"
                );
                tokio::time::sleep(drain_period).await;
            }
            tracing::info!("shutting down: closing the listener and finishing in-flight requests");
        };
        // one shutdown signal for every listener
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopper = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let listeners =
            listener::Listeners::new(Arc::clone(state.gateway()), options.listener.clone());
        let plain = listeners.serve(proxy, None, stopped(stop_rx.clone()));
        let secure = async {
            if let Some(https) = https {
                let acceptor = TlsAcceptor::from(state.gateway().tls_server_config());
                listeners
                    .serve(https, Some(acceptor), stopped(stop_rx))
                    .await;
            }
        };
        tokio::join!(stopper, plain, secure);
        status_task.abort();
        // the client ends its stream and waits (boundedly) for the controller to take note;
        // a configuration being applied meanwhile is given as long
        let _ = goodbye.send(());
        let mut source_task = source_task;
        if context.sync.is_none()
            || tokio::time::timeout(GOODBYE_TIMEOUT * 2, &mut source_task)
                .await
                .is_err()
        {
            source_task.abort();
        }
        if let Some(tracing) = state.gateway().tracing() {
            // the spans of the last requests
            tracing.shutdown().await;
        }
        tracing::info!("runtime stopped");
        // the directory's lock goes last
        drop(data_dir);
        Ok(())
    }
}
