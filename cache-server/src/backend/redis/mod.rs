//! The Redis tier (fred), the shared source of truth of every replica.
//!
//! # Layout
//! - [`layout`]: the names of every key in Redis (buckets, entries, metas, generations, indexes, blobs).
//! - [`conn`]: fred's configuration, the pools and the command budget; how a failed command is classified.
//! - [`txn`]: the connection that writes batches of Sets as one transaction.
//! - [`scripts`]: the Lua scripts (sources in `lua/`).
//! - [`read`]: Gets (entry, meta and generations in one `MGET`; large values over the bulk pool).
//! - [`write`]: Sets (batched transactions, only-if-absent, large values).
//! - [`invalidate`]: invalidation by key, selector, pattern and `all`.
//! - [`outage`]: up, down and unusable; verification and the monitor.
//! - [`continuity`]: whether the Redis reached continues the data verified (replication ids, offset
//!   samples, the journal replayed after a failover, markers, Sentinel).
//! - [`read_counts`]: read counts and last reads, counted here and flushed in batches.
//! - [`batch`]: the coalescer that sends concurrent Gets and Sets as one command.
//!
//! The design, and why each failure case cannot break the invalidation promise, is in
//! `docs/design/redis-tier.md`.

mod batch;
mod conn;
mod continuity;
mod invalidate;
mod layout;
mod outage;
mod read;
mod read_counts;
mod scripts;
mod txn;
mod write;

pub use write::PRUNE_EVERY;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;

use self::batch::{Coalescer, RunBatch};
use self::conn::Conn;
use self::layout::{Dim, Layout};
use self::outage::Outage;
use self::read::{Fetched, Read};
use self::read_counts::ReadCounts;
use self::scripts::Scripts;
use self::txn::TxnConnection;
use self::write::{Tokens, Write, Written};
use super::{Backend, BackendError, BackendStats, Hit, Removed, Stored, Target, TierKind};
use crate::config::RedisConfig;
use crate::keys::{CacheType, Key, Keyspace};

const TIER: &str = "redis";
/// Batches of Gets out to Redis at once (see [`batch`]): one being answered while the next fills (double
/// buffering). A batch's fixed cost (a fred command, a Redis read) is most of a small call's cost.
const GET_BATCHES_IN_FLIGHT: usize = 2;
/// Batches of Sets out at once. One: the Set connection carries one transaction at a time, and the Sets that
/// would have filled a second batch join a larger next one (docs/decisions/0004-get-coalescing.md).
const SET_BATCHES_IN_FLIGHT: usize = 1;
/// Most Gets sent to Redis as one `MGET`.
const GET_BATCH: usize = 64;
/// Most Sets sent to Redis as one transaction.
const SET_BATCH: usize = 32;

/// Counters of what the tier found in Redis.
#[derive(Debug, Default)]
struct TierStats {
    /// Redis `used_memory`.
    memory_bytes: AtomicU64,
    /// This keyspace's entries (index estimate).
    entries: AtomicU64,
    /// Reads that found an entry whose generations had ended (served as misses).
    invalidated_skipped: AtomicU64,
    /// Bookkeeping keys of the wrong type removed.
    repaired: AtomicU64,
    /// Sets Redis voided as run after their deadline, answered in time (see `lua/late.lua`).
    late_sets: AtomicU64,
    /// When the last warning about late Sets was logged (unix ms).
    late_warned_ms: AtomicU64,
    /// Index members that were not entries of this keyspace, left alone.
    foreign: AtomicU64,
}

/// The Redis tier.
pub struct Redis {
    conn: Conn,
    txn: TxnConnection,
    layout: Layout,
    /// The keyspaces whose bookkeeping the tier keeps (continuity markers, generations, statistics): the
    /// process' own, or every tenant's (see [`Redis::add_keyspaces`]).
    keyspaces: parking_lot::RwLock<Vec<Keyspace>>,
    scripts: Scripts,
    outage: Outage,
    reads: ReadCounts,
    stats: TierStats,
    wait_replicas: u32,
    /// Generation tokens last heard, for the metas of batched Sets.
    tokens: Tokens,
    /// Sets sent, to prune the indexes on one write in [`PRUNE_EVERY`].
    writes: AtomicU64,
    /// Concurrent Gets, coalesced into `MGET`s (set once, right after construction).
    gets: OnceLock<Coalescer<Read, Fetched>>,
    /// Concurrent Sets, coalesced into transactions (set once, right after construction).
    sets: OnceLock<Coalescer<Write, Written>>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.conn.target)
            .field("up", &self.is_up())
            .finish()
    }
}

/// Runs batches with `run` for as long as the tier exists (the coalescer holds no strong reference).
fn batch_runner<T, R, Fut>(
    redis: &Arc<Redis>,
    run: fn(Arc<Redis>, Vec<T>, Instant) -> Fut,
) -> RunBatch<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: Future<Output = Result<Vec<R>, BackendError>> + Send + 'static,
{
    let weak = Arc::downgrade(redis);
    Arc::new(move |items, oldest| match weak.upgrade() {
        Some(redis) => Box::pin(run(redis, items, oldest)),
        None => Box::pin(std::future::ready(Err(BackendError::Unavailable {
            tier: TIER,
            reason: "the Redis tier was closed".into(),
        }))),
    })
}

impl Redis {
    /// Builds the pools and starts connecting in the background (the server does not wait for Redis).
    ///
    /// # Errors
    /// Fails only on invalid settings (URL, TLS files), never because Redis is unreachable.
    pub fn connect(
        config: &RedisConfig,
        keyspaces: Vec<Keyspace>,
    ) -> Result<Arc<Self>, BackendError> {
        let conn = Conn::connect(config)?;
        let pool = conn.pool.clone();
        let txn = TxnConnection::new(txn::Target {
            primary: Arc::new(move || Conn::primary(&pool)),
            tls: conn.tls.clone().map(tokio_rustls::TlsConnector::from),
            username: conn.username.clone(),
            password: conn.password.clone(),
            database: conn.database,
            script: scripts::SET,
        });
        let redis = Arc::new(Self {
            conn,
            txn,
            layout: Layout::new(config.key_buckets),
            keyspaces: parking_lot::RwLock::new(keyspaces),
            scripts: Scripts::default(),
            outage: Outage::default(),
            reads: ReadCounts::default(),
            stats: TierStats::default(),
            wait_replicas: config.wait_replicas,
            tokens: Tokens::default(),
            writes: AtomicU64::new(0),
            gets: OnceLock::new(),
            sets: OnceLock::new(),
        });
        let fetch = batch_runner(&redis, |redis, reads, oldest| async move {
            redis.fetch(reads, oldest).await
        });
        let _ = redis
            .gets
            .set(Coalescer::new(GET_BATCHES_IN_FLIGHT, GET_BATCH, fetch));
        let store = batch_runner(&redis, |redis, writes, oldest| async move {
            redis.store(writes, oldest).await
        });
        let _ = redis
            .sets
            .set(Coalescer::new(SET_BATCHES_IN_FLIGHT, SET_BATCH, store));
        // A lost or re-established connection may mean a restarted or failed-over Redis: stop reading from
        // it until the monitor has verified it. Events arrive before fred's reconnect delay elapses.
        for client in redis.conn.pool.clients() {
            let weak = Arc::downgrade(&redis);
            drop(client.on_error(move |(err, _server)| {
                if let Some(redis) = weak.upgrade() {
                    *redis.outage.last_connection_error.lock() = Some(err.details().to_owned());
                    redis.connection_lost("connection error");
                }
                async { Ok(()) }
            }));
            let weak = Arc::downgrade(&redis);
            drop(client.on_reconnect(move |_server| {
                let redis = weak.upgrade();
                async move {
                    if let Some(redis) = redis {
                        redis.connection_lost("reconnected");
                        // The Set connection follows the primary fred reaches now.
                        redis.txn.reset().await;
                    }
                    Ok(())
                }
            }));
        }
        tokio::spawn(Self::monitor(Arc::downgrade(&redis)));
        tokio::spawn(Self::flush_reads_periodically(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// How many times Redis became verified and serving (each end of an outage).
    pub fn recoveries(&self) -> u64 {
        self.outage.recoveries()
    }

    /// Why Redis cannot be used by this service, when it is for a reason other than a passing outage.
    pub fn unusable_reason(&self) -> Option<&'static str> {
        self.outage.unusable().map(|(reason, _)| reason)
    }

    /// Why Redis cannot be used now, in words.
    pub fn unavailable_reason(&self) -> String {
        self.unavailable().to_string()
    }

    /// Makes sure `key` is deleted from Redis before Redis serves reads again: a write answered by the
    /// memory tier during an outage (Redis may hold an older value under it).
    pub async fn remember_write(&self, key: &Key) {
        let keys = self.layout.entry_keys(key.base(), key);
        self.remember_uncertain(keys.bucket, keys.entry, false)
            .await;
    }
}

#[async_trait]
impl Backend for Redis {
    async fn get(&self, key: &Key) -> Result<Option<Hit>, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        self.read(key).await
    }

    async fn set(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<Stored, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        let stored = self.write(key, envelope, ttl, only_if_absent).await?;
        Ok(Stored {
            stored,
            tier: TierKind::Redis,
            fallback: false,
        })
    }

    async fn invalidate(&self, target: &Target) -> Result<Removed, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        let removed = self.apply(target).await?;
        self.outage.journal(target);
        Ok(removed)
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            redis_connected: self.is_up(),
            redis_memory_bytes: self.stats.memory_bytes.load(Ordering::Relaxed),
            redis_entries: Some(self.stats.entries.load(Ordering::Relaxed)),
            invalidations_replayed: self.outage.replayed.load(Ordering::Relaxed),
            redis_down_seconds: self.outage.down_seconds(),
            redis_unusable: self.unusable_reason(),
            redis_repaired_keys: self.stats.repaired.load(Ordering::Relaxed),
            redis_late_sets: self.stats.late_sets.load(Ordering::Relaxed),
            redis_foreign_members: self.stats.foreign.load(Ordering::Relaxed),
            redis_invalidated_reads: self.stats.invalidated_skipped.load(Ordering::Relaxed),
            redis_history_flushes: self.outage.flushes.load(Ordering::Relaxed),
            ..BackendStats::default()
        }
    }

    async fn refresh_stats(&self) {
        if !self.is_up() {
            return;
        }
        if let Ok(info) = self
            .call(
                self.fast()
                    .info::<String>(Some(fred::types::InfoKind::Memory)),
            )
            .await
            && let Some(used) = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
        {
            self.stats.memory_bytes.store(used, Ordering::Relaxed);
        }
        let mut entries = 0u64;
        for keyspace in self.keyspaces() {
            for b in 0..self.layout.buckets() {
                let prefix = self.layout.bucket_prefix(keyspace.base(), b);
                for t in CacheType::ALL {
                    let index = self.layout.index_key(&prefix, &Dim::Type(t));
                    if let Ok(n) = self.call(self.fast().zcard::<u64, _>(index)).await {
                        entries += n;
                    }
                }
            }
        }
        self.stats.entries.store(entries, Ordering::Relaxed);
    }

    fn is_serving(&self) -> bool {
        self.is_up()
    }

    async fn warm_up(&self, within: Duration) {
        self.wait_up(within).await;
    }

    async fn add_keyspaces(&self, keyspaces: &[Keyspace]) -> Result<(), BackendError> {
        self.verify_keyspaces(keyspaces).await
    }

    async fn close(&self) {
        self.flush_reads().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.pool.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.bulk.quit()).await;
        if let Some(waits) = &self.conn.waits {
            let _ = tokio::time::timeout(Duration::from_secs(1), waits.quit()).await;
        }
    }
}
