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
//! Before Redis is used again, [`super::continuity`] decides whether its data continues what this server
//! verified.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, Notify};

use super::conn::Unusable;
use super::continuity::{Continuity, History};
use super::{Redis, TIER};
use crate::backend::{BackendError, Target, now_ms};

/// Most keys remembered for deletion on recovery; past it, recovery ends every generation instead.
pub(super) const MAX_UNCERTAIN_KEYS: usize = 10_000;
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

/// The tier's state (see the module's documentation).
#[derive(Debug)]
pub(super) struct Outage {
    up: AtomicBool,
    /// Wakes the monitor.
    pub wake: Notify,
    /// Held (briefly, across awaits) by the last step of a recovery, so nothing is remembered between the
    /// final deletions and marking Redis up.
    uncertain: AsyncMutex<Uncertain>,
    pub history: Mutex<History>,
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

    pub(super) fn set_down(&self) -> bool {
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
            if self.delete_entries(vec![entry.clone()]).await.is_ok() {
                return;
            }
        }
        let mut uncertain = self.outage.uncertain.lock().await;
        uncertain.add(bucket, entry);
        uncertain.late_writes |= late;
        self.set_down();
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
        let keys = batch.keys.iter().map(|(_, k)| k.clone()).collect();
        self.delete_entries(keys).await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
