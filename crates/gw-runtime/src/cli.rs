//! The command line of `gw-runtime`, as a library: a custom build (your own policies in the
//! stock runtime) is `gw_runtime::cli::main_with(registry)` in its `main`.
//!
//! ```no_run
//! fn main() -> anyhow::Result<()> {
//!     let policies = gw_core::policy::PolicyRegistry::builtin();
//!     // .register_policy("my-policy", MyPolicy)
//!     gw_runtime::cli::main_with(policies)
//! }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gw_core::policy::PolicyRegistry;

use crate::logging::{self, LogFormat};
use crate::{ConfigSource, Runtime, RuntimeOptions};
use gw_sync::SyncToken;

/// gw data plane: proxies API traffic with the configuration it receives from a controller
/// (or reads from a file), and keeps serving when controllers are down.
#[derive(Debug, Parser)]
#[command(name = "gw-runtime", version)]
pub struct Args {
    /// Controller sync addresses, comma-separated (`host:port`); the runtime connects to one
    /// at a time and moves to another when it fails.
    #[arg(
        long,
        env = "GW_CONTROLLER",
        value_delimiter = ',',
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    controller: Vec<String>,

    /// Standalone mode: serve the APIs of this YAML or JSON file, reloaded when it changes
    /// (and on SIGHUP).
    #[arg(long, env = "GW_CONFIG")]
    config: Option<PathBuf>,

    /// The gateway group whose APIs this runtime serves.
    #[arg(long, env = "GW_GROUP", default_value = "default")]
    group: String,

    /// This runtime's id in the fleet view (default: host name and a random suffix).
    #[arg(long, env = "GW_NODE_ID")]
    node_id: Option<String>,

    /// Traffic address.
    #[arg(long, env = "GW_PROXY_ADDR", default_value = "0.0.0.0:8080")]
    proxy_addr: SocketAddr,

    /// HTTPS traffic address (for example `0.0.0.0:8443`); no HTTPS listener when unset.
    /// Certificates are part of the configuration (`kind: Certificate`), chosen by SNI.
    #[arg(long, env = "GW_HTTPS_ADDR")]
    https_addr: Option<SocketAddr>,

    /// Status and metrics address (`/status`, `/status/ready`, `/metrics`).
    #[arg(long, env = "GW_STATUS_ADDR", default_value = "0.0.0.0:7085")]
    status_addr: SocketAddr,

    /// Directory of the last-known-good configuration cache.
    #[arg(long, env = "GW_DATA_DIR", default_value = "./gw-data")]
    data_dir: PathBuf,

    /// Address shown for this runtime in the controller's fleet view.
    #[arg(long, env = "GW_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,

    /// On SIGTERM, seconds to keep serving while /status/ready answers 503, so that load
    /// balancers stop sending traffic before the listener closes.
    #[arg(long, env = "GW_DRAIN_SECONDS", default_value_t = 0)]
    drain_seconds: u64,

    /// Then, longest wait for in-flight requests to finish, in seconds.
    #[arg(long, env = "GW_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,

    /// Heartbeat interval of the sync stream, in seconds (the controller adopts it).
    #[arg(long, env = "GW_HEARTBEAT_SECONDS", default_value_t = 10)]
    heartbeat_seconds: u64,

    /// Time allowed for a client to send a request's headers, in seconds; also the idle
    /// timeout of keep-alive client connections.
    #[arg(long, env = "GW_HEADER_READ_TIMEOUT", default_value_t = 30)]
    header_read_timeout: u64,

    /// The largest request head (request line and headers) in bytes; 431 beyond it.
    #[arg(long, env = "GW_MAX_HEADER_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(8192..=16_777_216))]
    max_header_bytes: u64,

    /// The longest request URI in bytes; 414 beyond it.
    #[arg(long, env = "GW_MAX_URI_BYTES", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    max_uri_bytes: u64,

    /// Open client connections; a connection beyond it is closed at once.
    #[arg(long, env = "GW_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections: u64,

    /// Worker threads of the async runtime (default: one per core). With 1, the runtime
    /// serves everything on one thread (Tokio's current-thread scheduler).
    #[arg(long, env = "GW_WORKER_THREADS")]
    worker_threads: Option<usize>,

    /// Log format.
    #[arg(long, env = "GW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Parses the command line and runs a runtime that knows `policies` until SIGTERM or
/// SIGINT.
pub fn main_with(policies: PolicyRegistry) -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format);
    // one worker: the current-thread scheduler, which skips the work-stealing machinery
    let mut builder = match args.worker_threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, policies))
}

/// Runs a runtime configured by `args` that knows `policies`.
pub async fn run(args: Args, policies: PolicyRegistry) -> anyhow::Result<()> {
    let source = match args.config {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Controllers(args.controller),
    };
    let mut options = RuntimeOptions::new(source);
    options.policies = policies;
    options.group = args.group;
    if let Some(node_id) = args.node_id {
        options.node_id = node_id;
    }
    options.proxy_addr = args.proxy_addr;
    options.https_addr = args.https_addr;
    options.status_addr = args.status_addr;
    options.data_dir = Some(args.data_dir);
    options.advertise_address = args.advertise_address;
    options.listener.drain_timeout = Duration::from_secs(args.drain_timeout);
    options.listener.header_read_timeout = Duration::from_secs(args.header_read_timeout.max(1));
    options.listener.max_header_bytes = usize::try_from(args.max_header_bytes)?;
    options.listener.max_connections = usize::try_from(args.max_connections)?;
    options.max_uri_bytes = usize::try_from(args.max_uri_bytes)?;
    options.drain_period = Duration::from_secs(args.drain_seconds);
    options.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.clamp(1, 60));
    // from the environment only: a flag would show in `ps`
    options.sync_token = std::env::var("GW_SYNC_TOKEN")
        .ok()
        .as_deref()
        .and_then(SyncToken::new);
    let runtime = Runtime::bind(options).await?;
    runtime.run(crate::shutdown_signal()).await?;
    Ok(())
}
