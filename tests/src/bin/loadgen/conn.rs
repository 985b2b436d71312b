//! Connections to the server: the endpoint, clients, waiting for SERVING, and the server's own metrics.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use cache_server::code_name;

/// Largest gRPC message sent or accepted (values up to 64 MiB plus envelope metadata).
pub(crate) const MAX_MESSAGE_BYTES: usize = 128 << 20;
/// The health service name the cache server reports for its main service.
pub(crate) const SERVICE_NAME: &str = "cache.v1.CacheService";

/// The endpoint of `--addr` (host:port or a URI), with the per-call deadline `timeout`.
pub(crate) fn endpoint(addr: &str, timeout: Duration) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("invalid address {addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        // Windows large enough that multi-MiB values are not flow-control bound on loopback.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20))
}

/// A client on a new connection (one HTTP/2 connection per client), message limits raised for large values.
pub(crate) async fn connect(endpoint: &Endpoint) -> anyhow::Result<CacheServiceClient<Channel>> {
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("failed to connect to {}", endpoint.uri()))?;
    Ok(CacheServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Polls health until SERVING; returns the wall-clock time it was first seen.
pub(crate) async fn wait_serving(
    endpoint: &Endpoint,
    within: Duration,
) -> anyhow::Result<SystemTime> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let started = Instant::now();
    let endpoint = endpoint.clone().connect_timeout(Duration::from_millis(100));
    let mut last_error = String::from("never connected");
    while started.elapsed() < within {
        match endpoint.connect().await {
            Ok(channel) => {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                while started.elapsed() < within {
                    let check = health.check(HealthCheckRequest {
                        service: SERVICE_NAME.to_owned(),
                    });
                    match check.await {
                        Ok(r) if r.get_ref().status() == ServingStatus::Serving => {
                            return Ok(SystemTime::now());
                        }
                        Ok(r) => last_error = format!("health says {:?}", r.get_ref().status()),
                        Err(s) => {
                            last_error = format!("health check failed: {s}");
                            if s.code() == tonic::Code::Unavailable {
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Err(e) => last_error = format!("connect failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("{SERVICE_NAME} was not SERVING within {within:?}: {last_error}")
}

/// The server's Metrics reply as the report shows it, or the error that fetching it got.
pub(crate) async fn server_metrics(client: &mut CacheServiceClient<Channel>) -> Value {
    match client.metrics(pb::MetricsRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            let m = r.metrics.unwrap_or_default();
            json!({
                "mode": r.mode,
                "hit_rate": m.hit_rate,
                "total_entries": m.total_entries,
                "memory_usage_mb": m.memory_usage_mb,
                "memory_cache_size": m.memory_cache_size,
                "memory_cache_entries": m.memory_cache_entries,
                "memory_cache_capacity": m.memory_cache_capacity,
                "memory_rejected": r.memory_rejected,
                "redis_memory_usage": m.redis_memory_usage,
                "compression_ratio": m.compression_ratio,
                "errors_by_code": r.errors_by_code,
            })
        }
        Err(s) => json!({ "error": code_name(s.code()), "message": s.message() }),
    }
}
