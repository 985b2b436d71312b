//! Continuity: whether the data of the Redis now reached continues what this server verified.
//!
//! Redis' replication ids tell whether the data of the Redis now reached continues the data this
//! server last verified: the same `master_replid` (the same process), or one whose `master_replid2` is the
//! old id — a promoted replica, or a primary restarted from its own snapshot (Redis 7 marks both so) — and
//! whose `second_repl_offset` tells how much of the old history it holds, checked against
//! `master_repl_offset` samples taken every second. Invalidations acknowledged after the last sample it
//! covers are applied again from a bounded journal; if the journal lost one, or no sample is covered, that is
//! unknown. Anything unknown (a restart without history; a different Redis) ends every generation of every
//! bucket: the whole cache becomes misses at the cost of a few commands. A server that starts fresh compares
//! each bucket's marker (the replication id it was last verified on) with the current id instead.
//!
//! With a `redis-sentinel://` URL, the sentinels are asked which node is the primary
//! ([`Redis::follows_sentinel`]); while up, the monitor checks the primary and samples its offset
//! ([`Redis::check_primary`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;

use super::Redis;
use super::conn::Unusable;
use super::outage::Outage;
use crate::backend::{BackendError, Target};
use crate::keys::Keyspace;

/// How long acknowledged invalidations are kept for a failover's replay, and how many.
const JOURNAL_AGE: Duration = Duration::from_secs(120);
const JOURNAL_LEN: usize = 10_000;
/// Offset samples kept (one a second while up).
const SAMPLES: usize = 240;

/// What this server knows of the history of the Redis it uses.
#[derive(Debug, Default)]
pub(super) struct History {
    /// The replication id of the Redis last verified.
    pub replid: Option<String>,
    /// (when asked, `master_repl_offset`): every write acknowledged before the instant is at or below it.
    pub samples: VecDeque<(Instant, u64)>,
    /// Invalidations acknowledged recently, for a failover's replay.
    pub journal: VecDeque<(Instant, Target)>,
    /// The journal lost entries at or after this instant (too many).
    pub truncated_at: Option<Instant>,
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
pub(super) enum Continuity {
    /// The same data: nothing to do.
    Same,
    /// Continues it, but may lack invalidations acknowledged since this instant: replay them.
    ReplaySince(Instant),
    /// Unknown: end every generation.
    Unknown,
    /// This server has no history: compare the buckets' markers.
    Fresh,
}

impl Outage {
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
    /// `INFO replication` and `cluster` of the Redis reached.
    pub(super) async fn replication(&self) -> Result<Replication, BackendError> {
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
    pub(super) fn continuity(&self, now: &Replication) -> Continuity {
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
    /// A fresh server: each bucket's marker must name this Redis' replication id; a bucket whose marker does
    /// not (a restart, possibly from a snapshot; a failover not yet verified by a running server; an
    /// evicted marker; a new Redis) ends its generations.
    pub(super) async fn check_markers(&self, info: &Replication) -> Result<(), BackendError> {
        self.check_markers_of(&self.keyspaces(), &info.replid).await
    }

    /// [`Self::check_markers`] for some keyspaces, against the replication id `replid`.
    pub(super) async fn check_markers_of(
        &self,
        keyspaces: &[Keyspace],
        replid: &str,
    ) -> Result<(), BackendError> {
        let mut stale = Vec::new();
        for (keyspace, b) in keyspaces
            .iter()
            .flat_map(|ks| (0..self.layout.buckets()).map(move |b| (ks, b)))
        {
            let base = keyspace.base();
            let marker: Option<String> = self
                .call(self.fast().get(self.layout.marker_key(base, b)))
                .await
                .or_else(|e| match e {
                    // A marker of the wrong type: replaced below.
                    BackendError::Internal { .. } => Ok(None),
                    e => Err(e),
                })?;
            // Only the same replication id vouches for the data. A `master_replid2` naming the marker's id
            // is either a promoted replica or a primary restarted from its own snapshot (Redis 7 keeps the
            // old id then): a fresh server has no history to tell them apart, so it ends the generations.
            let known = marker.is_some_and(|m| m == replid);
            if !known {
                stale.push(self.layout.bucket_prefix(base, b));
            }
        }
        if !stale.is_empty() {
            self.end_every_generation(Some(&stale)).await?;
            tracing::info!(redis = %self.conn.target, buckets = stale.len(), "buckets not verified on this redis before: their entries are now misses");
        }
        Ok(())
    }

    pub(super) async fn write_markers(&self, replid: &str) -> Result<(), BackendError> {
        self.write_markers_of(&self.keyspaces(), replid).await
    }

    async fn write_markers_of(
        &self,
        keyspaces: &[Keyspace],
        replid: &str,
    ) -> Result<(), BackendError> {
        for keyspace in keyspaces {
            for b in 0..self.layout.buckets() {
                let key = self.layout.marker_key(keyspace.base(), b);
                let _: () = self
                    .call(self.fast().set(key, replid, None, None, false))
                    .await?;
            }
        }
        Ok(())
    }

    /// The keyspaces whose bookkeeping this tier keeps.
    pub(super) fn keyspaces(&self) -> Vec<Keyspace> {
        self.keyspaces.read().clone()
    }

    /// Takes on keyspaces (tenants added by a reload of the tokens file): each is checked like a fresh
    /// server's (a bucket whose marker does not name the verified Redis ends its generations) before any of
    /// its calls is served. Needs Redis up and verified; on failure nothing was added, and the caller tries
    /// again later.
    pub(crate) async fn verify_keyspaces(
        &self,
        keyspaces: &[Keyspace],
    ) -> Result<(), BackendError> {
        let fresh: Vec<Keyspace> = {
            let known = self.keyspaces.read();
            keyspaces
                .iter()
                .filter(|ks| !known.contains(ks))
                .cloned()
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let replid = self.outage.history.lock().replid.clone();
        let Some(replid) = replid.filter(|_| self.is_up()) else {
            return Err(self.unavailable());
        };
        // Listed first, so that a continuity flush running meanwhile covers them too.
        self.keyspaces.write().extend(fresh.iter().cloned());
        let checked = async {
            self.check_markers_of(&fresh, &replid).await?;
            self.write_markers_of(&fresh, &replid).await
        };
        if let Err(e) = checked.await {
            self.keyspaces.write().retain(|ks| !fresh.contains(ks));
            return Err(e);
        }
        tracing::info!(redis = %self.conn.target, keyspaces = fresh.len(), "new tenants' keyspaces verified");
        Ok(())
    }
    /// With Sentinel: whether fred is connected to the primary Sentinel names. When it is not (a promotion:
    /// the old primary may answer as one for seconds more, and writes there would be lost), the tier becomes
    /// unusable (`not_primary`) and every connection is made again, through Sentinel, to the new primary.
    /// True without Sentinel, or when no Sentinel answers (the role checks still apply).
    pub(super) async fn follows_sentinel(&self) -> bool {
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
    pub(super) async fn check_primary(&self) {
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
}
