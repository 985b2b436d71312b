//! Configuration: one typed [`Config`] built from defaults < TOML file < environment < command-line flags.
//!
//! Loading is a pure function of its inputs ([`Config::load`] takes the environment as a map), so tests never
//! touch the process environment. Every setting has a flag, an environment variable and a file key; the
//! README's configuration table lists them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// Default Prometheus endpoint address.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9090";
/// Default Redis host (the original design's `REDIS_HOST`).
pub const DEFAULT_REDIS_HOST: &str = "localhost";
/// Default Redis port.
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// Default budget for establishing a Redis connection (TCP + TLS + AUTH).
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default budget for one Redis command: past it the call falls back (hybrid) or fails (redis).
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Default number of multiplexed Redis connections.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 4;
/// Default longest wait between reconnection attempts.
pub const DEFAULT_REDIS_RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Default cap on the TTL of entries written to the memory tier while Redis is unreachable (hybrid mode).
pub const DEFAULT_FALLBACK_TTL: Duration = Duration::from_secs(60);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "cache";
/// Default tenant namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default memory-tier capacity in MiB (`CACHE_MAX_SIZE_MB`).
pub const DEFAULT_MAX_SIZE_MB: u64 = 1024;
/// Default compression threshold (`CACHE_COMPRESSION_THRESHOLD_MB` = 1).
pub const DEFAULT_COMPRESSION_THRESHOLD_BYTES: u64 = 1 << 20;
/// Default largest value accepted.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 64 << 20;
/// Default longest TTL accepted.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default time in-flight calls get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default interval of the memory-tier expiry sweep.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Default interval of the background metrics refresh (Redis INFO and the like).
pub const DEFAULT_METRICS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Environment variable naming the TOML config file.
pub const ENV_CONFIG_FILE: &str = "CACHE_CONFIG";

/// Where the entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// Only the in-process memory tier.
    Memory,
    /// Only Redis: Redis unreachable means UNAVAILABLE.
    Redis,
    /// Redis, falling back to the memory tier while Redis is unreachable.
    Hybrid,
}

impl BackendMode {
    /// The lowercase name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Hybrid => "hybrid",
        }
    }
}

impl FromStr for BackendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err("expected one of memory, redis, hybrid".to_owned()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".to_owned()),
        }
    }
}

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A duration written the human way (`250ms`, `5s`, `1h`) in files and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("{e} (expected e.g. 250ms, 5s, 1h)"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One layer of settings (file, environment or flags): every field optional, `None` = not set here.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// gRPC listen address [env: CACHE_LISTEN_ADDR] [default: 0.0.0.0:50051]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Backend mode: memory, redis or hybrid [env: CACHE_BACKEND] [default: hybrid]
    #[arg(long, value_enum)]
    pub backend: Option<BackendMode>,
    /// Key prefix of every stored key [env: CACHE_KEY_PREFIX] [default: cache]
    #[arg(long)]
    pub prefix: Option<String>,
    /// Tenant namespace under the prefix [env: CACHE_NAMESPACE] [default: default]
    #[arg(long)]
    pub namespace: Option<String>,
    /// Default TTL in seconds for every type, overriding the per-type defaults [env: CACHE_TTL_SECONDS]
    #[arg(long)]
    pub ttl_seconds: Option<u64>,
    /// Longest TTL accepted, e.g. 30d [env: CACHE_MAX_TTL] [default: 30days]
    #[arg(long)]
    pub max_ttl: Option<HumanDuration>,
    /// Memory-tier capacity in MiB [env: CACHE_MAX_SIZE_MB] [default: 1024]
    #[arg(long)]
    pub max_size_mb: Option<u64>,
    /// Compress AUTO values at or above this many MiB [env: CACHE_COMPRESSION_THRESHOLD_MB] [default: 1]
    #[arg(long)]
    pub compression_threshold_mb: Option<f64>,
    /// Compression threshold in bytes; wins over the MiB setting [env: CACHE_COMPRESSION_THRESHOLD_BYTES]
    #[arg(long)]
    pub compression_threshold_bytes: Option<u64>,
    /// Largest value accepted, in bytes [env: CACHE_MAX_VALUE_BYTES] [default: 67108864]
    #[arg(long)]
    pub max_value_bytes: Option<u64>,
    /// Time in-flight calls get on shutdown, e.g. 10s [env: CACHE_SHUTDOWN_GRACE] [default: 10s]
    #[arg(long)]
    pub shutdown_grace: Option<HumanDuration>,
    /// Memory-tier expiry sweep interval [env: CACHE_SWEEP_INTERVAL] [default: 30s]
    #[arg(long)]
    pub sweep_interval: Option<HumanDuration>,
    /// Background metrics refresh interval [env: CACHE_METRICS_REFRESH_INTERVAL] [default: 5s]
    #[arg(long)]
    pub metrics_refresh_interval: Option<HumanDuration>,
    /// Log format: text or json [env: LOG_FORMAT] [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Prometheus /metrics address, or "off" [env: CACHE_METRICS_LISTEN] [default: 0.0.0.0:9090]
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Redis settings.
    #[command(flatten)]
    pub redis: RedisSettings,
}

/// Redis settings layer.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL (redis:// or rediss://), wins over host/port/db/username/password [env: REDIS_URL]
    #[arg(long = "redis-url")]
    pub url: Option<Secret>,
    /// Redis host [env: REDIS_HOST] [default: localhost]
    #[arg(long = "redis-host")]
    pub host: Option<String>,
    /// Redis port [env: REDIS_PORT] [default: 6379]
    #[arg(long = "redis-port")]
    pub port: Option<u16>,
    /// Redis database number [env: REDIS_DB] [default: 0]
    #[arg(long = "redis-db")]
    pub db: Option<u8>,
    /// Redis ACL username [env: REDIS_USERNAME]
    #[arg(long = "redis-username")]
    pub username: Option<String>,
    /// Redis password; prefer the environment [env: REDIS_PASSWORD]
    #[arg(long = "redis-password")]
    pub password: Option<Secret>,
    /// Use TLS with host/port settings [env: REDIS_TLS] [default: false]
    #[arg(long = "redis-tls")]
    pub tls: Option<bool>,
    /// PEM file of CA certificates to trust for rediss:// (else the system roots) [env: REDIS_TLS_CA_FILE]
    #[arg(long = "redis-tls-ca-file")]
    pub tls_ca_file: Option<PathBuf>,
    /// Connect budget [env: REDIS_CONNECT_TIMEOUT] [default: 1s]
    #[arg(long = "redis-connect-timeout")]
    pub connect_timeout: Option<HumanDuration>,
    /// Per-command budget [env: REDIS_COMMAND_TIMEOUT] [default: 250ms]
    #[arg(long = "redis-command-timeout")]
    pub command_timeout: Option<HumanDuration>,
    /// Multiplexed connections [env: REDIS_POOL_SIZE] [default: 4]
    #[arg(long = "redis-pool-size")]
    pub pool_size: Option<usize>,
    /// Longest wait between reconnection attempts [env: REDIS_RECONNECT_MAX_DELAY] [default: 500ms]
    #[arg(long = "redis-reconnect-max-delay")]
    pub reconnect_max_delay: Option<HumanDuration>,
    /// TTL cap of entries written to memory while Redis is down [env: CACHE_FALLBACK_TTL] [default: 60s]
    #[arg(long = "fallback-ttl")]
    pub fallback_ttl: Option<HumanDuration>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Backend mode.
    pub backend: BackendMode,
    /// Key prefix.
    pub prefix: String,
    /// Tenant namespace.
    pub namespace: String,
    /// TTL for every type when set (`CACHE_TTL_SECONDS`), else the per-type defaults.
    pub default_ttl_override: Option<Duration>,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// Memory-tier capacity in bytes.
    pub memory_capacity_bytes: u64,
    /// AUTO compression threshold in bytes.
    pub compression_threshold_bytes: u64,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: u64,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Memory-tier sweep interval.
    pub sweep_interval: Duration,
    /// Metrics refresh interval.
    pub metrics_refresh_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Where to serve Prometheus `/metrics`; `None` when switched off.
    pub metrics_listen: Option<SocketAddr>,
    /// Redis connection settings.
    pub redis: RedisConfig,
}

/// Effective Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Full URL, if given (may hold credentials: never log it).
    pub url: Option<Secret>,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database number.
    pub db: u8,
    /// ACL username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// TLS with host/port settings.
    pub tls: bool,
    /// CA certificates to trust for TLS (else the system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Connect budget.
    pub connect_timeout: Duration,
    /// Per-command budget.
    pub command_timeout: Duration,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest reconnect delay.
    pub reconnect_max_delay: Duration,
    /// TTL cap for entries written to memory during an outage.
    pub fallback_ttl: Duration,
}

impl RedisConfig {
    /// Where Redis is, without credentials: safe to log.
    pub fn display_target(&self) -> String {
        match &self.url {
            Some(url) => redact_url(url.expose()),
            None => format!(
                "{}://{}:{}/{}",
                if self.tls { "rediss" } else { "redis" },
                self.host,
                self.port,
                self.db
            ),
        }
    }
}

/// Strips user info from a URL for logging: `redis://user:pw@host:6379/0` → `redis://host:6379/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("invalid config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// An environment variable has a value of the wrong type.
    #[error("invalid environment variable {name}={value:?}: {expected}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value (never shown for secrets: those cannot fail to parse).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// The merged settings are inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn env_value<T: FromStr>(
    env: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    match env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
            name,
            value: v.to_owned(),
            expected: e.to_string(),
        }),
    }
}

impl Settings {
    /// Reads the settings layer from environment variables (the original design's names included).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: env_value(env, "CACHE_LISTEN_ADDR")?,
            backend: env_value(env, "CACHE_BACKEND")?,
            prefix: env_value(env, "CACHE_KEY_PREFIX")?,
            namespace: env_value(env, "CACHE_NAMESPACE")?,
            ttl_seconds: env_value(env, "CACHE_TTL_SECONDS")?,
            max_ttl: env_value(env, "CACHE_MAX_TTL")?,
            max_size_mb: env_value(env, "CACHE_MAX_SIZE_MB")?,
            compression_threshold_mb: env_value(env, "CACHE_COMPRESSION_THRESHOLD_MB")?,
            compression_threshold_bytes: env_value(env, "CACHE_COMPRESSION_THRESHOLD_BYTES")?,
            max_value_bytes: env_value(env, "CACHE_MAX_VALUE_BYTES")?,
            shutdown_grace: env_value(env, "CACHE_SHUTDOWN_GRACE")?,
            sweep_interval: env_value(env, "CACHE_SWEEP_INTERVAL")?,
            metrics_refresh_interval: env_value(env, "CACHE_METRICS_REFRESH_INTERVAL")?,
            log_format: env_value(env, "LOG_FORMAT")?,
            metrics_listen: env_value(env, "CACHE_METRICS_LISTEN")?,
            redis: RedisSettings {
                url: env_value(env, "REDIS_URL")?,
                host: env_value(env, "REDIS_HOST")?,
                port: env_value(env, "REDIS_PORT")?,
                db: env_value(env, "REDIS_DB")?,
                username: env_value(env, "REDIS_USERNAME")?,
                password: env_value(env, "REDIS_PASSWORD")?,
                tls: env_value(env, "REDIS_TLS")?,
                tls_ca_file: env_value(env, "REDIS_TLS_CA_FILE")?,
                connect_timeout: env_value(env, "REDIS_CONNECT_TIMEOUT")?,
                command_timeout: env_value(env, "REDIS_COMMAND_TIMEOUT")?,
                pool_size: env_value(env, "REDIS_POOL_SIZE")?,
                reconnect_max_delay: env_value(env, "REDIS_RECONNECT_MAX_DELAY")?,
                fallback_ttl: env_value(env, "CACHE_FALLBACK_TTL")?,
            },
        })
    }

    /// Parses a TOML settings file.
    pub fn from_toml(text: &str, path: PathBuf) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path,
            message: e.to_string(),
        })
    }

    /// Overlays `other` on `self`: every field `other` sets wins.
    #[must_use]
    pub fn overlay(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: other.$f.or(self.$f),)* redis: RedisSettings {
                url: other.redis.url.or(self.redis.url),
                host: other.redis.host.or(self.redis.host),
                port: other.redis.port.or(self.redis.port),
                db: other.redis.db.or(self.redis.db),
                username: other.redis.username.or(self.redis.username),
                password: other.redis.password.or(self.redis.password),
                tls: other.redis.tls.or(self.redis.tls),
                tls_ca_file: other.redis.tls_ca_file.or(self.redis.tls_ca_file),
                connect_timeout: other.redis.connect_timeout.or(self.redis.connect_timeout),
                command_timeout: other.redis.command_timeout.or(self.redis.command_timeout),
                pool_size: other.redis.pool_size.or(self.redis.pool_size),
                reconnect_max_delay: other.redis.reconnect_max_delay.or(self.redis.reconnect_max_delay),
                fallback_ttl: other.redis.fallback_ttl.or(self.redis.fallback_ttl),
            } } };
        }
        pick!(
            listen,
            backend,
            prefix,
            namespace,
            ttl_seconds,
            max_ttl,
            max_size_mb,
            compression_threshold_mb,
            compression_threshold_bytes,
            max_value_bytes,
            shutdown_grace,
            sweep_interval,
            metrics_refresh_interval,
            log_format,
            metrics_listen
        )
    }
}

impl Config {
    /// Builds the effective config. Precedence, lowest first: defaults, file, env, flags. The file is
    /// `config_file`, else the `CACHE_CONFIG` environment variable, else none.
    pub fn load(
        flags: Settings,
        config_file: Option<PathBuf>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file_path = config_file.or_else(|| {
            env.get(ENV_CONFIG_FILE)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let file = match file_path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Settings::from_toml(&text, path)?
            }
            None => Settings::default(),
        };
        let merged = file.overlay(Settings::from_env(env)?).overlay(flags);
        Config::from_settings(merged)
    }

    /// Applies defaults to merged settings and validates the result.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let dur = |v: Option<HumanDuration>, d: Duration| v.map_or(d, |h| h.0);
        let threshold = match (s.compression_threshold_bytes, s.compression_threshold_mb) {
            (Some(bytes), _) => bytes,
            (None, Some(mb)) if mb.is_finite() && mb >= 0.0 => (mb * 1024.0 * 1024.0) as u64,
            (None, Some(mb)) => {
                return Err(ConfigError::Invalid(format!(
                    "compression threshold {mb} MiB must be a non-negative number"
                )));
            }
            (None, None) => DEFAULT_COMPRESSION_THRESHOLD_BYTES,
        };
        let r = s.redis;
        let config = Config {
            listen: s
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
            backend: s.backend.unwrap_or(BackendMode::Hybrid),
            prefix: s.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            namespace: s.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            default_ttl_override: s.ttl_seconds.map(Duration::from_secs),
            max_ttl: dur(s.max_ttl, DEFAULT_MAX_TTL),
            memory_capacity_bytes: s
                .max_size_mb
                .unwrap_or(DEFAULT_MAX_SIZE_MB)
                .saturating_mul(1 << 20),
            compression_threshold_bytes: threshold,
            max_value_bytes: s.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES),
            shutdown_grace: dur(s.shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
            sweep_interval: dur(s.sweep_interval, DEFAULT_SWEEP_INTERVAL),
            metrics_refresh_interval: dur(
                s.metrics_refresh_interval,
                DEFAULT_METRICS_REFRESH_INTERVAL,
            ),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            metrics_listen: match s.metrics_listen.as_deref().map(str::trim) {
                None => Some(
                    DEFAULT_METRICS_LISTEN
                        .parse()
                        .expect("valid default address"),
                ),
                Some("off" | "none" | "") => None,
                Some(addr) => Some(addr.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "metrics_listen {addr:?} must be host:port or \"off\""
                    ))
                })?),
            },
            redis: RedisConfig {
                url: r.url.filter(|u| !u.expose().is_empty()),
                host: r.host.unwrap_or_else(|| DEFAULT_REDIS_HOST.to_owned()),
                port: r.port.unwrap_or(DEFAULT_REDIS_PORT),
                db: r.db.unwrap_or(0),
                username: r.username.filter(|u| !u.is_empty()),
                password: r.password.filter(|p| !p.expose().is_empty()),
                tls: r.tls.unwrap_or(false),
                tls_ca_file: r.tls_ca_file,
                connect_timeout: dur(r.connect_timeout, DEFAULT_REDIS_CONNECT_TIMEOUT),
                command_timeout: dur(r.command_timeout, DEFAULT_REDIS_COMMAND_TIMEOUT),
                pool_size: r.pool_size.unwrap_or(DEFAULT_REDIS_POOL_SIZE),
                reconnect_max_delay: dur(r.reconnect_max_delay, DEFAULT_REDIS_RECONNECT_MAX_DELAY),
                fallback_ttl: dur(r.fallback_ttl, DEFAULT_FALLBACK_TTL),
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.prefix.is_empty() || self.namespace.is_empty() {
            return invalid("prefix and namespace must not be empty".into());
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > (1 << 30) {
            return invalid(format!(
                "max_value_bytes {} must be between 1 and 1 GiB",
                self.max_value_bytes
            ));
        }
        // The memory tier must be able to hold the largest value (plus its envelope) in one shard.
        let needed = self.max_value_bytes + self.max_value_bytes / 8 + (64 << 10);
        if self.memory_capacity_bytes < needed {
            return invalid(format!(
                "max_size_mb ({} MiB) must be at least 1.125 x max_value_bytes ({} MiB) so the largest value fits in memory",
                self.memory_capacity_bytes >> 20,
                self.max_value_bytes >> 20
            ));
        }
        if self.default_ttl_override == Some(Duration::ZERO) {
            return invalid("ttl_seconds must be positive".into());
        }
        if self.default_ttl_override.is_some_and(|t| t > self.max_ttl) {
            return invalid("ttl_seconds must not exceed max_ttl".into());
        }
        if self.redis.pool_size == 0 || self.redis.pool_size > 64 {
            return invalid(format!(
                "redis pool_size {} must be between 1 and 64",
                self.redis.pool_size
            ));
        }
        if self.redis.command_timeout.is_zero() || self.redis.connect_timeout.is_zero() {
            return invalid("redis timeouts must be positive".into());
        }
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return invalid(format!(
                    "redis url {} must start with redis:// or rediss://",
                    redact_url(u)
                ));
            }
        }
        Ok(())
    }

    /// The default TTL of a type: `CACHE_TTL_SECONDS` when set, else the type's own default.
    pub fn default_ttl(&self, cache_type: crate::keys::CacheType) -> Duration {
        use crate::keys::CacheType::*;
        self.default_ttl_override.unwrap_or(match cache_type {
            ExportResult => Duration::from_secs(24 * 3600),
            Metadata => Duration::from_secs(3600),
            ObjectInfo => Duration::from_secs(1800),
            UserPreference => Duration::from_secs(7 * 24 * 3600),
            SystemConfig => Duration::from_secs(3600),
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_settings(Settings::default()).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::load(Settings::default(), None, &HashMap::new()).unwrap();
        assert_eq!(c.listen.port(), 50051);
        assert_eq!(c.backend, BackendMode::Hybrid);
        assert_eq!(c.memory_capacity_bytes, 1024 << 20);
        assert_eq!(c.compression_threshold_bytes, 1 << 20);
        assert_eq!(c.redis.command_timeout, Duration::from_millis(250));
        assert_eq!(c.redis.display_target(), "redis://localhost:6379/0");
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.toml");
        std::fs::write(&path, "backend = \"redis\"\nmax_size_mb = 512\nttl_seconds = 100\n[redis]\nport = 7000\ncommand_timeout = \"100ms\"\n").unwrap();
        let e = env(&[
            ("CACHE_MAX_SIZE_MB", "256"),
            ("REDIS_PORT", "7001"),
            ("CACHE_TTL_SECONDS", "200"),
        ]);
        let flags = Settings {
            ttl_seconds: Some(300),
            ..Default::default()
        };
        let c = Config::load(flags, Some(path.clone()), &e).unwrap();
        assert_eq!(c.backend, BackendMode::Redis, "file beats default");
        assert_eq!(
            c.redis.command_timeout,
            Duration::from_millis(100),
            "file beats default"
        );
        assert_eq!(c.memory_capacity_bytes, 256 << 20, "env beats file");
        assert_eq!(c.redis.port, 7001, "env beats file");
        assert_eq!(
            c.default_ttl_override,
            Some(Duration::from_secs(300)),
            "flag beats env"
        );
        // CACHE_CONFIG names the file when no flag does.
        let e = env(&[("CACHE_CONFIG", path.to_str().unwrap())]);
        assert_eq!(
            Config::load(Settings::default(), None, &e)
                .unwrap()
                .redis
                .port,
            7000
        );
    }

    #[test]
    fn bad_values_name_the_culprit() {
        let err =
            Config::load(Settings::default(), None, &env(&[("REDIS_PORT", "abc")])).unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"), "{err}");
        let err = Config::load(
            Settings::default(),
            None,
            &env(&[("CACHE_BACKEND", "disk")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CACHE_BACKEND"), "{err}");
        let err = Settings::from_toml("bogus = 1", "x.toml".into()).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::load(
            Settings::default(),
            None,
            &env(&[("CACHE_MAX_SIZE_MB", "1")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_size_mb"), "{err}");
    }

    #[test]
    fn compression_threshold_accepts_mb_or_bytes() {
        let c = Config::load(
            Settings::default(),
            None,
            &env(&[("CACHE_COMPRESSION_THRESHOLD_MB", "0.5")]),
        )
        .unwrap();
        assert_eq!(c.compression_threshold_bytes, 512 << 10);
        let c = Config::load(
            Settings::default(),
            None,
            &env(&[
                ("CACHE_COMPRESSION_THRESHOLD_MB", "2"),
                ("CACHE_COMPRESSION_THRESHOLD_BYTES", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(c.compression_threshold_bytes, 100);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let e = env(&[
            ("REDIS_URL", "redis://app:pw_SENTINEL@db:6379/2"),
            ("REDIS_PASSWORD", "pw_SENTINEL"),
        ]);
        let c = Config::load(Settings::default(), None, &e).unwrap();
        let shown = format!("{c:?} {}", c.redis.display_target());
        assert!(!shown.contains("pw_SENTINEL"), "{shown}");
        assert_eq!(c.redis.display_target(), "redis://db:6379/2");
    }
}
