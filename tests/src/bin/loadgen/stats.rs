//! What the workers measured: latency histograms per operation, errors by gRPC code, hits, and the
//! correctness counters.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Highest latency the histograms track, in microseconds (a minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one worker measured.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Latency per operation, in microseconds.
    pub(crate) latency: [Histogram<u64>; 3],
    /// Failed calls by gRPC code name (also counted in `latency`: a failure still took time).
    pub(crate) errors: BTreeMap<&'static str, u64>,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// Get hits whose value had an unexpected size.
    pub(crate) wrong_size: u64,
    /// Sets that answered stored = true whose value could not be read back right after.
    pub(crate) dropped: u64,
    /// Sets that answered stored = false.
    pub(crate) not_stored: u64,
    /// Logical payload: value bytes sent by Sets and received by Get hits.
    pub(crate) payload_bytes: u64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Self {
            latency: [histogram(), histogram(), histogram()],
            errors: BTreeMap::new(),
            hits: 0,
            misses: 0,
            wrong_size: 0,
            dropped: 0,
            not_stored: 0,
            payload_bytes: 0,
        }
    }

    pub(crate) fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            mine.add(theirs).expect("histograms share bounds");
        }
        for (code, n) in &other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.hits += other.hits;
        self.misses += other.misses;
        self.wrong_size += other.wrong_size;
        self.dropped += other.dropped;
        self.not_stored += other.not_stored;
        self.payload_bytes += other.payload_bytes;
    }

    pub(crate) fn calls(&self) -> u64 {
        self.latency.iter().map(Histogram::len).sum()
    }

    /// Every operation's latencies in one histogram.
    pub(crate) fn all_latency(&self) -> Histogram<u64> {
        let mut all = Stats::new().latency[0].clone();
        for h in &self.latency {
            all.add(h).expect("histograms share bounds");
        }
        all
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_add_up() {
        let mut a = Stats::new();
        a.latency[0].record(100).unwrap();
        a.errors.insert("UNAVAILABLE", 1);
        a.hits = 1;
        let mut b = Stats::new();
        b.latency[1].record(200).unwrap();
        b.latency[1].record(300).unwrap();
        b.errors.insert("UNAVAILABLE", 2);
        b.payload_bytes = 10;
        a.merge(&b);
        assert_eq!(a.calls(), 3);
        assert_eq!(a.error_count(), 3);
        assert_eq!((a.hits, a.payload_bytes), (1, 10));
        assert_eq!(a.all_latency().len(), 3);
    }
}
