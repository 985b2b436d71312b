//! A real `cache_server::run` on a loopback port inside the test process ([`TestServer`]), the configs the
//! tests start it with, and clients connected to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_server::config::{BackendMode, Config, RedisSettings, Settings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

use crate::{CLIENT_MAX_MESSAGE_BYTES, READY_TIMEOUT, trace_init};

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
/// [`RedisServer::settings`](crate::RedisServer::settings)).
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
