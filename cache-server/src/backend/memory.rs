//! The in-process tier: a byte-weighted `quick_cache` with expiry enforced on read and by a periodic sweep.
//!
//! quick_cache splits its capacity across shards and silently refuses an item heavier than ~97 % of one
//! shard; the shard count is therefore chosen from the largest value we must hold, and a value that could
//! still never fit is refused loudly ([`BackendError::TooLarge`]) and counted, never dropped silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{OptionsBuilder, Weighter};

use super::{Backend, BackendError, BackendStats, Hit, Removed, Stored, Target, TierKind, now_ms};
use crate::codec::Provenance;
use crate::keys::{Key, KeyTags, glob_match};

/// Bytes of bookkeeping charged per entry on top of its key and envelope.
const ENTRY_OVERHEAD_BYTES: u64 = 160;
/// quick_cache admits an item only up to this fraction of a shard's capacity (its hot allocation).
const HOT_ALLOCATION: f64 = 0.97;

/// Sizing of the memory tier.
#[derive(Debug, Clone, Copy)]
pub struct MemoryOptions {
    /// Capacity in bytes (keys + envelopes + overhead).
    pub capacity_bytes: u64,
    /// The largest envelope it must be able to hold.
    pub max_item_bytes: u64,
}

struct MemEntry {
    envelope: Bytes,
    expires_at_ms: u64,
    tags: KeyTags,
    access_count: AtomicU64,
    /// When it was last read (unix ms), 0 if never.
    last_read_ms: AtomicU64,
}

impl MemEntry {
    fn is_live(&self, now: u64) -> bool {
        self.expires_at_ms > now
    }
}

#[derive(Clone)]
struct EntryWeight;

impl Weighter<Arc<str>, Arc<MemEntry>> for EntryWeight {
    fn weight(&self, key: &Arc<str>, entry: &Arc<MemEntry>) -> u64 {
        weight_of(key.len(), entry.envelope.len(), &entry.tags)
    }
}

fn weight_of(key_len: usize, envelope_len: usize, tags: &KeyTags) -> u64 {
    (key_len + envelope_len + tags.id.len() + tags.user_id.len() + tags.project_id.len()) as u64
        + ENTRY_OVERHEAD_BYTES
}

/// The in-process memory tier.
pub struct Memory {
    cache: Cache<Arc<str>, Arc<MemEntry>, EntryWeight>,
    admit_limit: u64,
    capacity: u64,
    rejected: AtomicU64,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("capacity", &self.capacity)
            .field("shards", &self.cache.num_shards())
            .finish()
    }
}

impl Memory {
    /// Builds a memory tier that can hold `max_item_bytes` items.
    pub fn new(options: MemoryOptions) -> Self {
        let capacity = options.capacity_bytes.max(1 << 20);
        let needed = options.max_item_bytes + ENTRY_OVERHEAD_BYTES + 4096;
        // Most shards (less lock contention) such that one shard still admits the largest item.
        let mut shards = 64usize;
        while shards > 1 && ((capacity / shards as u64) as f64 * HOT_ALLOCATION) < needed as f64 {
            shards /= 2;
        }
        let estimated_items = (capacity / 4096).clamp(1024, 1 << 20) as usize;
        let opts = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items)
            .weight_capacity(capacity)
            .shards(shards)
            .hot_allocation(HOT_ALLOCATION)
            .build()
            .expect("valid quick_cache options");
        let cache = Cache::with_options(opts, EntryWeight, Default::default(), Default::default());
        let admit_limit = (cache.shard_capacity() as f64 * HOT_ALLOCATION) as u64;
        Self {
            cache,
            admit_limit,
            capacity,
            rejected: AtomicU64::new(0),
        }
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.cache.clear();
    }

    fn entry(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
    ) -> Result<Arc<MemEntry>, BackendError> {
        let weight = weight_of(key.storage_key.len(), envelope.len(), &key.tags);
        if weight > self.admit_limit {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::TooLarge {
                tier: "memory",
                size: weight,
                limit: self.admit_limit,
            });
        }
        let now = now_ms();
        Ok(Arc::new(MemEntry {
            envelope,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
            tags: key.tags.clone(),
            access_count: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(0),
        }))
    }

    fn remove_matching(&self, mut matches: impl FnMut(&str, &MemEntry) -> bool) -> Removed {
        let now = now_ms();
        let doomed: Vec<Arc<str>> = self
            .cache
            .iter()
            .filter(|(k, v)| matches(k, v))
            .map(|(k, _)| k)
            .collect();
        let mut removed = Removed::default();
        for key in doomed {
            if let Some((_, entry)) = self.cache.remove(&key)
                && entry.is_live(now)
            {
                removed.add(entry.tags.cache_type);
            }
        }
        removed
    }
}

#[async_trait]
impl Backend for Memory {
    async fn get(&self, key: &Key) -> Result<Option<Hit>, BackendError> {
        let Some(entry) = self.cache.get(&*key.storage_key) else {
            return Ok(None);
        };
        let now = now_ms();
        if !entry.is_live(now) {
            self.cache.remove_if(&*key.storage_key, |e| !e.is_live(now));
            return Ok(None);
        }
        let access_count = entry.access_count.fetch_add(1, Ordering::Relaxed) + 1;
        let previous_read_ms = entry.last_read_ms.swap(now, Ordering::Relaxed);
        Ok(Some(Hit {
            envelope: entry.envelope.clone(),
            access_count,
            previous_read_ms,
            tier: TierKind::Memory,
            provenance: Provenance::ThisProcess,
            fallback: false,
        }))
    }

    async fn set(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<Stored, BackendError> {
        let entry = self.entry(key, envelope, ttl)?;
        let stored = |stored| Stored {
            stored,
            tier: TierKind::Memory,
            fallback: false,
        };
        if !only_if_absent {
            self.cache.insert(key.storage_key.clone(), entry);
            return Ok(stored(true));
        }
        let now = now_ms();
        let outcome = self
            .cache
            .entry(&key.storage_key, Some(Duration::ZERO), |_, existing| {
                if existing.is_live(now) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            });
        Ok(stored(match outcome {
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                guard.insert(entry).is_ok()
            }
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => false,
        }))
    }

    async fn invalidate(&self, target: &Target) -> Result<Removed, BackendError> {
        let now = now_ms();
        Ok(match target {
            Target::Key(key) => {
                let mut removed = Removed::default();
                if let Some((_, e)) = self.cache.remove(&*key.storage_key)
                    && e.is_live(now)
                {
                    removed.add(e.tags.cache_type);
                }
                removed
            }
            Target::Selector(keyspace, selector) => self.remove_matching(|k, e| {
                k.starts_with(keyspace.base()) && selector.matches(&e.tags)
            }),
            Target::Pattern(_, pattern) => {
                self.remove_matching(|k, _| glob_match(pattern.as_bytes(), k.as_bytes()))
            }
            Target::All(keyspace) => self.remove_matching(|k, _| k.starts_with(keyspace.base())),
        })
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            memory_entries: self.cache.len() as u64,
            memory_bytes: self.cache.weight(),
            memory_capacity: self.capacity,
            memory_rejected: self.rejected.load(Ordering::Relaxed),
            ..BackendStats::default()
        }
    }

    fn sweep_expired(&self) {
        let now = now_ms();
        self.cache.retain(|_, e| e.is_live(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyspace;
    use cache_proto::pb;

    fn key(id: &str) -> Key {
        let k = pb::CacheKey {
            r#type: pb::CacheType::Metadata as i32,
            id: id.into(),
            ..Default::default()
        };
        Keyspace::new("cache", "default")
            .key(Some(&k), "key")
            .unwrap()
    }

    fn memory(capacity: u64, max_item: u64) -> Memory {
        Memory::new(MemoryOptions {
            capacity_bytes: capacity,
            max_item_bytes: max_item,
        })
    }

    #[tokio::test]
    async fn get_returns_none_after_ttl() {
        let m = memory(64 << 20, 1 << 20);
        m.set(
            &key("a"),
            Bytes::from_static(b"v"),
            Duration::from_millis(50),
            false,
        )
        .await
        .unwrap();
        assert!(m.get(&key("a")).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(m.get(&key("a")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn counts_accesses() {
        let m = memory(64 << 20, 1 << 20);
        m.set(
            &key("a"),
            Bytes::from_static(b"v"),
            Duration::from_secs(60),
            false,
        )
        .await
        .unwrap();
        m.get(&key("a")).await.unwrap();
        let hit = m.get(&key("a")).await.unwrap().unwrap();
        assert_eq!(hit.access_count, 2);
    }

    #[tokio::test]
    async fn only_if_absent_respects_live_entries_only() {
        let m = memory(64 << 20, 1 << 20);
        let a = key("a");
        let set = |v: &'static [u8], ttl| m.set(&a, Bytes::from_static(v), ttl, true);
        assert!(set(b"1", Duration::from_millis(30)).await.unwrap().stored);
        assert!(!set(b"2", Duration::from_secs(60)).await.unwrap().stored);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(set(b"3", Duration::from_secs(60)).await.unwrap().stored);
        assert_eq!(&m.get(&key("a")).await.unwrap().unwrap().envelope[..], b"3");
    }

    #[tokio::test]
    async fn holds_the_largest_value_and_refuses_larger_loudly() {
        let m = memory(72 << 20, 64 << 20);
        let big = Bytes::from(vec![7u8; 64 << 20]);
        m.set(&key("big"), big, Duration::from_secs(60), false)
            .await
            .unwrap();
        assert!(
            m.get(&key("big")).await.unwrap().is_some(),
            "a value of the maximum size must be admitted"
        );
        let err = m
            .set(
                &key("huge"),
                Bytes::from(vec![7u8; 80 << 20]),
                Duration::from_secs(60),
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::TooLarge { .. }));
        assert_eq!(m.stats().memory_rejected, 1);
    }

    #[tokio::test]
    async fn stays_within_capacity_under_pressure() {
        let m = memory(32 << 20, 1 << 20);
        for i in 0..200 {
            m.set(
                &key(&i.to_string()),
                Bytes::from(vec![1u8; 512 << 10]),
                Duration::from_secs(60),
                false,
            )
            .await
            .unwrap();
        }
        assert!(m.stats().memory_bytes <= 32 << 20);
    }

    #[tokio::test]
    async fn sweep_removes_expired_entries() {
        let m = memory(64 << 20, 1 << 20);
        m.set(
            &key("a"),
            Bytes::from_static(b"v"),
            Duration::from_millis(10),
            false,
        )
        .await
        .unwrap();
        m.set(
            &key("b"),
            Bytes::from_static(b"v"),
            Duration::from_secs(60),
            false,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        m.sweep_expired();
        assert_eq!(m.stats().memory_entries, 1);
    }
}
