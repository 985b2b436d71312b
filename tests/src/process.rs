//! The release `cache-server` binary as a child process: for the cases a server inside the test process
//! cannot show (SIGTERM and SIGKILL, descriptor limits, the binary's own start-up).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cache_proto::pb::cache_service_client::CacheServiceClient;
use tonic::transport::Channel;

use crate::{READY_TIMEOUT, connect_client, free_port};

/// The `cache-server` binary next to this test binary (`<target>/<profile>/cache-server`), or
/// `CACHE_SERVER_BIN`.
///
/// # Panics
/// If it is not there: build it first (`cargo build --release -p cache-server`; `scripts/test` does).
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CACHE_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let bin = profile_dir.join("cache-server");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p cache-server` (scripts/test does), or set CACHE_SERVER_BIN",
        bin.display()
    );
    bin
}

/// A `cache-server` child process on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    addr: SocketAddr,
    /// `RLIMIT_NOFILE` (soft and hard) the binary starts with, through `prlimit`.
    nofile: Option<u64>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// Starts the binary with `env` (on top of a clean environment: only `PATH` and `HOME` are kept) and
    /// `args`, listening on a free loopback port with Prometheus off, and waits until its port accepts
    /// connections.
    ///
    /// # Panics
    /// If it exits or does not listen within [`READY_TIMEOUT`].
    pub async fn start(env: &[(&str, &str)], args: &[&str]) -> ServerProcess {
        Self::launch(None, env, args).await
    }

    /// [`ServerProcess::start`] with at most `limit` open descriptors (soft and hard, so the server cannot
    /// raise it), through util-linux's `prlimit`.
    pub async fn start_with_descriptor_limit(
        limit: u64,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> ServerProcess {
        Self::launch(Some(limit), env, args).await
    }

    async fn launch(nofile: Option<u64>, env: &[(&str, &str)], args: &[&str]) -> ServerProcess {
        let port = free_port();
        let mut server = ServerProcess {
            addr: format!("127.0.0.1:{port}").parse().expect("address"),
            nofile,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            log: tempfile::NamedTempFile::new().expect("log file"),
        };
        server.spawn().await;
        server
    }

    /// Its process id.
    ///
    /// # Panics
    /// If it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("cache-server is running")
    }

    /// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    ///
    /// # Panics
    /// If it is not running.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU time it has used so far (user + system).
    ///
    /// # Panics
    /// If it is not running.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the command name (which may hold spaces) start at the last ')'.
        let after = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// Starts it again (after it exited or was killed) with the same settings, on the same address, and
    /// waits until its port accepts connections; its log continues in the same file.
    ///
    /// # Panics
    /// If it is still running, or does not come up.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "cache-server is still running");
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let addr = self.addr;
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log.path())
            .expect("log file");
        let mut cmd = match self.nofile {
            Some(limit) => {
                let mut cmd = tokio::process::Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(server_binary());
                cmd
            }
            None => tokio::process::Command::new(server_binary()),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("CACHE_LISTEN_ADDR", addr.to_string())
            .env("CACHE_METRICS_LISTEN", "off")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("spawn cache-server"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("cache-server exited early ({status}): {}", self.log());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cache-server did not listen on {addr}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new client on a new connection.
    pub async fn client(&self) -> CacheServiceClient<Channel> {
        connect_client(self.addr).await
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends `signal` (`-TERM`, `-KILL`, `-STOP`, ...) to it.
    ///
    /// # Panics
    /// If it is not running or `kill` fails.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("cache-server is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Waits for it to exit, at most `within`; returns its exit code (`None` if killed by a signal).
    ///
    /// # Panics
    /// If it does not exit in time.
    pub async fn wait(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("cache-server was started");
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("cache-server did not exit within {within:?}"))
            .expect("wait for cache-server");
        self.child = None;
        status.code()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
