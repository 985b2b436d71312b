//! The outage protocol: when Redis is used, when it is not, and what is checked before it is used again.
//!
//! - **Up** only once verified: reachable, the primary (`role:master`, never a replica that a failover
//!   demoted), not a Cluster node, and holding no data older than what this server acknowledged.
//! - **Down** on any outage error (a timeout, a lost or re-established connection): calls fall back (hybrid)
//!   or fail (redis) at once, and a monitor verifies Redis again.
//! - **Unusable** when Redis answers that it cannot serve us (a replica, a Cluster node, refused credentials):
//!   down, with a reason that health, metrics and the log report until it is fixed.
//!
//! An invalidation is acknowledged only once applied to Redis: nothing is remembered for later. What is
//! remembered are writes whose outcome Redis may not reflect: a Set answered by the memory tier during an
//! outage (Redis may hold an older value) and a Set that timed out (fred cannot cancel a written command: it
//! may land late). Their keys are deleted from Redis before it serves reads again.
//!
//! Continuity. Redis' replication ids tell whether the data of the Redis now reached continues the data this
//! server last verified: the same `master_replid` (the same process), or one whose `master_replid2` is the
//! old id — a promoted replica, or a primary restarted from its own snapshot (Redis 7 marks both so) — and
//! whose `second_repl_offset` tells how much of the old history it holds, checked against
//! `master_repl_offset` samples taken every second. Invalidations acknowledged after the last sample it
//! covers are applied again from a bounded journal; if the journal lost one, or no sample is covered, that is
//! unknown. Anything unknown (a restart without history; a different Redis) ends every generation of every
//! bucket: the whole cache becomes misses at the cost of a few commands. A server that starts fresh compares
//! each bucket's marker (the replication id it was last verified on) with the current id instead.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, Notify};

use super::conn::Unusable;
use super::{Redis, TIER};
use crate::backend::{BackendError, Target, now_ms};

/// Most keys remembered for deletion on recovery; past it, recovery ends every generation instead.
pub(super) const MAX_UNCERTAIN_KEYS: usize = 10_000;
/// How long acknowledged invalidations are kept for a failover's replay, and how many.
const JOURNAL_AGE: Duration = Duration::from_secs(120);
const JOURNAL_LEN: usize = 10_000;
/// Offset samples kept (one a second while up).
const SAMPLES: usize = 240;
/// Wait before deleting writes whose outcome is unknown, so a late write from a hung connection lands first.
const SETTLE_DELAY: Duration = Duration::from_millis(200);

/// Keys to delete from Redis before it serves reads again.
#[derive(Debug, Default)]
pub(super) struct Uncertain {
    /// (bucket, entry key) of each.
    keys: HashSet<(u32, String)>,
    /// Some write timed out: it may still land, so wait before deleting.
    late_writes: bool,
    /// Too many: end every generation instead.
    everything: bool,
}

impl Uncertain {
    fn add(&mut self, bucket: u32, entry: String) {
        if self.everything {
            return;
        }
        if self.keys.len() >= MAX_UNCERTAIN_KEYS {
            self.keys.clear();
            self.everything = true;
        } else {
            self.keys.insert((bucket, entry));
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.everything
    }
}

/// What this server knows of the history of the Redis it uses.
#[derive(Debug, Default)]
struct History {
    /// The replication id of the Redis last verified.
    replid: Option<String>,
    /// (when asked, `master_repl_offset`): every write acknowledged before the instant is at or below it.
    samples: VecDeque<(Instant, u64)>,
    /// Invalidations acknowledged recently, for a failover's replay.
    journal: VecDeque<(Instant, Target)>,
    /// The journal lost entries at or after this instant (too many).
    truncated_at: Option<Instant>,
}

/// Redis' `INFO replication` (and `cluster_enabled`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Replication {
    pub role: String,
    pub replid: String,
    pub replid2: String,
    pub second_offset: i64,
    pub offset: u64,
    pub cluster: bool,
}

impl Replication {
    pub fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or("")
        };
        Self {
            role: field("role").to_owned(),
            replid: field("master_replid").to_owned(),
            replid2: field("master_replid2").to_owned(),
            second_offset: field("second_repl_offset").parse().unwrap_or(-1),
            offset: field("master_repl_offset").parse().unwrap_or(0),
            cluster: field("cluster_enabled") == "1",
        }
    }
}

/// What a verification found about the data of the Redis reached.
#[derive(Debug, PartialEq, Eq)]
enum Continuity {
    /// The same data: nothing to do.
    Same,
    /// Continues it, but may lack invalidations acknowledged since this instant: replay them.
    ReplaySince(Instant),
    /// Unknown: end every generation.
    Unknown,
    /// This server has no history: compare the buckets' markers.
    Fresh,
}

/// The tier's state (see the module's documentation).
#[derive(Debug)]
pub(super) struct Outage {
    up: AtomicBool,
    /// Wakes the monitor.
    pub wake: Notify,
    /// Held (briefly, across awaits) by the last step of a recovery, so nothing is remembered between the
    /// final deletions and marking Redis up.
    uncertain: AsyncMutex<Uncertain>,
    history: Mutex<History>,
    unusable: Mutex<Option<(Unusable, String)>>,
    pub last_connection_error: Mutex<Option<String>>,
    recoveries: AtomicU64,
    /// Generations ended because continuity could not be shown, and invalidations replayed after a failover.
    pub flushes: AtomicU64,
    pub replayed: AtomicU64,
    down_total_ms: AtomicU64,
    down_since_ms: AtomicU64,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(false),
            wake: Notify::new(),
            uncertain: AsyncMutex::new(Uncertain::default()),
            history: Mutex::new(History::default()),
            unusable: Mutex::new(None),
            last_connection_error: Mutex::new(None),
            recoveries: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            down_total_ms: AtomicU64::new(0),
            down_since_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl Outage {
    /// Seconds Redis has been unusable since start (including the current outage).
    pub fn down_seconds(&self) -> f64 {
        let since = self.down_since_ms.load(Ordering::Acquire);
        let current = if since > 0 {
            now_ms().saturating_sub(since)
        } else {
            0
        };
        (self.down_total_ms.load(Ordering::Relaxed) + current) as f64 / 1000.0
    }

    /// Why Redis cannot be used, when it is for a reason other than a passing outage.
    pub fn unusable(&self) -> Option<(&'static str, String)> {
        self.unusable
            .lock()
            .as_ref()
            .map(|(u, detail)| (u.reason(), detail.clone()))
    }

    /// How many times Redis became verified and serving (each end of an outage).
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Acquire)
    }

    /// Records an acknowledged invalidation for a failover's replay.
    pub fn journal(&self, target: &Target) {
        let mut h = self.history.lock();
        let now = Instant::now();
        // A dropped invalidation cannot be replayed: a failover whose new primary lacks writes from before
        // its acknowledgement can then no longer be repaired by a replay (see `continuity`).
        while let Some((t, _)) = h.journal.front()
            && (now.duration_since(*t) > JOURNAL_AGE || h.journal.len() >= JOURNAL_LEN)
        {
            let t = *t;
            h.journal.pop_front();
            h.truncated_at = Some(h.truncated_at.map_or(t, |lost| lost.max(t)));
        }
        h.journal.push_back((now, target.clone()));
    }
}

impl Redis {
    /// Whether Redis is verified and serving.
    pub fn is_up(&self) -> bool {
        self.outage.up.load(Ordering::Acquire)
    }

    pub(super) fn unavailable(&self) -> BackendError {
        let reason = match self.outage.unusable() {
            Some((reason, _)) => format!("{} cannot be used: {reason}", self.conn.target),
            None => format!("{} is not reachable", self.conn.target),
        };
        BackendError::Unavailable { tier: TIER, reason }
    }

    fn note_down(&self) {
        // Redis may come back without its data: read counts are fetched again after recovery.
        self.reads.clear();
        let _ = self.outage.down_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    fn set_down(&self) -> bool {
        let was_up = self.outage.up.swap(false, Ordering::AcqRel);
        if was_up {
            self.note_down();
        }
        self.outage.wake.notify_one();
        was_up
    }

    pub(super) fn connection_lost(&self, what: &str) {
        if self.set_down() {
            tracing::warn!(redis = %self.conn.target, event = what, "redis connection lost; verifying before serving from it again");
        }
    }

    pub(super) fn mark_down(&self, err: &BackendError) {
        if self.set_down() {
            tracing::warn!(redis = %self.conn.target, error = %err, "redis marked down");
        }
    }

    /// Redis answered that it cannot serve this service: down until a verification succeeds, with the
    /// reason kept for health and metrics (logged once per reason).
    pub(super) fn mark_unusable(&self, unusable: Unusable, detail: &str) {
        let first = {
            let mut current = self.outage.unusable.lock();
            let first = current.as_ref().is_none_or(|(u, _)| *u != unusable);
            *current = Some((unusable, detail.chars().take(200).collect()));
            first
        };
        if first {
            tracing::error!(redis = %self.conn.target, reason = unusable.reason(), detail, "redis cannot be used by this service; serving without it until it can");
        }
        self.set_down();
    }

    /// Waits until Redis is verified and serving, at most `within`; returns whether it is.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Makes sure the entry `entry` of `bucket` is deleted from Redis before Redis serves reads again (its
    /// value there may be older than one acknowledged during the outage, or a timed-out write may still
    /// land): remembered while Redis is down, deleted now if it came back meanwhile.
    pub(super) async fn remember_uncertain(&self, bucket: u32, entry: String, late: bool) {
        for _ in 0..3 {
            {
                let mut uncertain = self.outage.uncertain.lock().await;
                if !self.is_up() {
                    uncertain.add(bucket, entry);
                    uncertain.late_writes |= late;
                    self.outage.wake.notify_one();
                    return;
                }
            }
            if self
                .delete_entries(bucket, vec![entry.clone()])
                .await
                .is_ok()
            {
                return;
            }
        }
        let mut uncertain = self.outage.uncertain.lock().await;
        uncertain.add(bucket, entry);
        uncertain.late_writes |= late;
        self.set_down();
    }

    /// `INFO replication` and `cluster` of the Redis reached.
    async fn replication(&self) -> Result<Replication, BackendError> {
        const INFO: fred::types::CustomCommand = fred::types::CustomCommand {
            cmd: fred::bytes_utils::Str::from_static("INFO"),
            cluster_hash: fred::types::ClusterHash::Random,
            blocking: false,
        };
        let info: String = self
            .call(self.fast().custom(
                INFO,
                vec![Value::from_static_str("replication"), "cluster".into()],
            ))
            .await?;
        Ok(Replication::parse(&info))
    }

    /// How the data of the Redis reached relates to what this server last verified.
    fn continuity(&self, now: &Replication) -> Continuity {
        let h = self.outage.history.lock();
        let Some(known) = &h.replid else {
            return Continuity::Fresh;
        };
        if *known == now.replid {
            return Continuity::Same;
        }
        if *known != now.replid2 || now.second_offset < 1 {
            return Continuity::Unknown;
        }
        // The new primary holds the old history up to `second_offset - 1`: every write acknowledged before
        // the latest sample at or below it is there; what came after is replayed from the journal.
        let covered = (now.second_offset - 1) as u64;
        let safe_since = h
            .samples
            .iter()
            .rev()
            .find(|(_, offset)| *offset <= covered)
            .map(|(t, _)| *t);
        match safe_since {
            Some(t) if h.truncated_at.is_none_or(|lost| lost < t) => {
                if h.journal.iter().any(|(acked, _)| *acked >= t) {
                    Continuity::ReplaySince(t)
                } else {
                    Continuity::Same
                }
            }
            _ if h.journal.is_empty() && h.truncated_at.is_none() => Continuity::Same,
            _ => Continuity::Unknown,
        }
    }

    /// Checks Redis is the primary and holds no data older than our invalidations, deletes the uncertain
    /// keys, and only then marks the tier up.
    pub(super) async fn verify_and_recover(&self) -> Result<(), BackendError> {
        let _: String = self.call(self.fast().ping(None)).await?;
        if !self.follows_sentinel().await {
            return Err(self.unavailable());
        }
        let info = self.replication().await?;
        if info.cluster {
            self.mark_unusable(
                Unusable::ClusterNode,
                "cluster_enabled:1 (use a redis-cluster:// URL)",
            );
            return Err(self.unavailable());
        }
        if info.role != "master" {
            self.mark_unusable(Unusable::NotPrimary, &format!("role:{}", info.role));
            // Behind one failover address, a new connection may reach the new primary.
            let _ =
                tokio::time::timeout(self.conn.budget, self.conn.pool.force_reconnection()).await;
            return Err(self.unavailable());
        }
        // What of the history survives: the journal whenever the data continues (a later failover may still
        // need its invalidations), the offset samples only on the same primary.
        let (keep_journal, keep_samples) = match self.continuity(&info) {
            Continuity::Same => (true, true),
            Continuity::ReplaySince(since) => {
                let targets: Vec<Target> = self
                    .outage
                    .history
                    .lock()
                    .journal
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(_, target)| target.clone())
                    .collect();
                self.replay(&targets).await?;
                self.outage
                    .replayed
                    .fetch_add(targets.len() as u64, Ordering::Relaxed);
                tracing::warn!(redis = %self.conn.target, replayed = targets.len(), "failover: the new primary may lack recent invalidations; applied them again");
                (true, false)
            }
            Continuity::Unknown => {
                self.end_every_generation(None).await?;
                tracing::warn!(redis = %self.conn.target, "redis history changed (restart, snapshot or another instance): every entry of this service is now a miss");
                (false, false)
            }
            Continuity::Fresh => {
                self.check_markers(&info).await?;
                (false, false)
            }
        };
        self.write_markers(&info.replid).await?;
        self.call(self.scripts.load_all(self.conn.pool.next()))
            .await?;
        {
            let mut h = self.outage.history.lock();
            h.replid = Some(info.replid.clone());
            if !keep_samples {
                h.samples.clear();
            }
            if !keep_journal {
                h.journal.clear();
                h.truncated_at = None;
            }
        }
        self.finish_recovery().await
    }

    /// A fresh server: each bucket's marker must name this Redis' replication id; a bucket whose marker does
    /// not (a restart, possibly from a snapshot; a failover not yet verified by a running server; an
    /// evicted marker; a new Redis) ends its generations.
    async fn check_markers(&self, info: &Replication) -> Result<(), BackendError> {
        let base = self.keyspace.base().to_owned();
        let mut stale = Vec::new();
        for b in 0..self.layout.buckets() {
            let marker: Option<String> = self
                .call(self.fast().get(self.layout.marker_key(&base, b)))
                .await
                .or_else(|e| match e {
                    // A marker of the wrong type: replaced below.
                    BackendError::Internal { .. } => Ok(None),
                    e => Err(e),
                })?;
            // Only the same replication id vouches for the data. A `master_replid2` naming the marker's id
            // is either a promoted replica or a primary restarted from its own snapshot (Redis 7 keeps the
            // old id then): a fresh server has no history to tell them apart, so it ends the generations.
            let known = marker.is_some_and(|m| m == info.replid);
            if !known {
                stale.push(b);
            }
        }
        if !stale.is_empty() {
            self.end_every_generation(Some(&stale)).await?;
            tracing::info!(redis = %self.conn.target, buckets = stale.len(), "buckets not verified on this redis before: their entries are now misses");
        }
        Ok(())
    }

    async fn write_markers(&self, replid: &str) -> Result<(), BackendError> {
        let base = self.keyspace.base().to_owned();
        for b in 0..self.layout.buckets() {
            let key = self.layout.marker_key(&base, b);
            let _: () = self
                .call(self.fast().set(key, replid, None, None, false))
                .await?;
        }
        Ok(())
    }

    /// Deletes the uncertain keys (in rounds outside the lock, the rest under it) and marks the tier up.
    async fn finish_recovery(&self) -> Result<(), BackendError> {
        for _ in 0..8 {
            let batch = std::mem::take(&mut *self.outage.uncertain.lock().await);
            if batch.keys.len() <= 64 && !batch.everything && !batch.late_writes {
                self.merge_uncertain(batch).await;
                break;
            }
            if let Err(e) = self.delete_uncertain(&batch).await {
                self.merge_uncertain(batch).await;
                return Err(e);
            }
        }
        let mut uncertain = self.outage.uncertain.lock().await;
        let batch = std::mem::take(&mut *uncertain);
        if let Err(e) = self.delete_uncertain(&batch).await {
            *uncertain = batch;
            return Err(e);
        }
        *self.outage.unusable.lock() = None;
        self.outage.up.store(true, Ordering::Release);
        self.outage.recoveries.fetch_add(1, Ordering::AcqRel);
        let since = self.outage.down_since_ms.swap(0, Ordering::AcqRel);
        if since > 0 {
            self.outage
                .down_total_ms
                .fetch_add(now_ms().saturating_sub(since), Ordering::Relaxed);
        }
        drop(uncertain);
        tracing::info!(redis = %self.conn.target, "redis verified and serving");
        Ok(())
    }

    async fn merge_uncertain(&self, other: Uncertain) {
        let mut uncertain = self.outage.uncertain.lock().await;
        uncertain.late_writes |= other.late_writes;
        uncertain.everything |= other.everything;
        for (b, k) in other.keys {
            uncertain.add(b, k);
        }
    }

    async fn delete_uncertain(&self, batch: &Uncertain) -> Result<(), BackendError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.late_writes {
            tokio::time::sleep(SETTLE_DELAY).await;
        }
        if batch.everything {
            return self.end_every_generation(None).await;
        }
        let mut by_bucket: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for (b, k) in &batch.keys {
            by_bucket.entry(*b).or_default().push(k.clone());
        }
        for (b, keys) in by_bucket {
            self.delete_entries(b, keys).await?;
        }
        tracing::info!(redis = %self.conn.target, deleted = batch.keys.len(), "deleted keys written with an unknown outcome during the outage");
        Ok(())
    }

    /// The monitor: verifies Redis while it is down; while it is up, checks every second that it is still
    /// the same primary and samples its replication offset.
    pub(super) async fn monitor(this: std::sync::Weak<Self>) {
        let mut delay = Duration::from_millis(20);
        let mut logged_outage = false;
        let mut ticks = 0u32;
        loop {
            let Some(redis) = this.upgrade() else { return };
            if redis.is_up() {
                // Sentinel is asked four times a second (a promotion is followed within about that, plus a
                // reconnection); Redis itself once a second.
                let every = if redis.conn.sentinels.is_some() { 4 } else { 1 };
                let tick = tokio::time::sleep(Duration::from_secs(1) / every);
                let woken = tokio::select! { () = redis.outage.wake.notified() => true, () = tick => false };
                drop(redis);
                let Some(redis) = this.upgrade() else { return };
                ticks += 1;
                if redis.is_up()
                    && redis.follows_sentinel().await
                    && (woken || ticks.is_multiple_of(every))
                {
                    redis.check_primary().await;
                }
                delay = Duration::from_millis(20);
                continue;
            }
            match redis.verify_and_recover().await {
                Ok(()) => {
                    delay = Duration::from_millis(20);
                    logged_outage = false;
                }
                Err(e) => {
                    tracing::debug!(redis = %redis.conn.target, error = %e, "verification failed");
                    if !logged_outage && redis.outage.unusable().is_none() {
                        let connection = redis
                            .outage
                            .last_connection_error
                            .lock()
                            .clone()
                            .unwrap_or_else(|| "none reported".into());
                        tracing::warn!(redis = %redis.conn.target, error = %e, connection_error = %connection, "redis unreachable; retrying in the background");
                        logged_outage = true;
                    }
                    drop(redis);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// With Sentinel: whether fred is connected to the primary Sentinel names. When it is not (a promotion:
    /// the old primary may answer as one for seconds more, and writes there would be lost), the tier becomes
    /// unusable (`not_primary`) and every connection is made again, through Sentinel, to the new primary.
    /// True without Sentinel, or when no Sentinel answers (the role checks still apply).
    async fn follows_sentinel(&self) -> bool {
        let Some(sentinels) = &self.conn.sentinels else {
            return true;
        };
        let Some(named) = sentinels.primary(self.conn.budget).await else {
            return true;
        };
        let connected = super::conn::Conn::primary(&self.conn.pool);
        if connected.as_ref() == Some(&named) {
            return true;
        }
        tracing::debug!(redis = %self.conn.target, ?connected, ?named, "connected to another node than the primary sentinel names");
        self.mark_unusable(
            Unusable::NotPrimary,
            &format!("sentinel names {}:{} as the primary", named.0, named.1),
        );
        let budget = self.conn.budget;
        let _ = tokio::time::timeout(budget, self.conn.pool.force_reconnection()).await;
        let _ = tokio::time::timeout(budget, self.conn.bulk.force_reconnection()).await;
        if let Some(waits) = &self.conn.waits {
            let _ = tokio::time::timeout(budget, waits.force_reconnection()).await;
        }
        self.txn.reset().await;
        false
    }

    /// One check of a Redis that is up: still the primary we verified? Samples its offset.
    async fn check_primary(&self) {
        let asked = Instant::now();
        let info = match self.replication().await {
            Ok(info) => info,
            Err(_) => return,
        };
        if info.role != "master" {
            self.mark_unusable(Unusable::NotPrimary, &format!("role:{}", info.role));
            return;
        }
        let mut h = self.outage.history.lock();
        if h.replid.as_deref() != Some(info.replid.as_str()) {
            drop(h);
            tracing::warn!(redis = %self.conn.target, "redis replication id changed (restart or failover): verifying before serving from it again");
            self.set_down();
            return;
        }
        if h.samples.len() >= SAMPLES {
            h.samples.pop_front();
        }
        h.samples.push_back((asked, info.offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc\r\nmaster_replid2:0000\r\nmaster_repl_offset:1234\r\nsecond_repl_offset:-1\r\n# Cluster\r\ncluster_enabled:0\r\n";
        let r = Replication::parse(info);
        assert_eq!(r.role, "master");
        assert_eq!(r.replid, "abc");
        assert_eq!(r.replid2, "0000");
        assert_eq!(r.offset, 1234);
        assert_eq!(r.second_offset, -1);
        assert!(!r.cluster);
    }

    #[test]
    fn uncertain_keys_turn_into_everything_past_the_bound() {
        let mut u = Uncertain::default();
        for i in 0..=MAX_UNCERTAIN_KEYS {
            u.add(0, format!("k{i}"));
        }
        assert!(u.everything);
        assert!(u.keys.is_empty());
    }
}
