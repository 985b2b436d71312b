//! Request metrics kept on the hot path — relaxed atomics only: no lock and no allocation per request — and
//! their Prometheus text rendering. The Metrics RPC and the `/metrics` scrape read the same counters, so they
//! always agree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::backend::BackendStats;
use crate::keys::CacheType;

/// The RPCs of `cache.v1.CacheService`, for per-RPC latency and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `Get`.
    Get,
    /// `Set`.
    Set,
    /// `Invalidate`.
    Invalidate,
    /// `Metrics`.
    Metrics,
    /// `GetMany`.
    GetMany,
    /// `SetMany`.
    SetMany,
}

impl Rpc {
    /// Every RPC, in index order.
    pub const ALL: [Rpc; 6] = [
        Rpc::Get,
        Rpc::Set,
        Rpc::Invalidate,
        Rpc::Metrics,
        Rpc::GetMany,
        Rpc::SetMany,
    ];

    /// The method name, used as the `rpc` label.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Get => "Get",
            Rpc::Set => "Set",
            Rpc::Invalidate => "Invalidate",
            Rpc::Metrics => "Metrics",
            Rpc::GetMany => "GetMany",
            Rpc::SetMany => "SetMany",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BOUNDS_SECONDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];
/// Upper bounds (bytes) of the value-size histogram buckets.
pub const SIZE_BOUNDS_BYTES: [f64; 12] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 8388608.0, 16777216.0,
    33554432.0, 67108864.0,
];

/// A fixed-bucket histogram of atomics (Prometheus semantics: cumulative on export).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
    /// Observations are stored as integers of `1 / scale` units (e.g. microseconds for seconds).
    scale: f64,
}

impl Histogram {
    /// A histogram over `bounds`, storing sums in units of `1 / scale`.
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one observation (in the histogram's unit: seconds or bytes).
    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add((value * self.scale) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Sum of observations, in the histogram's unit.
    pub fn sum(&self) -> f64 {
        self.sum.load(Relaxed) as f64 / self.scale
    }

    /// Estimates the `q` quantile (0..=1) by linear interpolation inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let upper = self.bounds.get(i).copied().unwrap_or(lower * 2.0);
                return lower + (upper - lower) * ((rank - seen as f64) / c as f64);
            }
            seen += c;
        }
        self.bounds[self.bounds.len() - 1]
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{}le=\"{le}\"}} {cumulative}",
                if labels.is_empty() { "" } else { "," }
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Counters for one cache type.
#[derive(Debug)]
pub struct TypeCounters {
    /// Gets that found a current entry.
    pub hits: AtomicU64,
    /// Gets that found nothing.
    pub misses: AtomicU64,
    /// Values stored.
    pub sets: AtomicU64,
    /// Entries removed by invalidations.
    pub invalidations: AtomicU64,
    /// Logical bytes stored.
    pub bytes_set: AtomicU64,
    /// Sizes of stored values.
    pub value_size: Histogram,
}

impl Default for TypeCounters {
    fn default() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            sets: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            bytes_set: AtomicU64::new(0),
            value_size: Histogram::new(&SIZE_BOUNDS_BYTES, 1.0),
        }
    }
}

/// Picks one counter of a type's counters.
type CounterOf = fn(&TypeCounters) -> &AtomicU64;

/// Number of gRPC status codes (0..=16).
pub const CODES: usize = 17;

/// Latency and errors of one RPC.
#[derive(Debug)]
pub struct RpcCounters {
    /// Handling time, in seconds.
    pub latency: Histogram,
    /// Errors returned, by gRPC code.
    pub errors: [AtomicU64; CODES],
}

impl Default for RpcCounters {
    fn default() -> Self {
        Self {
            latency: Histogram::new(&LATENCY_BOUNDS_SECONDS, 1e6),
            errors: Default::default(),
        }
    }
}

/// All counters of the service.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Per-type counters, indexed by [`CacheType::index`].
    pub by_type: [TypeCounters; 5],
    /// Per-RPC counters, indexed like [`Rpc::ALL`].
    pub by_rpc: [RpcCounters; 6],
    /// Logical bytes of all stored values.
    pub logical_bytes: AtomicU64,
    /// Stored (compressed) bytes of all stored values.
    pub stored_bytes: AtomicU64,
    /// Stored values that failed to decode.
    pub corrupt: AtomicU64,
    /// Entries removed by Invalidate (all kinds).
    pub invalidated: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            by_type: Default::default(),
            by_rpc: Default::default(),
            logical_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The counters of one type.
    pub fn of(&self, t: CacheType) -> &TypeCounters {
        &self.by_type[t.index()]
    }

    /// The counters of one RPC.
    pub fn rpc(&self, rpc: Rpc) -> &RpcCounters {
        &self.by_rpc[rpc as usize]
    }

    /// Records a Get outcome.
    pub fn record_get(&self, t: CacheType, hit: bool) {
        let c = self.of(t);
        if hit { &c.hits } else { &c.misses }.fetch_add(1, Relaxed);
    }

    /// Records a stored value.
    pub fn record_set(&self, t: CacheType, logical: u64, stored: u64) {
        let c = self.of(t);
        c.sets.fetch_add(1, Relaxed);
        c.bytes_set.fetch_add(logical, Relaxed);
        c.value_size.observe(logical as f64);
        self.logical_bytes.fetch_add(logical, Relaxed);
        self.stored_bytes.fetch_add(stored, Relaxed);
    }

    /// Records the handling time of an RPC.
    pub fn record_latency(&self, rpc: Rpc, elapsed: Duration) {
        self.rpc(rpc).latency.observe(elapsed.as_secs_f64());
    }

    /// Records an error an RPC returned.
    pub fn record_error(&self, rpc: Rpc, code: tonic::Code) {
        if let Some(c) = self.rpc(rpc).errors.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Errors returned by all RPCs with this code.
    pub fn errors_with(&self, code: usize) -> u64 {
        self.by_rpc
            .iter()
            .map(|r| r.errors[code].load(Relaxed))
            .sum()
    }

    /// Total hits and misses.
    pub fn hits_misses(&self) -> (u64, u64) {
        self.by_type.iter().fold((0, 0), |(h, m), c| {
            (h + c.hits.load(Relaxed), m + c.misses.load(Relaxed))
        })
    }

    /// Time since the service started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4). Labels have bounded values only:
    /// rpc, code, type and tier names, never a key, user or project.
    pub fn render_prometheus(&self, mode: &str, stats: &BackendStats) -> String {
        let mut out = String::with_capacity(16 << 10);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "cache_info",
            "gauge",
            "Constant 1, labelled with the configured backend mode.",
        );
        let _ = writeln!(out, "cache_info{{mode=\"{mode}\"}} 1");
        family(
            &mut out,
            "cache_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
        );
        let _ = writeln!(out, "cache_uptime_seconds {}", self.uptime().as_secs_f64());

        family(
            &mut out,
            "cache_request_duration_seconds",
            "histogram",
            "Server-side handling time of each RPC.",
        );
        for rpc in Rpc::ALL {
            self.rpc(rpc).latency.render(
                &mut out,
                "cache_request_duration_seconds",
                &format!("rpc=\"{}\"", rpc.name()),
            );
        }
        family(
            &mut out,
            "cache_errors_total",
            "counter",
            "Errors returned to callers, by RPC and gRPC code.",
        );
        for rpc in Rpc::ALL {
            for (code, n) in self.rpc(rpc).errors.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let code = crate::service::code_name(tonic::Code::from_i32(code as i32));
                    let _ = writeln!(
                        out,
                        "cache_errors_total{{rpc=\"{}\",code=\"{code}\"}} {n}",
                        rpc.name()
                    );
                }
            }
        }
        let per_type: [(&str, &str, CounterOf); 5] = [
            (
                "cache_hits_total",
                "Gets that found a current entry.",
                |c| &c.hits,
            ),
            (
                "cache_misses_total",
                "Gets that found nothing (or another model hash, or an undecodable value).",
                |c| &c.misses,
            ),
            ("cache_sets_total", "Values stored.", |c| &c.sets),
            (
                "cache_invalidations_total",
                "Entries removed by Invalidate.",
                |c| &c.invalidations,
            ),
            (
                "cache_set_bytes_total",
                "Logical bytes of the values stored.",
                |c| &c.bytes_set,
            ),
        ];
        for (name, help, counter) in per_type {
            family(&mut out, name, "counter", help);
            for t in CacheType::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{type=\"{}\"}} {}",
                    t.label(),
                    counter(self.of(t)).load(Relaxed)
                );
            }
        }
        family(
            &mut out,
            "cache_value_size_bytes",
            "histogram",
            "Logical sizes of the values stored.",
        );
        for t in CacheType::ALL {
            self.of(t).value_size.render(
                &mut out,
                "cache_value_size_bytes",
                &format!("type=\"{}\"", t.label()),
            );
        }
        let logical = self.logical_bytes.load(Relaxed);
        let stored = self.stored_bytes.load(Relaxed);
        let scalars: [(&str, &str, &str, f64); 17] = [
            (
                "cache_logical_bytes_total",
                "counter",
                "Logical bytes of all values stored.",
                logical as f64,
            ),
            (
                "cache_stored_bytes_total",
                "counter",
                "Stored (possibly compressed) bytes of all values stored.",
                stored as f64,
            ),
            (
                "cache_compression_saved_bytes_total",
                "counter",
                "Bytes saved by compression.",
                logical.saturating_sub(stored) as f64,
            ),
            (
                "cache_corrupt_entries_total",
                "counter",
                "Stored values that failed to decode (served as misses).",
                self.corrupt.load(Relaxed) as f64,
            ),
            (
                "cache_invalidated_entries_total",
                "counter",
                "Entries removed by Invalidate, all targets.",
                self.invalidated.load(Relaxed) as f64,
            ),
            (
                "cache_memory_entries",
                "gauge",
                "Entries held by the memory tier.",
                stats.memory_entries as f64,
            ),
            (
                "cache_memory_bytes",
                "gauge",
                "Bytes held by the memory tier.",
                stats.memory_bytes as f64,
            ),
            (
                "cache_memory_capacity_bytes",
                "gauge",
                "Capacity of the memory tier.",
                stats.memory_capacity as f64,
            ),
            (
                "cache_memory_rejected_total",
                "counter",
                "Values the memory tier refused as too large.",
                stats.memory_rejected as f64,
            ),
            (
                "cache_redis_connected",
                "gauge",
                "1 when Redis is verified and serving.",
                f64::from(u8::from(stats.redis_connected)),
            ),
            (
                "cache_redis_memory_bytes",
                "gauge",
                "Redis used_memory (INFO memory), refreshed in the background.",
                stats.redis_memory_bytes as f64,
            ),
            (
                "cache_redis_entries",
                "gauge",
                "Entries of this service in Redis (index estimate), refreshed in the background.",
                stats.redis_entries.unwrap_or(0) as f64,
            ),
            (
                "cache_fallback_active",
                "gauge",
                "1 while the memory fallback serves because Redis is unreachable (hybrid).",
                f64::from(u8::from(stats.fallback_active)),
            ),
            (
                "cache_fallback_served_total",
                "counter",
                "Calls answered by the memory fallback during outages.",
                stats.fallback_served as f64,
            ),
            (
                "cache_redis_down_seconds_total",
                "counter",
                "Time Redis has been unreachable (time in fallback in hybrid mode).",
                stats.redis_down_seconds,
            ),
            (
                "cache_invalidations_replayed_total",
                "counter",
                "Invalidations remembered during outages and applied to Redis after.",
                stats.invalidations_replayed as f64,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the server process.",
                resident_bytes() as f64,
            ),
        ];
        for (name, kind, help, value) in scalars {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`), 0 elsewhere.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::new(&LATENCY_BOUNDS_SECONDS, 1e6);
        for _ in 0..90 {
            h.observe(0.0008);
        }
        for _ in 0..10 {
            h.observe(0.04);
        }
        let p50 = h.quantile(0.5);
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        let p99 = h.quantile(0.99);
        assert!(p99 > 0.025 && p99 <= 0.05, "{p99}");
        assert_eq!(h.count(), 100);
        assert!((h.sum() - (90.0 * 0.0008 + 10.0 * 0.04)).abs() < 1e-3);
    }

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.record_latency(Rpc::Get, Duration::from_micros(300));
        m.record_latency(Rpc::Get, Duration::from_millis(3));
        m.record_error(Rpc::Set, tonic::Code::InvalidArgument);
        let text = m.render_prometheus("memory", &BackendStats::default());
        assert!(
            text.contains("cache_request_duration_seconds_bucket{rpc=\"Get\",le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("cache_request_duration_seconds_bucket{rpc=\"Get\",le=\"+Inf\"} 2"));
        assert!(text.contains("cache_request_duration_seconds_count{rpc=\"Get\"} 2"));
        assert!(text.contains("cache_errors_total{rpc=\"Set\",code=\"INVALID_ARGUMENT\"} 1"));
        assert!(text.contains("cache_info{mode=\"memory\"} 1"));
    }
}
