//! Read counts of Redis entries, counted in process and added to Redis in batches.
//!
//! A Get that also updated the entry's statistics in Redis cost a Lua call (13 to 19 us of Redis CPU against
//! 1.6 us for a plain GET, measured with `INFO commandstats`). Instead, a Get reads the entry and its stored
//! count with one `MGET`, counts the read here, and answers `stored + not yet flushed`. A background task adds
//! the counts to Redis once per [`FLUSH_INTERVAL`], one Lua call per batch of up to [`FLUSH_BATCH`] keys.
//!
//! The count is exact for reads through one server between flushes, and approximate otherwise: another
//! replica's reads appear after its next flush, a read that races a flush may miss the flushed amount once,
//! and reads of a value just overwritten may be added to the new value's count. It is a statistic, never
//! used to decide anything.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// How often counted reads are added to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Most keys per flush call.
pub const FLUSH_BATCH: usize = 500;
/// Most distinct keys remembered between flushes; reads of further keys are not counted until the next flush.
pub const MAX_PENDING_KEYS: usize = 100_000;
const SHARDS: usize = 16;

/// Reads of each key since the last flush.
type Shard = Mutex<HashMap<Arc<str>, u64>>;

/// Reads counted since the last flush, sharded so concurrent Gets do not contend on one lock.
#[derive(Debug)]
pub struct AccessCounts {
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Shard]>,
}

impl Default for AccessCounts {
    fn default() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl AccessCounts {
    /// Counts one read of `key`; returns the reads of it counted since the last flush, this one included.
    pub fn record(&self, key: &Arc<str>) -> u64 {
        let shard = &self.shards[self.hasher.hash_one(&**key) as usize % SHARDS];
        let mut map = shard.lock();
        if let Some(n) = map.get_mut(key) {
            *n += 1;
            return *n;
        }
        if map.len() < MAX_PENDING_KEYS / SHARDS {
            map.insert(Arc::clone(key), 1);
        }
        1
    }

    /// Takes every count recorded so far, leaving the counters empty.
    pub fn take(&self) -> Vec<(Arc<str>, u64)> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let mut map = shard.lock();
            out.reserve(map.len());
            out.extend(map.drain());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_until_taken() {
        let counts = AccessCounts::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(counts.record(&a), 1);
        assert_eq!(counts.record(&a), 2);
        assert_eq!(counts.record(&b), 1);
        let mut taken = counts.take();
        taken.sort();
        assert_eq!(taken, vec![(a.clone(), 2), (b, 1)]);
        assert!(counts.take().is_empty());
        assert_eq!(counts.record(&a), 1, "counting starts over after a take");
    }

    #[test]
    fn remembers_a_bounded_number_of_keys() {
        let counts = AccessCounts::default();
        for i in 0..MAX_PENDING_KEYS * 2 {
            counts.record(&Arc::from(i.to_string()));
        }
        let taken = counts.take();
        assert!(taken.len() <= MAX_PENDING_KEYS, "{}", taken.len());
        assert!(taken.len() > MAX_PENDING_KEYS / 2, "{}", taken.len());
    }
}
