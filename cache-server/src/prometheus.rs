//! The Prometheus scrape: the metrics encoded by `prometheus_client` in the Prometheus text format (0.0.4) from
//! the counters the Metrics RPC reads, and the `GET /metrics` endpoint on its own port.
//!
//! The endpoint is a small hyper service because `prometheus_client` encodes but serves nothing. Label values
//! are bounded: RPC names, code names, the five types and the mode, never a key, user or project.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendStats;
use crate::error::code_name;
use crate::keys::CacheType;
use crate::metrics::{CODES, Histogram, Metrics, Rpc, TypeCounters, resident_bytes};

/// The `Content-Type` of the scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders the current metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Encodes every metric in the Prometheus text format (version 0.0.4).
pub fn render(
    metrics: &Arc<Metrics>,
    mode: &'static str,
    stats: BackendStats,
    inflight: Inflight,
    auth: &crate::auth::Auth,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        metrics: metrics.clone(),
        mode,
        stats,
        inflight,
        refused: [
            auth.unauthenticated.load(Relaxed),
            auth.denied.load(Relaxed),
            auth.reload_failures.load(Relaxed),
        ],
    }));
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let counts = self.bucket_counts();
        let buckets: Vec<(f64, u64)> = self
            .bounds()
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What one scrape encodes: the counters, and the backend's figures taken for it.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    mode: &'static str,
    stats: BackendStats,
    inflight: Inflight,
    /// Calls refused as unauthenticated, calls refused for their scope, failed reloads of the tokens file.
    refused: [u64; 3],
}

/// The in-flight budget at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inflight {
    /// Bytes held by calls now.
    pub in_use: u64,
    /// The budget.
    pub budget: u64,
}

/// Picks one counter of a type's counters.
type CounterOf = fn(&TypeCounters) -> &AtomicU64;

impl Collector for Scrape {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let m = &*self.metrics;
        let s = &self.stats;
        // Names are given without `_total`: the encoder appends it to counters.
        ConstGauge::new(1i64).encode(
            out.encode_descriptor(
                "cache_info",
                "Constant 1, labelled with the configured backend mode.",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&[("mode", self.mode)])?,
        )?;
        ConstGauge::new(m.uptime().as_secs_f64()).encode(out.encode_descriptor(
            "cache_uptime_seconds",
            "Seconds since the server started.",
            None,
            MetricType::Gauge,
        )?)?;
        let c = &*m.connections;
        let gauges: [(&str, &str, u64); 3] = [
            (
                "cache_connections_open",
                "Client connections open now.",
                c.open.load(Relaxed),
            ),
            (
                "cache_inflight_bytes",
                "Bytes of the in-flight budget held by calls now (CACHE_MAX_INFLIGHT_MB).",
                self.inflight.in_use,
            ),
            (
                "cache_inflight_budget_bytes",
                "The in-flight budget (CACHE_MAX_INFLIGHT_MB), in bytes.",
                self.inflight.budget,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value as i64).encode(out.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let counters: [(&str, &str, u64); 7] = [
            (
                "cache_auth_unauthenticated",
                "Calls refused as UNAUTHENTICATED (no or unknown token; CACHE_AUTH_TOKENS_FILE).",
                self.refused[0],
            ),
            (
                "cache_auth_permission_denied",
                "Calls refused as PERMISSION_DENIED (outside the token's scopes).",
                self.refused[1],
            ),
            (
                "cache_auth_reload_failures",
                "Changes of the tokens file that did not load (the tokens in use stayed).",
                self.refused[2],
            ),
            (
                "cache_connections_accepted",
                "Client connections accepted since start.",
                c.accepted.load(Relaxed),
            ),
            (
                "cache_connections_closed_idle",
                "Client connections closed after CACHE_IDLE_TIMEOUT without a call.",
                c.closed_idle.load(Relaxed),
            ),
            (
                "cache_tls_handshake_failures",
                "TLS handshakes that failed or timed out.",
                c.handshake_failures.load(Relaxed),
            ),
            (
                "cache_accept_errors",
                "Failed accepts (out of descriptors: accepting pauses 100 ms after each).",
                c.accept_errors.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(out.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }

        let mut family = out.encode_descriptor(
            "cache_request_duration_seconds",
            "Server-side handling time of each RPC.",
            None,
            MetricType::Histogram,
        )?;
        for rpc in Rpc::ALL {
            m.rpc(rpc)
                .latency
                .encode(family.encode_family(&[("rpc", rpc.name())])?)?;
        }
        let mut family = out.encode_descriptor(
            "cache_errors",
            "Errors returned to callers, by RPC and gRPC code.",
            None,
            MetricType::Counter,
        )?;
        for rpc in Rpc::ALL {
            for code in 0..CODES {
                let n = m.rpc(rpc).errors[code].load(Relaxed);
                if n > 0 {
                    let name = code_name(tonic::Code::from_i32(code as i32));
                    ConstCounter::new(n)
                        .encode(family.encode_family(&[("rpc", rpc.name()), ("code", name)])?)?;
                }
            }
        }

        let per_type: [(&str, &str, CounterOf); 5] = [
            ("cache_hits", "Gets that found a current entry.", |c| {
                &c.hits
            }),
            (
                "cache_misses",
                "Gets that found nothing (or another model hash, or an undecodable value).",
                |c| &c.misses,
            ),
            ("cache_sets", "Values stored.", |c| &c.sets),
            (
                "cache_invalidations",
                "Entries removed by Invalidate.",
                |c| &c.invalidations,
            ),
            (
                "cache_set_bytes",
                "Logical bytes of the values stored.",
                |c| &c.bytes_set,
            ),
        ];
        for (name, help, pick) in per_type {
            let mut family = out.encode_descriptor(name, help, None, MetricType::Counter)?;
            for t in CacheType::ALL {
                ConstCounter::new(pick(m.of(t)).load(Relaxed))
                    .encode(family.encode_family(&[("type", t.label())])?)?;
            }
        }
        let mut family = out.encode_descriptor(
            "cache_value_size_bytes",
            "Logical sizes of the values stored.",
            None,
            MetricType::Histogram,
        )?;
        for t in CacheType::ALL {
            m.of(t)
                .value_size
                .encode(family.encode_family(&[("type", t.label())])?)?;
        }

        let logical = m.logical_bytes.load(Relaxed);
        let stored = m.stored_bytes.load(Relaxed);
        let counters: [(&str, &str, f64); 14] = [
            (
                "cache_logical_bytes",
                "Logical bytes of all values stored.",
                logical as f64,
            ),
            (
                "cache_stored_bytes",
                "Stored (possibly compressed) bytes of all values stored.",
                stored as f64,
            ),
            (
                "cache_compression_saved_bytes",
                "Bytes saved by compression.",
                logical.saturating_sub(stored) as f64,
            ),
            (
                "cache_corrupt_entries",
                "Stored values that failed to decode (served as misses).",
                m.corrupt.load(Relaxed) as f64,
            ),
            (
                "cache_invalidated_entries",
                "Entries removed by Invalidate, all targets.",
                m.invalidated.load(Relaxed) as f64,
            ),
            (
                "cache_memory_rejected",
                "Values the memory tier refused as too large.",
                s.memory_rejected as f64,
            ),
            (
                "cache_fallback_served",
                "Calls answered by the memory fallback during outages.",
                s.fallback_served as f64,
            ),
            (
                "cache_redis_down_seconds",
                "Time Redis has been unreachable (time in fallback in hybrid mode).",
                s.redis_down_seconds,
            ),
            (
                "cache_invalidations_replayed",
                "Invalidations applied again after a failover whose new primary may have missed them.",
                s.invalidations_replayed as f64,
            ),
            (
                "cache_redis_invalidated_reads",
                "Reads that found an entry whose generation had ended (invalidated or evicted bookkeeping): misses.",
                s.redis_invalidated_reads as f64,
            ),
            (
                "cache_redis_repaired_keys",
                "Keys of the wrong type under this service's prefix, removed.",
                s.redis_repaired_keys as f64,
            ),
            (
                "cache_redis_late_sets",
                "Sets Redis voided as run after their deadline whose answer still came in time: Redis' clock is ahead.",
                s.redis_late_sets as f64,
            ),
            (
                "cache_redis_foreign_members",
                "Index members naming keys outside this keyspace, left alone.",
                s.redis_foreign_members as f64,
            ),
            (
                "cache_redis_history_flushes",
                "Times every entry became a miss because Redis' data could not be shown to continue.",
                s.redis_history_flushes as f64,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(out.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let gauges: [(&str, &str, f64); 8] = [
            (
                "cache_memory_entries",
                "Entries held by the memory tier.",
                s.memory_entries as f64,
            ),
            (
                "cache_memory_bytes",
                "Bytes held by the memory tier.",
                s.memory_bytes as f64,
            ),
            (
                "cache_memory_capacity_bytes",
                "Capacity of the memory tier.",
                s.memory_capacity as f64,
            ),
            (
                "cache_redis_connected",
                "1 when Redis is verified and serving.",
                f64::from(u8::from(s.redis_connected)),
            ),
            (
                "cache_redis_memory_bytes",
                "Redis used_memory (INFO memory), refreshed in the background.",
                s.redis_memory_bytes as f64,
            ),
            (
                "cache_redis_entries",
                "Entries of this service in Redis (index estimate), refreshed in the background.",
                s.redis_entries.unwrap_or(0) as f64,
            ),
            (
                "cache_fallback_active",
                "1 while the memory fallback serves because Redis is unreachable (hybrid).",
                f64::from(u8::from(s.fallback_active)),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory of the server process.",
                resident_bytes() as f64,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(out.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        // 1 for the reason Redis cannot be used, when it cannot (a degraded server an operator must fix).
        let mut family = out.encode_descriptor(
            "cache_redis_unusable",
            "1 while Redis answers but cannot serve this service, by reason (not_primary, cluster_node, auth_refused).",
            None,
            MetricType::Gauge,
        )?;
        for reason in ["not_primary", "cluster_node", "auth_refused"] {
            ConstGauge::new(f64::from(u8::from(s.redis_unusable == Some(reason))))
                .encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// Serves `/metrics` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    tls: Option<Arc<crate::tls::Tls>>,
    cancel: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint failed to accept a connection");
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let render = render.clone();
        let cancel = cancel.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&req, &render)) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = cancel.cancelled() => {}
                    }
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    let handshake = tokio::time::timeout(
                        crate::connections::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    );
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = cancel.cancelled() => {}
                    }
                }
            }
        });
    }
}

fn answer(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, CONTENT_TYPE, render()),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "cache-server: metrics at /metrics\n".to_owned(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_cumulative_buckets_and_every_family_once() {
        let m = Arc::new(Metrics::default());
        m.record_latency(Rpc::Get, Duration::from_micros(300));
        m.record_latency(Rpc::Get, Duration::from_millis(3));
        m.record_error(Rpc::Set, tonic::Code::InvalidArgument);
        m.record_set(CacheType::Metadata, 3000, 3000);
        let auth = crate::auth::Auth::open(crate::keys::Keyspace::new("cache", "default"));
        let text = render(
            &m,
            "memory",
            BackendStats::default(),
            Inflight::default(),
            &auth,
        );
        for line in [
            "cache_request_duration_seconds_bucket{rpc=\"Get\",le=\"0.0005\"} 1",
            "cache_request_duration_seconds_bucket{rpc=\"Get\",le=\"+Inf\"} 2",
            "cache_request_duration_seconds_count{rpc=\"Get\"} 2",
            "cache_errors_total{rpc=\"Set\",code=\"INVALID_ARGUMENT\"} 1",
            "cache_info{mode=\"memory\"} 1",
            "cache_sets_total{type=\"metadata\"} 1",
            "cache_value_size_bytes_bucket{type=\"metadata\",le=\"4096\"} 1",
            "# TYPE cache_hits_total counter",
            "# HELP cache_hits_total Gets that found a current entry.",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), types.len(), "{text}");
    }
}
