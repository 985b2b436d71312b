//! Real `redis-server` processes on free loopback ports ([`RedisServer`]), each with its own temp dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cache_server::config::{RedisSettings, Secret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{READY_TIMEOUT, free_port};

/// Builds a [`RedisServer`] with extra `redis-server` arguments.
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    args: Vec<String>,
}

impl RedisServerBuilder {
    /// Appends one `redis-server` argument (e.g. `--requirepass`, then the password).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several `redis-server` arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the server on a free loopback port and waits until it answers PING.
    ///
    /// # Panics
    /// If `redis-server` is not installed or does not come up.
    pub async fn start(self) -> RedisServer {
        let redis_server = find_on_path("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server not found: install it with `apt-get install redis-server` (Debian) — tests never skip"
            )
        });
        let mut last_error = String::new();
        for _ in 0..10 {
            let mut server = RedisServer {
                binary: redis_server.clone(),
                port: free_port(),
                args: self.args.clone(),
                child: None,
                dir: tempfile::tempdir().expect("create a temp dir for redis-server"),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                // Most likely a port race: another process took the port. Try another one.
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        panic!("redis-server did not start after 10 attempts: {last_error}");
    }
}

/// A `redis-server` child process on a loopback port, with its own temp dir, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a plain `redis-server` (no persistence) on a free loopback port; see [`RedisServer::builder`].
    pub async fn start() -> RedisServer {
        Self::builder().start().await
    }

    /// A builder for a server with extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Redis settings that point a cache server at this Redis by URL, the rest left to their defaults.
    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: Some(Secret::new(self.url())),
            ..Default::default()
        }
    }

    /// The process id of the running server, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Kills the server with SIGKILL and waits for it to exit. Idempotent.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same port with the same arguments (killing it first if it runs), and
    /// waits until it answers PING.
    ///
    /// # Panics
    /// If it does not come back within [`READY_TIMEOUT`] (retried a few times while the port frees up).
    pub async fn restart(&mut self) {
        self.kill().await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, port = self.port, "redis-server restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e:#}", self.port),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    ///
    /// # Panics
    /// If the server is not running or `kill` fails.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`] (SIGCONT).
    ///
    /// # Panics
    /// If the server is not running or `kill` fails.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Runs `redis-cli -p <port> <args...>` (with the password when the server was started with
    /// `--requirepass`) and returns its stdout, trimmed of the trailing newline.
    ///
    /// # Panics
    /// If `redis-cli` cannot be run or exits with an error.
    pub fn cli<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string());
        if let Some(password) = self.password() {
            cmd.arg("-a").arg(password).arg("--no-auth-warning");
        }
        let out = cmd
            .args(args)
            .output()
            .expect("run redis-cli (install it with `apt-get install redis-tools`)");
        assert!(
            out.status.success(),
            "redis-cli failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn password(&self) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed: {status}");
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn redis-server")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "redis-server on port {} exited early ({status}); log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if ping(self.port).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                anyhow::bail!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A paused server still dies on SIGKILL.
            let _ = child.start_kill();
        }
    }
}

/// Whether something on `127.0.0.1:port` answers a raw RESP `PING` like a ready Redis (PONG, or an
/// authentication error when a password is required).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 128];
        let n = stream.read(&mut buf).await.ok()?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
