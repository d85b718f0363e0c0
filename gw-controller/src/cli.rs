//! The command line of `gw-controller`, as a library: a custom build (a controller that
//! accepts your own policies) is `gw_controller::cli::main_with(registry)` in its `main`, and
//! [`exit`] prints its error as the stock binary does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gw_core::policy::PolicyRegistry;
use gw_runtime::logging::{self, LogFormat};

use crate::admin::{OidcOptions, RoleMapping};
use crate::bundles::BundleOptions;
use crate::{AllInOne, ControllerOptions};
use gw_bundle::SigningKey;
use gw_bundle::storage::{BundleTarget, S3Options};
use gw_core::conn::server::ServerLimits;
use gw_core::model::HumanDuration;
use gw_core::policy::jwt::JwtAlgorithm;
use gw_sync::SyncToken;
use gw_sync::server::ServerOptions;
use std::sync::Arc;

/// gw control plane: operators deploy APIs through its admin REST API; it stores them
/// (PostgreSQL, or an embedded SQLite file) and keeps every connected runtime in sync.
///
/// Production mode is the default and needs GW_ADMIN_TOKEN (the admin API's bearer token)
/// and GW_ENCRYPTION_KEY (32 bytes, base64) in the environment; its sync port speaks mutual
/// TLS (from the cluster CA unless --sync-tls-cert is given) and never plaintext.
/// GW_SYNC_TOKEN, when set, is a token runtimes must present on the sync port besides.
#[derive(Debug, Parser)]
#[command(name = "gw-controller", version)]
pub struct Args {
    /// An operator task to run instead of serving.
    #[command(subcommand)]
    command: Option<Command>,

    /// Database URL: postgres://user@host/db for a cluster of controllers, or
    /// sqlite://path/to/file.db (default: sqlite in the data dir).
    #[arg(long, env = "GW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Data directory (SQLite file, development key, node id, all-in-one runtime cache).
    /// One directory per controller: a second process on a directory in use is refused.
    #[arg(long, env = "GW_DATA_DIR", default_value = "./gw-data")]
    data_dir: PathBuf,

    /// Admin REST API address.
    #[arg(long, env = "GW_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    admin_addr: SocketAddr,

    /// Sync (gRPC) address that runtimes connect to.
    #[arg(long, env = "GW_SYNC_ADDR", default_value = "127.0.0.1:18000")]
    sync_addr: SocketAddr,

    /// HTTPS on the admin API: its certificate (PEM, then any intermediates). With
    /// `--admin-tls-key`; the files are reloaded when they change.
    #[arg(
        long,
        env = "GW_ADMIN_TLS_CERT",
        value_name = "FILE",
        requires = "admin_tls_key"
    )]
    admin_tls_cert: Option<PathBuf>,

    /// The private key of `--admin-tls-cert` (PEM).
    #[arg(
        long,
        env = "GW_ADMIN_TLS_KEY",
        value_name = "FILE",
        requires = "admin_tls_cert"
    )]
    admin_tls_key: Option<PathBuf>,

    /// Mutual TLS on the sync port: this controller's certificate (PEM, then any
    /// intermediates), for the names runtimes dial. With `--sync-tls-key` and
    /// `--sync-client-ca`; the files are reloaded when they change.
    #[arg(long, env = "GW_SYNC_TLS_CERT", value_name = "FILE",
          requires_all = ["sync_tls_key", "sync_client_ca"])]
    sync_tls_cert: Option<PathBuf>,

    /// The private key of `--sync-tls-cert` (PEM).
    #[arg(long, env = "GW_SYNC_TLS_KEY", value_name = "FILE",
          requires_all = ["sync_tls_cert", "sync_client_ca"])]
    sync_tls_key: Option<PathBuf>,

    /// The CA of runtimes' client certificates (PEM). A runtime is served only with a
    /// certificate of this CA naming it as `urn:gw:runtime:<group>:<node-id>`, and only as
    /// that node of that group.
    #[arg(long, env = "GW_SYNC_CLIENT_CA", value_name = "FILE",
          requires_all = ["sync_tls_cert", "sync_tls_key"])]
    sync_client_ca: Option<PathBuf>,

    /// Mutual TLS on the sync port from the cluster's internal CA: `internal` (the CA is
    /// kept in the database, its key sealed with GW_ENCRYPTION_KEY; runtimes enroll with
    /// tokens from POST /api/v1/enrollment-tokens), or `off` (plaintext: development mode
    /// only). `--sync-tls-cert` serves your own PKI's certificates instead. Default:
    /// `internal` in production, `off` with `--dev`.
    #[arg(
        long,
        env = "GW_SYNC_TLS",
        value_enum,
        conflicts_with = "sync_tls_cert"
    )]
    sync_tls: Option<SyncTlsMode>,

    /// A name runtimes dial this controller's sync port by (DNS name or address), for its
    /// certificate from the cluster CA; repeat it for several. The host name and the
    /// listening address are always in it (and the loopback names when it listens on every
    /// address or on loopback).
    #[arg(
        long = "sync-advertise-name",
        env = "GW_SYNC_ADVERTISE_NAMES",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    sync_advertise_names: Vec<String>,

    /// How long the certificates of enrolled runtimes are valid (10s to 30d); they renew
    /// them two thirds in.
    #[arg(
        long,
        env = "GW_RUNTIME_CERT_LIFETIME",
        default_value = "24h",
        value_name = "DURATION"
    )]
    runtime_cert_lifetime: HumanDuration,

    /// How long audit records are kept (`GET /api/v1/audit`): a whole number and a unit,
    /// `d` (days), `h`, `m` or `s`; from an hour to ten years.
    #[arg(
        long,
        env = "GW_AUDIT_RETENTION",
        default_value = "90d",
        value_name = "DURATION",
        value_parser = parse_retention
    )]
    audit_retention: Duration,

    /// This controller's id. Default: the id kept in the data directory
    /// (`<data-dir>/node-id`), generated there at the first start (host name and a random
    /// suffix).
    #[arg(long, env = "GW_NODE_ID")]
    node_id: Option<String>,

    /// Development mode: the admin API may run without a token, an encryption key is
    /// generated into the data dir. Never in production. Without GW_ADMIN_TOKEN, the admin
    /// API then answers only requests for localhost or a loopback address, and refuses
    /// bodies without a Content-Type.
    #[arg(long, env = "GW_DEV")]
    dev: bool,

    /// Development mode: let the admin API listen on an address other than loopback
    /// (refused otherwise).
    #[arg(long, env = "GW_DEV_ALLOW_REMOTE", requires = "dev")]
    dev_allow_remote: bool,

    /// Development mode without GW_ADMIN_TOKEN: more `Host` names (or addresses) the admin
    /// API answers, besides localhost and loopback addresses; comma-separated.
    #[arg(
        long,
        env = "GW_DEV_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "HOST",
        requires = "dev"
    )]
    dev_allowed_hosts: Vec<String>,

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

    /// The load balancers or proxies in front of the all-in-one runtime, as addresses or
    /// CIDR blocks, comma-separated: their forwarding headers are believed (see
    /// `gw-runtime --trusted-proxies`). Default: none.
    #[arg(
        long,
        env = "GW_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    trusted_proxies: Vec<String>,

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

    #[command(flatten)]
    admin: AdminArgs,

    #[command(flatten)]
    sync: SyncArgs,

    #[command(flatten)]
    bundles: BundleArgs,

    #[command(flatten)]
    oidc: OidcArgs,
}

/// OIDC for people on the admin API.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "OIDC on the admin API")]
#[allow(
    clippy::struct_field_names,
    reason = "clap needs ids unique over the whole command line"
)]
struct OidcArgs {
    /// Take bearer JWTs of this OIDC issuer on the admin API (its `iss`, exactly, e.g.
    /// https://sso.example.com/realms/ops), each mapped to a role by --oidc-role.
    /// GW_ADMIN_TOKEN stays the break-glass admin.
    #[arg(long = "oidc-issuer", env = "GW_OIDC_ISSUER", value_name = "URL",
          requires_all = ["oidc_audience", "oidc_jwks_url"])]
    oidc_issuer: Option<String>,

    /// The audience tokens must carry in `aud` (the client id of gw at the identity
    /// provider); comma-separated for several.
    #[arg(
        long = "oidc-audience",
        env = "GW_OIDC_AUDIENCE",
        value_delimiter = ',',
        value_name = "AUDIENCE",
        requires = "oidc_issuer"
    )]
    oidc_audience: Vec<String>,

    /// The identity provider's JWKS (https://, or http:// on a loopback address only),
    /// fetched at start and every 10 minutes, and again (at most every 30 s) for a token
    /// signed by a key it does not hold.
    #[arg(
        long = "oidc-jwks-url",
        env = "GW_OIDC_JWKS_URL",
        value_name = "URL",
        requires = "oidc_issuer"
    )]
    oidc_jwks_url: Option<String>,

    /// The claim whose values --oidc-role maps: a claim name, or a dotted path into
    /// objects (realm_access.roles).
    #[arg(
        long = "oidc-roles-claim",
        env = "GW_OIDC_ROLES_CLAIM",
        default_value = "groups",
        value_name = "CLAIM"
    )]
    oidc_roles_claim: String,

    /// The claim naming the person: the audit log's actor is `oidc:<its value>`.
    #[arg(
        long = "oidc-subject-claim",
        env = "GW_OIDC_SUBJECT_CLAIM",
        default_value = "sub",
        value_name = "CLAIM"
    )]
    oidc_subject_claim: String,

    /// A claim value and the role it gives: VALUE=admin, VALUE=viewer, VALUE=operator (every
    /// group) or VALUE=operator:GROUP,GROUP. Repeat it; in GW_OIDC_ROLES, separate mappings
    /// with `;`. Several matching values give the highest role, and an operator the union
    /// of their groups; a token with none is refused (403).
    #[arg(
        long = "oidc-role",
        env = "GW_OIDC_ROLES",
        value_delimiter = ';',
        value_name = "VALUE=ROLE[:GROUP,...]",
        requires = "oidc_issuer"
    )]
    oidc_role: Vec<String>,

    /// The signature algorithms accepted, comma-separated: RS256, ES256, EdDSA.
    #[arg(
        long = "oidc-algorithms",
        env = "GW_OIDC_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256,ES256,EdDSA",
        value_name = "ALG"
    )]
    oidc_algorithms: Vec<String>,
}

impl OidcArgs {
    /// The OIDC options, `None` without `--oidc-issuer`; every problem of the flags at once.
    fn options(self) -> anyhow::Result<Option<OidcOptions>> {
        let Some(issuer) = self.oidc_issuer else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let roles = self
            .oidc_role
            .iter()
            .filter(|text| !text.trim().is_empty())
            .filter_map(|text| {
                text.parse::<RoleMapping>()
                    .map_err(|err| problems.push(format!("--oidc-role {err}")))
                    .ok()
            })
            .collect();
        let algorithms = self
            .oidc_algorithms
            .iter()
            .filter_map(|name| {
                JwtAlgorithm::from_name(name.trim())
                    .ok_or_else(|| {
                        problems.push(format!(
                            "--oidc-algorithms: {name:?} is not RS256, ES256 or EdDSA"
                        ));
                    })
                    .ok()
            })
            .collect();
        let options = OidcOptions {
            issuer,
            audiences: self.oidc_audience,
            jwks_url: self.oidc_jwks_url.unwrap_or_default(),
            algorithms,
            roles_claim: self.oidc_roles_claim,
            subject_claim: self.oidc_subject_claim,
            roles,
        };
        let given = !problems.is_empty();
        problems.extend(
            options
                .problems()
                .into_iter()
                // a mapping refused above is the problem, not the want of one
                .filter(|problem| !(given && problem.starts_with("give at least one --oidc-role"))),
        );
        if !problems.is_empty() {
            anyhow::bail!("OIDC: {}", problems.join("; "));
        }
        Ok(Some(options))
    }
}

/// The admin server's connection limits.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Admin API connections")]
#[allow(
    clippy::struct_field_names,
    reason = "clap needs ids unique over the whole command line"
)]
struct AdminArgs {
    /// Open connections to the admin API; one beyond it is closed at once.
    #[arg(long = "admin-max-connections", env = "GW_ADMIN_MAX_CONNECTIONS",
          default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    admin_max_connections: u32,

    /// Open connections to the admin API from one client address (IPv6: one /64); 0: no
    /// limit.
    #[arg(
        long = "admin-max-connections-per-address",
        env = "GW_ADMIN_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    admin_max_connections_per_address: u32,

    /// Time allowed for a request head, the first one counted from the connection's start
    /// (a connection that sends nothing is closed then); also the keep-alive idle timeout
    /// of HTTP/1.1 connections.
    #[arg(
        long = "admin-header-read-timeout",
        env = "GW_ADMIN_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    admin_header_read_timeout: HumanDuration,

    /// A connection with no request in flight for this long is closed (HTTP/2, and any).
    #[arg(
        long = "admin-idle-timeout",
        env = "GW_ADMIN_IDLE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    admin_idle_timeout: HumanDuration,
}

impl AdminArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.admin_max_connections as usize,
            max_connections_per_address: self.admin_max_connections_per_address as usize,
            header_read_timeout: at_least_100ms(self.admin_header_read_timeout),
            idle_timeout: at_least_100ms(self.admin_idle_timeout),
            ..ServerLimits::default()
        }
    }
}

/// The sync port's limits.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Sync port limits")]
#[allow(
    clippy::struct_field_names,
    reason = "clap needs ids unique over the whole command line"
)]
struct SyncArgs {
    /// Open connections on the sync port; one beyond it is closed at once.
    #[arg(long = "sync-max-connections", env = "GW_SYNC_MAX_CONNECTIONS",
          default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    sync_max_connections: u32,

    /// Open connections on the sync port from one client address (IPv6: one /64); 0: no
    /// limit. Runtimes behind one NAT share an address.
    #[arg(
        long = "sync-max-connections-per-address",
        env = "GW_SYNC_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    sync_max_connections_per_address: u32,

    /// Concurrent streams per sync connection (a runtime uses one).
    #[arg(long = "sync-max-streams-per-connection", env = "GW_SYNC_MAX_STREAMS_PER_CONNECTION",
          default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    sync_max_streams_per_connection: u32,

    /// A sync connection that opens no authenticated stream within this time is closed.
    #[arg(
        long = "sync-first-stream-timeout",
        env = "GW_SYNC_FIRST_STREAM_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    sync_first_stream_timeout: HumanDuration,

    /// A sync connection with no stream open for this long is closed.
    #[arg(
        long = "sync-idle-timeout",
        env = "GW_SYNC_IDLE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    sync_idle_timeout: HumanDuration,

    /// HTTP/2 keep-alive pings on sync connections this often; a peer that does not answer
    /// one within the same time is disconnected (at least 1s).
    #[arg(
        long = "sync-keepalive-interval",
        env = "GW_SYNC_KEEPALIVE_INTERVAL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    sync_keepalive_interval: HumanDuration,

    /// Longest wait for a runtime to take a message; one that does not read is
    /// disconnected.
    #[arg(
        long = "sync-send-timeout",
        env = "GW_SYNC_SEND_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    sync_send_timeout: HumanDuration,

    /// Longest wait for a runtime to acknowledge (or reject) a snapshot or delta; one that
    /// does neither is disconnected. Above the time your largest configuration takes to
    /// reach a runtime and be applied.
    #[arg(
        long = "sync-ack-timeout",
        env = "GW_SYNC_ACK_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    sync_ack_timeout: HumanDuration,

    /// Bytes of snapshots and deltas sent and not yet acknowledged, over every runtime: the
    /// bound on the memory they hold. A runtime waits for room; a configuration larger than
    /// this takes all of it.
    #[arg(long = "sync-max-inflight-bytes", env = "GW_SYNC_MAX_INFLIGHT_BYTES",
          default_value_t = 268_435_456,
          value_parser = clap::value_parser!(u64).range(65_536..=1_099_511_627_776))]
    sync_max_inflight_bytes: u64,

    /// Snapshots and deltas not yet acknowledged from one client address (IPv6: one /64),
    /// so that one address cannot take every byte in flight; 0: no limit.
    #[arg(
        long = "sync-max-inflight-per-address",
        env = "GW_SYNC_MAX_INFLIGHT_PER_ADDRESS",
        default_value_t = 16
    )]
    sync_max_inflight_per_address: u32,
}

impl SyncArgs {
    fn options(&self) -> anyhow::Result<ServerOptions> {
        Ok(ServerOptions {
            max_connections: self.sync_max_connections as usize,
            max_connections_per_address: self.sync_max_connections_per_address as usize,
            max_streams_per_connection: self.sync_max_streams_per_connection,
            first_stream_timeout: at_least_100ms(self.sync_first_stream_timeout),
            connection_idle_timeout: at_least_100ms(self.sync_idle_timeout),
            keepalive_interval: self
                .sync_keepalive_interval
                .as_duration()
                .max(Duration::from_secs(1)),
            send_timeout: at_least_100ms(self.sync_send_timeout),
            ack_timeout: at_least_100ms(self.sync_ack_timeout),
            max_inflight_bytes: usize::try_from(self.sync_max_inflight_bytes)
                .context("--sync-max-inflight-bytes")?,
            max_inflight_per_address: self.sync_max_inflight_per_address as usize,
            ..ServerOptions::default()
        })
    }
}

/// A timeout of at least 100 ms (a shorter one would close everything).
fn at_least_100ms(duration: HumanDuration) -> Duration {
    duration.as_duration().max(Duration::from_millis(100))
}

/// Signed fallback bundles: off unless `--bundle-dir` or `--bundle-url` is set.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fallback bundles")]
struct BundleArgs {
    /// Export every gateway group's configuration as a signed bundle into this directory
    /// (`<dir>/<group>/<revision>.gwb`), for runtimes that start while no controller answers.
    #[arg(
        long = "bundle-dir",
        env = "GW_BUNDLE_DIR",
        value_name = "DIR",
        conflicts_with = "url"
    )]
    dir: Option<PathBuf>,

    /// Export them to S3-compatible object storage instead: `s3://bucket/prefix`.
    /// Credentials come from the AWS_* environment variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or the instance's role).
    #[arg(long = "bundle-url", env = "GW_BUNDLE_URL", value_name = "URL")]
    url: Option<String>,

    /// The file of the key that signs bundles: an Ed25519 private key in PKCS#8 PEM
    /// (`openssl genpkey -algorithm ed25519`) or an HMAC secret of at least 32 bytes. Or
    /// give the key itself in GW_BUNDLE_SIGNING_KEY.
    #[arg(
        long = "bundle-signing-key",
        env = "GW_BUNDLE_SIGNING_KEY_FILE",
        value_name = "FILE"
    )]
    signing_key: Option<PathBuf>,

    /// How often to check for a new revision to export (`30s`, `5m`).
    #[arg(
        long = "bundle-interval",
        env = "GW_BUNDLE_INTERVAL",
        default_value = "30s",
        value_name = "DURATION"
    )]
    interval: HumanDuration,

    /// Bundles kept per group; older ones are deleted after each export.
    #[arg(long = "bundle-keep", env = "GW_BUNDLE_KEEP", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    keep: u32,

    #[command(flatten)]
    s3: S3Options,
}

impl BundleArgs {
    /// The export's settings, or `None` when no target is given.
    fn options(self) -> anyhow::Result<Option<BundleOptions>> {
        let target = match (self.dir, self.url) {
            (Some(dir), _) => Some(BundleTarget::Dir(dir)),
            (None, Some(url)) if url.trim_start().starts_with("s3://") => {
                Some(BundleTarget::parse(&url, &self.s3).context("--bundle-url")?)
            }
            (None, Some(_)) => {
                anyhow::bail!(
                    "--bundle-url takes s3://bucket/prefix; use --bundle-dir for a directory"
                )
            }
            (None, None) => None,
        };
        let key = gw_bundle::key::key_bytes(self.signing_key.as_deref(), "GW_BUNDLE_SIGNING_KEY")
            .context("the bundle signing key")?;
        let (target, key) = match (target, key) {
            (Some(target), Some(key)) => (target, key),
            (None, None) => return Ok(None),
            (Some(_), None) => anyhow::bail!(
                "bundles must be signed: give --bundle-signing-key FILE (or the key in \
                 GW_BUNDLE_SIGNING_KEY) with --bundle-dir or --bundle-url"
            ),
            (None, Some(_)) => anyhow::bail!(
                "a bundle signing key is set but no --bundle-dir or --bundle-url to export to"
            ),
        };
        let key = SigningKey::parse(&key).context("the bundle signing key")?;
        Ok(Some(BundleOptions {
            target,
            key: Arc::new(key),
            interval: self.interval.as_duration().max(Duration::from_secs(1)),
            keep: usize::try_from(self.keep)?,
        }))
    }
}

/// A retention period: a whole number and a unit, `d`, `h`, `m` or `s`, from an hour to ten
/// years.
fn parse_retention(text: &str) -> Result<Duration, String> {
    crate::admin::parse_lifetime(
        text,
        Duration::from_hours(1),
        Duration::from_hours(3650 * 24),
    )?
    .to_std()
    .map_err(|err| err.to_string())
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

/// What a binary's `main` returns for the outcome of [`main_with`]: on an error, `error: `
/// and the error with its causes on stderr, and exit status 1 (see
/// [`gw_runtime::cli::exit`]).
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    gw_runtime::cli::exit(result)
}

/// The operator tasks of `gw-controller`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Rewrites every secret stored sealed (certificates' keys, API secrets, the cluster
    /// CA's key) under GW_ENCRYPTION_KEY, opening values sealed under
    /// GW_ENCRYPTION_KEYS_PREVIOUS: the last step of a key rotation, safe while the
    /// controllers serve. Uses the same database flags and environment as the controller;
    /// prints the counts as JSON.
    Reseal,
}

/// Where the sync port's certificates come from (`--sync-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncTlsMode {
    /// The cluster's internal CA; runtimes enroll with tokens.
    Internal,
    /// No TLS from the cluster CA: plaintext, which only `--dev` accepts, unless
    /// `--sync-tls-cert` is given.
    Off,
}

/// What `--sync-tls` means when it is not given: `off` with `--dev` or with your own
/// certificates (`--sync-tls-cert`), `internal` otherwise. An explicit `--sync-tls off` in
/// production stays off, for [`crate::run`] to refuse with the reason.
fn sync_tls_mode(given: Option<SyncTlsMode>, dev: bool, own_files: bool) -> SyncTlsMode {
    match given {
        Some(mode) => mode,
        None if dev || own_files => SyncTlsMode::Off,
        None => SyncTlsMode::Internal,
    }
}

/// Runs a controller configured by `args` that knows `policies`.
pub async fn run(args: Args, policies: PolicyRegistry) -> anyhow::Result<()> {
    let command = args.command;
    let options = controller_options(args, policies)?;
    if command == Some(Command::Reseal) {
        let report = crate::reseal_store(&options).await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    // the admin and sync connections, the all-in-one runtime's (a client connection and an
    // upstream one each), and some to spare
    let traffic = if options.all_in_one.is_some() {
        2 * gw_runtime::listener::ListenerOptions::default().max_connections
    } else {
        0
    };
    let needed =
        options.admin_server.max_connections + options.sync.max_connections + traffic + 1024;
    gw_runtime::raise_open_files_limit(u64::try_from(needed).unwrap_or(u64::MAX));
    crate::run(options, gw_runtime::shutdown_signal()).await?;
    Ok(())
}

/// The library's options for `args`. Whether they may serve (a plaintext sync port in
/// production may not) is [`crate::run`]'s to say, for the command line and the library
/// alike.
fn controller_options(args: Args, policies: PolicyRegistry) -> anyhow::Result<ControllerOptions> {
    let mut options = ControllerOptions::new();
    options.policies = policies;
    options.database_url = args.database_url;
    options.data_dir = args.data_dir;
    options.admin_addr = args.admin_addr;
    options.audit_retention = args.audit_retention;
    options.sync_addr = args.sync_addr;
    if let (Some(cert), Some(key)) = (args.admin_tls_cert, args.admin_tls_key) {
        options.admin_tls = Some(gw_sync::tls::CertFiles { cert, key });
    }
    if let (Some(cert), Some(key), Some(client_ca)) =
        (args.sync_tls_cert, args.sync_tls_key, args.sync_client_ca)
    {
        options.sync_tls = Some(gw_sync::tls::ServerFiles {
            identity: gw_sync::tls::CertFiles { cert, key },
            client_ca,
        });
    }
    // the library's default is the cluster CA; the command line says it outright
    options.sync_ca = None;
    if sync_tls_mode(args.sync_tls, args.dev, options.sync_tls.is_some()) == SyncTlsMode::Internal {
        options.sync_ca = Some(crate::SyncCaOptions {
            advertise_names: args
                .sync_advertise_names
                .into_iter()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect(),
            runtime_cert_lifetime: args
                .runtime_cert_lifetime
                .as_duration()
                .clamp(Duration::from_secs(10), Duration::from_hours(30 * 24)),
        });
    }
    options.node_id = args.node_id.filter(|id| !id.is_empty());
    options.dev = args.dev;
    options.dev_allow_remote = args.dev_allow_remote;
    options.dev_allowed_hosts = args.dev_allowed_hosts;
    options.admin_server = args.admin.limits();
    options.sync = args.sync.options()?;
    // secrets come from the environment only: a flag would show in `ps`
    options.admin_token = std::env::var("GW_ADMIN_TOKEN").ok();
    options.encryption_key = std::env::var("GW_ENCRYPTION_KEY").ok();
    options.previous_encryption_keys = std::env::var("GW_ENCRYPTION_KEYS_PREVIOUS").ok();
    options.sync_token = std::env::var("GW_SYNC_TOKEN")
        .ok()
        .as_deref()
        .map(SyncToken::new)
        .transpose()?
        .flatten();
    options.store_timeout = Duration::from_millis(args.store_timeout_ms.max(100));
    options.poll_interval = Duration::from_millis(args.poll_interval_ms.max(100));
    options.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.clamp(1, 60));
    options.bundles = args.bundles.options()?;
    options.oidc = args.oidc.options()?;
    options.drain_period = Duration::from_secs(args.drain_seconds);
    if args.all_in_one {
        options.all_in_one = Some(AllInOne {
            proxy_addr: args.proxy_addr,
            https_addr: args.https_addr,
            status_addr: args.status_addr,
            trusted_proxies: gw_runtime::cli::trusted_proxies(&args.trusted_proxies)?,
        });
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use gw_store::AdminRole;

    use super::*;

    fn bundle_options(flags: &[&str]) -> anyhow::Result<Option<BundleOptions>> {
        let mut line = vec!["gw-controller"];
        line.extend_from_slice(flags);
        Args::try_parse_from(line)?.bundles.options()
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    /// Production serves sync from the cluster CA unless told otherwise; `--dev` is
    /// plaintext unless it asks for the CA; your own files replace the CA.
    #[test]
    fn the_sync_port_is_mutual_tls_by_default_in_production() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            path.display().to_string()
        };
        let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
        let sync = |flags: &[&str]| {
            let mut line = vec!["gw-controller"];
            line.extend_from_slice(flags);
            let args = Args::try_parse_from(line).unwrap();
            let options = controller_options(args, PolicyRegistry::builtin()).unwrap();
            (options.sync_ca.is_some(), options.sync_tls.is_some())
        };
        assert_eq!(sync(&[]), (true, false), "production: the cluster CA");
        assert_eq!(sync(&["--sync-tls", "internal"]), (true, false));
        assert_eq!(
            sync(&["--sync-tls", "off"]),
            (false, false),
            "plaintext asked for: run() refuses it"
        );
        assert_eq!(sync(&["--dev"]), (false, false), "--dev: plaintext");
        assert_eq!(sync(&["--dev", "--sync-tls", "internal"]), (true, false));
        let own = [
            "--sync-tls-cert",
            &cert,
            "--sync-tls-key",
            &key,
            "--sync-client-ca",
            &ca,
        ];
        assert_eq!(sync(&own), (false, true), "your own PKI instead of the CA");
        let mut line = vec!["gw-controller", "--sync-tls", "internal"];
        line.extend_from_slice(&own);
        let err = Args::try_parse_from(line).unwrap_err().to_string();
        assert!(err.contains("cannot be used with"), "{err}");
    }

    #[test]
    fn limit_flags_make_the_server_options() {
        let args = Args::try_parse_from([
            "gw-controller",
            "--admin-max-connections",
            "8",
            "--admin-max-connections-per-address",
            "0",
            "--admin-header-read-timeout",
            "2s",
            "--admin-idle-timeout",
            "1ms",
            "--sync-max-streams-per-connection",
            "1",
            "--sync-ack-timeout",
            "5s",
            "--sync-max-inflight-bytes",
            "1048576",
        ])
        .unwrap();
        let admin = args.admin.limits();
        assert_eq!(admin.max_connections, 8);
        assert_eq!(admin.max_connections_per_address, 0);
        assert_eq!(admin.header_read_timeout, Duration::from_secs(2));
        assert_eq!(
            admin.idle_timeout,
            Duration::from_millis(100),
            "at least 100ms"
        );
        let sync = args.sync.options().unwrap();
        assert_eq!(sync.max_streams_per_connection, 1);
        assert_eq!(sync.ack_timeout, Duration::from_secs(5));
        assert_eq!(sync.max_inflight_bytes, 1_048_576);
        assert_eq!(sync.max_connections, 4096, "the default");
        for (flags, reason) in [
            (
                vec!["--sync-max-streams-per-connection", "0"],
                "0 is not in 1..=1000",
            ),
            (vec!["--sync-max-inflight-bytes", "1000"], "1000 is not in"),
            (vec!["--admin-max-connections", "0"], "0 is not in 1.."),
            (vec!["--dev-allow-remote"], "--dev"),
        ] {
            let mut line = vec!["gw-controller"];
            line.extend_from_slice(&flags);
            let err = Args::try_parse_from(line).unwrap_err().to_string();
            assert!(err.contains(reason), "{flags:?}: {err}");
        }
    }

    #[test]
    fn bundle_flags_make_the_export_settings_or_say_what_is_wrong() {
        assert!(
            bundle_options(&[]).unwrap().is_none(),
            "no export by default"
        );
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let key = dir.path().join("hmac.key");
        std::fs::write(&key, format!("{secret}\n")).unwrap();
        let key = key.to_str().unwrap();
        let options = bundle_options(&[
            "--bundle-dir",
            "/var/lib/gw/bundles",
            "--bundle-signing-key",
            key,
            "--bundle-interval",
            "10ms",
            "--bundle-keep",
            "3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(options.interval, Duration::from_secs(1), "at least 1s");
        assert_eq!(options.keep, 3);
        assert_eq!(options.key.algorithm(), "hmac-sha256");
        assert!(!format!("{options:?}").contains(secret));

        let short = dir.path().join("short.key");
        std::fs::write(&short, "s3cr3t").unwrap();
        let short = short.to_str().unwrap();
        for (flags, reason) in [
            (vec!["--bundle-dir", "/b"], "must be signed"),
            (vec!["--bundle-signing-key", key], "no --bundle-dir"),
            (
                vec!["--bundle-url", "/b", "--bundle-signing-key", key],
                "use --bundle-dir",
            ),
            (
                vec!["--bundle-dir", "/b", "--bundle-url", "s3://b/p"],
                "cannot be used with",
            ),
            (
                vec!["--bundle-dir", "/b", "--bundle-signing-key", short],
                "at least 32 bytes",
            ),
            (
                vec!["--bundle-dir", "/b", "--bundle-signing-key", "/no/such/key"],
                "cannot read the key file /no/such/key",
            ),
            (vec!["--bundle-keep", "0"], "0 is not in 1..=10000"),
        ] {
            let message = match bundle_options(&flags) {
                Ok(_) => panic!("{flags:?} accepted"),
                Err(err) => format!("{err:#}"),
            };
            assert!(message.contains(reason), "{flags:?}: {message}");
            assert!(!message.contains("s3cr3t"), "{message}");
        }
    }

    fn oidc_options(flags: &[&str]) -> anyhow::Result<Option<OidcOptions>> {
        let mut line = vec!["gw-controller"];
        line.extend_from_slice(flags);
        Args::try_parse_from(line)?.oidc.options()
    }

    const ISSUER: [&str; 6] = [
        "--oidc-issuer",
        "https://sso.example.com/realms/ops",
        "--oidc-audience",
        "gw-admin",
        "--oidc-jwks-url",
        "https://sso.example.com/realms/ops/protocol/openid-connect/certs",
    ];

    #[test]
    fn oidc_flags_make_the_oidc_options() {
        assert!(oidc_options(&[]).unwrap().is_none(), "no OIDC by default");
        let mut flags = ISSUER.to_vec();
        flags.extend([
            "--oidc-role",
            "gw-admins=admin",
            "--oidc-role",
            "/teams/a=operator:team-a,shared",
            "--oidc-roles-claim",
            "realm_access.roles",
            "--oidc-audience",
            "gw-cli",
            "--oidc-algorithms",
            "RS256",
        ]);
        let options = oidc_options(&flags).unwrap().unwrap();
        assert_eq!(options.issuer, "https://sso.example.com/realms/ops");
        assert_eq!(options.audiences, ["gw-admin", "gw-cli"]);
        assert_eq!(options.roles_claim, "realm_access.roles");
        assert_eq!(options.subject_claim, "sub", "the default");
        assert_eq!(options.algorithms, [JwtAlgorithm::Rs256]);
        let roles: Vec<(&str, AdminRole, Vec<String>)> = options
            .roles
            .iter()
            .map(|m| (m.value.as_str(), m.role, m.groups.clone()))
            .collect();
        assert_eq!(
            roles,
            [
                ("gw-admins", AdminRole::Admin, vec![]),
                (
                    "/teams/a",
                    AdminRole::Operator,
                    vec!["shared".to_string(), "team-a".to_string()]
                ),
            ]
        );
        let mut flags = ISSUER.to_vec();
        flags.extend(["--oidc-role", "x=viewer", "--oidc-subject-claim", "email"]);
        let options = oidc_options(&flags).unwrap().unwrap();
        assert_eq!(options.subject_claim, "email");
        assert_eq!(
            options.algorithms,
            crate::admin::DEFAULT_OIDC_ALGORITHMS,
            "the default"
        );
        // a loopback identity provider may serve its keys over http
        let mut flags = ISSUER.to_vec();
        flags[5] = "http://127.0.0.1:8081/certs";
        flags.extend(["--oidc-role", "x=viewer"]);
        assert!(oidc_options(&flags).unwrap().is_some());
    }

    #[test]
    fn oidc_flags_that_do_not_hold_are_refused_with_the_reason() {
        fn with(extra: &[&'static str]) -> Vec<&'static str> {
            let mut flags = ISSUER.to_vec();
            flags.extend_from_slice(extra);
            flags
        }
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (ISSUER[..4].to_vec(), "--oidc-jwks-url"),
            (
                vec![ISSUER[0], ISSUER[1], ISSUER[4], ISSUER[5]],
                "--oidc-audience",
            ),
            (vec!["--oidc-role", "x=admin"], "--oidc-issuer"),
            (vec!["--oidc-jwks-url", ISSUER[5]], "--oidc-issuer"),
            (with(&[]), "give at least one --oidc-role"),
            (with(&["--oidc-role", "gw-admins"]), "has no '='"),
            (with(&["--oidc-role", "x=root"]), "is not a role"),
            (
                with(&["--oidc-role", "x=admin:team-a"]),
                "only an operator is scoped to groups",
            ),
            (
                with(&["--oidc-role", "x=viewer", "--oidc-role", "x=admin"]),
                "maps \"x\" twice",
            ),
            (
                with(&["--oidc-role", "x=viewer", "--oidc-algorithms", "RS256,none"]),
                "\"none\" is not RS256, ES256 or EdDSA",
            ),
            (
                with(&["--oidc-role", "x=viewer", "--oidc-algorithms", "HS256"]),
                "HS256 needs a shared secret",
            ),
            (
                with(&["--oidc-role", "x=viewer", "--oidc-roles-claim", "a..b"]),
                "--oidc-roles-claim must be a claim name",
            ),
        ];
        for (flags, reason) in cases {
            let message = match oidc_options(&flags) {
                Ok(_) => panic!("{flags:?} accepted"),
                Err(err) => format!("{err:#}"),
            };
            assert!(message.contains(reason), "{flags:?}: {message}");
        }
        // production or not, a JWKS over plain http is only taken from loopback
        let mut flags = with(&["--oidc-role", "x=viewer"]);
        flags[5] = "http://sso.example.com/certs";
        let message = format!("{:#}", oidc_options(&flags).unwrap_err());
        assert!(
            message.contains(
                "--oidc-jwks-url must be an https:// URL (http:// only on a loopback address)"
            ),
            "{message}"
        );
        flags.push("--dev");
        assert!(oidc_options(&flags).is_err(), "--dev too");
    }

    #[test]
    fn an_audit_retention_is_days_or_a_duration_of_an_hour_or_more() {
        use super::parse_retention;
        assert_eq!(parse_retention("90d"), Ok(Duration::from_hours(90 * 24)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_hours(12)));
        for bad in ["30m", "d", "-1d", "90 days", "", "3651d"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
