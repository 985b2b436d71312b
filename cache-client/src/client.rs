//! [`CacheClient`]: the connections, the retry loop with its deadline, invalidation, metrics and health.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::builder::{ClientBuilder, Settings};
use crate::error::Error;
use crate::family::{ExportResults, Family};
use crate::pb;
use crate::pb::cache_service_client::CacheServiceClient;
use crate::pb::invalidate_request::Target;
use crate::retry::RetryBudget;
use crate::single_flight::SingleFlight;

/// The gRPC service name, as the health service knows it.
pub const SERVICE_NAME: &str = "cache.v1.CacheService";

/// The generated stub over one connection, with the client's metadata added to every call.
pub(crate) type Stub = CacheServiceClient<InterceptedService<Channel, Authorization>>;

/// A client of the cache service. Cheap to clone (clones share connections, the retry budget and the
/// single-flight map); every method takes `&self`.
///
/// Typed access goes through families: [`export_results`](Self::export_results),
/// [`metadata`](Self::metadata), [`object_info`](Self::object_info),
/// [`user_preferences`](Self::user_preferences) and [`system_config`](Self::system_config).
#[derive(Clone)]
pub struct CacheClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    budget: Option<RetryBudget>,
    flights: SingleFlight,
}

impl fmt::Debug for CacheClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheClient")
            .field("endpoints", &self.inner.settings.endpoints)
            .field("connections", &self.inner.channels.len())
            .field("request_timeout", &self.inner.settings.request_timeout)
            .field("retry", &self.inner.settings.retry)
            .finish_non_exhaustive()
    }
}

/// Adds `authorization` (when configured) to every call: the client side of the server's tokens
/// (`CACHE_AUTH_TOKENS_FILE`).
#[derive(Debug, Clone)]
pub(crate) struct Authorization(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The serving status reported by the server's `grpc.health.v1` service for `cache.v1.CacheService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The service can serve calls (its storage tier is reachable).
    Serving,
    /// The service cannot serve calls now (e.g. Redis unreachable in redis mode, or shutting down).
    NotServing,
    /// The server did not say.
    Unknown,
}

impl CacheClient {
    /// Starts configuring a client for `endpoint`, e.g. `http://127.0.0.1:50051` (`https://` for TLS).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_client::Error> {
    /// use std::time::Duration;
    /// use cache_client::CacheClient;
    ///
    /// let client = CacheClient::builder("http://127.0.0.1:50051")
    ///     .request_timeout(Duration::from_millis(200))
    ///     .connections(4)
    ///     .build()?; // lazy; `.connect().await?` to fail fast
    /// # Ok(()) }
    /// ```
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    pub(crate) fn from_parts(settings: Settings, channels: Vec<Channel>) -> Self {
        let budget = settings.retry.throttling.map(RetryBudget::new);
        Self {
            inner: Arc::new(Inner {
                settings,
                channels,
                next_channel: AtomicUsize::new(0),
                budget,
                flights: SingleFlight::default(),
            }),
        }
    }

    /// The export results family (`CACHE_TYPE_EXPORT_RESULT`), keyed by [`ExportKey`](crate::ExportKey);
    /// values of type `V`.
    pub fn export_results<V>(&self) -> ExportResults<V> {
        ExportResults::new(self.clone())
    }

    /// The metadata family (`CACHE_TYPE_METADATA`), keyed by object id; values of type `V`. Scope it with
    /// [`Family::user`].
    pub fn metadata<V>(&self) -> Family<V> {
        Family::new(self.clone(), pb::CacheType::Metadata)
    }

    /// The object info family (`CACHE_TYPE_OBJECT_INFO`), keyed by object id; values of type `V`.
    pub fn object_info<V>(&self) -> Family<V> {
        Family::new(self.clone(), pb::CacheType::ObjectInfo)
    }

    /// The user preferences of `user_id` (`CACHE_TYPE_USER_PREFERENCE`), keyed by preference name; values of
    /// type `V`.
    pub fn user_preferences<V>(&self, user_id: impl Into<String>) -> Family<V> {
        Family::new(self.clone(), pb::CacheType::UserPreference).user(user_id)
    }

    /// The system configuration family (`CACHE_TYPE_SYSTEM_CONFIG`), keyed by configuration name; values of
    /// type `V`.
    pub fn system_config<V>(&self) -> Family<V> {
        Family::new(self.clone(), pb::CacheType::SystemConfig)
    }

    /// Removes an object's metadata, object info and every export result (all formats, options and
    /// scopes). Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`]; `Unavailable` means the invalidation was not applied.
    pub async fn invalidate_object(&self, object_id: impl Into<String>) -> Result<u64, Error> {
        self.invalidate_matching(pb::Selector {
            object_id: object_id.into(),
            ..Default::default()
        })
        .await
    }

    /// Removes every entry scoped to `user_id`. Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_user(&self, user_id: impl Into<String>) -> Result<u64, Error> {
        self.invalidate_matching(pb::Selector {
            user_id: user_id.into(),
            ..Default::default()
        })
        .await
    }

    /// Removes every entry scoped to `project_id`. Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_project(&self, project_id: impl Into<String>) -> Result<u64, Error> {
        self.invalidate_matching(pb::Selector {
            project_id: project_id.into(),
            ..Default::default()
        })
        .await
    }

    /// Removes every entry of one type. Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_type(&self, cache_type: pb::CacheType) -> Result<u64, Error> {
        self.invalidate_matching(pb::Selector {
            r#type: cache_type as i32,
            ..Default::default()
        })
        .await
    }

    /// Removes every entry matching all the fields set in `selector` (at least one). Returns how many
    /// entries were removed.
    ///
    /// ```no_run
    /// # async fn run(client: cache_client::CacheClient) -> Result<(), cache_client::Error> {
    /// use cache_client::pb::{CacheType, Selector};
    ///
    /// // Every export of object 42 made for project p-7.
    /// let removed = client
    ///     .invalidate_matching(Selector {
    ///         r#type: CacheType::ExportResult as i32,
    ///         object_id: "42".into(),
    ///         project_id: "p-7".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`Error`]; an empty selector is `InvalidArgument`.
    pub async fn invalidate_matching(&self, selector: pb::Selector) -> Result<u64, Error> {
        self.invalidate(Target::Selector(selector)).await
    }

    /// Removes every entry whose storage key (with or without the `<prefix>:<namespace>:` part) matches a
    /// Redis-style glob, e.g. `metadata:42*`. An operators' tool: the server scans. Returns how many entries
    /// were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_pattern(&self, pattern: impl Into<String>) -> Result<u64, Error> {
        self.invalidate(Target::Pattern(pattern.into())).await
    }

    /// Removes everything this service stored in its namespace. Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_all(&self) -> Result<u64, Error> {
        self.invalidate(Target::All(true)).await
    }

    pub(crate) async fn invalidate(&self, target: Target) -> Result<u64, Error> {
        let request = pb::InvalidateRequest {
            target: Some(target),
        };
        let response = self
            .call("Invalidate", request, |mut stub, request| async move {
                stub.invalidate(request).await
            })
            .await?;
        Ok(response.invalidated)
    }

    /// The server's metrics: hit/miss counters, sizes, per-type rows, tier state and errors by code.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn metrics(&self) -> Result<pb::MetricsResponse, Error> {
        self.call(
            "Metrics",
            pb::MetricsRequest {},
            |mut stub, request| async move { stub.metrics(request).await },
        )
        .await
    }

    /// Asks the server's health service whether `cache.v1.CacheService` is serving (one attempt, on the
    /// next connection, within the request timeout; never retried, as befits a probe).
    ///
    /// # Errors
    /// See [`Error`]: `Unavailable` when the server cannot be reached.
    pub async fn health(&self) -> Result<Health, Error> {
        let timeout = self.inner.settings.request_timeout;
        let mut health = HealthClient::with_interceptor(
            self.next_channel(),
            Authorization(self.inner.settings.authorization.clone()),
        );
        let mut request = Request::new(tonic_health::pb::HealthCheckRequest {
            service: SERVICE_NAME.to_owned(),
        });
        request.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, health.check(request))
            .await
            .map_err(|_| Error::deadline("Health/Check", timeout))?
            .map_err(Error::from)?;
        Ok(
            match ServingStatus::try_from(response.into_inner().status) {
                Ok(ServingStatus::Serving) => Health::Serving,
                Ok(ServingStatus::NotServing) => Health::NotServing,
                _ => Health::Unknown,
            },
        )
    }

    /// The deadline of every call (the builder's request timeout).
    pub fn request_timeout(&self) -> Duration {
        self.inner.settings.request_timeout
    }

    pub(crate) fn flights(&self) -> &SingleFlight {
        &self.inner.flights
    }

    #[cfg(test)]
    pub(crate) fn connection_count(&self) -> usize {
        self.inner.channels.len()
    }

    fn next_channel(&self) -> Channel {
        let channels = &self.inner.channels;
        let i = self.inner.next_channel.fetch_add(1, Ordering::Relaxed) % channels.len();
        channels[i].clone()
    }

    fn stub(&self) -> Stub {
        let settings = &self.inner.settings;
        CacheServiceClient::with_interceptor(
            self.next_channel(),
            Authorization(settings.authorization.clone()),
        )
        .max_decoding_message_size(settings.max_message_size)
        .max_encoding_message_size(settings.max_message_size)
    }

    /// Makes one call: attempts on successive connections, each with the time left as its deadline, retrying
    /// `UNAVAILABLE` (gRPC A6) after a jittered backoff while attempts, budget and deadline allow.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        message: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Stub, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let settings = &self.inner.settings;
        let budget = self.inner.budget.as_ref();
        let timeout = settings.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::deadline(rpc, timeout));
            }
            let mut request = Request::new(message.clone());
            request.set_timeout(remaining);
            let result = match tokio::time::timeout(remaining, send(self.stub(), request)).await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::deadline(rpc, timeout)),
            };
            let err = match result {
                Ok(response) => {
                    if let Some(budget) = budget {
                        budget.on_success();
                    }
                    return Ok(response.into_inner());
                }
                Err(err @ Error::Unavailable(_)) => err,
                // Not retryable (A6): the server processed the call, or the deadline is spent.
                Err(err) => return Err(err),
            };
            if let Some(budget) = budget {
                budget.on_failure();
            }
            if attempt >= settings.retry.max_attempts {
                return Err(err);
            }
            if budget.is_some_and(|b| !b.allows_retry()) {
                tracing::debug!(rpc, attempt, error = %err, "retry budget exhausted; not retrying");
                return Err(err);
            }
            let delay = settings.retry.backoff(attempt);
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            tracing::debug!(rpc, attempt, ?delay, error = %err, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}
