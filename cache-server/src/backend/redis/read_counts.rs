//! Read counts and last-read times of Redis entries, counted in process and added to their metas in
//! batches.
//!
//! A Get that also updated the entry's statistics in Redis would cost a Lua call (13 to 19 us of Redis CPU
//! against 1.6 us for a plain GET, measured with `INFO commandstats`: docs/decisions/0002). Instead, each
//! Get reads the entry's meta with the entry (it must anyway: the meta holds the generation snapshot), reads
//! are counted here, and a background task adds them to the metas once per [`FLUSH_INTERVAL`] (one Lua call
//! per [`FLUSH_BATCH`] keys of a bucket). A Get answers the stored count plus the reads counted here since
//! the last flush, and the previous read's time (the later of the stored one and this server's own).
//!
//! The count is exact for reads through one server between flushes, and approximate otherwise: another
//! replica's reads appear after its next flush. It is a statistic, never used to decide anything.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;
use parking_lot::Mutex;

use super::Redis;

/// How often counted reads are added to Redis.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Most keys per flush call: Redis runs a script to the end before anything else.
const FLUSH_BATCH: usize = 100;
/// Most keys tracked at once; reads of further keys are not counted until room frees up.
const MAX_TRACKED_KEYS: usize = 100_000;
const SHARDS: usize = 16;

/// Reads of one entry counted since the last flush.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    bucket: u32,
    pending: u64,
    last_read_ms: u64,
}

type Shard = Mutex<HashMap<Arc<str>, Slot>>;

/// Reads counted since the last flush, sharded so concurrent Gets do not contend on one lock; keyed by meta
/// key.
#[derive(Debug)]
pub(super) struct ReadCounts {
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Shard]>,
}

impl Default for ReadCounts {
    fn default() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// A flushed batch: (bucket, meta key, reads, last read ms).
type Taken = Vec<(u32, Arc<str>, u64, u64)>;

impl ReadCounts {
    fn shard(&self, meta: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(meta) as usize % SHARDS]
    }

    /// Counts one read of the entry whose meta (`meta`, in `bucket`) recorded `stored` reads, the last at
    /// `stored_last_ms`. Returns its reads so far, this one included, and the previous read's time (0 if
    /// none).
    pub fn record(
        &self,
        bucket: u32,
        meta: &str,
        stored: u64,
        stored_last_ms: u64,
        now: u64,
    ) -> (u64, u64) {
        let mut map = self.shard(meta).lock();
        if let Some(slot) = map.get_mut(meta) {
            slot.pending += 1;
            let previous = slot.last_read_ms.max(stored_last_ms);
            slot.last_read_ms = now;
            return (stored + slot.pending, previous);
        }
        if map.len() < MAX_TRACKED_KEYS / SHARDS {
            map.insert(
                Arc::from(meta),
                Slot {
                    bucket,
                    pending: 1,
                    last_read_ms: now,
                },
            );
        }
        (stored + 1, stored_last_ms)
    }

    /// Takes the reads to flush.
    fn take(&self) -> Taken {
        let mut out = Vec::new();
        for shard in &*self.shards {
            for (meta, slot) in shard.lock().drain() {
                out.push((slot.bucket, meta, slot.pending, slot.last_read_ms));
            }
        }
        out
    }

    /// Forgets every count (Redis may have lost its data).
    pub fn clear(&self) {
        for shard in &*self.shards {
            shard.lock().clear();
        }
    }
}

impl Redis {
    /// Adds the reads counted since the last flush to the entries' metas.
    ///
    /// Counts that cannot be written (Redis down, a timeout) are dropped: they are statistics, and the
    /// entries they belong to may not survive the outage anyway.
    pub(super) async fn flush_reads(&self) {
        let mut counted = self.reads.take();
        if counted.is_empty() || !self.is_up() {
            return;
        }
        counted.sort_unstable_by_key(|(bucket, ..)| *bucket);
        for bucket_reads in counted.chunk_by(|a, b| a.0 == b.0) {
            for batch in bucket_reads.chunks(FLUSH_BATCH) {
                let argv = || {
                    let mut keys = Vec::with_capacity(batch.len());
                    let mut args = Vec::with_capacity(batch.len() * 2);
                    for (_, meta, reads, last) in batch {
                        keys.push(meta.to_string());
                        args.push(Value::from(reads.to_string()));
                        args.push(Value::from(last.to_string()));
                    }
                    (keys, args)
                };
                let fut = self.scripts.flush.run::<Value, _, _>(
                    self.conn.pool.next(),
                    fred::prelude::Options::default(),
                    argv,
                );
                if let Err(e) = self.call(fut).await {
                    tracing::debug!(redis = %self.conn.target, error = %e, "read counts not flushed");
                    return;
                }
            }
        }
    }

    /// Flushes read counts every [`FLUSH_INTERVAL`] for as long as the tier exists.
    pub(super) async fn flush_reads_periodically(this: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(redis) = this.upgrade() else { return };
            redis.flush_reads().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reads_on_top_of_the_stored_total_and_answers_the_previous_read() {
        let counts = ReadCounts::default();
        assert_eq!(counts.record(3, "m", 10, 500, 1000), (11, 500));
        assert_eq!(counts.record(3, "m", 10, 500, 2000), (12, 1000));
        let taken = counts.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            (taken[0].0, &*taken[0].1, taken[0].2, taken[0].3),
            (3, "m", 2, 2000)
        );
        assert!(counts.take().is_empty(), "a take empties the counts");
    }

    #[test]
    fn tracks_a_bounded_number_of_keys() {
        let counts = ReadCounts::default();
        for i in 0..MAX_TRACKED_KEYS * 2 {
            counts.record(0, &format!("m{i}"), 0, 0, 1);
        }
        assert!(counts.take().len() <= MAX_TRACKED_KEYS);
    }
}
