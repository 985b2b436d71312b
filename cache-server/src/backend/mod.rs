//! Storage tiers behind one byte-oriented trait.
//!
//! A backend stores encoded envelopes (see [`crate::codec`]) under rendered keys (see [`crate::keys`]) with a
//! per-entry expiry; serialization, compression and key layout stay outside, so every backend stays dumb.
//! [`Memory`] is the in-process tier, [`Redis`] the shared primary tier, and [`Tiered`] composes them: Redis
//! while it is healthy, memory while it is not, with invalidations remembered across the outage.

mod memory;
mod redis;
mod tiered;

pub use memory::{Memory, MemoryOptions};
pub use redis::{PRUNE_EVERY, Redis};
pub use tiered::Tiered;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::codec::Provenance;
use crate::keys::{CacheType, Key, Keyspace, Selector};

/// Which tier a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierKind {
    /// The in-process memory tier.
    Memory,
    /// Redis.
    Redis,
}

/// A stored value found by a Get.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The encoded envelope.
    pub envelope: Bytes,
    /// Reads of the entry so far, including this one.
    pub access_count: u64,
    /// When the entry was read before this read (unix ms), 0 if never.
    pub previous_read_ms: u64,
    /// Which tier answered.
    pub tier: TierKind,
    /// Where the envelope's bytes have been: what decoding them must verify.
    pub provenance: Provenance,
    /// Whether the answer comes from the memory fallback during a Redis outage.
    pub fallback: bool,
}

/// Entries removed by an invalidation, per cache type (indexed by [`CacheType::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed(pub [u64; 5]);

impl Removed {
    /// Counts one removed entry of type `t`.
    pub fn add(&mut self, t: CacheType) {
        self.0[t.index()] += 1;
    }

    /// Adds another count.
    pub fn merge(&mut self, other: Removed) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// Entries removed in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Removed entries of type `t`.
    pub fn of(&self, t: CacheType) -> u64 {
        self.0[t.index()]
    }
}

/// The outcome of a Set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Whether the value was stored (false only with `only_if_absent` and a live entry).
    pub stored: bool,
    /// The tier that stored it.
    pub tier: TierKind,
    /// Whether it went to the memory fallback because Redis was unreachable.
    pub fallback: bool,
}

/// What an Invalidate removes. Every target lies within one keyspace (a key's is its own).
#[derive(Debug, Clone)]
pub enum Target {
    /// One entry.
    Key(Key),
    /// Every entry of the keyspace matching the selector.
    Selector(Keyspace, Selector),
    /// Every entry whose full storage key matches this glob (already anchored under the keyspace).
    Pattern(Keyspace, String),
    /// Every entry of the keyspace.
    All(Keyspace),
}

impl Target {
    /// The keyspace the target lies in.
    pub fn keyspace_base(&self) -> &str {
        match self {
            Target::Key(key) => key.base(),
            Target::Selector(ks, _) | Target::Pattern(ks, _) | Target::All(ks) => ks.base(),
        }
    }
}

/// Point-in-time figures a backend reports for the Metrics RPC.
#[derive(Debug, Clone, Default)]
pub struct BackendStats {
    /// Entries in the memory tier.
    pub memory_entries: u64,
    /// Bytes held by the memory tier.
    pub memory_bytes: u64,
    /// Capacity of the memory tier, in bytes.
    pub memory_capacity: u64,
    /// Values the memory tier refused because they could never fit.
    pub memory_rejected: u64,
    /// Whether Redis is reachable (false without Redis).
    pub redis_connected: bool,
    /// Redis `used_memory`, 0 when unknown.
    pub redis_memory_bytes: u64,
    /// Entries of this service in Redis (estimate from the index sets), when Redis is used.
    pub redis_entries: Option<u64>,
    /// Whether the memory fallback is serving because Redis is unreachable.
    pub fallback_active: bool,
    /// Calls the memory fallback answered during outages.
    pub fallback_served: u64,
    /// Invalidations replayed to Redis after an outage.
    pub invalidations_replayed: u64,
    /// Seconds Redis has been unreachable since start (including the current outage).
    pub redis_down_seconds: f64,
    /// Why Redis cannot be used, when it is for a reason other than a passing outage (`not_primary`,
    /// `cluster_node`, `auth_refused`).
    pub redis_unusable: Option<&'static str>,
    /// Bookkeeping keys of the wrong type found under this service's prefix and removed.
    pub redis_repaired_keys: u64,
    /// Index members that named keys outside this keyspace, left alone.
    pub redis_foreign_members: u64,
    /// Sets Redis voided as run after their deadline, whose answer still came back in time (the clocks
    /// disagree).
    pub redis_late_sets: u64,
    /// Reads that found an entry whose generations had ended (invalidated or evicted bookkeeping): misses.
    pub redis_invalidated_reads: u64,
    /// Times every entry became a miss because the Redis reached could not be shown to continue the data
    /// this server verified (a restart, a snapshot, another instance).
    pub redis_history_flushes: u64,
}

/// Why a backend could not serve a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The tier cannot be reached (connection refused or lost). Retryable.
    #[error("{tier} is unavailable: {reason}")]
    Unavailable {
        /// The tier.
        tier: &'static str,
        /// What happened (no secrets).
        reason: String,
    },
    /// The tier did not answer within its budget. Retryable.
    #[error("{tier} did not answer within {budget:?}")]
    Timeout {
        /// The tier.
        tier: &'static str,
        /// The budget that ran out.
        budget: Duration,
    },
    /// The value can never be stored by this tier (larger than it can hold).
    #[error("value of {size} bytes is larger than the {tier} tier can hold ({limit} bytes)")]
    TooLarge {
        /// The tier.
        tier: &'static str,
        /// The value's stored size.
        size: u64,
        /// The largest it can hold.
        limit: u64,
    },
    /// The tier is out of memory or otherwise refused the write.
    #[error("{tier} refused the write: {reason}")]
    Refused {
        /// The tier.
        tier: &'static str,
        /// Its message.
        reason: String,
    },
    /// An invalidation that could not reach the shared tier (Redis down or unusable): this replica's memory
    /// tier was purged, but other replicas may still serve the old value. Retryable; never acknowledged.
    #[error("the invalidation did not reach the shared store ({tier}): {reason}; retry it")]
    NotShared {
        /// The shared tier.
        tier: &'static str,
        /// Why.
        reason: String,
    },
    /// Anything else (a bug or an unexpected reply).
    #[error("{tier} failed: {reason}")]
    Internal {
        /// The tier.
        tier: &'static str,
        /// What happened.
        reason: String,
    },
}

impl BackendError {
    /// Whether the tiered backend may answer from the fallback instead.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// A byte store with per-entry expiry and invalidation by key, selector, pattern and all.
#[async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// Returns the envelope stored under `key`, or `None` if absent or expired; counts the access.
    async fn get(&self, key: &Key) -> Result<Option<Hit>, BackendError>;

    /// Stores an envelope for `ttl`. With `only_if_absent`, stores only if no current entry exists and
    /// says whether it stored, and where.
    async fn set(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<Stored, BackendError>;

    /// Removes what `target` names; returns how many entries of each type were removed.
    async fn invalidate(&self, target: &Target) -> Result<Removed, BackendError>;

    /// Current figures for the Metrics RPC (cheap: costly figures are refreshed in the background).
    fn stats(&self) -> BackendStats;

    /// Refreshes costly figures (Redis INFO and the like); called by a background task.
    async fn refresh_stats(&self) {}

    /// Removes expired entries eagerly (memory tier); called by a background task.
    fn sweep_expired(&self) {}

    /// Gives a remote tier up to `within` to become ready before the server starts answering, so the first
    /// calls do not fall back needlessly. Returns early when ready; never fails (a down Redis is not fatal).
    async fn warm_up(&self, _within: Duration) {}

    /// Whether the backend can serve calls now (feeds the health service).
    fn is_serving(&self) -> bool {
        true
    }

    /// Releases connections on shutdown.
    async fn close(&self) {}

    /// Takes on the keyspaces of tenants added while serving (a reload of the tokens file), before any of
    /// their calls: a shared tier verifies their bookkeeping first. An error means not yet (Redis is not
    /// verified now); the caller tries again.
    async fn add_keyspaces(&self, _keyspaces: &[Keyspace]) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
