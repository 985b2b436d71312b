//! Wiring: builds the backend for the configured mode, serves `cache.v1.CacheService`, `grpc.health.v1.Health`
//! and reflection (v1 and v1alpha) on a listener, runs the background tasks, and shuts down in order:
//! health NOT_SERVING, stop accepting, drain in-flight calls within the grace period, stop tasks, close Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_proto::pb;
use cache_proto::pb::cache_service_server::CacheServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::auth::Auth;
use crate::backend::{Backend, Memory, MemoryOptions, Redis, Tiered};
use crate::config::{BackendMode, Config, Reflection, max_message_bytes};
use crate::error::SetupError;
use crate::keys::Keyspace;
use crate::metrics::Metrics;
use crate::service::CacheService;

/// How often the health service is re-evaluated from the backend's state.
pub const HEALTH_POLL: Duration = Duration::from_millis(100);

/// Builds the storage backend for the configured mode, for the process keyspace (no tokens file).
pub fn build_backend(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    build_backend_for(
        config,
        vec![Keyspace::new(&config.prefix, &config.namespace)],
    )
}

/// Builds the storage backend for the configured mode, keeping the bookkeeping of `keyspaces`.
fn build_backend_for(
    config: &Config,
    keyspaces: Vec<Keyspace>,
) -> anyhow::Result<Arc<dyn Backend>> {
    let memory = Memory::new(MemoryOptions {
        capacity_bytes: config.memory_capacity_bytes,
        max_item_bytes: max_message_bytes(config.max_value_bytes),
    });
    if config.backend == BackendMode::Memory {
        return Ok(Arc::new(memory));
    }
    let redis = Redis::connect(&config.redis, keyspaces)?;
    Ok(match config.backend {
        BackendMode::Redis => redis,
        _ => Arc::new(Tiered::new(redis, memory, config.redis.fallback_ttl)),
    })
}

/// Serves until `shutdown` resolves, then drains within `config.shutdown_grace`.
///
/// # Errors
/// Fails if the backend cannot be built or the server cannot serve on `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let auth = Arc::new(match &config.auth_tokens_file {
        Some(file) => {
            Auth::from_file(&config.prefix, &config.namespace, file.clone()).map_err(SetupError)?
        }
        None => Auth::open(Keyspace::new(&config.prefix, &config.namespace)),
    });
    let backend = build_backend_for(&config, auth.keyspaces())?;
    let metrics = Arc::new(Metrics::default());
    let connections = metrics.connections.clone();
    let service = CacheService::with_auth(
        config.clone(),
        backend.clone(),
        metrics.clone(),
        auth.clone(),
    );
    let budget = service.budget();
    let max_message = max_message_bytes(config.max_value_bytes) as usize;
    let cache_server = CacheServiceServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    if config.backend != BackendMode::Memory {
        backend.warm_up(config.redis.connect_timeout).await;
    }
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    spawn_background(&tasks, &cancel, &config, backend.clone(), health.clone());
    tasks.spawn(auth.clone().watch(backend.clone(), cancel.clone()));
    if let Some(addr) = config.metrics_listen {
        let metrics_tls = match config.metrics_tls_files() {
            Some(files) => Some(Arc::new(
                crate::tls::Tls::new(files).map_err(|e| SetupError(format!("metrics TLS: {e}")))?,
            )),
            None => None,
        };
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
                let (backend, mode) = (backend.clone(), config.backend.as_str());
                let budget = budget.clone();
                let auth = auth.clone();
                let render: crate::prometheus::Render = Arc::new(move || {
                    let inflight = crate::prometheus::Inflight {
                        in_use: budget.in_use(),
                        budget: budget.bytes(),
                    };
                    crate::prometheus::render(&metrics, mode, backend.stats(), inflight, &auth)
                });
                tasks.spawn(crate::prometheus::serve(
                    listener,
                    render,
                    metrics_tls,
                    cancel.clone(),
                ));
            }
            // Metrics are not a reason to refuse cache traffic: say so loudly and keep serving.
            Err(e) => {
                tracing::error!(%addr, error = %e, "metrics endpoint disabled: cannot listen (set --metrics-listen to another address or off)")
            }
        }
    }

    set_serving(&health, backend.is_serving()).await;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, mode = config.backend.as_str(), "serving cache.v1.CacheService");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    match crate::connections::raise_descriptor_limit() {
        Ok(limit) => tracing::debug!(limit, "open descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open descriptor limit"),
    }
    let limits = crate::connections::Limits {
        max_connections: config.max_connections,
        idle_timeout: Some(config.idle_timeout).filter(|t| !t.is_zero()),
    };
    let tls = match config.tls_files() {
        Some(files) => {
            let tls = crate::tls::Tls::new(files).map_err(|e| SetupError(format!("TLS: {e}")))?;
            tracing::info!(
                mutual = config.tls_client_ca_file.is_some(),
                "serving gRPC over TLS"
            );
            Some(Arc::new(tls))
        }
        None => None,
    };
    let incoming = crate::connections::incoming(listener, limits, connections.clone(), tls);
    let reflection = config.reflection != Reflection::Off;
    let serve = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(1024))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .trace_fn(crate::telemetry::grpc_span)
        .layer(crate::connections::CallsLayer)
        .add_service(health_service)
        .add_optional_service(reflection.then(|| {
            tonic::service::interceptor::InterceptedService::new(
                reflection_v1,
                reflection_check(auth.clone(), config.reflection),
            )
        }))
        .add_optional_service(reflection.then(|| {
            tonic::service::interceptor::InterceptedService::new(
                reflection_v1alpha,
                reflection_check(auth.clone(), config.reflection),
            )
        }))
        .add_service(cache_server)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(serve);

    tokio::select! {
        result = &mut serve => result?,
        () = shutdown => {
            tracing::info!("shutdown requested: health NOT_SERVING, draining in-flight calls");
            // Stop the background tasks first so nothing flips health back to SERVING during the drain.
            cancel.cancel();
            health.set_not_serving::<CacheServiceServer<CacheService>>().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period expired with calls in flight"),
            }
        }
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    backend.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The check reflection calls pass: none, or (`CACHE_REFLECTION=auth`) a valid token of any scope.
fn reflection_check(
    auth: Arc<Auth>,
    mode: Reflection,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        if mode == Reflection::Auth {
            let subject = request
                .extensions()
                .get::<crate::connections::ConnInfo>()
                .and_then(|c| c.peer_subject.as_deref());
            if let Err(e) = auth.authenticate(request.metadata(), subject) {
                return Err(e.into());
            }
        }
        Ok(request)
    }
}

async fn set_serving(health: &tonic_health::server::HealthReporter, serving: bool) {
    if serving {
        health
            .set_serving::<CacheServiceServer<CacheService>>()
            .await;
    } else {
        health
            .set_not_serving::<CacheServiceServer<CacheService>>()
            .await;
    }
}

fn spawn_background(
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    config: &Config,
    backend: Arc<dyn Backend>,
    health: tonic_health::server::HealthReporter,
) {
    let (sweep_every, refresh_every) = (config.sweep_interval, config.metrics_refresh_interval);
    let (b, c) = (backend.clone(), cancel.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let b = b.clone();
                    let _ = tokio::task::spawn_blocking(move || b.sweep_expired()).await;
                }
                () = c.cancelled() => break,
            }
        }
    });
    let c = cancel.clone();
    tasks.spawn(async move {
        // Health follows the backend within HEALTH_POLL; costly figures refresh every `refresh_every`.
        let mut tick = tokio::time::interval(HEALTH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_serving = None;
        let mut last_refresh: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let serving = backend.is_serving();
                    if last_serving != Some(serving) {
                        tracing::info!(serving, "cache.v1.CacheService health changed");
                        set_serving(&health, serving).await;
                        last_serving = Some(serving);
                    }
                    if last_refresh.is_none_or(|t| t.elapsed() >= refresh_every) {
                        backend.refresh_stats().await;
                        last_refresh = Some(tokio::time::Instant::now());
                    }
                }
                () = c.cancelled() => break,
            }
        }
    });
}
