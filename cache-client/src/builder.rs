//! [`ClientBuilder`]: endpoints, connections, deadlines, retries, authentication, TLS and message limits.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::client::CacheClient;
use crate::error::Error;
use crate::retry::RetryPolicy;

/// Default budget for establishing one connection (TCP + HTTP/2, and TLS when configured).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default deadline of one call, retries included (always sent as `grpc-timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Default largest message sent or accepted: the server's default largest value (64 MiB) plus 1 MiB for the
/// key, metadata and framing, as the server's own limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65 << 20;
/// Default number of HTTP/2 connections per endpoint.
pub const DEFAULT_CONNECTIONS: usize = 1;
/// Most connections per endpoint.
pub const MAX_CONNECTIONS: usize = 64;

/// HTTP/2 keepalive: a dead connection (peer gone without a reset) is noticed within interval + timeout,
/// matching the server's own keepalive.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures and creates a [`CacheClient`]. Obtained from [`CacheClient::builder`].
///
/// Setters validate nothing: [`build`](Self::build) and [`connect`](Self::connect) do.
#[must_use = "a builder does nothing until build() or connect()"]
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    bearer_token: Option<String>,
    tls: Option<ClientTlsConfig>,
    max_message_size: usize,
    connections: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls.is_some())
            .field("max_message_size", &self.max_message_size)
            .field("connections", &self.connections)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            bearer_token: None,
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connections: DEFAULT_CONNECTIONS,
        }
    }

    /// Adds more endpoints (replicas of the service) to the one given to [`CacheClient::builder`]. Calls go
    /// round-robin over every connection of every endpoint, and a retry goes to the next connection.
    ///
    /// ```
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("http://cache-a:50051")
    ///     .endpoints(["http://cache-b:50051", "http://cache-c:50051"]);
    /// ```
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Budget for establishing one connection. Default [`DEFAULT_CONNECT_TIMEOUT`] (1 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("http://127.0.0.1:50051").connect_timeout(Duration::from_millis(500));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of every call, retries and backoff included; sent to the server as `grpc-timeout` (the time
    /// left, on each attempt). Default [`DEFAULT_REQUEST_TIMEOUT`] (1 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("http://127.0.0.1:50051").request_timeout(Duration::from_millis(200));
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How calls that fail with `UNAVAILABLE` are retried. Default [`RetryPolicy::default`] (3 attempts,
    /// jittered exponential backoff, retry budget of 10 tokens with ratio 0.1).
    ///
    /// ```
    /// # use cache_client::{CacheClient, RetryPolicy};
    /// let builder = CacheClient::builder("http://127.0.0.1:50051")
    ///     .retry(RetryPolicy { max_attempts: 5, ..RetryPolicy::default() });
    /// let no_retries = CacheClient::builder("http://127.0.0.1:50051").retry(RetryPolicy::disabled());
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sends `authorization: Bearer <token>` with every call. Default: no token.
    ///
    /// ```
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("https://cache.internal:50051").bearer_token("s3cret");
    /// ```
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Connects with TLS: the CA to trust, the server name to verify and, for mutual TLS, the client's
    /// identity. Default: plaintext for `http://` endpoints; `https://` endpoints without this setting trust
    /// the system roots.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cache_client::CacheClient;
    /// use cache_client::tls::{Certificate, ClientTlsConfig, Identity};
    ///
    /// let ca = std::fs::read("ca.pem")?;
    /// let (cert, key) = (std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// let builder = CacheClient::builder("https://cache.internal:50051").tls(
    ///     ClientTlsConfig::new()
    ///         .ca_certificate(Certificate::from_pem(ca))
    ///         .identity(Identity::from_pem(cert, key)),
    /// );
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, config: ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Largest message sent or accepted, in bytes. Match it to the server's largest value plus 1 MiB.
    /// Default [`DEFAULT_MAX_MESSAGE_SIZE`] (65 MiB).
    ///
    /// ```
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("http://127.0.0.1:50051").max_message_size(17 << 20);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// HTTP/2 connections per endpoint (1 to [`MAX_CONNECTIONS`]), used round-robin. One connection caps
    /// throughput (one socket, one flow-control window); several spread calls over more of both.
    /// Default [`DEFAULT_CONNECTIONS`] (1).
    ///
    /// ```
    /// # use cache_client::CacheClient;
    /// let builder = CacheClient::builder("http://127.0.0.1:50051").connections(4);
    /// ```
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Creates the client without connecting: connections are made on first use (and remade after a
    /// failure), so this succeeds while the server is down.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a setting out of range, [`Error::InvalidEndpoint`] for an endpoint that is
    /// not a URI or whose TLS settings cannot be applied.
    ///
    /// # Panics
    /// Outside a Tokio runtime (each connection spawns a task).
    pub fn build(self) -> Result<CacheClient, Error> {
        let (settings, endpoints) = self.validate()?;
        let channels = endpoints
            .iter()
            .flat_map(|(_, endpoint)| (0..self.connections).map(|_| endpoint.connect_lazy()))
            .collect();
        Ok(CacheClient::from_parts(settings, channels))
    }

    /// Creates the client and connects every connection now, to fail fast on a wrong address.
    ///
    /// # Errors
    /// As [`build`](Self::build), and [`Error::Connect`] if an endpoint cannot be reached within the connect
    /// timeout.
    pub async fn connect(self) -> Result<CacheClient, Error> {
        let (settings, endpoints) = self.validate()?;
        let mut channels = Vec::with_capacity(endpoints.len() * self.connections);
        for (name, endpoint) in &endpoints {
            for _ in 0..self.connections {
                let channel = endpoint.connect().await.map_err(|source| Error::Connect {
                    endpoint: name.clone(),
                    source,
                })?;
                channels.push(channel);
            }
        }
        Ok(CacheClient::from_parts(settings, channels))
    }

    fn validate(&self) -> Result<(Settings, Vec<(String, Endpoint)>), Error> {
        let invalid = |setting, reason: &str| Error::InvalidConfig {
            setting,
            reason: reason.to_owned(),
        };
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be positive"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be positive"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(invalid("connections", "must be between 1 and 64"));
        }
        if self.max_message_size == 0 {
            return Err(invalid("max_message_size", "must be positive"));
        }
        self.retry.validate()?;
        let authorization = match &self.bearer_token {
            None => None,
            Some(token) => {
                let mut value: AsciiMetadataValue =
                    MetadataValue::try_from(format!("Bearer {token}"))
                        .map_err(|_| invalid("bearer_token", "must be printable ASCII"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let endpoints = self
            .endpoints
            .iter()
            .map(|name| {
                self.endpoint(name)
                    .map(|e| (name.clone(), e))
                    .map_err(|source| Error::InvalidEndpoint {
                        endpoint: name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = Settings {
            endpoints: self.endpoints.clone(),
            request_timeout: self.request_timeout,
            retry: self.retry.clone(),
            authorization,
            max_message_size: self.max_message_size,
        };
        Ok((settings, endpoints))
    }

    fn endpoint(&self, name: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(name.to_owned())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }
}

/// The validated settings a client runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) endpoints: Vec<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) authorization: Option<AsciiMetadataValue>,
    pub(crate) max_message_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheClient;

    #[test]
    fn validation_names_the_bad_setting() {
        let setting_of = |builder: ClientBuilder| match builder.validate() {
            Err(Error::InvalidConfig { setting, .. }) => setting,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let base = || CacheClient::builder("http://127.0.0.1:50051");
        assert_eq!(
            setting_of(base().request_timeout(Duration::ZERO)),
            "request_timeout"
        );
        assert_eq!(setting_of(base().connections(0)), "connections");
        assert_eq!(setting_of(base().connections(65)), "connections");
        assert_eq!(
            setting_of(base().bearer_token("bad\ntoken")),
            "bearer_token"
        );
        assert_eq!(
            setting_of(base().retry(RetryPolicy {
                max_attempts: 6,
                ..RetryPolicy::default()
            })),
            "retry.max_attempts"
        );
        assert!(matches!(
            CacheClient::builder("not a uri").validate(),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let builder = CacheClient::builder("http://127.0.0.1:50051").bearer_token("s3cret");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let (settings, _) = builder.validate().unwrap();
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn build_is_lazy_and_makes_every_connection() {
        let client = CacheClient::builder("http://127.0.0.1:1")
            .endpoints(["http://127.0.0.1:2"])
            .connections(3)
            .build()
            .expect("no connection is made");
        assert_eq!(client.connection_count(), 6);
    }
}
