//! Request counters kept on the hot path: relaxed atomics only, no lock and no allocation per request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::keys::CacheType;

/// Counters for one cache type.
#[derive(Debug, Default)]
pub struct TypeCounters {
    /// Gets that found a current entry.
    pub hits: AtomicU64,
    /// Gets that found nothing.
    pub misses: AtomicU64,
    /// Values stored.
    pub sets: AtomicU64,
    /// Entries removed by key/selector invalidation.
    pub invalidations: AtomicU64,
    /// Logical bytes stored.
    pub bytes_set: AtomicU64,
}

/// Number of gRPC status codes (0..=16).
pub const CODES: usize = 17;

/// All counters of the service.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Per-type counters, indexed by [`CacheType::index`].
    pub by_type: [TypeCounters; 5],
    /// Summed handling time of Get/Set, in microseconds.
    pub handle_micros: AtomicU64,
    /// Number of timed Get/Set calls.
    pub handled: AtomicU64,
    /// Logical bytes of all stored values.
    pub logical_bytes: AtomicU64,
    /// Stored (compressed) bytes of all stored values.
    pub stored_bytes: AtomicU64,
    /// Stored values that failed to decode.
    pub corrupt: AtomicU64,
    /// Entries removed by Invalidate (all kinds).
    pub invalidated: AtomicU64,
    /// Errors returned, by gRPC code.
    pub errors: [AtomicU64; CODES],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            by_type: Default::default(),
            handle_micros: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            logical_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            errors: Default::default(),
        }
    }
}

impl Metrics {
    /// The counters of one type.
    pub fn of(&self, t: CacheType) -> &TypeCounters {
        &self.by_type[t.index()]
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
        self.logical_bytes.fetch_add(logical, Relaxed);
        self.stored_bytes.fetch_add(stored, Relaxed);
    }

    /// Records the handling time of a Get or Set.
    pub fn record_latency(&self, elapsed: Duration) {
        self.handle_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.handled.fetch_add(1, Relaxed);
    }

    /// Records an error returned to a caller.
    pub fn record_error(&self, code: tonic::Code) {
        if let Some(c) = self.errors.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
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
