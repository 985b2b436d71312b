//! Test harness for the end-to-end tests: a real `cache-server` on a loopback port ([`TestServer`]), real
//! `redis-server` processes ([`RedisServer`]), a TCP proxy that can hold traffic mid-call ([`GatedProxy`]),
//! and small builders for requests.
//!
//! Tests never skip: a missing `redis-server` is a failure with instructions, not a silent pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_server::config::{BackendMode, Config, RedisSettings, Secret, Settings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

pub mod fault_proxy;
pub mod history;
pub mod process;
pub mod sentinel;

pub use fault_proxy::{FaultProxy, Mode};
pub use process::ServerProcess;
pub use sentinel::Sentinel;

/// Largest gRPC message the test clients send or accept (above the server's 64 MiB default value limit).
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 128 << 20;

/// How long the harness waits for a server or a redis-server to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------------
// Tracing
// ---------------------------------------------------------------------------------------------------------

/// Installs a tracing subscriber once per test binary: `RUST_LOG` filter (default `warn`), output captured by
/// the test harness. Later calls do nothing.
pub fn trace_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

// ---------------------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------------------

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, close). Never 6379.
/// Racy by nature: callers that hand it to another process must retry if that process fails to bind.
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if port != 6379 {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------
// cache-server
// ---------------------------------------------------------------------------------------------------------

/// A `cache_server::run` serving on a loopback port inside this process.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0`, sets `config.listen` to it, spawns the server and waits until its health service
    /// reports `cache.v1.CacheService` SERVING (bounded by [`READY_TIMEOUT`]).
    ///
    /// # Panics
    /// If the server fails to start or does not become ready.
    pub async fn start(mut config: Config) -> TestServer {
        trace_init();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        config.listen = addr;
        // Tests never bind fixed ports: the default Prometheus port is switched off unless a test asks for
        // an address of its own.
        if config.metrics_listen == cache_server::config::DEFAULT_METRICS_LISTEN.parse().ok() {
            config.metrics_listen = None;
        }
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cache_server::run(config.clone(), listener, async move {
            let _ = stop_rx.await;
        }));
        let mut server = TestServer {
            addr,
            config,
            stop: Some(stop_tx),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    /// A memory-mode server with a small footprint: 256 MiB memory tier, 64 MiB largest value.
    pub async fn memory() -> TestServer {
        Self::start(memory_config(Settings::default())).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The effective config it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new client on a new connection, with message limits raised to [`CLIENT_MAX_MESSAGE_BYTES`].
    pub async fn client(&self) -> CacheServiceClient<Channel> {
        connect_client(self.addr).await
    }

    /// A health client on a new connection.
    pub async fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(connect_channel(self.addr).await)
    }

    /// Starts the graceful shutdown (health NOT_SERVING, stop accepting, drain) without waiting for it.
    /// Idempotent.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the server task has finished.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts the server down and waits for it to finish.
    ///
    /// # Panics
    /// Re-raises a server error or panic.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        let task = self.task.take().expect("server task");
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cache server failed: {e:#}"),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("cache server task failed: {e}"),
        }
    }

    /// Waits until the health service reports `cache.v1.CacheService` SERVING (at start, or after the test
    /// made Redis unresponsive and a redis-mode server has to verify it again).
    ///
    /// # Panics
    /// If the server exits or is not serving within the start-up timeout.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last: String;
        loop {
            if self.is_finished() {
                // Surface the server's own error.
                let task = self.task.take().expect("server task");
                match task.await {
                    Ok(Ok(())) => panic!("cache server exited before it was ready"),
                    Ok(Err(e)) => panic!("cache server failed to start: {e:#}"),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => panic!("cache server task failed: {e}"),
                }
            }
            let check = async {
                let channel = Endpoint::from_shared(self.endpoint())?
                    .connect_timeout(Duration::from_millis(500))
                    .connect()
                    .await?;
                let status = HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "cache.v1.CacheService".into(),
                    })
                    .await?
                    .into_inner()
                    .status;
                anyhow::Ok(status)
            };
            match tokio::time::timeout(Duration::from_secs(1), check).await {
                Ok(Ok(s))
                    if s == tonic_health::pb::health_check_response::ServingStatus::Serving
                        as i32 =>
                {
                    return;
                }
                Ok(Ok(s)) => last = format!("health status {s}"),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "health check timed out".into(),
            }
            assert!(
                Instant::now() < deadline,
                "cache server on {} not ready within {READY_TIMEOUT:?}: {last}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that did not call shutdown() leaves nothing running behind it.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A memory-mode config with a small footprint (256 MiB memory tier, 64 MiB largest value, 5 s grace),
/// with `overrides` applied on top.
///
/// # Panics
/// If the resulting config is invalid.
pub fn memory_config(overrides: Settings) -> Config {
    let base = Settings {
        backend: Some(BackendMode::Memory),
        max_size_mb: Some(256),
        max_value_bytes: Some(64 << 20),
        shutdown_grace: Some(cache_server::config::HumanDuration(Duration::from_secs(5))),
        ..Default::default()
    };
    Config::from_settings(base.overlay(overrides)).expect("valid test config")
}

/// A `mode` (redis or hybrid) config with [`memory_config`]'s footprint, connected with `redis` (see
/// [`RedisServer::settings`]).
///
/// # Panics
/// If the resulting config is invalid.
pub fn redis_config(mode: BackendMode, redis: RedisSettings) -> Config {
    memory_config(Settings {
        backend: Some(mode),
        redis,
        ..Default::default()
    })
}

/// A channel to `addr` (connected, retried for up to [`READY_TIMEOUT`]).
///
/// # Panics
/// If no connection can be made in time.
pub async fn connect_channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, %addr, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// A `CacheService` client on a new connection to `addr`, with message limits raised to
/// [`CLIENT_MAX_MESSAGE_BYTES`] (values above gRPC's 4 MiB default must come back).
pub async fn connect_client(addr: SocketAddr) -> CacheServiceClient<Channel> {
    CacheServiceClient::new(connect_channel(addr).await)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
}

// ---------------------------------------------------------------------------------------------------------
// A TCP proxy that can hold traffic
// ---------------------------------------------------------------------------------------------------------

/// One direction of a [`GatedProxy`]: how many bytes it may forward, and how many it did.
#[derive(Debug)]
struct Gate {
    /// `Some(n)`: forward at most `n` bytes in total (over all connections), then hold. `None`: open.
    limit: watch::Sender<Option<u64>>,
    forwarded: AtomicU64,
    /// Whether some connection is holding bytes back because of the limit.
    held: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Self {
        Self {
            limit: watch::Sender::new(None),
            forwarded: AtomicU64::new(0),
            held: watch::Sender::new(false),
        }
    }
}

/// A loopback TCP proxy to a target address that can stop forwarding one direction after a number of bytes
/// and resume later, to hold a call in flight at a known point (e.g. while the server shuts down).
#[derive(Debug)]
pub struct GatedProxy {
    addr: SocketAddr,
    upstream: Arc<Gate>,
    downstream: Arc<Gate>,
    task: JoinHandle<()>,
}

impl GatedProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding every connection to `target`.
    pub async fn start(target: SocketAddr) -> GatedProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let upstream = Arc::new(Gate::new());
        let downstream = Arc::new(Gate::new());
        let (up, down) = (upstream.clone(), downstream.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection's pumps.
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, up.clone()));
                pumps.spawn(pump(server_read, client_write, down.clone()));
            }
        });
        GatedProxy {
            addr,
            upstream,
            downstream,
            task,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client→server bytes forwarded so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream.forwarded.load(Ordering::SeqCst)
    }

    /// Server→client bytes forwarded so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.downstream.forwarded.load(Ordering::SeqCst)
    }

    /// From now on, forward at most `bytes` more client→server bytes, then hold the rest.
    pub fn hold_upstream_after(&self, bytes: u64) {
        let total = self.upstream_bytes() + bytes;
        self.upstream.limit.send_replace(Some(total));
    }

    /// From now on, forward at most `bytes` more server→client bytes, then hold the rest.
    pub fn hold_downstream_after(&self, bytes: u64) {
        let total = self.downstream_bytes() + bytes;
        self.downstream.limit.send_replace(Some(total));
    }

    /// Waits until some direction holds bytes back.
    ///
    /// # Panics
    /// If nothing is held within `timeout`.
    pub async fn wait_held(&self, timeout: Duration) {
        let mut up = self.upstream.held.subscribe();
        let mut down = self.downstream.held.subscribe();
        let held = async {
            tokio::select! {
                r = up.wait_for(|h| *h) => { r.expect("gate alive"); }
                r = down.wait_for(|h| *h) => { r.expect("gate alive"); }
            }
        };
        tokio::time::timeout(timeout, held)
            .await
            .unwrap_or_else(|_| panic!("proxy held nothing within {timeout:?}"));
    }

    /// Opens both directions: everything held is forwarded and nothing is held any more.
    pub fn release(&self) {
        for gate in [&self.upstream, &self.downstream] {
            gate.held.send_replace(false);
            gate.limit.send_replace(None);
        }
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<Gate>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut limit = gate.limit.subscribe();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off < n {
            let allowed = match *limit.borrow_and_update() {
                None => n - off,
                Some(max) => {
                    let left = max.saturating_sub(gate.forwarded.load(Ordering::SeqCst));
                    usize::try_from(left).unwrap_or(usize::MAX).min(n - off)
                }
            };
            if allowed == 0 {
                gate.held.send_replace(true);
                if limit.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if to.write_all(&buf[off..off + allowed]).await.is_err() {
                return;
            }
            gate.forwarded.fetch_add(allowed as u64, Ordering::SeqCst);
            off += allowed;
        }
    }
    let _ = to.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------------------------------------

/// A key of `cache_type` with `id` and nothing else.
pub fn key(cache_type: pb::CacheType, id: &str) -> pb::CacheKey {
    pb::CacheKey {
        r#type: cache_type as i32,
        id: id.to_owned(),
        ..Default::default()
    }
}

/// An export-result key: object `id`, `format`, export options from a JSON object (`null` for none) and
/// optional user / project scopes (empty strings for none).
///
/// # Panics
/// If `options_json` is neither an object nor null.
pub fn export_key(
    id: &str,
    format: &str,
    options_json: serde_json::Value,
    user: &str,
    project: &str,
) -> pb::CacheKey {
    let options = match options_json {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) => Some(json_object_to_struct(map)),
        other => panic!("export options must be a JSON object, got {other}"),
    };
    pb::CacheKey {
        r#type: pb::CacheType::ExportResult as i32,
        id: id.to_owned(),
        format: format.to_owned(),
        options,
        user_id: user.to_owned(),
        project_id: project.to_owned(),
    }
}

/// Converts a JSON object to a `google.protobuf.Struct`.
pub fn json_object_to_struct(
    map: serde_json::Map<String, serde_json::Value>,
) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

/// Converts a JSON value to a `google.protobuf.Value`.
pub fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_object_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A Set of `value` under `key` with every other field defaulted (AUTO compression, type's default TTL).
pub fn set_req(key: pb::CacheKey, value: impl Into<bytes::Bytes>) -> pb::SetRequest {
    pb::SetRequest {
        key: Some(key),
        value: value.into(),
        ..Default::default()
    }
}

/// A Get of `key` with every other field defaulted.
pub fn get_req(key: pb::CacheKey) -> pb::GetRequest {
    pb::GetRequest {
        key: Some(key),
        ..Default::default()
    }
}

/// Asserts that `result` failed with INVALID_ARGUMENT whose message starts with `field` followed by `:`
/// (so "key" does not accept "key.id: ...").
///
/// # Panics
/// If it succeeded or failed otherwise.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    match result {
        Ok(v) => panic!("expected INVALID_ARGUMENT naming {field:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "expected INVALID_ARGUMENT naming {field:?}, got {status:?}"
            );
            assert!(
                status.message().starts_with(&format!("{field}:")),
                "expected the message to start with {field:?}, got {:?}",
                status.message()
            );
        }
    }
}

/// A compressible JSON document of roughly `bytes` bytes (repetitive records, like a real export).
pub fn compressible_json(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 128);
    out.extend_from_slice(b"{\"elements\":[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(b',');
        }
        let record = format!(
            "{{\"id\":{i},\"kind\":\"IfcWall\",\"name\":\"Wall {}\",\"level\":{},\"material\":\"concrete\",\"height\":3.0}}",
            i % 97,
            i % 12
        );
        out.extend_from_slice(record.as_bytes());
        i += 1;
    }
    out.extend_from_slice(b"]}");
    out
}

/// `len` random (incompressible) bytes: a SplitMix64 stream from a random seed (the `rand` generators take
/// seconds per 64 MiB in a debug build).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = rand::random();
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v = vec![0u8; len];
    let mut chunks = v.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    v
}

// ---------------------------------------------------------------------------------------------------------
// Raw protobuf on the wire
// ---------------------------------------------------------------------------------------------------------

/// A gRPC codec that sends and receives already-encoded protobuf bytes, to put on the wire what generated
/// types cannot express (e.g. map entries in a chosen order).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0u8; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut out);
        Ok(Some(out))
    }
}

/// Calls a unary method (`path` like `/cache.v1.CacheService/Set`) with an already-encoded request and
/// returns the encoded response.
///
/// # Errors
/// The call's status.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    request: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(request), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Encodes a `google.protobuf.Struct` whose map entries appear on the wire in exactly the given order
/// (generated types always write them sorted).
pub fn struct_bytes_in_order(fields: &[(&str, serde_json::Value)]) -> Vec<u8> {
    use prost::Message as _;
    let mut out = Vec::new();
    for (name, value) in fields {
        // A one-entry Struct encodes as exactly that entry; concatenated entries form one map.
        let one = prost_types::Struct {
            fields: [((*name).to_owned(), json_to_value(value.clone()))]
                .into_iter()
                .collect(),
        };
        out.extend_from_slice(&one.encode_to_vec());
    }
    out
}

/// Appends a length-delimited field `tag` holding `payload` to `buf` (protobuf merges it into the message).
pub fn append_message_field(buf: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(payload.len() as u64, buf);
    buf.extend_from_slice(payload);
}

/// Encodes `key` (its own `options` must be `None`) with `options_struct` (encoded Struct bytes, see
/// [`struct_bytes_in_order`]) as its `options` field.
///
/// # Panics
/// If `key.options` is set.
pub fn key_bytes_with_options(key: &pb::CacheKey, options_struct: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    assert!(key.options.is_none(), "pass the options as bytes only");
    let mut out = key.encode_to_vec();
    append_message_field(&mut out, 4, options_struct);
    out
}

/// Encodes `request` (its own `key` must be `None`) with `key_bytes` as its `key` field. Works for
/// `SetRequest` and `GetRequest`, whose key is field 1.
///
/// # Panics
/// If the request's key is set.
pub fn request_bytes_with_key<M: prost::Message>(request: &M, key_bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_message_field(&mut out, 1, key_bytes);
    let rest = request.encode_to_vec();
    assert!(
        rest.first() != Some(&0x0a),
        "the request's key must be None: pass it as bytes"
    );
    out.extend_from_slice(&rest);
    out
}
