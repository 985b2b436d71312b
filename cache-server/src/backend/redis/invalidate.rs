//! Invalidation: by key, selector, pattern and `all`. Correctness never rests on an index: a selector ends
//! the generations of the dimensions it names (every entry that recorded them becomes a miss at once,
//! whatever Redis evicted), then drains their indexes to reclaim memory and count what it removed. A
//! selector of several fields walks the most selective index and deletes what matches; an index that is
//! gone ends its generation instead. Only names that are entries of this keyspace are ever deleted.
//!
//! An invalidation is acknowledged once applied to the primary and, when `wait_replicas` is set, once that
//! many replicas acknowledged it (`WAIT`): the commands of one invalidation go over one connection, which is
//! what `WAIT` measures.

use fred::prelude::*;
use fred::types::Value;
use fred::types::scan::Scanner as _;
use futures::TryStreamExt as _;

use super::layout::{Dim, bucket_prefix_of};
use super::{Redis, TIER};
use crate::backend::{BackendError, Removed, Target};
use crate::keys::{CacheType, KeyTags, Keyspace, Selector, glob_match, parse_rendered};

/// Members removed per drain step (one Lua call each, so Redis is never blocked long).
const DRAIN_BATCH: u32 = 500;
/// Keys per SCAN step for pattern invalidation.
const SCAN_COUNT: u32 = 1000;

/// What a removal script answered.
struct Outcome {
    removed: Removed,
    popped: u64,
}

impl Redis {
    fn outcome(&self, v: &Value, popped_at: Option<usize>) -> Outcome {
        let Value::Array(items) = v else {
            return Outcome {
                removed: Removed::default(),
                popped: 0,
            };
        };
        let n = |i: usize| items.get(i).and_then(Value::as_u64).unwrap_or(0);
        let (foreign_at, repaired_at) = match popped_at {
            Some(p) => (p + 1, p + 2),
            None => (5, 6),
        };
        let foreign = n(foreign_at);
        if foreign > 0 {
            self.stats
                .foreign
                .fetch_add(foreign, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(redis = %self.conn.target, foreign, "index members that are not entries of this keyspace were left alone");
        }
        self.note_repaired(n(repaired_at) as i64);
        Outcome {
            removed: Removed([n(0), n(1), n(2), n(3), n(4)]),
            popped: popped_at.map_or(0, n),
        }
    }

    /// Applies an invalidation to Redis (see the module's documentation).
    pub(super) async fn apply(&self, target: &Target) -> Result<Removed, BackendError> {
        let client = self.invalidation_client();
        let removed = self.apply_on(&client, target).await?;
        self.wait_for_replicas(&client).await?;
        Ok(removed)
    }

    /// Applies `targets` again (a failover's replay): several at a time over one connection, each once,
    /// then one `WAIT` for all of them. A new primary's replicas may take seconds to follow it: the `WAIT`
    /// is best effort, since the replay only has to reach the primary before it serves (the server keeps its
    /// journal, so a failover before the replicas caught up is replayed, or ends the generations, again).
    pub(super) async fn replay(&self, targets: &[Target]) -> Result<(), BackendError> {
        const AT_ONCE: usize = 16;
        let client = self.invalidation_client();
        let mut seen = std::collections::HashSet::new();
        let mut distinct: Vec<&Target> = Vec::with_capacity(targets.len());
        for target in targets {
            if seen.insert(format!("{target:?}")) {
                distinct.push(target);
            }
        }
        for chunk in distinct.chunks(AT_ONCE) {
            let mut applied = Vec::with_capacity(chunk.len());
            for target in chunk {
                applied.push(Box::pin(self.apply_on(&client, target)));
            }
            futures::future::try_join_all(applied).await?;
        }
        if let Err(e) = self.wait_for_replicas(&client).await {
            tracing::warn!(redis = %self.conn.target, error = %e, "replayed invalidations not yet on the new primary's replicas");
        }
        Ok(())
    }

    async fn apply_on(&self, client: &Client, target: &Target) -> Result<Removed, BackendError> {
        let client = client.clone();
        Ok(match target {
            Target::Key(key) => {
                let keys = self.layout.entry_keys(key.base(), key);
                let prefix = self.layout.bucket_prefix(key.base(), keys.bucket);
                self.delete_on(&client, &prefix, vec![keys.entry]).await?
            }
            Target::Selector(keyspace, s) => self.invalidate_selector(&client, keyspace, s).await?,
            Target::Pattern(keyspace, p) => {
                self.invalidate_pattern(&client, keyspace.base(), p).await?
            }
            Target::All(keyspace) => self.invalidate_all(&client, keyspace.base()).await?,
        })
    }

    /// The connection an invalidation's commands and its `WAIT` go over (one, as `WAIT` measures one
    /// connection's writes): its own when it waits for replicas, since `WAIT` blocks it.
    fn invalidation_client(&self) -> Client {
        match &self.conn.waits {
            Some(waits) => waits.next().clone(),
            None => self.conn.pool.next().clone(),
        }
    }

    /// `WAIT` for the configured replicas: an invalidation they did not acknowledge is not acknowledged.
    async fn wait_for_replicas(&self, client: &Client) -> Result<(), BackendError> {
        const WAIT: fred::types::CustomCommand = fred::types::CustomCommand {
            cmd: fred::bytes_utils::Str::from_static("WAIT"),
            cluster_hash: fred::types::ClusterHash::Random,
            blocking: true,
        };
        let wanted = self.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let budget = self.conn.budget;
        let args = vec![
            Value::from(i64::from(wanted)),
            Value::from(budget.as_millis() as i64),
        ];
        // The command's own timeout covers WAIT's (the pool's default is the budget itself).
        let options = Options {
            timeout: Some(budget * 2),
            ..Options::default()
        };
        let acked: i64 = self
            .call_within(budget * 2, client.with_options(&options).custom(WAIT, args))
            .await?;
        if acked < i64::from(wanted) {
            return Err(BackendError::Unavailable {
                tier: TIER,
                reason: format!(
                    "applied on the primary but acknowledged by {acked} of {wanted} replicas within {budget:?}"
                ),
            });
        }
        Ok(())
    }

    /// Deletes entries by name, with their meta and blob (grouped by bucket: one slot per script).
    pub(super) async fn delete_entries(
        &self,
        entries: Vec<String>,
    ) -> Result<Removed, BackendError> {
        let client = self.invalidation_client();
        let mut by_prefix: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for entry in entries {
            if let Some(prefix) = bucket_prefix_of(&entry) {
                by_prefix.entry(prefix.to_owned()).or_default().push(entry);
            }
        }
        let mut removed = Removed::default();
        for (prefix, entries) in by_prefix {
            removed.merge(self.delete_on(&client, &prefix, entries).await?);
        }
        Ok(removed)
    }

    /// Deletes entries of the bucket `prefix` (`<base>{b}:`) names.
    async fn delete_on(
        &self,
        client: &Client,
        prefix: &str,
        entries: Vec<String>,
    ) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        for chunk in entries.chunks(DRAIN_BATCH as usize) {
            let fut = self
                .scripts
                .delete
                .run::<Value, _, _>(client, Options::default(), || {
                    (chunk.to_vec(), vec![Value::from(prefix)])
                });
            removed.merge(self.outcome(&self.call(fut).await?, None).removed);
        }
        Ok(removed)
    }

    /// Ends the generations `gens` of the bucket `prefix` names, then drains `indexes` (see `lua/drain.lua`).
    async fn drain(
        &self,
        client: &Client,
        prefix: &str,
        gens: Vec<String>,
        indexes: Vec<String>,
        budget: u32,
    ) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        let mut gens = gens;
        loop {
            let ngens = gens.len();
            let mut keys = std::mem::take(&mut gens);
            keys.extend(indexes.iter().cloned());
            let args = vec![
                Value::from(ngens as i64),
                Value::from(i64::from(budget)),
                Value::from(prefix),
            ];
            let fut = self
                .scripts
                .drain
                .run::<Value, _, _>(client, Options::default(), || (keys.clone(), args.clone()));
            let outcome = self.outcome(&self.call(fut).await?, Some(5));
            removed.merge(outcome.removed);
            if budget == 0 || outcome.popped < u64::from(budget) {
                return Ok(removed);
            }
        }
    }

    /// Ends every generation of the given buckets (`<base>{b}:` prefixes; every bucket of every keyspace
    /// when `None`): every entry there becomes a miss at once. Memory is reclaimed by TTL, eviction and
    /// pruning.
    pub(super) async fn end_every_generation(
        &self,
        buckets: Option<&[String]>,
    ) -> Result<(), BackendError> {
        let client = self.invalidation_client();
        let all: Vec<String> = match buckets {
            Some(_) => Vec::new(),
            None => self
                .keyspaces()
                .iter()
                .flat_map(|ks| {
                    (0..self.layout.buckets()).map(|b| self.layout.bucket_prefix(ks.base(), b))
                })
                .collect(),
        };
        for prefix in buckets.unwrap_or(&all) {
            let gens = CacheType::ALL
                .iter()
                .map(|t| self.layout.gen_key(prefix, &Dim::Type(*t)))
                .collect();
            self.drain(&client, prefix, gens, Vec::new(), 0).await?;
        }
        self.reads.clear();
        self.outage
            .flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn all_buckets(&self) -> Vec<u32> {
        (0..self.layout.buckets()).collect()
    }

    /// The buckets and dimensions a selector's invalidation visits, and whether ending those dimensions is
    /// exactly the selector (else their indexes are walked and filtered).
    fn selector_plan<'s>(&self, s: &'s Selector) -> (Vec<u32>, Vec<Dim<'s>>, bool) {
        match (&s.object_id, &s.user_id, &s.project_id) {
            (Some(id), user, project) => {
                let types: Vec<CacheType> = match s.cache_type {
                    Some(t) => vec![t],
                    None => CacheType::ALL
                        .into_iter()
                        .filter(|t| t.is_object())
                        .collect(),
                };
                let buckets = match self.layout.bucket_of_object(s.cache_type, id) {
                    Some(b) => vec![b],
                    None => self.all_buckets(),
                };
                let dims = types.into_iter().map(|t| Dim::Object(t, id)).collect();
                (buckets, dims, user.is_none() && project.is_none())
            }
            (None, Some(u), project) => (
                self.all_buckets(),
                vec![Dim::User(u)],
                s.cache_type.is_none() && project.is_none(),
            ),
            (None, None, Some(p)) => (
                self.all_buckets(),
                vec![Dim::Project(p)],
                s.cache_type.is_none(),
            ),
            (None, None, None) => match s.cache_type {
                Some(t) => (self.all_buckets(), vec![Dim::Type(t)], true),
                None => (Vec::new(), Vec::new(), true),
            },
        }
    }

    async fn invalidate_selector(
        &self,
        client: &Client,
        keyspace: &Keyspace,
        s: &Selector,
    ) -> Result<Removed, BackendError> {
        let base = keyspace.base();
        let (buckets, dims, exact) = self.selector_plan(s);
        let mut removed = Removed::default();
        for &b in &buckets {
            let prefix = self.layout.bucket_prefix(base, b);
            let gens: Vec<String> = dims
                .iter()
                .map(|d| self.layout.gen_key(&prefix, d))
                .collect();
            let indexes: Vec<String> = dims
                .iter()
                .map(|d| self.layout.index_key(&prefix, d))
                .collect();
            if exact {
                removed.merge(
                    self.drain(client, &prefix, gens, indexes, DRAIN_BATCH)
                        .await?,
                );
            } else {
                for (generation, index) in gens.into_iter().zip(indexes) {
                    removed.merge(
                        self.filter(client, base, &prefix, generation, index, s)
                            .await?,
                    );
                }
            }
        }
        // Entries their type and id alone name are in no object index: removed by key.
        if let (Some(id), None, None) = (&s.object_id, &s.user_id, &s.project_id) {
            let types: Vec<CacheType> = match s.cache_type {
                Some(t) => vec![t],
                None => CacheType::ALL
                    .into_iter()
                    .filter(|t| t.is_object())
                    .collect(),
            };
            let bucket = self.layout.bucket_of_id(id);
            let prefix = self.layout.bucket_prefix(base, bucket);
            let entries: Vec<String> = types
                .into_iter()
                .filter_map(|t| keyspace.unscoped_key(t, id))
                .map(|logical| format!("{prefix}{}", &logical[base.len()..]))
                .collect();
            if !entries.is_empty() {
                removed.merge(self.delete_on(client, &prefix, entries).await?);
            }
        }
        Ok(removed)
    }

    /// Walks one index and removes the entries that match a selector of several fields.
    async fn filter(
        &self,
        client: &Client,
        base: &str,
        prefix: &str,
        generation: String,
        index: String,
        s: &Selector,
    ) -> Result<Removed, BackendError> {
        let mut doomed: Vec<String> = Vec::new();
        let mut stream = std::pin::pin!(client.zscan(index.clone(), "*", Some(1000)));
        while let Some(mut page) = self.next_page(&mut stream).await? {
            for (member, _) in page.take_results().unwrap_or_default() {
                if let Some(name) = member.as_string()
                    && self
                        .layout
                        .parse_entry(base, &name)
                        .and_then(|(_, rendered)| parse_rendered(rendered))
                        .is_some_and(|tags: KeyTags| s.matches(&tags))
                {
                    doomed.push(name);
                }
            }
            page.next();
        }
        let mut removed = Removed::default();
        let mut chunks: Vec<&[String]> = doomed.chunks(DRAIN_BATCH as usize).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut keys = Vec::with_capacity(2 + chunk.len());
            keys.push(generation.clone());
            keys.push(index.clone());
            keys.extend(chunk.iter().cloned());
            let fut = self
                .scripts
                .filter
                .run::<Value, _, _>(client, Options::default(), || {
                    (keys.clone(), vec![Value::from(prefix)])
                });
            removed.merge(self.outcome(&self.call(fut).await?, Some(5)).removed);
        }
        Ok(removed)
    }

    /// The next page of a SCAN-family stream, within four command budgets.
    async fn next_page<P>(
        &self,
        stream: &mut (impl futures::Stream<Item = Result<P, fred::error::Error>> + Unpin),
    ) -> Result<Option<P>, BackendError> {
        let budget = self.conn.budget * 4;
        match tokio::time::timeout(budget, stream.try_next()).await {
            Ok(page) => page.map_err(|e| self.classify(&e)),
            Err(_) => Err(BackendError::Timeout { tier: TIER, budget }),
        }
    }

    /// Walks the keyspace (an operator's tool: its cost is the database's size) and deletes every entry of
    /// this keyspace whose storage key matches `pattern`.
    async fn invalidate_pattern(
        &self,
        client: &Client,
        base: &str,
        pattern: &str,
    ) -> Result<Removed, BackendError> {
        let glob = self.layout.scan_glob(base, pattern);
        let mut by_bucket: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        let mut stream = std::pin::pin!(client.scan(glob, Some(SCAN_COUNT), None));
        while let Some(mut page) = self.next_page(&mut stream).await? {
            for key in page
                .take_results()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|k| k.into_string())
            {
                if let Some((bucket, rendered)) = self.layout.parse_entry(base, &key) {
                    let logical = format!("{base}{rendered}");
                    if glob_match(pattern.as_bytes(), logical.as_bytes()) {
                        by_bucket.entry(bucket).or_default().push(key);
                    }
                }
            }
            page.next();
        }
        let mut removed = Removed::default();
        for (bucket, keys) in by_bucket {
            let prefix = self.layout.bucket_prefix(base, bucket);
            removed.merge(self.delete_on(client, &prefix, keys).await?);
        }
        Ok(removed)
    }

    /// Ends every type's generation in every bucket and drains the type indexes.
    async fn invalidate_all(&self, client: &Client, base: &str) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        for b in self.all_buckets() {
            let prefix = self.layout.bucket_prefix(base, b);
            let dims: Vec<Dim<'_>> = CacheType::ALL.into_iter().map(Dim::Type).collect();
            let gens = dims
                .iter()
                .map(|d| self.layout.gen_key(&prefix, d))
                .collect();
            let indexes = dims
                .iter()
                .map(|d| self.layout.index_key(&prefix, d))
                .collect();
            removed.merge(
                self.drain(client, &prefix, gens, indexes, DRAIN_BATCH)
                    .await?,
            );
        }
        Ok(removed)
    }
}
