//! The command line of `gw-controller`, as a library: a custom build (a controller that
//! accepts your own policies) is `gw_controller::cli::main_with(registry)` in its `main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gw_core::policy::PolicyRegistry;
use gw_runtime::logging::{self, LogFormat};

use crate::{AllInOne, ControllerOptions};
use gw_sync::SyncToken;

/// gw control plane: operators deploy APIs through its admin REST API; it stores them
/// (PostgreSQL, or an embedded SQLite file) and keeps every connected runtime in sync.
///
/// Production mode is the default and needs GW_ADMIN_TOKEN (the admin API's bearer token)
/// and GW_ENCRYPTION_KEY (32 bytes, base64) in the environment. GW_SYNC_TOKEN, when set, is
/// the token runtimes must present on the sync port.
#[derive(Debug, Parser)]
#[command(name = "gw-controller", version)]
pub struct Args {
    /// Database URL: postgres://user@host/db for a cluster of controllers, or
    /// sqlite://path/to/file.db (default: sqlite in the data dir).
    #[arg(long, env = "GW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Data directory (SQLite file, development key, all-in-one runtime cache).
    #[arg(long, env = "GW_DATA_DIR", default_value = "./gw-data")]
    data_dir: PathBuf,

    /// Admin REST API address.
    #[arg(long, env = "GW_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    admin_addr: SocketAddr,

    /// Sync (gRPC) address that runtimes connect to.
    #[arg(long, env = "GW_SYNC_ADDR", default_value = "127.0.0.1:18000")]
    sync_addr: SocketAddr,

    /// This controller's id (default: host name and a random suffix).
    #[arg(long, env = "GW_NODE_ID")]
    node_id: Option<String>,

    /// Development mode: the admin API may run without a token, an encryption key is
    /// generated into the data dir. Never in production.
    #[arg(long, env = "GW_DEV")]
    dev: bool,

    /// Also run a runtime in this process (single-node topology).
    #[arg(long, env = "GW_ALL_IN_ONE")]
    all_in_one: bool,

    /// Traffic address of the all-in-one runtime.
    #[arg(long, env = "GW_PROXY_ADDR", default_value = "127.0.0.1:8080")]
    proxy_addr: SocketAddr,

    /// HTTPS traffic address of the all-in-one runtime (for example `127.0.0.1:8443`);
    /// none when unset. Certificates are deployed under /api/v1/certificates.
    #[arg(long, env = "GW_HTTPS_ADDR")]
    https_addr: Option<SocketAddr>,

    /// Status address of the all-in-one runtime.
    #[arg(long, env = "GW_STATUS_ADDR", default_value = "127.0.0.1:7085")]
    status_addr: SocketAddr,

    /// Longest wait for the database, in milliseconds, before a call answers 503.
    #[arg(long, env = "GW_STORE_TIMEOUT_MS", default_value_t = 5000)]
    store_timeout_ms: u64,

    /// Safety poll of the change log, in milliseconds (notifications are the fast path).
    #[arg(long, env = "GW_POLL_INTERVAL_MS", default_value_t = 5000)]
    poll_interval_ms: u64,

    /// Heartbeat interval of the runtime streams, in seconds.
    #[arg(long, env = "GW_HEARTBEAT_SECONDS", default_value_t = 10)]
    heartbeat_seconds: u64,

    /// On SIGTERM, seconds during which /readyz answers 503 while the controller still serves
    /// its admin API and its runtimes, so that load balancers send calls elsewhere first.
    #[arg(long, env = "GW_DRAIN_SECONDS", default_value_t = 0)]
    drain_seconds: u64,

    /// Log format.
    #[arg(long, env = "GW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Parses the command line and runs a controller (and, with `--all-in-one`, its runtime)
/// that knows `policies` until SIGTERM or SIGINT.
pub fn main_with(policies: PolicyRegistry) -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, policies))
}

/// Runs a controller configured by `args` that knows `policies`.
pub async fn run(args: Args, policies: PolicyRegistry) -> anyhow::Result<()> {
    let mut options = ControllerOptions::new();
    options.policies = policies;
    options.database_url = args.database_url;
    options.data_dir = args.data_dir;
    options.admin_addr = args.admin_addr;
    options.sync_addr = args.sync_addr;
    if let Some(node_id) = args.node_id {
        options.node_id = node_id;
    }
    options.dev = args.dev;
    // secrets come from the environment only: a flag would show in `ps`
    options.admin_token = std::env::var("GW_ADMIN_TOKEN").ok();
    options.encryption_key = std::env::var("GW_ENCRYPTION_KEY").ok();
    options.sync_token = std::env::var("GW_SYNC_TOKEN")
        .ok()
        .as_deref()
        .and_then(SyncToken::new);
    options.store_timeout = Duration::from_millis(args.store_timeout_ms.max(100));
    options.poll_interval = Duration::from_millis(args.poll_interval_ms.max(100));
    options.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.clamp(1, 60));
    options.drain_period = Duration::from_secs(args.drain_seconds);
    if args.all_in_one {
        options.all_in_one = Some(AllInOne {
            proxy_addr: args.proxy_addr,
            https_addr: args.https_addr,
            status_addr: args.status_addr,
        });
    }
    crate::run(options, gw_runtime::shutdown_signal()).await?;
    Ok(())
}
