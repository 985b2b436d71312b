//! fred's configuration and the command budget: how the tier talks to Redis, and how a failed command is
//! classified (an outage, Redis unusable for this service, or an error reply).
//!
//! fred is configured to fail fast: its defaults suit a database client (no command timeout, an unbounded
//! queue, retries) and would make a hung Redis hold every caller. Commands carry the command budget,
//! reconnection runs forever with capped exponential backoff, and the pool connects in the background so
//! the server starts with Redis down (docs/decisions/0005-fail-fast-redis.md).
//!
//! Two pools: the main pool carries every command of small values; large values (blobs, see
//! [`super::layout::Pointer`]) go over a pool of their own with a budget that grows with their size, so a
//! healthy Redis is never declared down because a value is large, and small calls never queue behind a
//! large transfer on one connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, TcpConfig, UnresponsiveConfig};

use super::{Redis, TIER};
use crate::backend::BackendError;
use crate::config::RedisConfig;

/// Connections of the pool for large values.
const BULK_POOL_SIZE: usize = 2;
/// The slowest transfer rate a healthy Redis is assumed to sustain for one large value: its budget is the
/// command budget plus its size (and the bytes queued before it) at this rate.
const BULK_BYTES_PER_SECOND: u64 = 20 << 20;

/// Ranges of large values requested at a time over the whole bulk pool: what Redis copies into its output
/// buffers in one turn of its event loop, while other clients wait (see `read_blob`).
pub(super) const RANGES_IN_FLIGHT: usize = 4;

/// What a failed command says about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unusable {
    /// The server is a replica (`READONLY`): not the primary, never a place to write.
    NotPrimary,
    /// The server is a Cluster node answering redirections, reached without `redis-cluster://`.
    ClusterNode,
    /// Authentication or an ACL refused us.
    Refused,
}

impl Unusable {
    /// A short reason for logs, metrics and the Metrics RPC.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotPrimary => "not_primary",
            Self::ClusterNode => "cluster_node",
            Self::Refused => "auth_refused",
        }
    }

    /// Recognises Redis' error replies that mean this Redis cannot be used by this service.
    pub fn of_reply(details: &str) -> Option<Self> {
        let word = details.split_whitespace().next().unwrap_or("");
        match word {
            "READONLY" => Some(Self::NotPrimary),
            "MOVED" | "ASK" | "CLUSTERDOWN" | "CROSSSLOT" => Some(Self::ClusterNode),
            "NOAUTH" | "WRONGPASS" | "NOPERM" => Some(Self::Refused),
            _ => None,
        }
    }
}

/// The pools and the budget.
pub(super) struct Conn {
    /// Every command of small values.
    pub pool: Pool,
    /// Large values.
    pub bulk: Pool,
    /// Invalidations' own connection when they `WAIT` for replicas (`wait_replicas` > 0): `WAIT` blocks
    /// its connection, which must not hold the Gets pipelined on the main pool.
    pub waits: Option<Pool>,
    /// The Sentinels a `redis-sentinel://` URL names, asked who the primary is: a promotion must be followed
    /// even while the old primary still answers as one.
    pub sentinels: Option<Sentinels>,
    /// The command budget.
    pub budget: Duration,
    /// TLS settings shared with the transaction connection, when Redis is reached over TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where Redis is, without credentials.
    pub target: String,
    /// ACL username and password, for the transaction connection.
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
    /// Database number, for the transaction connection.
    pub database: Option<u8>,
    /// Bytes of large values in flight on the bulk pool.
    pub bulk_in_flight: std::sync::atomic::AtomicU64,
    /// Permits for ranges of large values in flight ([`RANGES_IN_FLIGHT`]).
    pub ranges: tokio::sync::Semaphore,
}

fn internal(reason: String) -> BackendError {
    BackendError::Internal { tier: TIER, reason }
}

/// The rustls client configuration: the CA file's certificates, else the system roots.
fn tls_config(config: &RedisConfig) -> Result<Arc<rustls::ClientConfig>, BackendError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| internal(format!("failed to read CA file {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| {
                    internal(format!("invalid certificate in {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    internal(format!("unusable certificate in {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(format!("tls setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// fred's configuration from ours: a URL (`redis://`, `rediss://`, `redis-sentinel://`,
/// `rediss-sentinel://`) or host, port and the rest; settings given beside a URL fill what it leaves out.
fn fred_config(
    config: &RedisConfig,
) -> Result<(Config, Option<Arc<rustls::ClientConfig>>), BackendError> {
    let mut fred_config = match &config.url {
        Some(url) => Config::from_url(url.expose()).map_err(|e| {
            internal(format!(
                "invalid redis url {}: {}",
                config.display_target(),
                e.details()
            ))
        })?,
        None => Config {
            server: ServerConfig::new_centralized(config.host.clone(), config.port),
            username: config.username.clone(),
            password: config.password.as_ref().map(|p| p.expose().to_owned()),
            database: Some(config.db),
            ..Config::default()
        },
    };
    if config.url.is_some() {
        if fred_config.username.is_none() {
            fred_config.username = config.username.clone();
        }
        if fred_config.password.is_none() {
            fred_config.password = config.password.as_ref().map(|p| p.expose().to_owned());
        }
    }
    let wants_tls = config.tls
        || fred_config.tls.is_some()
        || config.url.as_ref().is_some_and(|u| {
            let u = u.expose();
            u.starts_with("rediss://") || u.starts_with("rediss-sentinel://")
        });
    let tls = if wants_tls {
        let client = tls_config(config)?;
        fred_config.tls = Some(fred::types::config::TlsConnector::from((*client).clone()).into());
        Some(client)
    } else {
        None
    };
    fred_config.fail_fast = false;
    Ok((fred_config, tls))
}

impl Conn {
    /// Builds both pools and starts connecting in the background.
    pub fn connect(config: &RedisConfig) -> Result<Self, BackendError> {
        let (fred_config, tls) = fred_config(config)?;
        let budget = config.command_timeout;
        let connection = ConnectionConfig {
            connection_timeout: config.connect_timeout,
            internal_command_timeout: budget.max(Duration::from_millis(300)),
            max_command_attempts: 1,
            max_command_buffer_len: 10_000,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(budget * 4 + Duration::from_millis(500)),
                interval: Duration::from_millis(250),
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            ..ConnectionConfig::default()
        };
        let performance = PerformanceConfig {
            default_command_timeout: budget,
            ..PerformanceConfig::default()
        };
        let max_delay = config.reconnect_max_delay.as_millis().clamp(50, 60_000) as u32;
        let policy = ReconnectPolicy::new_exponential(0, 50.min(max_delay), max_delay, 2);
        let build = |size: usize, connection: ConnectionConfig| {
            Builder::from_config(fred_config.clone())
                .set_connection_config(connection)
                .set_performance_config(performance.clone())
                .set_policy(policy.clone())
                .build_pool(size)
                .map_err(|e| internal(e.details().to_owned()))
        };
        let pool = build(config.pool_size, connection.clone())?;
        // The bulk pool's commands carry their own, size-aware timeouts; a connection busy with a large
        // transfer is not unresponsive.
        let unchecked = ConnectionConfig {
            unresponsive: UnresponsiveConfig::default(),
            ..connection
        };
        let bulk = build(BULK_POOL_SIZE, unchecked.clone())?;
        let sentinels = Sentinels::from_config(&fred_config, &performance, &unchecked, &policy);
        let waits = match config.wait_replicas {
            0 => None,
            _ => Some(build(1, unchecked)?),
        };
        let _ = pool.connect_pool();
        let _ = bulk.connect_pool();
        if let Some(waits) = &waits {
            let _ = waits.connect_pool();
        }
        Ok(Self {
            pool,
            bulk,
            waits,
            sentinels,
            budget,
            tls,
            target: config.display_target(),
            username: fred_config.username.clone(),
            password: fred_config.password.clone(),
            database: fred_config.database,
            bulk_in_flight: std::sync::atomic::AtomicU64::new(0),
            ranges: tokio::sync::Semaphore::new(RANGES_IN_FLIGHT),
        })
    }

    /// The budget of a large value's command: the command budget plus the time its bytes, and those queued
    /// before it, take at the slowest rate a healthy Redis sustains.
    pub fn bulk_budget(&self, bytes: u64) -> Duration {
        let queued = self
            .bulk_in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        let transfer = (bytes + queued).saturating_mul(1000) / BULK_BYTES_PER_SECOND;
        self.budget + Duration::from_millis(transfer)
    }

    /// The address of the primary fred's pool is connected to.
    pub fn primary(pool: &Pool) -> Option<(String, u16)> {
        pool.clients()
            .iter()
            .find_map(|c| c.active_connections().into_iter().next())
            .map(|server| (server.host.to_string(), server.port))
    }
}

impl Redis {
    /// A budget-expired error.
    pub(super) fn timeout(&self) -> BackendError {
        BackendError::Timeout {
            tier: TIER,
            budget: self.conn.budget,
        }
    }

    /// Classifies a fred error: timeouts, error replies (out of memory: refused; errors of ours: internal;
    /// the rest: Redis could not be used for this call), and everything on the client's side of the wire.
    pub(super) fn classify(&self, err: &fred::error::Error) -> BackendError {
        use fred::error::ErrorKind;
        let details = err.details();
        match err.kind() {
            ErrorKind::Timeout => self.timeout(),
            // An error reply from Redis itself: the command reached it and failed there. (fred also reports
            // some client-side conditions, e.g. "Failed to route command.", as Unknown: those are outages.)
            ErrorKind::Unknown
            | ErrorKind::InvalidCommand
            | ErrorKind::InvalidArgument
            | ErrorKind::Parse => {
                if details.starts_with("OOM")
                    || details.starts_with("EXECABORT") && details.contains("OOM")
                {
                    BackendError::Refused {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                } else if Unusable::of_reply(details).is_some() {
                    BackendError::Unavailable {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                } else if ["ERR", "WRONGTYPE", "NOSCRIPT", "EXECABORT"]
                    .iter()
                    .any(|p| details.starts_with(p))
                {
                    internal(details.to_owned())
                } else {
                    BackendError::Unavailable {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                }
            }
            _ => BackendError::Unavailable {
                tier: TIER,
                reason: details.to_owned(),
            },
        }
    }

    /// Runs one command under the budget; outage errors mark the tier down.
    pub(super) async fn call<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        self.call_within(self.conn.budget, fut).await
    }

    /// Runs one command under `budget`; outage errors mark the tier down.
    pub(super) async fn call_within<T, F>(
        &self,
        budget: Duration,
        fut: F,
    ) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        let result = match tokio::time::timeout(budget, fut).await {
            Ok(result) => result.map_err(|e| self.classify(&e)),
            Err(_) => Err(BackendError::Timeout { tier: TIER, budget }),
        };
        self.note_outcome(result)
    }

    /// [`Redis::call`] for the hot path, without the backstop timer: fred bounds these commands itself
    /// (the per-command timeout the batches set from [`Redis::budget_left`]) and reports expiry as a
    /// timeout. One timer less per call.
    pub(super) async fn call_bounded<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        let result = fut.await.map_err(|e| self.classify(&e));
        self.note_outcome(result)
    }

    /// Outage errors mark the tier down; replies that say this Redis cannot be used mark it unusable.
    pub(super) fn note_outcome<T>(
        &self,
        result: Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        if let Err(e) = &result {
            if let BackendError::Unavailable { reason, .. } = e
                && let Some(unusable) = Unusable::of_reply(reason)
            {
                self.mark_unusable(unusable, reason);
            } else if e.is_outage() {
                self.mark_down(e);
            }
        }
        result
    }

    /// A client of the main pool with fail-fast options and the whole budget.
    pub(super) fn fast(&self) -> fred::clients::WithOptions<Client> {
        self.conn
            .pool
            .next()
            .with_options(&Self::fail_fast_within(self.conn.budget))
    }

    /// Fail-fast options with `timeout`: one attempt, no queueing while disconnected.
    pub(super) fn fail_fast_within(timeout: Duration) -> Options {
        Options {
            timeout: Some(timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    /// What is left of the command budget of a batch whose oldest call was queued at `oldest`: calls that
    /// waited for a free slot (Redis slow or hung) must still fail over within their budget. A batch whose
    /// budget is spent fails at once, as a timeout, without being sent; so does any batch once the tier is
    /// down (the calls queued behind a hung Redis go to the memory tier instead of waiting their turn).
    pub(super) fn budget_left(&self, oldest: Instant) -> Result<Duration, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        match self.conn.budget.checked_sub(oldest.elapsed()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => self.note_outcome(Err(self.timeout())),
        }
    }
}

/// The Sentinels of a `redis-sentinel://` URL and the service they watch.
pub struct Sentinels {
    service: String,
    clients: Vec<fred::clients::SentinelClient>,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("service", &self.service)
            .field("count", &self.clients.len())
            .finish()
    }
}

impl Sentinels {
    /// A client per Sentinel the configuration names (connecting in the background), if it names any.
    fn from_config(
        config: &Config,
        performance: &PerformanceConfig,
        connection: &ConnectionConfig,
        policy: &ReconnectPolicy,
    ) -> Option<Self> {
        let ServerConfig::Sentinel {
            hosts,
            service_name,
            username,
            password,
        } = &config.server
        else {
            return None;
        };
        let clients = hosts
            .iter()
            .map(|host| {
                let client = fred::clients::SentinelClient::new(
                    fred::types::config::SentinelConfig {
                        host: host.host.to_string(),
                        port: host.port,
                        username: username.clone(),
                        password: password.clone(),
                        tls: config.tls.clone(),
                    },
                    Some(performance.clone()),
                    Some(connection.clone()),
                    Some(policy.clone()),
                );
                // Connects in the background; the handle is not needed.
                drop(client.connect());
                client
            })
            .collect();
        Some(Self {
            service: service_name.clone(),
            clients,
        })
    }

    /// The primary's address as the first Sentinel that answers within `budget` names it.
    pub async fn primary(&self, budget: Duration) -> Option<(String, u16)> {
        for client in &self.clients {
            let asked = tokio::time::timeout(
                budget,
                client.get_master_addr_by_name::<Vec<String>, _>(self.service.as_str()),
            )
            .await;
            if let Ok(Ok(addr)) = asked
                && let [host, port] = addr.as_slice()
                && let Ok(port) = port.parse()
            {
                return Some((host.clone(), port));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Unusable;

    #[test]
    fn replies_that_make_redis_unusable_are_recognised() {
        assert_eq!(
            Unusable::of_reply("READONLY You can't write against a read only replica."),
            Some(Unusable::NotPrimary)
        );
        assert_eq!(
            Unusable::of_reply("MOVED 3999 127.0.0.1:6381"),
            Some(Unusable::ClusterNode)
        );
        assert_eq!(
            Unusable::of_reply("WRONGPASS invalid username-password pair"),
            Some(Unusable::Refused)
        );
        assert_eq!(Unusable::of_reply("ERR unknown command"), None);
        assert_eq!(Unusable::of_reply("OOM command not allowed"), None);
    }
}
