//! Local Mosquitto and Redis as child processes, for demos, benchmarks and
//! tests: each on a free loopback port, with its own temporary directory,
//! killed when dropped.
//!
//! Production stations connect to real brokers through
//! [`Config`](crate::config::Config); this module exists so that a newcomer
//! can run the demo on a fresh machine and tests can kill and restart the
//! services mid-run.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Mosquitto configuration shipped in `mosquitto/mosquitto.conf`.
pub const MOSQUITTO_CONF: &str = include_str!("../../mosquitto/mosquitto.conf");

/// A port nobody listens on right now.
///
/// # Errors
/// The OS refused to bind a socket.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds an executable on `PATH` or in `/usr/sbin` (where Debian puts both
/// servers).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn missing(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("'{name}' is not installed; run scripts/setup.sh (it runs: apt-get install -y mosquitto mosquitto-clients redis-server)"),
    )
}

fn wait_listening(port: u16, what: &str, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "{what} exited at start ({status})"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} did not listen on port {port} within 10 s"),
    ))
}

fn stop_child(child: &mut Option<Child>, graceful: bool) {
    if let Some(mut c) = child.take() {
        if graceful {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How often a [`LocalMosquitto`] writes its persistence file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autosave {
    /// After every change: a SIGKILL loses nothing (crash tests). Every
    /// message costs a write of the whole database, so throughput is far
    /// below a production broker's.
    EveryChange,
    /// As `mosquitto/mosquitto.conf` ships (every 30 s, and on a clean
    /// shutdown): what a plant runs, for measurements.
    AsShipped,
}

/// A Mosquitto broker using the project's configuration with its own port
/// and persistence directory (by default saved on every change, so a
/// crash-restart keeps retained messages and sessions; see [`Autosave`]).
#[derive(Debug)]
pub struct LocalMosquitto {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    conf: PathBuf,
}

/// The files of a TLS server: a CA certificate (to verify clients by),
/// the server's certificate chain and its private key, all PEM; and
/// whether clients must present a certificate signed by that CA.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// CA certificate that signed the client certificates.
    pub ca: PathBuf,
    /// The server's certificate (chain).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// Whether a client certificate is required (mutual TLS).
    pub require_client_cert: bool,
}

/// Copies `from` into `dir` as `name`, readable by every user (mosquitto
/// and redis may run under their own user and cannot read a test's
/// private temporary directory).
fn copy_readable(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let to = dir.join(name);
    std::fs::copy(from, &to)?;
    #[cfg(unix)]
    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(to)
}

impl LocalMosquitto {
    /// Starts a broker.
    ///
    /// # Errors
    /// mosquitto is not installed or does not start.
    pub fn start() -> io::Result<Self> {
        Self::start_with(Autosave::EveryChange)
    }

    /// Starts a broker that saves its persistence as `autosave` says.
    ///
    /// # Errors
    /// mosquitto is not installed or does not start.
    pub fn start_with(autosave: Autosave) -> io::Result<Self> {
        Self::start_configured(autosave, None, None)
    }

    /// [`LocalMosquitto::start_with`] that also publishes the broker's
    /// `$SYS/broker/…` counters every `seconds` (mosquitto's
    /// `sys_interval`; the shipped configuration keeps the default of
    /// 10 s). The benchmark reads `$SYS/broker/messages/received` and
    /// `…/sent` (MQTT packets of any type) before and after a batch.
    ///
    /// # Errors
    /// mosquitto is not installed or does not start.
    pub fn start_with_sys_interval(autosave: Autosave, seconds: u32) -> io::Result<Self> {
        Self::start_configured(autosave, Some(seconds), None)
    }

    /// A broker with a second listener, for TLS, on [`LocalMosquitto::tls_port`]
    /// (`cafile`, `certfile`, `keyfile` and `require_certificate` from
    /// `tls`); [`LocalMosquitto::port`] stays plain TCP, for test clients.
    ///
    /// # Errors
    /// mosquitto is not installed, a file cannot be copied, or the broker
    /// does not start (e.g. it cannot use the certificate).
    pub fn start_tls(tls: &ServerTls) -> io::Result<Self> {
        Self::start_configured(Autosave::EveryChange, None, Some(tls))
    }

    fn start_configured(
        autosave: Autosave,
        sys_interval: Option<u32>,
        tls: Option<&ServerTls>,
    ) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Started as root, mosquitto drops to its own user, which must be
        // able to write its persistence here (else a restart loses it all).
        #[cfg(unix)]
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        let mut text = Self::config_for(port, dir.path());
        if autosave == Autosave::AsShipped {
            text = text
                .lines()
                .filter(|l| *l != "autosave_on_changes true")
                .map(|l| {
                    if l.starts_with("autosave_interval") {
                        "autosave_interval 30"
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        if let Some(seconds) = sys_interval {
            text.push_str(&format!("\nsys_interval {seconds}\n"));
        }
        let mut tls_port = None;
        if let Some(t) = tls {
            let p = free_port()?;
            let ca = copy_readable(&t.ca, dir.path(), "tls-ca.crt")?;
            let cert = copy_readable(&t.cert, dir.path(), "tls-server.crt")?;
            let key = copy_readable(&t.key, dir.path(), "tls-server.key")?;
            // Listener options follow their `listener` line.
            text.push_str(&format!(
                "\nlistener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                ca.display(),
                cert.display(),
                key.display(),
                t.require_client_cert
            ));
            tls_port = Some(p);
        }
        std::fs::write(&conf, text)?;
        let mut m = LocalMosquitto {
            child: None,
            port,
            tls_port,
            dir,
            conf,
        };
        m.spawn()?;
        Ok(m)
    }

    /// The shipped configuration with `port` and `dir` substituted.
    pub fn config_for(port: u16, dir: &Path) -> String {
        MOSQUITTO_CONF
            .lines()
            .map(|l| {
                if l.starts_with("listener 1883") {
                    format!("listener {port} 127.0.0.1")
                } else if l.starts_with("persistence_location") {
                    format!("persistence_location {}/", dir.display())
                } else if l.starts_with("autosave_interval") {
                    "autosave_interval 1\nautosave_on_changes true".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = find_binary("mosquitto").ok_or_else(|| missing("mosquitto"))?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_listening(self.port, "mosquitto", &mut child)?;
        if let Some(p) = self.tls_port {
            wait_listening(p, "mosquitto's TLS listener", &mut child)?;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its TLS listener's port on 127.0.0.1, when started with
    /// [`LocalMosquitto::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Its process id, while it runs (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, false);
    }

    /// SIGTERM and wait (persistence is written).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, true);
    }

    /// SIGSTOP: a broker that has stopped reading. Its clients' packets pile
    /// up unacknowledged (like a broker far behind under load) until it is
    /// killed or restarted.
    pub fn freeze(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-STOP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGCONT: a frozen broker goes on (see [`LocalMosquitto::freeze`]).
    pub fn thaw(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Forgets persisted sessions and retained messages (stop it first).
    pub fn wipe_persistence(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join("mosquitto.db"));
    }

    /// Stops it if running and starts it again on the same port.
    ///
    /// # Errors
    /// It does not come back.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalMosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server that keeps nothing on disk ([`LocalRedis::start`]), or
/// one that writes every change to its append-only file before answering
/// ([`LocalRedis::start_durable`], the setting the README recommends for
/// production).
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    durable: bool,
    /// Extra configuration lines (TLS, ACL users).
    extra: Vec<String>,
    tls: bool,
}

impl LocalRedis {
    /// Starts a server.
    ///
    /// # Errors
    /// redis-server is not installed or does not start.
    pub fn start() -> io::Result<Self> {
        Self::start_with(false)
    }

    /// Starts a server that writes every change to its append-only file
    /// before answering (`appendfsync always`), so a SIGKILL loses nothing
    /// and [`LocalRedis::restart`] comes back with the data: a production
    /// Redis of a station.
    ///
    /// # Errors
    /// redis-server is not installed or does not start.
    pub fn start_durable() -> io::Result<Self> {
        Self::start_with(true)
    }

    /// Starts a server reachable over TLS only (`port 0`, `tls-port` on
    /// [`LocalRedis::port`]) with `tls`'s files (`tls-auth-clients yes`
    /// when a client certificate is required).
    ///
    /// # Errors
    /// redis-server is not installed, a file cannot be copied, or the
    /// server does not start.
    pub fn start_tls(tls: &ServerTls) -> io::Result<Self> {
        Self::start_tls_with_user(tls, None)
    }

    /// [`LocalRedis::start_tls`] whose only enabled user is `user`
    /// (`(name, password)`, see [`LocalRedis::start_with_user`]) when
    /// given.
    ///
    /// # Errors
    /// As [`LocalRedis::start_tls`].
    pub fn start_tls_with_user(tls: &ServerTls, user: Option<(&str, &str)>) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = copy_readable(&tls.ca, dir.path(), "tls-ca.crt")?;
        let cert = copy_readable(&tls.cert, dir.path(), "tls-server.crt")?;
        let key = copy_readable(&tls.key, dir.path(), "tls-server.key")?;
        let extra = vec![
            "port 0".to_owned(),
            format!("tls-cert-file {}", cert.display()),
            format!("tls-key-file {}", key.display()),
            format!("tls-ca-cert-file {}", ca.display()),
            format!(
                "tls-auth-clients {}",
                if tls.require_client_cert { "yes" } else { "no" }
            ),
        ];
        let mut extra = extra;
        if let Some((name, password)) = user {
            extra.extend(acl(name, password));
        }
        Self::start_in(dir, false, extra, true)
    }

    /// Starts a server whose only enabled user is `user` with `password`
    /// (all keys, channels and commands); the `default` user is off, so a
    /// connection must authenticate as `user`.
    ///
    /// # Errors
    /// redis-server is not installed or does not start.
    pub fn start_with_user(user: &str, password: &str) -> io::Result<Self> {
        Self::start_in(tempfile::tempdir()?, false, acl(user, password), false)
    }

    fn start_with(durable: bool) -> io::Result<Self> {
        Self::start_in(tempfile::tempdir()?, durable, Vec::new(), false)
    }

    fn start_in(
        dir: tempfile::TempDir,
        durable: bool,
        extra: Vec<String>,
        tls: bool,
    ) -> io::Result<Self> {
        let mut r = LocalRedis {
            child: None,
            port: free_port()?,
            dir,
            durable,
            extra,
            tls,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = find_binary("redis-server").ok_or_else(|| missing("redis-server"))?;
        let (aof, fsync) = if self.durable {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        // A configuration file for the extra lines: ACL rules contain `>`
        // and `~`, which command-line arguments would have to split.
        let conf = self.dir.path().join("redis-extra.conf");
        let mut lines = self.extra.clone();
        if self.tls {
            lines.push(format!("tls-port {}", self.port));
        }
        std::fs::write(&conf, lines.join("\n") + "\n")?;
        let port = if self.tls {
            "0".to_owned()
        } else {
            self.port.to_string()
        };
        let mut child = Command::new(bin)
            .arg(&conf)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                aof,
                "--appendfsync",
                fsync,
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_listening(self.port, "redis-server", &mut child)?;
        self.child = Some(child);
        Ok(())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id, while it runs (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:{port}/` (`rediss://` when started with
    /// [`LocalRedis::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        stop_child(&mut self.child, false);
    }

    /// Kills it if running and starts it again on the same port: empty, or
    /// with its data when started with [`LocalRedis::start_durable`].
    ///
    /// # Errors
    /// It does not come back.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// ACL lines: `user` may do everything with `password`, the default user
/// nothing.
fn acl(user: &str, password: &str) -> Vec<String> {
    vec![
        "user default off".to_owned(),
        format!("user {user} on >{password} ~* &* +@all"),
    ]
}

/// A Redis Cluster of local `redis-server` processes (the same binary as
/// [`LocalRedis`], with `cluster-enabled yes`), created with
/// `redis-cli --cluster create`: three masters sharing the 16384 slots,
/// optionally one replica each (for failover tests). Nothing is kept on
/// disk; `cluster-node-timeout` is short (2 s) so a failover is quick, and
/// the cluster keeps serving the slots of live masters while one is down.
/// Every server is killed when dropped.
#[derive(Debug)]
pub struct LocalRedisCluster {
    nodes: Vec<ClusterNode>,
    tls: bool,
    /// The TLS files the nodes read.
    _files: tempfile::TempDir,
}

#[derive(Debug)]
struct ClusterNode {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Masters of a [`LocalRedisCluster`].
const CLUSTER_MASTERS: usize = 3;

impl LocalRedisCluster {
    /// Starts three masters.
    ///
    /// # Errors
    /// redis-server or redis-cli is not installed, or the cluster does not
    /// form within 20 s.
    pub fn start() -> io::Result<Self> {
        Self::start_with(0, None)
    }

    /// Starts three masters with one replica each: a master that is killed
    /// is replaced by its replica.
    ///
    /// # Errors
    /// As [`LocalRedisCluster::start`].
    pub fn start_with_replicas() -> io::Result<Self> {
        Self::start_with(1, None)
    }

    /// Starts three masters reachable over TLS only (`port 0`, `tls-port`
    /// on [`LocalRedisCluster::ports`], `tls-cluster yes` so the nodes
    /// announce their TLS ports) with `tls`'s files. Only
    /// [`LocalRedisCluster::ports`], [`LocalRedisCluster::nodes`] and
    /// [`LocalRedisCluster::urls`] (`rediss://`) serve such a cluster; the
    /// other helpers speak plain TCP.
    ///
    /// # Errors
    /// As [`LocalRedisCluster::start`], or a file cannot be copied.
    pub fn start_tls(tls: &ServerTls) -> io::Result<Self> {
        Self::start_with(0, Some(tls))
    }

    fn start_with(replicas: usize, tls: Option<&ServerTls>) -> io::Result<Self> {
        let bin = find_binary("redis-server").ok_or_else(|| missing("redis-server"))?;
        let cli = find_binary("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let files = tempfile::tempdir()?;
        let mut server_tls: Vec<String> = Vec::new();
        let mut cli_tls: Vec<String> = Vec::new();
        if let Some(t) = tls {
            let ca = copy_readable(&t.ca, files.path(), "tls-ca.crt")?;
            let cert = copy_readable(&t.cert, files.path(), "tls-server.crt")?;
            let key = copy_readable(&t.key, files.path(), "tls-server.key")?;
            let (ca, cert, key) = (
                ca.display().to_string(),
                cert.display().to_string(),
                key.display().to_string(),
            );
            server_tls = [
                "--tls-cluster",
                "yes",
                "--tls-auth-clients",
                if t.require_client_cert { "yes" } else { "no" },
                "--tls-ca-cert-file",
                &ca,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
            ]
            .map(str::to_owned)
            .to_vec();
            // The server's own certificate serves redis-cli as a client
            // certificate: same CA.
            cli_tls = ["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key]
                .map(str::to_owned)
                .to_vec();
        }
        let mut cluster = LocalRedisCluster {
            nodes: Vec::new(),
            tls: tls.is_some(),
            _files: files,
        };
        for _ in 0..CLUSTER_MASTERS * (1 + replicas) {
            let port = cluster_port()?;
            let dir = tempfile::tempdir()?;
            let (plain, tls_port) = if tls.is_some() {
                (
                    "0".to_owned(),
                    vec!["--tls-port".to_owned(), port.to_string()],
                )
            } else {
                (port.to_string(), Vec::new())
            };
            let mut child = Command::new(&bin)
                .args(&tls_port)
                .args(&server_tls)
                .args([
                    "--port",
                    &plain,
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let up = wait_listening(port, "redis-server (cluster node)", &mut child);
            cluster.nodes.push(ClusterNode {
                child: Some(child),
                port,
                _dir: dir,
            });
            up?;
        }
        let out = Command::new(&cli)
            .args(&cli_tls)
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        // Every node must agree before the first client asks: a node that
        // has not yet learnt the slot map answers CLUSTERDOWN.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = cluster.nodes.iter().all(|n| {
                cli_text_with(&cli, &cli_tls, n.port, &["CLUSTER", "INFO"])
                    .is_ok_and(|t| t.contains("cluster_state:ok"))
            }) && cluster.replicas_in_sync(&cli, replicas);
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the local Redis Cluster did not become ready within 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether every master has its `replicas` replicas connected.
    fn replicas_in_sync(&self, cli: &Path, replicas: usize) -> bool {
        if replicas == 0 {
            return true;
        }
        self.nodes
            .iter()
            .all(|n| match cli_text(cli, n.port, &["INFO", "replication"]) {
                Ok(t) if t.contains("role:master") => {
                    t.contains(&format!("connected_slaves:{replicas}"))
                }
                Ok(t) => t.contains("master_link_status:up"),
                Err(_) => false,
            })
    }

    /// The ports (on 127.0.0.1) of every node, masters and replicas.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `127.0.0.1:{port},…` of every node: the value of
    /// `APP_REDIS_CLUSTER_NODES`.
    pub fn nodes(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis://127.0.0.1:{port}/` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let scheme = if self.tls { "rediss" } else { "redis" };
                format!("{scheme}://127.0.0.1:{}/", n.port)
            })
            .collect()
    }

    /// The port of the master that serves `key` now (asked of a live node).
    ///
    /// # Errors
    /// No live node answers, or none claims the slot.
    pub fn master_of(&self, key: &str) -> io::Result<u16> {
        let cli = find_binary("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let mut last = io::Error::other("no cluster node is running");
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let slot = match cli_text(&cli, n.port, &["CLUSTER", "KEYSLOT", key]) {
                Ok(s) => s.trim().parse::<u16>().map_err(io::Error::other)?,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let nodes = match cli_text(&cli, n.port, &["CLUSTER", "NODES"]) {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            for line in nodes.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let serves = f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                });
                if serves {
                    let port = f[1]
                        .split('@')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok());
                    if let Some(port) = port {
                        return Ok(port);
                    }
                }
            }
            last = io::Error::other(format!("no master serves slot {slot}"));
        }
        Err(last)
    }

    /// Waits until the master of `key` has passed every write it
    /// acknowledged to its replica (`WAIT 1`): a failover after this loses
    /// nothing (replication is asynchronous otherwise).
    ///
    /// # Errors
    /// The master cannot be asked, or its replica did not confirm in 5 s.
    pub fn sync_replica_of(&self, key: &str) -> io::Result<()> {
        let cli = find_binary("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let port = self.master_of(key)?;
        let n = cli_text(&cli, port, &["WAIT", "1", "5000"])?;
        if n.trim() == "1" {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the replica of 127.0.0.1:{port} did not confirm: {n}"
            )))
        }
    }

    /// Moves the slot of `key`, with its keys, from its master to another
    /// live master (the way `redis-cli --cluster reshard` moves a slot:
    /// `IMPORTING`/`MIGRATING`, `MIGRATE` of every key, then the new owner
    /// announced to every master); returns the new master's port. Clients
    /// meet `ASK` while it runs and `MOVED` after.
    ///
    /// # Errors
    /// There is no other live master, or a step fails.
    pub fn move_slot_of(&self, key: &str) -> io::Result<u16> {
        let cli = find_binary("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let from = self.master_of(key)?;
        let slot = cli_text(&cli, from, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .to_owned();
        let masters: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && n.port != from)
            .filter(|n| {
                cli_text(&cli, n.port, &["INFO", "replication"])
                    .is_ok_and(|t| t.contains("role:master"))
            })
            .map(|n| n.port)
            .collect();
        let to = *masters
            .first()
            .ok_or_else(|| io::Error::other("no other live master"))?;
        let id =
            |port: u16| cli_text(&cli, port, &["CLUSTER", "MYID"]).map(|t| t.trim().to_owned());
        let (from_id, to_id) = (id(from)?, id(to)?);
        let check = |port: u16, args: &[&str]| -> io::Result<()> {
            let out = cli_text(&cli, port, args)?;
            if out.trim() == "OK" || out.trim() == "NOKEY" {
                Ok(())
            } else {
                Err(io::Error::other(format!("{args:?} on {port}: {out}")))
            }
        };
        check(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        check(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        loop {
            let keys = cli_text(&cli, from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            check(from, &args)?;
        }
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            // Replicas refuse SETSLOT; they learn the owner from their master.
            let _ = check(n.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        Ok(to)
    }

    /// SIGKILLs the master that serves `key` (its replica, if any, takes
    /// over after the node timeout); returns its port.
    ///
    /// # Errors
    /// As [`LocalRedisCluster::master_of`].
    pub fn kill_master_of(&mut self, key: &str) -> io::Result<u16> {
        let port = self.master_of(key)?;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            stop_child(&mut n.child, false);
        }
        Ok(port)
    }

    /// Waits until a live master serves `key` again and every live node
    /// reports the cluster as ok.
    ///
    /// # Errors
    /// Not within `timeout`.
    pub fn wait_served(&self, key: &str, timeout: Duration) -> io::Result<u16> {
        let cli = find_binary("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(port) = self.master_of(key) {
                let live = self
                    .nodes
                    .iter()
                    .any(|n| n.port == port && n.child.is_some());
                let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                    cli_text(&cli, n.port, &["CLUSTER", "INFO"])
                        .is_ok_and(|t| t.contains("cluster_state:ok"))
                });
                if live && ok {
                    return Ok(port);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no live master serves {key:?} after {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalRedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            stop_child(&mut n.child, false);
        }
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port pair for a cluster node"))
}

/// `redis-cli -p port args…`'s output.
fn cli_text(cli: &Path, port: u16, args: &[&str]) -> io::Result<String> {
    cli_text_with(cli, &[], port, args)
}

/// [`cli_text`] with connection options first (`--tls …`).
fn cli_text_with(cli: &Path, options: &[String], port: u16, args: &[&str]) -> io::Result<String> {
    let out = Command::new(cli)
        .args(options)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "redis-cli -p {port} {args:?} failed"
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
