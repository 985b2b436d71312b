//! Configuration: one typed [`Config`] built from defaults < TOML file < environment < command-line flags.
//!
//! Loading is a pure function of its inputs ([`Config::load`] takes the environment as a map), so tests never
//! touch the process environment. Every setting is declared once, in the `settings!` invocations below: its
//! description, type, default, environment variable, flag and file key (the field name, inside `[redis]` for
//! the Redis group). From that one line come the flag (and its `--help` text), the TOML key, the
//! environment reader, the overlay of layers, the field of the effective [`Config`] and the row of the
//! documentation table ([`table::markdown`], printed by `cache-server config-table`).
//!
//! Adding a setting is one line in a group plus its uses, e.g.
//!
//! ```text
//! /// idle connections are closed after this long
//! idle_timeout: HumanDuration = "5m", env "CACHE_IDLE_TIMEOUT", flag "idle-timeout";
//! ```
//!
//! then `config.idle_timeout` (a `Duration`) where it is used, a validation rule in `Config::validate` if
//! it needs one, and the row the `config-table` command prints in the documentation (a unit test compares
//! them). A new TOML table is one more invocation, nested in its parent group.

mod declare;
pub mod table;
mod values;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use values::{
    BackendMode, HumanDuration, LogFormat, MetricsListen, Reflection, Secret, SettingType, Switch,
};

use declare::settings;

/// Environment variable naming the TOML config file.
pub const ENV_CONFIG_FILE: &str = "CACHE_CONFIG";

/// The default Prometheus endpoint address (the `metrics_listen` declaration's default; a test checks both
/// agree).
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9090";

settings! {
    /// One layer of settings (file, environment or flags): every field optional, `None` = not set here.
    layer Settings;
    /// The effective configuration.
    config Config;
    table "";
    settings {
        /// gRPC listen address
        listen: SocketAddr = "0.0.0.0:50051", env "CACHE_LISTEN_ADDR", flag "listen";
        /// backend mode: `memory`, `redis` or `hybrid`
        backend: BackendMode = "hybrid", env "CACHE_BACKEND", flag "backend";
        /// key prefix
        prefix: String = "cache", env "CACHE_KEY_PREFIX", flag "prefix";
        /// tenant namespace under the prefix
        namespace: String = "default", env "CACHE_NAMESPACE", flag "namespace";
        /// TTL in seconds for every type, overriding the per-type defaults
        #[raw]
        ttl_seconds: u64 = unset ("per-type defaults"), env "CACHE_TTL_SECONDS", flag "ttl-seconds";
        /// longest TTL accepted
        max_ttl: HumanDuration = "30days", env "CACHE_MAX_TTL", flag "max-ttl";
        /// memory-tier capacity in MiB
        #[raw]
        max_size_mb: u64 = "1024", env "CACHE_MAX_SIZE_MB", flag "max-size-mb";
        /// AUTO compression threshold in MiB (may be fractional)
        #[raw]
        compression_threshold_mb: f64 = "1",
            env "CACHE_COMPRESSION_THRESHOLD_MB", flag "compression-threshold-mb";
        /// AUTO compression threshold in bytes (wins over the MiB setting)
        #[raw]
        compression_threshold_bytes: u64 = unset,
            env "CACHE_COMPRESSION_THRESHOLD_BYTES", flag "compression-threshold-bytes";
        /// largest value accepted, in bytes (at most 1 GiB)
        max_value_bytes: u64 = "67108864" ("64 MiB"), env "CACHE_MAX_VALUE_BYTES", flag "max-value-bytes";
        /// time in-flight calls get on shutdown
        shutdown_grace: HumanDuration = "10s", env "CACHE_SHUTDOWN_GRACE", flag "shutdown-grace";
        /// memory-tier expiry sweep interval
        sweep_interval: HumanDuration = "30s", env "CACHE_SWEEP_INTERVAL", flag "sweep-interval";
        /// background metrics refresh interval (Redis INFO, health)
        metrics_refresh_interval: HumanDuration = "5s",
            env "CACHE_METRICS_REFRESH_INTERVAL", flag "metrics-refresh-interval";
        /// log format: `text` or `json` (stderr)
        log_format: LogFormat = "text", env "LOG_FORMAT", flag "log-format";
        /// Prometheus `/metrics` address, or `off`
        metrics_listen: MetricsListen = "0.0.0.0:9090", env "CACHE_METRICS_LISTEN", flag "metrics-listen";
        /// memory budget in MiB for work in flight (values being stored, replies being built and sent); a call that does not fit waits 500 ms, then fails with `RESOURCE_EXHAUSTED`
        #[raw]
        max_inflight_mb: u64 = unset ("a quarter of max_size_mb, at least 4 x the largest message"),
            env "CACHE_MAX_INFLIGHT_MB", flag "max-inflight-mb";
        /// connections with no call for this long are closed (`0s`: never)
        idle_timeout: HumanDuration = "5m", env "CACHE_IDLE_TIMEOUT", flag "idle-timeout";
        /// most client connections served at once; more wait in the listen backlog
        max_connections: usize = "4096", env "CACHE_MAX_CONNECTIONS", flag "max-connections";
        /// HTTP/2 keepalive: a PING after this long without frames from the client
        keepalive_interval: HumanDuration = "30s", env "CACHE_KEEPALIVE_INTERVAL", flag "keepalive-interval";
        /// HTTP/2 keepalive: the connection is closed when a PING is not answered within this
        keepalive_timeout: HumanDuration = "10s", env "CACHE_KEEPALIVE_TIMEOUT", flag "keepalive-timeout";
        /// PEM certificate chain: gRPC is served over TLS (with `tls_key_file`); re-read when it changes
        tls_cert_file: PathBuf = unset, env "CACHE_TLS_CERT_FILE", flag "tls-cert";
        /// PEM private key of `tls_cert_file`
        tls_key_file: PathBuf = unset, env "CACHE_TLS_KEY_FILE", flag "tls-key";
        /// PEM CA certificates that client certificates must chain to (mutual TLS)
        tls_client_ca_file: PathBuf = unset, env "CACHE_TLS_CLIENT_CA_FILE", flag "tls-client-ca";
        /// serve the Prometheus endpoint over TLS with `tls_cert_file` / `tls_key_file` (`on` / `off`)
        metrics_tls: Switch = "off", env "CACHE_METRICS_TLS", flag "metrics-tls";
        /// TOML file of tokens (name, sha256, tenant, scopes): every cache.v1 call then needs `authorization: Bearer <token>`; re-read on change and SIGHUP
        auth_tokens_file: PathBuf = unset, env "CACHE_AUTH_TOKENS_FILE", flag "auth-tokens-file";
        /// server reflection: `on`, `off`, or `auth` (only callers with a valid token)
        reflection: Reflection = "on", env "CACHE_REFLECTION", flag "reflection";
    }
    nested {
        /// Redis settings (the `[redis]` table).
        redis: RedisSettings => RedisConfig;
    }
    derived {
        /// TTL for every type when set (`CACHE_TTL_SECONDS`), else the per-type defaults.
        default_ttl_override: Option<Duration> = default_ttl_override;
        /// Memory-tier capacity in bytes (`max_size_mb` MiB).
        memory_capacity_bytes: u64 = memory_capacity_bytes;
        /// AUTO compression threshold in bytes: `compression_threshold_bytes`, else
        /// `compression_threshold_mb` MiB.
        compression_threshold_bytes: u64 = compression_threshold_bytes;
        /// The in-flight memory budget in bytes: `max_inflight_mb` MiB, else a quarter of the memory tier's
        /// capacity and at least four of the largest messages.
        max_inflight_bytes: u64 = max_inflight_bytes;
    }
}

settings! {
    /// Redis settings layer.
    layer RedisSettings;
    /// Effective Redis settings.
    config RedisConfig;
    table "redis";
    settings {
        /// Redis URL: `redis://`, `rediss://`, or `redis-sentinel://` / `rediss-sentinel://` with `?sentinelServiceName=` (wins over host/port/db/username/password)
        url: Secret = unset, env "REDIS_URL", flag "redis-url";
        /// Redis host
        host: String = "localhost", env "REDIS_HOST", flag "redis-host";
        /// Redis port
        port: u16 = "6379", env "REDIS_PORT", flag "redis-port";
        /// Redis database number
        db: u8 = "0", env "REDIS_DB", flag "redis-db";
        /// Redis ACL username
        username: String = unset, env "REDIS_USERNAME", flag "redis-username";
        /// Redis password (prefer the environment)
        password: Secret = unset, env "REDIS_PASSWORD", flag "redis-password";
        /// TLS with the host/port settings
        tls: bool = "false", env "REDIS_TLS", flag "redis-tls";
        /// PEM file of CA certificates to trust for TLS (else the system roots)
        tls_ca_file: PathBuf = unset, env "REDIS_TLS_CA_FILE", flag "redis-tls-ca-file";
        /// Redis connect budget (TCP + TLS + AUTH)
        connect_timeout: HumanDuration = "1s", env "REDIS_CONNECT_TIMEOUT", flag "redis-connect-timeout";
        /// per-command budget: past it the call falls back (hybrid) or fails (redis)
        command_timeout: HumanDuration = "250ms", env "REDIS_COMMAND_TIMEOUT", flag "redis-command-timeout";
        /// multiplexed Redis connections (1 to 64)
        pool_size: usize = "4", env "REDIS_POOL_SIZE", flag "redis-pool-size";
        /// longest wait between reconnection attempts
        reconnect_max_delay: HumanDuration = "500ms",
            env "REDIS_RECONNECT_MAX_DELAY", flag "redis-reconnect-max-delay";
        /// TTL cap of entries written to memory while Redis is down (hybrid)
        fallback_ttl: HumanDuration = "60s", env "CACHE_FALLBACK_TTL", flag "fallback-ttl";
        /// buckets (hash slots) the keyspace is spread over: 1 for one Redis, more to spread over a Cluster's masters; every replica of a keyspace must agree
        key_buckets: u32 = "1", env "REDIS_KEY_BUCKETS", flag "redis-key-buckets";
        /// replicas that must acknowledge an invalidation (`WAIT`) before it is answered OK; 0: the primary's
        wait_replicas: u32 = "0", env "REDIS_WAIT_REPLICAS", flag "redis-wait-replicas";
    }
}

fn default_ttl_override(s: &Settings) -> Result<Option<Duration>, ConfigError> {
    Ok(s.ttl_seconds().map(Duration::from_secs))
}

fn memory_capacity_bytes(s: &Settings) -> Result<u64, ConfigError> {
    Ok(s.max_size_mb().saturating_mul(1 << 20))
}

/// The largest gRPC message the server receives or sends, for a largest value of `max_value_bytes`.
pub fn max_message_bytes(max_value_bytes: u64) -> u64 {
    max_value_bytes + MESSAGE_OVERHEAD_BYTES
}

/// Bytes allowed in a gRPC message beyond the largest value (key, metadata, framing).
pub const MESSAGE_OVERHEAD_BYTES: u64 = 1 << 20;

fn max_inflight_bytes(s: &Settings) -> Result<u64, ConfigError> {
    Ok(match s.max_inflight_mb() {
        Some(mb) => mb.saturating_mul(1 << 20),
        None => {
            let capacity = s.max_size_mb().saturating_mul(1 << 20);
            (capacity / 4).max(4 * max_message_bytes(s.max_value_bytes()))
        }
    })
}

fn compression_threshold_bytes(s: &Settings) -> Result<u64, ConfigError> {
    match (
        s.compression_threshold_bytes(),
        s.compression_threshold_mb(),
    ) {
        (Some(bytes), _) => Ok(bytes),
        (None, mb) if mb.is_finite() && mb >= 0.0 => Ok((mb * 1024.0 * 1024.0) as u64),
        (None, mb) => Err(ConfigError::Invalid(format!(
            "compression threshold {mb} MiB must be a non-negative number"
        ))),
    }
}

impl Config {
    /// The TLS files of the gRPC port, when TLS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_client_ca_file.clone(),
            alpn: b"h2",
        })
    }

    /// The TLS files of the Prometheus endpoint (`metrics_tls`): the same certificate, no client
    /// certificates (scrapers authenticate the server), HTTP/1.1.
    pub fn metrics_tls_files(&self) -> Option<crate::tls::TlsFiles> {
        let files = self.tls_files().filter(|_| self.metrics_tls)?;
        Some(crate::tls::TlsFiles {
            client_ca: None,
            alpn: b"http/1.1",
            ..files
        })
    }
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

impl Settings {
    /// Parses a TOML settings file.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key or a value of the wrong type (the message names the key and line).
    pub fn from_toml(text: &str, path: PathBuf) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path,
            message: e.to_string(),
        })
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
        let config = s.resolve()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that span settings (the README lists them): the first rule broken, naming the
    /// settings, is the error.
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
        // A Set holds its value and its envelope: the largest must fit, or it could never be stored.
        let one_set = 2 * max_message_bytes(self.max_value_bytes);
        if self.max_inflight_bytes < one_set {
            return invalid(format!(
                "max_inflight_mb ({} MiB) must be at least 2 x (max_value_bytes + 1 MiB) = {} MiB, so the largest value can be stored and read",
                self.max_inflight_bytes >> 20,
                one_set.div_ceil(1 << 20)
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return invalid(
                    "tls_cert_file and tls_key_file go together: set both to serve TLS, or neither"
                        .into(),
                );
            }
            (None, None) if self.tls_client_ca_file.is_some() => {
                return invalid(
                    "tls_client_ca_file needs tls_cert_file and tls_key_file (mutual TLS is TLS)"
                        .into(),
                );
            }
            (None, None) if self.metrics_tls => {
                return invalid(
                    "metrics_tls needs tls_cert_file and tls_key_file (it serves the same certificate)"
                        .into(),
                );
            }
            _ => {}
        }
        if self.reflection == Reflection::Auth && self.auth_tokens_file.is_none() {
            return invalid(
                "reflection = auth needs auth_tokens_file (the tokens reflection would check)"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return invalid("keepalive_interval and keepalive_timeout must be positive".into());
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
        if self.redis.key_buckets == 0 || self.redis.key_buckets > 16384 {
            return invalid(format!(
                "redis key_buckets {} must be between 1 and 16384",
                self.redis.key_buckets
            ));
        }
        if self.redis.command_timeout.is_zero() || self.redis.connect_timeout.is_zero() {
            return invalid("redis timeouts must be positive".into());
        }
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            let schemes = [
                "redis://",
                "rediss://",
                "redis-sentinel://",
                "rediss-sentinel://",
            ];
            if !schemes.iter().any(|s| u.starts_with(s)) {
                return invalid(format!(
                    "redis url {} must start with redis://, rediss://, redis-sentinel:// or rediss-sentinel://",
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
    fn tls_and_budget_settings_that_cannot_work_are_refused() {
        let load = |pairs: &[(&str, &str)]| Config::load(Settings::default(), None, &env(pairs));
        let err = load(&[("CACHE_TLS_CERT_FILE", "/c.pem")]).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err = load(&[("CACHE_TLS_CLIENT_CA_FILE", "/ca.pem")]).unwrap_err();
        assert!(err.to_string().contains("mutual TLS is TLS"), "{err}");
        let err = load(&[("CACHE_MAX_INFLIGHT_MB", "10")]).unwrap_err();
        assert!(err.to_string().contains("max_inflight_mb"), "{err}");
        let c = load(&[("CACHE_MAX_SIZE_MB", "4096")]).unwrap();
        assert_eq!(c.max_inflight_bytes, 1 << 30, "a quarter of the tier");
        let c = load(&[]).unwrap();
        assert_eq!(
            c.max_inflight_bytes,
            4 * (65 << 20),
            "four of the largest messages"
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
    fn every_declared_default_parses_and_the_metrics_default_agrees() {
        let c = Config::default();
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN.parse().ok());
        assert_eq!(c.max_ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(c.redis.fallback_ttl, Duration::from_secs(60));
        assert_eq!(c.redis.pool_size, 4);
        assert_eq!(c.default_ttl_override, None);
        assert_eq!(c.redis.url, None);
    }

    #[test]
    fn metrics_listen_off_and_bad_addresses() {
        let c = Config::load(
            Settings::default(),
            None,
            &env(&[("CACHE_METRICS_LISTEN", "off")]),
        )
        .unwrap();
        assert_eq!(c.metrics_listen, None);
        let err = Config::load(
            Settings::default(),
            None,
            &env(&[("CACHE_METRICS_LISTEN", "nowhere")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CACHE_METRICS_LISTEN"), "{err}");
    }

    #[test]
    fn empty_optional_values_count_as_unset() {
        let flags = Settings {
            redis: RedisSettings {
                username: Some(String::new()),
                password: Some(Secret::new("")),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Config::load(flags, None, &env(&[("REDIS_URL", " ")])).unwrap();
        assert_eq!(
            (c.redis.username, c.redis.password, c.redis.url),
            (None, None, None)
        );
    }

    #[test]
    fn the_example_file_holds_every_key_and_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cache.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings = Settings::from_toml(&text, path).unwrap();
        Config::from_settings(settings).unwrap();
        for row in Settings::rows().into_iter().chain(RedisSettings::rows()) {
            let key = row.file_key.rsplit('.').next().unwrap().to_owned();
            let written = text
                .lines()
                .map(|l| l.trim_start_matches(['#', ' ']))
                .any(|l| l.starts_with(&format!("{key} = ")));
            assert!(written, "deploy/cache.example.toml lacks {}", row.file_key);
        }
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
