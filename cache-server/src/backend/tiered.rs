//! Hybrid mode: Redis while it is verified and serving, the memory tier while it is not.
//!
//! - Reads and writes go to Redis only while it is up: nothing Redis should hold is kept in memory.
//! - On an outage error (or while Redis is down) reads and writes are answered by memory, with writes' TTL
//!   capped at the fallback TTL. Answers say so (`status = FALLBACK`, `tier = MEMORY`).
//! - A write answered by memory during an outage also removes the key from Redis on recovery, so a read
//!   after the outage never returns a value older than one this server acknowledged.
//! - An invalidation always purges the memory tier, and is acknowledged only once applied to Redis: while
//!   Redis cannot be reached it answers [`BackendError::NotShared`] (`UNAVAILABLE`: retry), because other
//!   replicas still read Redis. The memory tier is emptied at each recovery, so it only ever holds what was
//!   written during the current outage.
//!
//! Bound: replicas that fall back during the same outage cannot see each other's writes; a value written or
//! invalidated on another replica during the outage may differ here for at most the fallback TTL (60 s by
//! default). An acknowledged invalidation reached Redis, so no replica reads the old value from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, BackendStats, Hit, Memory, Redis, Removed, Stored, Target};
use crate::keys::{Key, Keyspace};

/// Redis with the memory tier as fallback.
#[derive(Debug)]
pub struct Tiered {
    redis: Arc<Redis>,
    memory: Memory,
    fallback_ttl: Duration,
    fallback_served: AtomicU64,
    cleared_at_recovery: AtomicU64,
}

impl Tiered {
    /// Composes the tiers.
    pub fn new(redis: Arc<Redis>, memory: Memory, fallback_ttl: Duration) -> Self {
        Self {
            redis,
            memory,
            fallback_ttl,
            fallback_served: AtomicU64::new(0),
            cleared_at_recovery: AtomicU64::new(0),
        }
    }

    /// Empties the memory tier once after each recovery.
    fn forget_outage_writes(&self) {
        let recoveries = self.redis.recoveries();
        if self.cleared_at_recovery.swap(recoveries, Ordering::AcqRel) != recoveries {
            self.memory.clear();
        }
    }

    fn served_by_memory(&self) {
        self.fallback_served.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Backend for Tiered {
    async fn get(&self, key: &Key) -> Result<Option<Hit>, BackendError> {
        if self.redis.is_up() {
            match self.redis.get(key).await {
                Err(e) if e.is_outage() => {}
                other => {
                    self.forget_outage_writes();
                    return other;
                }
            }
        }
        self.served_by_memory();
        Ok(self.memory.get(key).await?.map(|hit| Hit {
            fallback: true,
            ..hit
        }))
    }

    async fn set(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<Stored, BackendError> {
        if self.redis.is_up() {
            match self
                .redis
                .set(key, envelope.clone(), ttl, only_if_absent)
                .await
            {
                Err(e) if e.is_outage() => {}
                other => {
                    self.forget_outage_writes();
                    return other;
                }
            }
        }
        self.served_by_memory();
        let outcome = self
            .memory
            .set(key, envelope, ttl.min(self.fallback_ttl), only_if_absent)
            .await?;
        if outcome.stored {
            // Redis may hold an older value under this key: delete it on recovery, so that reads after the
            // outage never go back in time to a value older than one this server acknowledged.
            self.redis.remember_write(key).await;
        }
        Ok(Stored {
            fallback: true,
            ..outcome
        })
    }

    async fn invalidate(&self, target: &Target) -> Result<Removed, BackendError> {
        let from_memory = self.memory.invalidate(target).await?;
        let reason = if self.redis.is_up() {
            match self.redis.invalidate(target).await {
                Ok(n) => {
                    return Ok(if n.total() >= from_memory.total() {
                        n
                    } else {
                        from_memory
                    });
                }
                Err(e) if !e.is_outage() => return Err(e),
                Err(e) => e.to_string(),
            }
        } else {
            self.redis.unavailable_reason()
        };
        Err(BackendError::NotShared {
            tier: "redis",
            reason,
        })
    }

    fn stats(&self) -> BackendStats {
        let memory = self.memory.stats();
        let redis = self.redis.stats();
        BackendStats {
            fallback_active: !redis.redis_connected,
            fallback_served: self.fallback_served.load(Ordering::Relaxed),
            memory_entries: memory.memory_entries,
            memory_bytes: memory.memory_bytes,
            memory_capacity: memory.memory_capacity,
            memory_rejected: memory.memory_rejected,
            ..redis
        }
    }

    async fn refresh_stats(&self) {
        self.redis.refresh_stats().await;
    }

    async fn warm_up(&self, within: Duration) {
        self.redis.wait_up(within).await;
    }

    async fn add_keyspaces(&self, keyspaces: &[Keyspace]) -> Result<(), BackendError> {
        self.redis.verify_keyspaces(keyspaces).await
    }

    fn sweep_expired(&self) {
        self.memory.sweep_expired();
    }

    /// Serving from memory through a passing outage; not when Redis cannot be used at all (a replica, a
    /// Cluster node, refused credentials): this replica would be a private cache, so it leaves rotation.
    fn is_serving(&self) -> bool {
        self.redis.unusable_reason().is_none()
    }

    async fn close(&self) {
        self.redis.close().await;
    }
}
