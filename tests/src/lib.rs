//! Support for gw's end-to-end tests: the real binaries as child processes, upstreams on
//! loopback, an admin client, and polling with deadlines (never fixed sleeps).
//!
//! Processes run with `--log-format json`; the harness reads their `listening` log lines to
//! learn the ports they bound (every address is `127.0.0.1:0` unless a test pins one), and
//! prints a process's log when a test fails.
//!
//! Production controllers serve sync over mutual TLS from the cluster CA (their default):
//! the harness keeps a registry of the ones it starts ([`Process::start`] of a controller
//! binary), and a runtime started through it for the sync address of one is enrolled with a
//! token the harness makes through that controller's admin API ([`sync_env`]). Raw-protocol
//! tests get an enrolled TLS channel the same way ([`sync_channel`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use gw_store::testing::TestDatabase;

pub mod cluster;

/// The admin token the tests use in production mode.
pub const TOKEN: &str = "e2e-test-token-0123456789abcdef";
/// The encryption key the tests use in production mode (32 bytes of 0x07, base64).
pub const ENCRYPTION_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
/// The sync token production-mode controllers require and every runtime presents.
pub const SYNC_TOKEN: &str = "e2e-sync-token-0123456789abcdef";

/// The path of one of gw's binaries, built (once per test process) with the profile the
/// tests were built with, so that the tests always run the current code.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let (dir, mut build) = cargo_build();
        build.args(["--workspace", "--bins"]);
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building gw's binaries failed");
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The path of the binary `name` of `package`, built at each call on its own: with the
/// features that package asks of its dependencies and no others. A workspace build unifies
/// them (`examples/custom-binary`, a runtime with a few policies, would get them all).
pub fn binary_alone(package: &str, name: &str) -> PathBuf {
    let (dir, mut build) = cargo_build();
    build.args(["--package", package, "--bin", name]);
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {package} failed");
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `cargo build --quiet` with the profile the tests were built with, and the directory the
/// binaries land in.
fn cargo_build() -> (PathBuf, Command) {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet"]);
    // what cargo sets for the test process (CARGO_PKG_NAME and the like), handed down,
    // changes the environment of build scripts that watch it (ring's): the build would
    // recompile them and everything above them, twice per test binary, instead of
    // finding the binaries fresh
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&key)
        {
            build.env_remove(key);
        }
    }
    if release {
        build.arg("--release");
    }
    (dir, build)
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    listening: HashMap<String, SocketAddr>,
    exited: bool,
}

/// A child process whose stderr (JSON logs) is collected.
pub struct Process {
    name: String,
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    binary: PathBuf,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Starts `binary` with `args` and `envs` (plus JSON logs at info level).
    pub fn start(name: &str, binary: &Path, args: &[String], envs: &[(String, String)]) -> Self {
        let mut command = Command::new(binary);
        command
            .args(args)
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "info")
            .env_remove("GW_ADMIN_TOKEN")
            .env_remove("GW_ENCRYPTION_KEY")
            .env_remove("GW_ENCRYPTION_KEYS_PREVIOUS")
            .env_remove("GW_DATABASE_URL")
            .env_remove("GW_DEV")
            .env_remove("GW_SYNC_TOKEN")
            .env_remove("GW_DRAIN_TOKEN")
            .env_remove("GW_NODE_ID")
            // no trace export unless a test asks for one
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let is_controller = binary
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with("controller"));
        if is_controller && serves_cluster_ca(args, envs) {
            register(args, &output);
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lock, ready) = &*sink;
                let mut out = lock.lock().unwrap_or_else(PoisonError::into_inner);
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "listening"
                    && let (Some(which), Some(addr)) =
                        (json["listener"].as_str(), json["addr"].as_str())
                    && let Ok(addr) = addr.parse()
                {
                    out.listening.insert(which.to_string(), addr);
                }
                out.lines.push(line);
                ready.notify_all();
            }
            let (lock, ready) = &*sink;
            lock.lock().unwrap_or_else(PoisonError::into_inner).exited = true;
            ready.notify_all();
        });
        Self {
            name: name.to_string(),
            child,
            output,
            args: args.to_vec(),
            envs: envs.to_vec(),
            binary: binary.to_path_buf(),
        }
    }

    /// The address a listener (`admin`, `sync`, `proxy`, `status`) bound, waiting for it.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let (lock, ready) = &*self.output;
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut out = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(addr) = out.listening.get(listener) {
                return *addr;
            }
            // never panic with the lock held: the drop of `self` prints the log with it
            let failure = if out.exited {
                Some(format!(
                    "{} exited before listening on {listener}",
                    self.name
                ))
            } else if deadline.saturating_duration_since(Instant::now()).is_zero() {
                Some(format!(
                    "{} did not listen on {listener} in time",
                    self.name
                ))
            } else {
                None
            };
            if let Some(failure) = failure {
                let log = out.lines.join("\n");
                drop(out);
                panic!("{failure}:\n{log}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            out = ready
                .wait_timeout(out, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.output
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.output
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .join("\n")
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // let the reader thread collect the last lines
                let (lock, ready) = &*self.output;
                let mut out = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !out.exited {
                    out = ready
                        .wait_timeout(out, Duration::from_secs(5))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in time",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGHUP (a standalone runtime reloads its configuration file at once).
    pub fn reload(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> Option<i32> {
        self.send_term();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGTERM without waiting.
    pub fn send_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Starts the same command again, with `replace` applied to its arguments (to pin the
    /// ports it bound the first time, for example).
    pub fn restart(&mut self, replace: &[(&str, String)]) {
        self.kill();
        let mut args = self.args.clone();
        for (flag, value) in replace {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args[i + 1].clone_from(value);
            }
        }
        *self = Process::start(&self.name, &self.binary, &args, &self.envs);
    }

    /// [`Process::restart`] with the environment variables `envs` set (replacing any value
    /// they had), and those named in `unset` removed.
    pub fn restart_env(
        &mut self,
        replace: &[(&str, String)],
        envs: &[(&str, &str)],
        unset: &[&str],
    ) {
        self.envs.retain(|(key, _)| {
            !unset.contains(&key.as_str()) && !envs.iter().any(|(k, _)| k == key)
        });
        self.envs.extend(
            envs.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        self.restart(replace);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}\n-----", self.name, self.log());
        }
    }
}

/// Whether a controller started with `args` and `envs` serves sync from the cluster CA:
/// production mode's default, or `--sync-tls internal` asked for.
fn serves_cluster_ca(args: &[String], envs: &[(String, String)]) -> bool {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
            .or_else(|| {
                let prefix = format!("{name}=");
                args.iter().find_map(|a| a.strip_prefix(&prefix))
            })
    };
    let env = |name: &str| {
        envs.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let mode = flag("--sync-tls").or_else(|| env("GW_SYNC_TLS"));
    let dev = args.iter().any(|a| a == "--dev") || env("GW_DEV").is_some_and(|v| v == "true");
    let own_files =
        args.iter().any(|a| a.starts_with("--sync-tls-cert")) || env("GW_SYNC_TLS_CERT").is_some();
    match mode {
        Some(mode) => mode == "internal",
        None => !dev && !own_files,
    }
}

/// A controller serving sync from the cluster CA, as the harness started it.
struct Enrolling {
    /// Its log, where its `listening` lines are (gone once the process is dropped).
    output: Weak<(Mutex<Output>, Condvar)>,
    /// The addresses its command line pins (not `:0`).
    pinned: HashMap<String, SocketAddr>,
    /// Tokens made through it, by group.
    tokens: Mutex<HashMap<String, String>>,
}

impl Enrolling {
    /// Where its `listener` listens: pinned, or logged; `None` when not known (yet).
    fn addr(&self, listener: &str) -> Option<SocketAddr> {
        if let Some(addr) = self.pinned.get(listener) {
            return Some(*addr);
        }
        let output = self.output.upgrade()?;
        let out = output.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.listening.get(listener).copied()
    }

    /// Whether the process still runs (a killed controller makes no tokens: a runtime of
    /// it alone starts without one, as for any controller that does not answer).
    fn running(&self) -> bool {
        self.output.upgrade().is_some_and(|output| {
            !output
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .exited
        })
    }

    /// The admin address, waiting (a minute at most) for the process to log it.
    fn admin(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(addr) = self.addr("admin") {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "the controller never said where its admin API listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every controller serving the cluster CA that the harness started, newest last.
fn registry() -> &'static Mutex<Vec<Arc<Enrolling>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<Enrolling>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn register(args: &[String], output: &Arc<(Mutex<Output>, Condvar)>) {
    let mut pinned = HashMap::new();
    for (listener, flag) in [("admin", "--admin-addr"), ("sync", "--sync-addr")] {
        let addr = args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .filter(|addr| addr.port() != 0);
        if let Some(addr) = addr {
            pinned.insert(listener.to_string(), addr);
        }
    }
    let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    // processes gone for good leave
    registry.retain(|entry| entry.output.strong_count() > 0);
    registry.push(Arc::new(Enrolling {
        output: Arc::downgrade(output),
        pinned,
        tokens: Mutex::default(),
    }));
}

/// The newest running controller the harness started that serves the cluster CA on one of
/// `controllers`; `None` when they are all plaintext (development mode), stopped, or someone
/// else's.
fn enrolling(controllers: &[SocketAddr]) -> Option<Arc<Enrolling>> {
    let registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    registry
        .iter()
        .rev()
        .filter(|entry| entry.running())
        .find(|entry| {
            entry
                .addr("sync")
                .is_some_and(|sync| controllers.contains(&sync))
        })
        .cloned()
}

/// A token for `group` made earlier through a controller on one of `controllers`, running
/// or stopped: it stays good in their database, so that a runtime started while they are
/// down enrolls once one is back.
fn kept_token(controllers: &[SocketAddr], group: &str) -> Option<String> {
    let registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    registry.iter().rev().find_map(|entry| {
        let sync = entry.addr("sync")?;
        if !controllers.contains(&sync) {
            return None;
        }
        let tokens = entry.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.get(group).cloned()
    })
}

/// An enrollment token for `group` from the controller at `admin` (`POST
/// /api/v1/enrollment-tokens` with the test token, many uses, an hour), asked again until
/// the admin API answers, for a minute at most. Blocking (a plain HTTP/1.1 exchange), so
/// that the harness's synchronous starters can call it.
pub fn enrollment_token(admin: SocketAddr, group: &str) -> String {
    use std::io::{Read as _, Write as _};
    let body = serde_json::json!({"group": group, "uses": 10_000, "ttl": "1h"}).to_string();
    let request = format!(
        "POST /api/v1/enrollment-tokens HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer \
         {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    );
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut last = String::new();
    while Instant::now() < deadline {
        let answer = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)).and_then(
            |mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                stream.write_all(request.as_bytes())?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            },
        );
        match answer {
            Ok(text) if text.starts_with("HTTP/1.1 201") => {
                let json = text
                    .split_once("\r\n\r\n")
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok());
                if let Some(token) = json.as_ref().and_then(|j| j["token"].as_str()) {
                    return token.to_string();
                }
                panic!("no token in the answer of {admin}: {text}");
            }
            // not ready yet (the CA is loaded once the store answers)
            Ok(text) if text.starts_with("HTTP/1.1 503") => last = text,
            Ok(text) => panic!("{admin} refused an enrollment token: {text}"),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{admin} made no enrollment token within a minute: {last}");
}

/// The environment a runtime of `controllers` in `group` needs to be served: the sync token
/// (an extra check, as production asks of runtimes besides their certificate) and, when one
/// of them is a controller the harness started on the cluster CA, `GW_ENROLL_TOKEN` with a
/// token from it (one per controller and group, reused, also once the controller has
/// stopped).
pub fn sync_env(controllers: &[SocketAddr], group: &str) -> Vec<(String, String)> {
    let mut envs = vec![("GW_SYNC_TOKEN".to_string(), SYNC_TOKEN.to_string())];
    if let Some(token) = kept_token(controllers, group) {
        envs.push(("GW_ENROLL_TOKEN".to_string(), token));
    } else if let Some(controller) = enrolling(controllers) {
        let mut tokens = controller
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let token = match tokens.get(group) {
            Some(token) => token.clone(),
            None => {
                let token = enrollment_token(controller.admin(), group);
                tokens.insert(group.to_string(), token.clone());
                token
            }
        };
        envs.push(("GW_ENROLL_TOKEN".to_string(), token));
    }
    envs
}

/// A gRPC channel to the sync port at `sync`, as the runtime `node_id` of group `default`
/// would open it: over mutual TLS with a certificate enrolled for it when the port is a
/// controller's the harness started on the cluster CA, in plaintext otherwise (development
/// mode).
pub async fn sync_channel(sync: SocketAddr, node_id: &str) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{sync}"))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(10));
    let Some(config) = enrolled_tls(sync, node_id).await else {
        return endpoint.connect().await.expect("connect to the sync port");
    };
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: tonic::transport::Uri| {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
            async move {
                let host = uri.host().unwrap_or("127.0.0.1").to_string();
                let port = uri.port_u16().unwrap_or(443);
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| std::io::Error::other("not a server name"))?;
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .expect("connect to the sync port over TLS")
}

/// A TLS client configuration with a certificate of the cluster CA for `node_id` of group
/// `default`, enrolled at `sync`; `None` when `sync` is not a controller the harness
/// started on the cluster CA.
pub async fn enrolled_tls(sync: SocketAddr, node_id: &str) -> Option<Arc<rustls::ClientConfig>> {
    let envs = sync_env(&[sync], "default");
    let (_, token) = envs.iter().find(|(key, _)| key == "GW_ENROLL_TOKEN")?;
    let token: gw_sync::enroll::EnrollmentToken = token.parse().expect("a token");
    let identity = gw_sync::pki::RuntimeIdentity::new("default", node_id).expect("an identity");
    let request = gw_sync::pki::runtime_key_and_request(node_id).expect("a key and a request");
    let issued = gw_sync::enroll::enroll(&sync.to_string(), &token, &identity, &request.cert_pem)
        .await
        .expect("enrolled");
    let config = gw_sync::tls::client_config(
        &gw_sync::tls::ServerTrust::Ca(issued.ca_pem),
        Some(&gw_sync::tls::Identity {
            chain_pem: &issued.certificate_pem,
            key_pem: &request.key_pem,
        }),
    )
    .expect("a client configuration");
    Some(config)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// How to start a controller.
#[derive(Debug, Clone)]
pub struct ControllerSpec {
    /// `None`: SQLite in the data dir.
    pub database_url: Option<String>,
    /// Development mode.
    pub dev: bool,
    /// Run a runtime in process.
    pub all_in_one: bool,
    /// The node id.
    pub node_id: String,
}

impl ControllerSpec {
    /// A controller in production mode on the PostgreSQL database `db`, named `node_id` (the
    /// controllers of an HA pair share one `db`).
    pub fn postgres(db: &TestDatabase, node_id: &str) -> Self {
        Self {
            database_url: Some(db.url().to_string()),
            dev: false,
            all_in_one: false,
            node_id: node_id.to_string(),
        }
    }
}

/// Starts a controller with every address on `127.0.0.1:0`. Production mode gets the test
/// token and key.
pub fn controller(spec: &ControllerSpec, data_dir: &Path) -> Process {
    controller_from("gw-controller", spec, data_dir)
}

/// [`controller`] with extra command-line arguments.
pub fn controller_with(spec: &ControllerSpec, data_dir: &Path, extra: &[&str]) -> Process {
    controller_args_from("gw-controller", spec, data_dir, extra)
}

/// [`controller`] from another binary of the workspace: a custom build of the controller
/// (`gw_controller::cli`), such as `examples/custom-policy`'s.
pub fn controller_from(binary_name: &str, spec: &ControllerSpec, data_dir: &Path) -> Process {
    controller_args_from(binary_name, spec, data_dir, &[])
}

fn controller_args_from(
    binary_name: &str,
    spec: &ControllerSpec,
    data_dir: &Path,
    extra: &[&str],
) -> Process {
    let data_dir = data_dir.display().to_string();
    let mut args = strings(&[
        "--data-dir",
        &data_dir,
        "--admin-addr",
        "127.0.0.1:0",
        "--sync-addr",
        "127.0.0.1:0",
        "--node-id",
        &spec.node_id,
        "--poll-interval-ms",
        "1000",
        "--heartbeat-seconds",
        "2",
    ]);
    if let Some(url) = &spec.database_url {
        args.extend(strings(&["--database-url", url]));
    }
    if spec.dev {
        args.extend(strings(&["--dev"]));
    }
    if spec.all_in_one {
        args.extend(strings(&[
            "--all-in-one",
            "--proxy-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
        ]));
    }
    args.extend(strings(extra));
    let envs = if spec.dev {
        vec![]
    } else {
        vec![
            ("GW_ADMIN_TOKEN".to_string(), TOKEN.to_string()),
            ("GW_ENCRYPTION_KEY".to_string(), ENCRYPTION_KEY.to_string()),
            ("GW_SYNC_TOKEN".to_string(), SYNC_TOKEN.to_string()),
        ]
    };
    Process::start(&spec.node_id, &binary(binary_name), &args, &envs)
}

/// A runtime's arguments: its configuration source (`--controller LIST` or `--config
/// FILE`), node id, free loopback ports and data dir.
pub fn runtime_args(source: [&str; 2], node_id: &str, data_dir: &Path) -> Vec<String> {
    strings(&[
        source[0],
        source[1],
        "--node-id",
        node_id,
        "--proxy-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir.display().to_string(),
    ])
}

/// Starts a runtime connected to `controllers`.
pub fn runtime(node_id: &str, controllers: &[SocketAddr], data_dir: &Path) -> Process {
    runtime_with(node_id, controllers, data_dir, &[])
}

/// Starts a runtime connected to `controllers`, with extra command-line arguments.
pub fn runtime_with(
    node_id: &str,
    controllers: &[SocketAddr],
    data_dir: &Path,
    extra: &[&str],
) -> Process {
    runtime_from("gw-runtime", node_id, controllers, data_dir, extra)
}

/// [`runtime_with`] from another binary of the workspace: a custom build of the runtime
/// (`gw_runtime::cli`), such as `examples/custom-policy`'s.
pub fn runtime_from(
    binary_name: &str,
    node_id: &str,
    controllers: &[SocketAddr],
    data_dir: &Path,
    extra: &[&str],
) -> Process {
    runtime_env_from(binary_name, node_id, controllers, data_dir, extra, &[])
}

/// [`runtime_with`] with environment variables. A runtime of a controller the harness
/// started on the cluster CA is enrolled with a token from it ([`sync_env`]) unless
/// `envs` gives `GW_ENROLL_TOKEN` (empty: none, for a runtime that is not to be served).
pub fn runtime_env(
    node_id: &str,
    controllers: &[SocketAddr],
    data_dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    runtime_env_from("gw-runtime", node_id, controllers, data_dir, extra, envs)
}

fn runtime_env_from(
    binary_name: &str,
    node_id: &str,
    controllers: &[SocketAddr],
    data_dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    let list: Vec<String> = controllers.iter().map(ToString::to_string).collect();
    let mut args = runtime_args(["--controller", &list.join(",")], node_id, data_dir);
    args.extend(strings(extra));
    // a test that gives GW_ENROLL_TOKEN (empty: none) enrolls as it says
    let mut all = if envs.iter().any(|(key, _)| *key == "GW_ENROLL_TOKEN") {
        vec![("GW_SYNC_TOKEN".to_string(), SYNC_TOKEN.to_string())]
    } else {
        let group = extra
            .iter()
            .position(|a| *a == "--group")
            .and_then(|i| extra.get(i + 1))
            .copied()
            .unwrap_or("default");
        sync_env(controllers, group)
    };
    all.extend(
        envs.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    );
    Process::start(node_id, &binary(binary_name), &args, &all)
}

/// Starts a runtime in standalone mode, serving the APIs of the file `config`, with extra
/// command-line arguments.
pub fn file_runtime(node_id: &str, config: &Path, data_dir: &Path, extra: &[&str]) -> Process {
    file_runtime_env(node_id, config, data_dir, extra, &[])
}

/// [`file_runtime`] with environment variables (`GW_DRAIN_TOKEN`, say).
pub fn file_runtime_env(
    node_id: &str,
    config: &Path,
    data_dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    let mut args = runtime_args(
        ["--config", &config.display().to_string()],
        node_id,
        data_dir,
    );
    args.extend(strings(extra));
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    Process::start(node_id, &binary("gw-runtime"), &args, &envs)
}

/// A connection to `to` from the loopback address `source` (`127.0.0.2`, say): tests of
/// limits per client address tell an attacker from a well-behaved client (127.0.0.1) so.
pub async fn connect_from(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let source: std::net::IpAddr = source.parse().expect("a source address");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// Sends `request` as raw bytes on a new connection and reads until the server closes it
/// (at most 10 s): the status code (0 if none) and the whole response text. For requests
/// that an HTTP client library would refuse or rewrite.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(stream, request).await
}

/// [`raw_http`] on a connection from the loopback address `source`.
pub async fn raw_http_from(source: &str, addr: SocketAddr, request: &[u8]) -> (u16, String) {
    exchange(connect_from(source, addr).await, request).await
}

async fn exchange(mut stream: tokio::net::TcpStream, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.expect("write the request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A standalone runtime serving `yaml` (one or more API documents) from a file in a
/// temporary directory, which lives as long as the returned guard.
pub fn standalone(yaml: &str, extra: &[&str]) -> (Process, tempfile::TempDir) {
    standalone_env(yaml, extra, &[])
}

/// [`standalone`] with environment variables.
pub fn standalone_env(
    yaml: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("apis.yaml");
    std::fs::write(&config, yaml).expect("write the configuration");
    let runtime = file_runtime_env("edge", &config, &dir.path().join("data"), extra, envs);
    (runtime, dir)
}

/// Starts an `echo-upstream` process named `name` on a free loopback port (see its docs for
/// the controls: `x-echo-delay-ms`, `/_echo/respond`, `/_echo/health`, `/_echo/stats`).
/// [`Process::restart`] with `("--addr", addr)` brings it back on the same port.
pub fn echo_upstream(name: &str) -> Process {
    let args = strings(&["--addr", "127.0.0.1:0", "--name", name]);
    Process::start(name, &binary("echo-upstream"), &args, &[])
}

/// An upstream on loopback that answers every request with
/// `{"upstream": tag, "method": …, "path": …, "query": …, "headers": {…}}`.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts one, tagged `tag`.
    pub async fn start(tag: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| async move {
                        let headers: serde_json::Map<String, serde_json::Value> = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect();
                        let body = serde_json::json!({
                            "upstream": tag,
                            "method": request.method().as_str(),
                            "path": request.uri().path(),
                            "query": request.uri().query(),
                            "headers": headers,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// `http://<addr><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HS256 JWT of `claims`, signed with `secret`.
pub fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = b64.encode(ring::hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{signature}")
}

/// An API definition in YAML.
pub fn api_yaml(name: &str, context: &str, upstream_url: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata:\n  name: {name}\nspec:\n  context: {context}\n  upstream:\n    endpoints:\n      - url: {upstream_url}\n"
    )
}

/// A client of one controller's admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    /// A client of the admin API at `addr`, sending `token` when given.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Self {
        Self {
            // longer than any `?wait=applied` of the tests, so that nothing hangs for ever
            client: reqwest::Client::builder()
                .timeout(Duration::from_mins(2))
                .build()
                .expect("an HTTP client"),
            base: format!("http://{addr}"),
            token: token.map(str::to_string),
        }
    }

    /// A request to `path` (under the admin address) with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// `PUT /api/v1/apis/{name}` with a YAML body and query.
    pub async fn put_api(&self, name: &str, yaml: &str, query: &str) -> reqwest::Response {
        self.request(reqwest::Method::PUT, &format!("/api/v1/apis/{name}{query}"))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .expect("admin API answers")
    }

    /// Deploys [`api_yaml`]`(name, context, upstream_url)` and waits until every runtime has
    /// applied it (`?wait=applied`).
    pub async fn deploy(&self, name: &str, context: &str, upstream_url: &str) -> reqwest::Response {
        self.put_api(
            name,
            &api_yaml(name, context, upstream_url),
            "?wait=applied",
        )
        .await
    }

    /// `DELETE /api/v1/apis/{name}`.
    pub async fn delete_api(&self, name: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, &format!("/api/v1/apis/{name}"))
            .send()
            .await
            .expect("admin API answers")
    }

    /// `GET` a path and decode JSON; status 0 when the controller does not answer.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        match self.request(reqwest::Method::GET, path).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.json().await.unwrap_or(serde_json::Value::Null),
                )
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually(
            "the controller to be ready",
            Duration::from_mins(1),
            || async { self.get_json("/readyz").await.0 == 200 },
        )
        .await;
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `timeout` with `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET http://<addr><path>` through a gateway: the status and the JSON body (if any).
pub async fn call(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
) -> (u16, serde_json::Value) {
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (
                status,
                response.json().await.unwrap_or(serde_json::Value::Null),
            )
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// The value of the first line of `status`'s `/metrics` that starts with `line_start` (a
/// metric name with its labels); `None` when there is none or the endpoint does not answer.
pub async fn metric<T: std::str::FromStr>(status: SocketAddr, line_start: &str) -> Option<T> {
    let text = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?
        .get(format!("http://{status}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Propagation, `count` times: deploys `{prefix}-{i}` (to `upstream_url`) through `admin`
/// without waiting, and times from its 2xx to the first 2xx through the runtime at `proxy`.
/// Each must arrive within 10 s.
pub async fn propagation(
    admin: &Admin,
    proxy: SocketAddr,
    upstream_url: &str,
    prefix: &str,
    count: usize,
) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let path = format!("/{prefix}-{i}");
        let response = admin
            .put_api(&name, &api_yaml(&name, &path, upstream_url), "")
            .await;
        assert_eq!(response.status(), 201, "deploying {name}");
        let deployed = Instant::now();
        loop {
            if call(&client, proxy, &path).await.0 == 200 {
                break;
            }
            assert!(
                deployed.elapsed() < Duration::from_secs(10),
                "{name} never reached the runtime"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(deployed.elapsed());
    }
    times
}

/// `times` in milliseconds, with one decimal, `, ` between them.
pub fn millis(times: &[Duration]) -> String {
    times
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The median of some durations (sorted in place).
pub fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A certificate authority made for one test, and the certificates it issues.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate a [`TestCa`] issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate, DER (what a TLS client sees).
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) with this serial number,
    /// valid until the first of January of `until_year`.
    pub fn issue(&self, names: &[&str], serial: u64, until_year: i32) -> Issued {
        let key = rcgen::KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A `Certificate` document for the admin API or a configuration file (JSON, which YAML
/// reads too).
pub fn certificate_document(name: &str, issued: &Issued, sni: &[&str]) -> String {
    let mut spec = serde_json::json!({
        "certificate": issued.cert_pem,
        "privateKey": issued.key_pem,
    });
    if !sni.is_empty() {
        spec["sni"] = serde_json::json!(sni);
    }
    serde_json::json!({
        "apiVersion": "gw/v1",
        "kind": "Certificate",
        "metadata": {"name": name},
        "spec": spec,
    })
    .to_string()
}

/// Says Hello to the controller at `sync` as a runtime `node_id` of the next protocol
/// version would, and returns the reason of the refusal the controller answers with.
pub async fn refused_hello(sync: SocketAddr, node_id: &str) -> String {
    use gw_sync::proto::config_sync_client::ConfigSyncClient;
    use gw_sync::proto::{Hello, RuntimeMessage, controller_message, runtime_message};

    let mut client = ConfigSyncClient::new(sync_channel(sync, node_id).await);
    let hello = Hello {
        node_id: node_id.into(),
        group: "default".into(),
        runtime_version: "9.0.0".into(),
        protocol_version: gw_sync::PROTOCOL_VERSION + 1,
        session_epoch: 1,
        ..Hello::default()
    };
    let mut request = tonic::Request::new(tokio_stream::iter([RuntimeMessage {
        message: Some(runtime_message::Message::Hello(hello)),
    }]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {SYNC_TOKEN}")
            .parse()
            .expect("a header value"),
    );
    let mut inbound = client.stream(request).await.expect("a stream").into_inner();
    match inbound
        .message()
        .await
        .expect("an answer")
        .and_then(|m| m.message)
    {
        Some(controller_message::Message::Refusal(refusal)) => refusal.reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}
