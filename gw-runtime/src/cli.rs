//! The command line of `gw-runtime`, as a library: a custom build (your own policies in the
//! stock runtime) is `gw_runtime::cli::main_with(registry)` in its `main`, and [`exit`]
//! prints its error as the stock binary does.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let policies = gw_core::policy::PolicyRegistry::builtin();
//!     // .register_policy("my-policy", MyPolicy)
//!     gw_runtime::cli::exit(gw_runtime::cli::main_with(policies))
//! }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gw_core::model::HumanDuration;
use gw_core::otel::{OtelConfig, OtelHeader};
use gw_core::policy::{Cidr, PolicyRegistry};
use gw_core::upstream::TrafficLimits;

#[cfg(feature = "bundles")]
use crate::fallback::FallbackOptions;
use crate::logging::{self, LogFormat};
use crate::{ConfigSource, Runtime, RuntimeOptions};
#[cfg(feature = "bundles")]
use gw_bundle::VerifyKey;
#[cfg(feature = "bundles")]
use gw_bundle::storage::{BundleTarget, S3Options};
use gw_sync::SyncToken;
#[cfg(feature = "bundles")]
use std::sync::Arc;

/// gw data plane: proxies API traffic with the configuration it receives from a controller
/// (or reads from a file), and keeps serving when controllers are down.
#[derive(Debug, Parser)]
#[command(name = "gw-runtime", version)]
#[command(group(
    clap::ArgGroup::new("source")
        .args(["controller", "config"])
        .required(true)
        .multiple(false)
))]
pub struct Args {
    /// Controller sync addresses, comma-separated (`host:port`); the runtime connects to one
    /// at a time and moves to another when it fails.
    #[arg(
        long,
        env = "GW_CONTROLLER",
        value_delimiter = ',',
        value_name = "ADDRESSES"
    )]
    controller: Vec<String>,

    /// Mutual TLS to the controllers: the CA of the controllers' certificates (PEM). With
    /// `--sync-tls-cert` and `--sync-tls-key`; the files are reloaded when they change.
    #[arg(
        long,
        env = "GW_CONTROLLER_CA",
        value_name = "FILE",
        requires_all = ["sync_tls_cert", "sync_tls_key"],
        conflicts_with = "config"
    )]
    controller_ca: Option<PathBuf>,

    /// This runtime's client certificate for the sync stream (PEM, then any
    /// intermediates). It must name the runtime as the URI
    /// `urn:gw:runtime:<group>:<node-id>` among its subject alternative names.
    #[arg(
        long,
        env = "GW_SYNC_TLS_CERT",
        value_name = "FILE",
        requires_all = ["controller_ca", "sync_tls_key"]
    )]
    sync_tls_cert: Option<PathBuf>,

    /// The private key of `--sync-tls-cert` (PEM).
    #[arg(
        long,
        env = "GW_SYNC_TLS_KEY",
        value_name = "FILE",
        requires_all = ["controller_ca", "sync_tls_cert"]
    )]
    sync_tls_key: Option<PathBuf>,

    /// HTTPS on the status port: its certificate (PEM, then any intermediates). With
    /// `--status-tls-key`; the files are reloaded when they change.
    #[arg(
        long,
        env = "GW_STATUS_TLS_CERT",
        value_name = "FILE",
        requires = "status_tls_key"
    )]
    status_tls_cert: Option<PathBuf>,

    /// The private key of `--status-tls-cert` (PEM).
    #[arg(
        long,
        env = "GW_STATUS_TLS_KEY",
        value_name = "FILE",
        requires = "status_tls_cert"
    )]
    status_tls_key: Option<PathBuf>,

    /// Standalone mode: serve the APIs of this YAML or JSON file, reloaded when it changes
    /// (and on SIGHUP).
    #[arg(long, env = "GW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The gateway group whose APIs this runtime serves.
    #[arg(long, env = "GW_GROUP", default_value = "default")]
    group: String,

    /// This runtime's id in the fleet view. Default: the id kept in the data directory
    /// (`<data-dir>/node-id`), generated there at the first start (host name and a random
    /// suffix); standalone mode (`--config`) generates one at every start.
    #[arg(long, env = "GW_NODE_ID")]
    node_id: Option<String>,

    /// Traffic address. Loopback by default, as every address of gw is: give `0.0.0.0:8080`
    /// (or the address of one interface) to take traffic from other hosts.
    #[arg(long, env = "GW_PROXY_ADDR", default_value = "127.0.0.1:8080")]
    proxy_addr: SocketAddr,

    /// HTTPS traffic address (for example `0.0.0.0:8443`); no HTTPS listener when unset.
    /// Certificates are part of the configuration (`kind: Certificate`), chosen by SNI.
    #[arg(long, env = "GW_HTTPS_ADDR")]
    https_addr: Option<SocketAddr>,

    /// Status and metrics address (`/status`, `/status/ready`, `/metrics`). Loopback by
    /// default, since `/metrics` names upstream URLs and consumers: give `0.0.0.0:7085` where
    /// load balancers or Kubernetes probes check it from elsewhere.
    #[arg(long, env = "GW_STATUS_ADDR", default_value = "127.0.0.1:7085")]
    status_addr: SocketAddr,

    /// Open connections to the status server; one beyond it is closed at once.
    #[arg(long, env = "GW_STATUS_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    status_max_connections: u32,

    /// Open connections to the status server from one client address (IPv6: one /64); 0:
    /// no limit.
    #[arg(
        long,
        env = "GW_STATUS_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 64
    )]
    status_max_connections_per_address: u32,

    /// Time allowed for a request head on the status server, the first one counted from the
    /// connection's start; also its keep-alive idle timeout.
    #[arg(
        long,
        env = "GW_STATUS_HEADER_READ_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    status_header_read_timeout: HumanDuration,

    /// A status connection with no request in flight for this long is closed.
    #[arg(
        long,
        env = "GW_STATUS_IDLE_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    status_idle_timeout: HumanDuration,

    /// Who may `POST /status/drain`: `token` (whoever sends `Authorization: Bearer
    /// <GW_DRAIN_TOKEN>`; off while GW_DRAIN_TOKEN is unset), `loopback` (any local process,
    /// and the token too when set; only where no local proxy or sidecar forwards to the
    /// status port), or `off`.
    #[arg(long, env = "GW_DRAIN_ENDPOINT", value_enum, default_value_t = DrainEndpoint::Token)]
    drain_endpoint: DrainEndpoint,

    /// Directory of the last-known-good configuration cache and of the node id (controller
    /// mode; standalone mode does not use it). One directory per runtime: a second process
    /// on a directory in use is refused.
    #[arg(long, env = "GW_DATA_DIR", default_value = "./gw-data")]
    data_dir: PathBuf,

    /// Address shown for this runtime in the controller's fleet view.
    #[arg(long, env = "GW_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,

    /// On SIGTERM (or an accepted `POST /status/drain`, for a preStop hook), seconds to
    /// keep serving while /status/ready answers 503, so that load balancers stop sending
    /// traffic before the listener closes.
    #[arg(long, env = "GW_DRAIN_SECONDS", default_value_t = 0)]
    drain_seconds: u64,

    /// Then, longest wait for in-flight requests to finish, in seconds.
    #[arg(long, env = "GW_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,

    /// `/status/ready` answers 200 only while connected to a controller (besides having a
    /// configuration): for operators who take a runtime that lost its control plane out of
    /// rotation. By default a runtime serving its last-known-good configuration is ready.
    #[arg(long, env = "GW_READY_REQUIRES_CONTROLLER", conflicts_with = "config")]
    ready_requires_controller: bool,

    /// Heartbeat interval of the sync stream, in seconds (the controller adopts it).
    #[arg(long, env = "GW_HEARTBEAT_SECONDS", default_value_t = 10)]
    heartbeat_seconds: u64,

    /// Time allowed for a client to send a request's headers, in seconds. A connection's
    /// first request counts from the accept (TLS handshake included), so a socket that sends
    /// nothing is closed after it; an HTTP/1.1 keep-alive connection waits at most this long
    /// for its next request.
    #[arg(long, env = "GW_HEADER_READ_TIMEOUT", default_value_t = 30)]
    header_read_timeout: u64,

    /// The largest request head (request line and headers) in bytes; 431 beyond it.
    #[arg(long, env = "GW_MAX_HEADER_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(8192..=16_777_216))]
    max_header_bytes: u64,

    /// The load balancers or proxies in front of this runtime, as addresses or CIDR blocks,
    /// comma-separated (`10.0.0.0/8,2001:db8::/32`): their `X-Forwarded-For`,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` headers are believed and
    /// extended. Every other peer's are replaced by what the runtime sees. Default: none.
    #[arg(
        long,
        env = "GW_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    trusted_proxies: Vec<String>,

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

    #[command(flatten)]
    otel: OtelArgs,

    #[cfg(feature = "bundles")]
    #[command(flatten)]
    fallback: FallbackArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

/// What one client can hold: connections, requests, request bodies, tunnels.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Client limits")]
struct LimitArgs {
    /// A client connection with no request in flight for this long is closed (HTTP/1.1
    /// keep-alive connections wait at most the header read timeout for their next request).
    #[arg(
        long,
        env = "GW_IDLE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    idle_timeout: HumanDuration,

    /// Open connections from one client address (an IPv6 client: its /64); 0: no limit.
    /// Leave it at 0 behind a load balancer that does not keep client addresses.
    #[arg(long, env = "GW_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 0)]
    max_connections_per_address: u64,

    /// Requests in flight from one client address, over all its connections (429 beyond
    /// it); 0: no limit.
    #[arg(long, env = "GW_MAX_REQUESTS_PER_ADDRESS", default_value_t = 0)]
    max_requests_per_address: u64,

    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "GW_HTTP2_MAX_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    http2_max_streams: u32,

    /// HTTP/2 keep-alive: a ping this often, and the connection is closed when one is not
    /// answered as long; `0s`: no pings.
    #[arg(
        long,
        env = "GW_HTTP2_KEEPALIVE",
        default_value = "20s",
        value_name = "DURATION"
    )]
    http2_keepalive: HumanDuration,

    /// Bytes of a request body read before an upstream connection is taken (a body of
    /// unknown length: until its first bytes), so that a client that does not send its body
    /// holds no upstream connection.
    #[arg(long, env = "GW_REQUEST_READ_AHEAD", default_value_t = 1024 * 1024,
          value_name = "BYTES")]
    request_read_ahead: u64,

    /// Bytes that read-ahead may hold over every request together; past it, bodies stream
    /// as they come.
    #[arg(long, env = "GW_REQUEST_BUFFER_MEMORY", default_value_t = 256 * 1024 * 1024,
          value_name = "BYTES")]
    request_buffer_memory: u64,

    /// Bytes that read-ahead may hold for the requests of one client address (an IPv6
    /// client: its /64); past it, that address's bodies stream as they come.
    #[arg(long, env = "GW_REQUEST_BUFFER_PER_ADDRESS", default_value_t = 32 * 1024 * 1024,
          value_name = "BYTES")]
    request_buffer_per_address: u64,

    /// Until the upstream answers, a request body that sends nothing for this long is cut
    /// with 408.
    #[arg(
        long,
        env = "GW_REQUEST_BODY_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    request_body_timeout: HumanDuration,

    /// Until the upstream answers, a request body that arrives slower than this many bytes
    /// per second on average (5 s of grace) is cut with 408; 0: no minimum.
    #[arg(
        long,
        env = "GW_REQUEST_BODY_MIN_RATE",
        default_value_t = 1024,
        value_name = "BYTES_PER_SECOND"
    )]
    request_body_min_rate: u64,

    /// A client connection that reads nothing of what the gateway has to send for this long
    /// is closed (a slow reader would otherwise hold it, and the upstream connection behind
    /// it).
    #[arg(
        long,
        env = "GW_SEND_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    send_timeout: HumanDuration,

    /// Connections the kernel queues for the traffic listeners before they are accepted
    /// (capped by net.core.somaxconn): a short queue drops connection attempts in a burst,
    /// and their clients wait a second or more to retry.
    #[arg(long, env = "GW_LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    listen_backlog: u32,

    /// A WebSocket tunnel that nothing crosses, either way, for this long is closed.
    #[arg(
        long,
        env = "GW_TUNNEL_IDLE_TIMEOUT",
        default_value = "5m",
        value_name = "DURATION"
    )]
    tunnel_idle_timeout: HumanDuration,

    /// A WebSocket tunnel is closed after this long, used or not.
    #[arg(
        long,
        env = "GW_TUNNEL_LIFETIME",
        default_value = "24h",
        value_name = "DURATION"
    )]
    tunnel_lifetime: HumanDuration,
}

impl LimitArgs {
    /// Sets the listener and traffic limits of `options`.
    fn apply(&self, options: &mut RuntimeOptions) -> anyhow::Result<()> {
        let positive = |value: HumanDuration, flag: &str| {
            let value = value.as_duration();
            if value.is_zero() {
                anyhow::bail!("{flag} must be longer than 0s");
            }
            Ok(value)
        };
        options.listener.idle_timeout = positive(self.idle_timeout, "--idle-timeout")?;
        options.listener.max_connections_per_address =
            usize::try_from(self.max_connections_per_address)?;
        options.listener.max_requests_per_address = usize::try_from(self.max_requests_per_address)?;
        options.listener.http2_max_streams = self.http2_max_streams;
        options.listener.http2_keepalive = self.http2_keepalive.as_duration();
        options.listener.send_timeout = positive(self.send_timeout, "--send-timeout")?;
        options.listener.listen_backlog = self.listen_backlog;
        if self.request_read_ahead > self.request_buffer_per_address
            || self.request_buffer_per_address > self.request_buffer_memory
        {
            anyhow::bail!(
                "--request-read-ahead ({}) must be at most --request-buffer-per-address ({}), \
                 and that at most --request-buffer-memory ({})",
                self.request_read_ahead,
                self.request_buffer_per_address,
                self.request_buffer_memory
            );
        }
        options.traffic = TrafficLimits {
            body_read_ahead: usize::try_from(self.request_read_ahead)?,
            body_buffer_memory: usize::try_from(self.request_buffer_memory)?,
            body_buffer_per_address: usize::try_from(self.request_buffer_per_address)?,
            body_timeout: positive(self.request_body_timeout, "--request-body-timeout")?,
            body_min_rate: self.request_body_min_rate,
            tunnel_idle_timeout: positive(self.tunnel_idle_timeout, "--tunnel-idle-timeout")?,
            tunnel_lifetime: positive(self.tunnel_lifetime, "--tunnel-lifetime")?,
        };
        Ok(())
    }
}

/// Who may `POST /status/drain` (see `--drain-endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DrainEndpoint {
    /// Whoever presents GW_DRAIN_TOKEN; off without it.
    Token,
    /// Any process on the host (and the token too, when set).
    Loopback,
    /// Nobody: stop the runtime with SIGTERM.
    Off,
}

/// Signed fallback bundles: off unless `--fallback-bundle` is set.
#[cfg(feature = "bundles")]
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fallback bundles")]
struct FallbackArgs {
    /// Where the controllers export signed bundles (a directory, or `s3://bucket/prefix`):
    /// started with no last-known-good cache while no controller answers, the runtime serves
    /// the newest bundle of its group that verifies. S3 credentials come from the AWS_*
    /// environment variables.
    #[arg(
        long,
        env = "GW_FALLBACK_BUNDLE",
        value_name = "DIR|URL",
        conflicts_with = "config"
    )]
    fallback_bundle: Option<String>,

    /// The file of the key bundles must verify with: the Ed25519 public key in PEM
    /// (`openssl pkey -in KEY -pubout`), or the controllers' HMAC secret. Or give the key
    /// itself in GW_BUNDLE_VERIFY_KEY.
    #[arg(long, env = "GW_BUNDLE_VERIFY_KEY_FILE", value_name = "FILE")]
    bundle_verify_key: Option<PathBuf>,

    /// The longest wait for a controller before the bundle is served (sooner when every
    /// controller has been tried and none answered): `5s`, `500ms`.
    #[arg(
        long,
        env = "GW_FALLBACK_WAIT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    fallback_wait: HumanDuration,

    #[command(flatten)]
    s3: S3Options,
}

/// OpenTelemetry trace export: off unless `--otel-endpoint` (or its variable) is set; the
/// other settings are ignored then.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "OpenTelemetry trace export")]
struct OtelArgs {
    /// OTLP/HTTP collector to export a span per request to (`http://127.0.0.1:4318`, or
    /// `https://`): protobuf POSTed to `{endpoint}/v1/traces`. No export when unset.
    #[arg(
        long = "otel-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL",
        hide_env_values = true
    )]
    endpoint: Option<Endpoint>,

    /// A header sent with every export, `name=value` (the value percent-decoded), for the
    /// collector's authentication; repeat it, or give a comma-separated list in the
    /// variable, which is better for secrets: a flag shows in `ps`.
    #[arg(
        long = "otel-header",
        env = "OTEL_EXPORTER_OTLP_HEADERS",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    header: Vec<Secret>,

    /// The spans' `service.name`.
    #[arg(
        long = "otel-service-name",
        env = "OTEL_SERVICE_NAME",
        value_name = "NAME",
        default_value = gw_core::otel::DEFAULT_SERVICE_NAME
    )]
    service_name: String,

    /// The share of new traces that are sampled, from 0 to 1; a request with a valid
    /// `traceparent` follows its sampled flag instead.
    #[arg(
        long = "otel-sample-ratio",
        env = "GW_OTEL_SAMPLE_RATIO",
        default_value_t = 1.0,
        value_name = "RATIO",
        value_parser = sample_ratio
    )]
    sample_ratio: f64,

    /// How often finished spans are sent (at once when 512 are waiting): `5s`, `500ms`.
    #[arg(
        long = "otel-batch-interval",
        env = "GW_OTEL_BATCH_INTERVAL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    batch_interval: HumanDuration,
}

#[cfg(feature = "bundles")]
impl FallbackArgs {
    /// The fallback's settings, or `None` without `--fallback-bundle`.
    fn options(self) -> anyhow::Result<Option<FallbackOptions>> {
        let key =
            gw_bundle::key::key_bytes(self.bundle_verify_key.as_deref(), "GW_BUNDLE_VERIFY_KEY")
                .context("the bundle verification key")?;
        let Some(location) = self.fallback_bundle.filter(|l| !l.trim().is_empty()) else {
            if key.is_some() {
                tracing::warn!(
                    "a bundle verification key is set but no --fallback-bundle: it is not used"
                );
            }
            return Ok(None);
        };
        let Some(key) = key else {
            anyhow::bail!(
                "--fallback-bundle needs the key bundles are verified with: \
                 --bundle-verify-key FILE, or the key in GW_BUNDLE_VERIFY_KEY"
            );
        };
        let key = VerifyKey::parse(&key).context("the bundle verification key")?;
        let target = BundleTarget::parse(&location, &self.s3).context("--fallback-bundle")?;
        Ok(Some(FallbackOptions {
            target,
            key: Arc::new(key),
            wait: self.fallback_wait.as_duration(),
        }))
    }
}

/// A value that may be a secret: parsed later, so that no error message quotes it, and
/// never shown by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// The endpoint as given; `Debug` shows it without its query or user information, as logs
/// do (either could hold a credential).
#[derive(Clone)]
struct Endpoint(String);

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&gw_core::otel::redact_endpoint(&self.0))
    }
}

impl std::str::FromStr for Endpoint {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

fn sample_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value
        .trim()
        .parse()
        .map_err(|_| "must be a number from 0 to 1".to_string())?;
    gw_core::otel::check_sample_ratio(ratio).map_err(|e| e.to_string())
}

impl OtelArgs {
    /// The export's settings, or `None` without an endpoint.
    fn config(self) -> anyhow::Result<Option<OtelConfig>> {
        let Some(Endpoint(endpoint)) = self.endpoint.filter(|e| !e.0.trim().is_empty()) else {
            return Ok(None);
        };
        let mut config = OtelConfig::new(&endpoint).context("--otel-endpoint")?;
        config.headers = self
            .header
            .iter()
            .filter(|h| !h.0.trim().is_empty())
            .map(|h| OtelHeader::parse(&h.0))
            .collect::<Result<_, _>>()
            .context("--otel-header")?;
        config.service_name = self.service_name;
        config.service_version = env!("CARGO_PKG_VERSION").to_string();
        config.sample_ratio = self.sample_ratio;
        config.batch_interval = self.batch_interval.as_duration();
        config.validate().context("OpenTelemetry trace export")?;
        Ok(Some(config))
    }
}

/// The blocks of `--trusted-proxies` (empty entries, as an empty variable gives, ignored).
///
/// # Errors
///
/// When an entry is not an address or a CIDR block (or has host bits set).
pub fn trusted_proxies(entries: &[String]) -> anyhow::Result<Vec<Cidr>> {
    entries
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(|entry| entry.parse::<Cidr>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("--trusted-proxies")
}

/// Parses the command line and runs a runtime that knows `policies` until SIGTERM or
/// SIGINT.
pub fn main_with(policies: PolicyRegistry) -> anyhow::Result<()> {
    let args = parse_args();
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

/// The command line; a missing source (the only required argument) is explained in words:
/// which two flags there are and what each one is for.
fn parse_args() -> Args {
    Args::try_parse().unwrap_or_else(|err| {
        if err.kind() == clap::error::ErrorKind::MissingRequiredArgument {
            <Args as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, NO_SOURCE)
                .exit()
        }
        err.exit()
    })
}

/// What `gw-runtime` says when it is given neither `--controller` nor `--config`.
const NO_SOURCE: &str = "say where the configuration comes from: --controller ADDRESSES \
                         (host:port of controllers, comma-separated) or --config FILE (a YAML \
                         or JSON file, standalone: no controller)";

/// What a binary's `main` returns for the outcome of [`main_with`]: on an error, prints
/// `error: ` and the error with its causes, each said once, to stderr, and exits with
/// status 1. (A `main` that returned the `anyhow::Result` itself would print Rust's debug
/// rendering, with a stack backtrace whenever `RUST_BACKTRACE` is set.)
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line; a cause whose text the line already holds (an
/// error that prints its source) is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Runs a runtime configured by `args` that knows `policies`.
pub async fn run(args: Args, policies: PolicyRegistry) -> anyhow::Result<()> {
    let source = match args.config {
        Some(path) => ConfigSource::File(path),
        // `--controller ""` (or an unset variable's empty value) is no address
        None => ConfigSource::Controllers(
            args.controller
                .into_iter()
                .filter(|address| !address.trim().is_empty())
                .collect(),
        ),
    };
    let mut options = RuntimeOptions::new(source);
    options.otel = args.otel.config()?;
    #[cfg(feature = "bundles")]
    {
        options.fallback = args.fallback.options()?;
    }
    options.policies = policies;
    if let (Some(controller_ca), Some(cert), Some(key)) =
        (args.controller_ca, args.sync_tls_cert, args.sync_tls_key)
    {
        options.sync_tls = Some(gw_sync::tls::ClientFiles {
            controller_ca,
            identity: gw_sync::tls::CertFiles { cert, key },
        });
    }
    if let (Some(cert), Some(key)) = (args.status_tls_cert, args.status_tls_key) {
        options.status_tls = Some(gw_sync::tls::CertFiles { cert, key });
    }
    options.group = args.group;
    options.node_id = args.node_id.filter(|id| !id.is_empty());
    options.proxy_addr = args.proxy_addr;
    options.https_addr = args.https_addr;
    options.status_addr = args.status_addr;
    options.status_limits.max_connections = args.status_max_connections as usize;
    options.status_limits.max_connections_per_address =
        args.status_max_connections_per_address as usize;
    options.status_limits.header_read_timeout = args
        .status_header_read_timeout
        .as_duration()
        .max(Duration::from_millis(100));
    options.status_limits.idle_timeout = args
        .status_idle_timeout
        .as_duration()
        .max(Duration::from_millis(100));
    // from the environment only: a flag would show in `ps`
    let drain_token = std::env::var("GW_DRAIN_TOKEN")
        .ok()
        .as_deref()
        .map(crate::status::DrainToken::new)
        .transpose()?
        .flatten();
    options.drain_endpoint = args.drain_endpoint != DrainEndpoint::Off;
    options.drain_access = crate::status::DrainAccess {
        token: drain_token,
        from_loopback: args.drain_endpoint == DrainEndpoint::Loopback,
    };
    if args.drain_endpoint == DrainEndpoint::Token && options.drain_access.token.is_none() {
        tracing::info!(
            "POST /status/drain is off: set GW_DRAIN_TOKEN to enable it (SIGTERM drains too)"
        );
    }
    options.data_dir = Some(args.data_dir);
    options.advertise_address = args.advertise_address;
    options.listener.drain_timeout = Duration::from_secs(args.drain_timeout);
    options.listener.header_read_timeout = Duration::from_secs(args.header_read_timeout.max(1));
    options.listener.max_header_bytes = usize::try_from(args.max_header_bytes)?;
    options.listener.max_connections = usize::try_from(args.max_connections)?;
    args.limits.apply(&mut options)?;
    options.max_uri_bytes = usize::try_from(args.max_uri_bytes)?;
    options.trusted_proxies = trusted_proxies(&args.trusted_proxies)?;
    options.drain_period = Duration::from_secs(args.drain_seconds);
    options.ready_requires_controller = args.ready_requires_controller;
    options.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.clamp(1, 60));
    // from the environment only: a flag would show in `ps`
    options.sync_token = std::env::var("GW_SYNC_TOKEN")
        .ok()
        .as_deref()
        .map(SyncToken::new)
        .transpose()?
        .flatten();
    // from the environment only: a flag would show in `ps`
    options.enroll_token = match std::env::var("GW_ENROLL_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Some(
            token
                .parse::<gw_sync::enroll::EnrollmentToken>()
                .map_err(|err| anyhow::anyhow!("GW_ENROLL_TOKEN: {err}"))?,
        ),
        _ => None,
    };
    // a client connection, often an upstream connection for it, and some to spare
    let connections = u64::try_from(options.listener.max_connections).unwrap_or(u64::MAX);
    crate::raise_open_files_limit(connections.saturating_mul(2).saturating_add(1024));
    let runtime = Runtime::bind(options).await?;
    runtime.run(crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The export's flags, each with the value that means "not set" (or its default), so
    /// that a test never reads an `OTEL_*` or `GW_OTEL_*` variable of its environment: clap
    /// only falls back to a variable for a flag that is not given.
    const OTEL_UNSET: [(&str, &str); 5] = [
        ("--otel-endpoint", ""),
        ("--otel-header", ""),
        ("--otel-service-name", gw_core::otel::DEFAULT_SERVICE_NAME),
        ("--otel-sample-ratio", "1"),
        ("--otel-batch-interval", "5s"),
    ];

    /// `otel` with every export flag it leaves out set to [`OTEL_UNSET`]'s value.
    fn parse(otel: &[&str]) -> Result<Args, clap::Error> {
        let mut line = vec!["gw-runtime", "--config", "apis.yaml"];
        line.extend_from_slice(otel);
        for (flag, unset) in OTEL_UNSET {
            if !otel.contains(&flag) {
                line.extend([flag, unset]);
            }
        }
        Args::try_parse_from(line)
    }

    #[test]
    fn the_source_is_one_of_two_flags() {
        // (neither GW_CONTROLLER nor GW_CONFIG is set where the tests run)
        let err = Args::try_parse_from(["gw-runtime"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{err}"
        );
        for flag in ["--controller", "--config"] {
            assert!(NO_SOURCE.contains(flag), "{NO_SOURCE}");
        }
        let err = Args::try_parse_from(["gw-runtime", "--config", "a.yaml", "--controller", "b:1"])
            .unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
        assert!(Args::try_parse_from(["gw-runtime", "--controller", "b:1"]).is_ok());
    }

    #[test]
    fn errors_print_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(crate::file_source::FileError::Read {
            path: "apis.yaml".into(),
            source: io,
        })
        .context("cannot start");
        assert_eq!(
            error_text(&err),
            "cannot start: cannot read apis.yaml: no such file"
        );
    }

    #[test]
    fn trusted_proxies_are_cidr_blocks() {
        let args = parse(&["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,,2001:db8::/32"]).unwrap();
        let blocks = trusted_proxies(&args.trusted_proxies).unwrap();
        let shown: Vec<String> = blocks.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(trusted_proxies(&[String::new()]).unwrap().is_empty());
        let err = trusted_proxies(&["10.1.2.3/8".to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("--trusted-proxies"), "{err:#}");
        assert!(format!("{err:#}").contains("host bits"), "{err:#}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn every_listener_is_on_loopback_by_default() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.proxy_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(args.status_addr, "127.0.0.1:7085".parse().unwrap());
        assert_eq!(args.https_addr, None);
        let options = crate::RuntimeOptions::new(crate::ConfigSource::Controllers(Vec::new()));
        assert!(options.proxy_addr.ip().is_loopback() && options.status_addr.ip().is_loopback());
    }

    #[test]
    fn the_status_server_is_on_loopback_and_drains_only_with_a_token_by_default() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.status_addr, "127.0.0.1:7085".parse().unwrap());
        assert_eq!(args.drain_endpoint, DrainEndpoint::Token);
        assert_eq!(args.status_max_connections, 256);
        assert_eq!(
            args.status_header_read_timeout.as_duration(),
            Duration::from_secs(5)
        );
        let args = parse(&[
            "--drain-endpoint",
            "loopback",
            "--status-idle-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(args.drain_endpoint, DrainEndpoint::Loopback);
        assert_eq!(
            args.status_idle_timeout.as_duration(),
            Duration::from_secs(2)
        );
        assert!(parse(&["--drain-endpoint", "anyone"]).is_err());
        assert!(parse(&["--status-max-connections", "0"]).is_err());
    }

    #[test]
    fn otel_flags_make_the_export_settings() {
        let args = parse(&[
            "--otel-endpoint",
            "https://otlp.example.com/otlp",
            "--otel-header",
            "x-team=edge, authorization=Bearer%20s3cr3t",
            "--otel-header",
            "x-more=1",
            "--otel-sample-ratio",
            "0.25",
            "--otel-batch-interval",
            "250ms",
            "--otel-service-name",
            "edge",
        ])
        .unwrap();
        assert!(!format!("{args:?}").contains("s3cr3t"));
        let config = args.otel.config().unwrap().expect("an endpoint: an export");
        assert_eq!(
            config.traces_url().as_str(),
            "https://otlp.example.com/otlp/v1/traces"
        );
        let names: Vec<&str> = config.headers.iter().map(|h| h.name().as_str()).collect();
        assert_eq!(names, ["x-team", "authorization", "x-more"]);
        assert!((config.sample_ratio - 0.25).abs() < f64::EPSILON);
        assert_eq!(config.batch_interval, Duration::from_millis(250));
        assert_eq!(config.service_name, "edge");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_otel_flags_are_refused_without_quoting_secrets() {
        let refused = |otel: &[&str]| match parse(otel) {
            Err(err) => err.to_string(),
            Ok(args) => format!("{:#}", args.otel.config().unwrap_err()),
        };
        let endpoint = ["--otel-endpoint", "http://127.0.0.1:4318"];
        for (flags, reason) in [
            (
                vec!["--otel-endpoint", "ftp://collector"],
                "http:// or https://",
            ),
            (
                vec!["--otel-endpoint", "http://me:s3cr3t@collector:4318"],
                "user name or password",
            ),
            (
                [&endpoint[..], &["--otel-header", "s3cr3t"]].concat(),
                "name=value",
            ),
            (
                [&endpoint[..], &["--otel-header", "bad name=s3cr3t"]].concat(),
                "not a valid header name",
            ),
            (
                [&endpoint[..], &["--otel-sample-ratio", "1.5"]].concat(),
                "from 0 to 1",
            ),
            (
                [&endpoint[..], &["--otel-sample-ratio", "half"]].concat(),
                "from 0 to 1",
            ),
            (
                [&endpoint[..], &["--otel-batch-interval", "5ms"]].concat(),
                "at least 10ms",
            ),
        ] {
            let message = refused(&flags);
            assert!(message.contains(reason), "{flags:?}: {message}");
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        // the other settings alone export nothing
        let args = parse(&["--otel-sample-ratio", "0.5"]).unwrap();
        assert!(args.otel.config().unwrap().is_none());
    }

    #[test]
    fn the_endpoint_is_shown_without_its_query_or_user_information() {
        let args = parse(&[
            "--otel-endpoint",
            "https://me:s3cr3t@otlp.example.com/otlp?key=s3cr3t",
        ])
        .unwrap();
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("https://otlp.example.com/otlp"), "{shown}");
        let args = parse(&[
            "--otel-endpoint",
            "https://otlp.example.com/otlp?key=s3cr3t",
        ])
        .unwrap();
        let config = args.otel.config().unwrap().unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
