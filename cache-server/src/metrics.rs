//! Request metrics kept on the hot path — relaxed atomics in fixed arrays indexed by RPC, type and code: no
//! lock, no hashing and no allocation per request. The Metrics RPC and the `/metrics` scrape
//! ([`crate::prometheus`]) read the same counters, so they always agree.
//!
//! The histogram is this module's own: `prometheus_client`'s locks a mutex on every observation and keeps
//! its buckets private, and the Metrics RPC computes its percentiles from the buckets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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
    /// One counter per bound, then the overflow (`+Inf`) bucket; the count is their total.
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
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
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The upper bound of each bucket but the last (`+Inf`).
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// The observations in each bucket (not cumulative), the overflow bucket last.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// Sum of observations, in the histogram's unit.
    pub fn sum(&self) -> f64 {
        self.sum.load(Relaxed) as f64 / self.scale
    }

    /// Estimates the `q` quantile (0..=1) by linear interpolation inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> f64 {
        let counts = self.bucket_counts();
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
    /// Client connections.
    pub connections: Arc<crate::connections::ConnectionStats>,
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
            connections: Arc::default(),
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
}
