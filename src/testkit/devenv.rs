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
    dir: tempfile::TempDir,
    conf: PathBuf,
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
        std::fs::write(&conf, text)?;
        let mut m = LocalMosquitto {
            child: None,
            port,
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
        self.child = Some(child);
        Ok(())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
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

/// A Redis server that keeps nothing on disk.
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    durable: bool,
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

    fn start_with(durable: bool) -> io::Result<Self> {
        let mut r = LocalRedis {
            child: None,
            port: free_port()?,
            dir: tempfile::tempdir()?,
            durable,
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
        let mut child = Command::new(bin)
            .args([
                "--port",
                &self.port.to_string(),
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

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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
