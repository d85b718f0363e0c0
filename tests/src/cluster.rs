//! Peers that a test stops and starts itself: a PostgreSQL cluster of its own (from the
//! local server binaries) and an HAProxy load balancer (Debian's package, installed by
//! `tests/peers/install` when missing).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when this returns; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether the tests run as root (initdb refuses to, so the cluster runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The directory of PostgreSQL's server binaries: `GW_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn postgres_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("GW_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql (or set GW_TEST_PG_BIN)")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no initdb under /usr/lib/postgresql/*/bin (or set GW_TEST_PG_BIN)")
}

/// A PostgreSQL cluster of the test's own on 127.0.0.1, with trust authentication and
/// durability off (it is thrown away); stopped and removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PgCluster {
    /// Creates the cluster, starts it and creates the database `gw`.
    pub fn start() -> Self {
        let as_postgres = is_root();
        // the postgres user must reach the directory: /tmp, whatever TMPDIR says
        let dir = if as_postgres {
            tempfile::Builder::new().prefix("gw-pg-").tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("gw-pg-").tempdir()
        }
        .expect("a temporary directory");
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown of the cluster's directory",
            );
        }
        let cluster = Self {
            dir,
            bin: postgres_bin(),
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data_dir();
        run(
            cluster
                .command("initdb")
                .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
                .args(["--no-sync", "--no-instructions", "-D"])
                .arg(&data),
            "initdb",
        );
        cluster.resume();
        run(
            cluster
                .command("createdb")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(cluster.port.to_string())
                .arg("gw"),
            "createdb",
        );
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running one of the server binaries, as `postgres` when we are root.
    fn command(&self, binary: &str) -> Command {
        let path = self.bin.join(binary);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// The URL of the database `gw`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/gw", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
    }

    /// Stops the server (fast shutdown: sessions are cut, as when a database host fails
    /// over) and waits until it is down.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
        );
    }

    /// The server's log, for failure reports.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- PostgreSQL's log -----\n{}\n-----", self.log());
        }
        // ignore "not running": a test may leave it stopped
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Installs a real peer with `tests/peers/install` when `binary` is not on the PATH.
pub fn ensure_peer(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/install");
        run(Command::new(script).arg(binary), "tests/peers/install");
    }
}

/// An HAProxy load balancer on 127.0.0.1 in front of some servers, checking each one with an
/// HTTP GET every 100 ms; killed on drop.
pub struct HaProxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    stats: SocketAddr,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for HaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HaProxy {
    /// Balances over `backends`: `(name, address, address checked)`, each checked with
    /// `GET check_path`. A server takes traffic after two passed checks and leaves after two
    /// failed ones (a check may take 1 s). No request is retried on another server: what
    /// the clients see is what the servers answered.
    pub fn start(check_path: &str, backends: &[(&str, SocketAddr, SocketAddr)]) -> Self {
        ensure_peer("haproxy");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             timeout check 1s\n  retries 0\n\
             frontend front\n  bind {addr}\n  default_backend servers\n\
             listen stats\n  bind {stats}\n  stats enable\n  stats uri /stats\n\
             backend servers\n  balance roundrobin\n  option httpchk GET {check_path}\n  \
             http-check expect status 200\n  default-server inter 100ms fall 2 rise 2\n"
        );
        for (name, server, checked) in backends {
            let _ = writeln!(
                config,
                "  server {name} {server} check addr {} port {}",
                checked.ip(),
                checked.port()
            );
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("haproxy.log"))
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        Self {
            child,
            addr,
            stats,
            dir,
        }
    }

    /// What HAProxy printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Each backend's state as HAProxy's statistics page lists it (`UP`, `DOWN`, ...), or
    /// nothing while HAProxy does not answer.
    pub async fn states(&self) -> Vec<(String, String)> {
        let url = format!("http://{}/stats;csv", self.stats);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let Ok(response) = client.get(url).send().await else {
            return Vec::new();
        };
        let text = response.text().await.unwrap_or_default();
        // columns: pxname, svname, ..., status is the 18th
        text.lines()
            .filter(|l| l.starts_with("servers,"))
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let (name, status) = (*fields.get(1)?, *fields.get(17)?);
                (name != "BACKEND").then(|| (name.to_string(), status.to_string()))
            })
            .collect()
    }

    /// Waits until HAProxy lists `name` in `state` (a state starting with it: `UP`, `DOWN`).
    pub async fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.states().await;
            if states
                .iter()
                .any(|(n, s)| n == name && s.starts_with(state))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not list {name} as {state} within {timeout:?}: {states:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
