//! Sets: the value and its bookkeeping (TTL, meta with the generation snapshot, index members) in one
//! atomic step, so a concurrent invalidation never finds an entry that its generations do not cover.
//!
//! Three routes, each measured against the others (docs/decisions/0001-set-batches-as-transactions.md):
//! - **Batches** of concurrent Sets of values up to [`LARGE_VALUE`]: one transaction on the Set connection
//!   ([`super::txn`]): `MULTI`, per Set a `SET … PX` of its value and of its meta, the keys-only
//!   `lua/set.lua`, `lua/late.lua` (a transaction delivered after its deadline unlinks what it wrote),
//!   `EXEC`, in one write. The values never become Lua strings.
//! - **Only-if-absent** Sets (SET NX must answer per Set, and an invalidated entry counts as absent):
//!   `lua/set_nx.lua`, value included, through fred's pool.
//! - **Large** values (above [`LARGE_VALUE`]): the envelope goes as a blob under a staging key, then
//!   `lua/set_large.lua` moves it into place and writes a [`Pointer`] as the entry, in one transaction over
//!   the bulk pool, with a budget that grows with the size.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use redis_protocol::resp2::types::OwnedFrame;

use super::Redis;
use super::layout::{EntryKeys, Pointer};
use super::scripts;
use super::txn::{Commands, TxnError};
use crate::backend::BackendError;
use crate::keys::Key;

/// Envelopes larger than this are large values: stored as a blob behind a [`Pointer`], over the bulk pool.
/// A 256 KiB reply holds a shared connection ~1 ms on loopback; larger ones would make small calls queue.
pub(super) const LARGE_VALUE: usize = 256 << 10;
/// One Set in this many also prunes its indexes' expired members: a busy index is pruned many times per
/// TTL, an idle one expires as a whole.
pub const PRUNE_EVERY: u64 = 16;
/// Longest TTL sent to Redis, in ms (~4,400 years): Lua's doubles add it to Redis' clock exactly.
const MAX_TTL_MS: u64 = 1 << 47;

/// A Set for a batch.
pub(super) struct Write {
    keys: EntryKeys,
    envelope: Bytes,
    /// The TTL in ms, as the script reads it.
    ttl_ms: String,
    prune: bool,
}

/// A Set's answer from its batch: whether it stored.
pub(super) type Written = Result<bool, BackendError>;

/// A random seed for the generation tokens a script may create (see `lua/set_common.lua`).
fn seed() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The distinct dimensions of a batch of Sets (generation, index), and each Set's spec: its prune flag,
/// then the numbers of its dimensions (see `lua/set_common.lua`).
fn batch_dims<'a>(
    sets: impl Iterator<Item = (&'a EntryKeys, bool)>,
) -> (Vec<(&'a str, &'a str)>, Vec<String>) {
    let mut dims: Vec<(&'a str, &'a str)> = Vec::new();
    let mut numbers: std::collections::HashMap<&'a str, usize> = Default::default();
    let mut specs = Vec::new();
    for (keys, prune) in sets {
        let mut spec = String::from(if prune { "1" } else { "0" });
        for (generation, index) in &keys.dims {
            let n = *numbers.entry(generation.as_str()).or_insert_with(|| {
                dims.push((generation, index));
                dims.len()
            });
            spec.push(',');
            spec.push_str(&n.to_string());
        }
        specs.push(spec);
    }
    (dims, specs)
}

/// The deadline of a write sent now with `budget` left, in unix ms as the scripts compare it with Redis'
/// clock (`TIME`).
fn deadline_ms(budget: Duration) -> String {
    (crate::backend::now_ms() + budget.as_millis() as u64).to_string()
}

/// The keys and arguments of `lua/set_nx.lua` and `lua/set_large.lua`: the Set's dimensions, its entry,
/// meta and blob; the seed, the number of dimensions, its TTL and its spec.
fn single_argv<'a>(
    entry_keys: &'a EntryKeys,
    ttl_ms: &str,
    prune: bool,
    seed: &str,
) -> (Vec<&'a str>, Vec<String>) {
    let (dims, specs) = batch_dims(std::iter::once((entry_keys, prune)));
    let mut keys: Vec<&str> = dims.iter().flat_map(|(g, i)| [*g, *i]).collect();
    keys.extend([
        entry_keys.entry.as_str(),
        entry_keys.meta.as_str(),
        entry_keys.blob.as_str(),
    ]);
    let args = vec![
        seed.to_owned(),
        dims.len().to_string(),
        ttl_ms.to_owned(),
        specs.into_iter().next().unwrap_or_default(),
    ];
    (keys, args)
}

/// The generation tokens this server last heard from Redis, by generation key: a batch of Sets writes its
/// metas with them, and the Set script rewrites only the metas whose tokens changed since. Bounded: emptied
/// when full (a miss costs one rewrite).
#[derive(Debug, Default)]
pub(super) struct Tokens(parking_lot::RwLock<std::collections::HashMap<String, String>>);

impl Tokens {
    const MAX: usize = 100_000;

    fn get(&self, generation: &str) -> Option<String> {
        self.0.read().get(generation).cloned()
    }

    fn learn<'a>(&self, learned: impl Iterator<Item = (&'a str, String)>) {
        let mut map = self.0.write();
        for (generation, token) in learned {
            if map.len() >= Self::MAX {
                map.clear();
            }
            match map.get_mut(generation) {
                Some(t) => *t = token,
                None => {
                    map.insert(generation.to_owned(), token);
                }
            }
        }
    }
}

fn frame_error(frame: &OwnedFrame) -> Option<&str> {
    match frame {
        OwnedFrame::Error(e) => Some(e),
        _ => None,
    }
}

impl Redis {
    /// Stores `envelope` under `key` for `ttl`; answers whether it stored (false only with `only_if_absent`
    /// and a valid entry).
    pub(super) async fn write(
        &self,
        key: &Key,
        envelope: Bytes,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<bool, BackendError> {
        let keys = self.layout.entry_keys(key.base(), key);
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(MAX_TTL_MS)) as u64;
        let prune = self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        let bucket = keys.bucket;
        let entry = keys.entry.clone();
        let write = Write {
            keys,
            envelope,
            ttl_ms: ttl_ms.to_string(),
            prune,
        };
        let outcome = if write.envelope.len() > LARGE_VALUE {
            Box::pin(self.write_large(write, only_if_absent)).await
        } else if only_if_absent {
            Box::pin(self.write_nx(write)).await
        } else {
            let sets = self.sets.get().expect("set at construction");
            sets.call(write).await.and_then(|written| written)
        };
        if let Err(BackendError::Timeout { .. }) = &outcome {
            // fred cannot cancel a written command: the write may still land after a later invalidation.
            // Delete it again when Redis is verified.
            self.remember_uncertain(bucket, entry, true).await;
        }
        outcome
    }

    /// One batch of Sets as one transaction on the Set connection: `MULTI`, per Set a `SET` of its value
    /// and one of its meta (both with the TTL; the meta with the generation tokens this server expects),
    /// `lua/set.lua` by `EVALSHA` (index members; metas whose tokens changed written again), `EXEC`, in one
    /// write. Neither values nor per-Set TTLs go through Lua.
    pub(super) async fn store(
        &self,
        writes: Vec<Write>,
        oldest: Instant,
    ) -> Result<Vec<Written>, BackendError> {
        let budget = self.budget_left(oldest)?;
        let n = writes.len();
        let seed = seed();
        let (dims, specs) = batch_dims(writes.iter().map(|w| (&w.keys, w.prune)));
        let expected: Vec<String> = dims
            .iter()
            .map(|(generation, _)| self.tokens.get(generation).unwrap_or_default())
            .collect();
        let values: usize = writes.iter().map(|w| w.envelope.len()).sum();
        let mut commands = Commands::with_capacity(values + n * 256 + dims.len() * 128 + 128);
        commands.push(&[b"MULTI"]);
        let mut meta = String::new();
        for (w, spec) in writes.iter().zip(&specs) {
            commands.push(&[
                b"SET",
                w.keys.entry.as_bytes(),
                &w.envelope,
                b"PX",
                w.ttl_ms.as_bytes(),
            ]);
            meta.clear();
            for d in spec.split(',').skip(1) {
                let d: usize = d.parse().unwrap_or(1);
                meta.push_str(&expected[d - 1]);
            }
            meta.push_str("|0|0");
            commands.push(&[
                b"SET",
                w.keys.meta.as_bytes(),
                meta.as_bytes(),
                b"PX",
                w.ttl_ms.as_bytes(),
            ]);
        }
        let ndims = dims.len().to_string();
        let nkeys = (2 * dims.len() + 2 * n).to_string();
        let mut eval: Vec<&[u8]> = Vec::with_capacity(5 + 3 * dims.len() + 4 * n);
        eval.push(b"EVALSHA");
        eval.push(self.scripts.set.sha1().as_bytes());
        eval.push(nkeys.as_bytes());
        for (generation, index) in &dims {
            eval.push(generation.as_bytes());
            eval.push(index.as_bytes());
        }
        for w in &writes {
            eval.push(w.keys.entry.as_bytes());
            eval.push(w.keys.meta.as_bytes());
        }
        eval.push(seed.as_bytes());
        eval.push(ndims.as_bytes());
        eval.extend(expected.iter().map(String::as_bytes));
        for (w, spec) in writes.iter().zip(&specs) {
            eval.push(w.ttl_ms.as_bytes());
            eval.push(spec.as_bytes());
        }
        commands.push(&eval);
        // Late delivery voids the batch (see `lua/late.lua`): by then its Sets were answered from memory.
        let deadline = deadline_ms(budget);
        let nlate = (2 * n).to_string();
        let mut late: Vec<&[u8]> = Vec::with_capacity(4 + 2 * n);
        late.extend([
            b"EVAL".as_slice(),
            scripts::LATE.as_bytes(),
            nlate.as_bytes(),
        ]);
        for w in &writes {
            late.push(w.keys.entry.as_bytes());
            late.push(w.keys.meta.as_bytes());
        }
        late.push(deadline.as_bytes());
        commands.push(&late);
        commands.push(&[b"EXEC"]);
        let script_args: Vec<Vec<u8>> = eval[3..].iter().map(|a| a.to_vec()).collect();
        drop(eval);
        let queued = commands.count() - 1;
        let replies = match tokio::time::timeout(budget, self.txn.send(&commands)).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(e)) => {
                // A refused handshake is Redis' own error reply (WRONGPASS, NOPERM); the rest is the
                // connection.
                let kind = match e {
                    TxnError::Handshake(_) => fred::error::ErrorKind::Unknown,
                    _ => fred::error::ErrorKind::IO,
                };
                let e = self.classify(&fred::error::Error::new(kind, e.to_string()));
                return self.note_outcome(Err(e));
            }
            Err(_) => return self.note_outcome(Err(self.timeout())),
        };
        let all = |outcome: Written| Ok((0..n).map(|_| outcome.clone()).collect());
        // MULTI and the queued commands answer OK / QUEUED, or a refusal (out of memory, an ACL): then
        // EXEC ran nothing, and the refusal is every Set's answer.
        if let Some(refused) = replies.iter().take(queued).find_map(frame_error) {
            let e = self.classify(&fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                refused.to_owned(),
            ));
            return all(self.note_outcome(Err(e)));
        }
        match replies.get(queued) {
            Some(OwnedFrame::Array(results)) => {
                let answer = results.len().checked_sub(2).and_then(|i| results.get(i));
                if let Some(OwnedFrame::Array(answer)) = answer {
                    self.learn_tokens(&dims, answer);
                    if let Some(OwnedFrame::Integer(unlinked)) = results.last()
                        && *unlinked > 0
                    {
                        // Redis ran the batch after its deadline, yet the answer came back within it: the
                        // clocks disagree. What the batch wrote is gone again (a miss, never stale).
                        self.note_late(n as u64);
                    }
                    return all(Ok(true));
                }
            }
            Some(OwnedFrame::Error(e)) if e.starts_with("EXECABORT") => {
                let e = self.classify(&fred::error::Error::new(
                    fred::error::ErrorKind::Unknown,
                    e.clone(),
                ));
                return all(self.note_outcome(Err(e)));
            }
            _ => {}
        }
        // The SETs ran and the bookkeeping did not (the script cache was flushed, say): the metas may hold
        // tokens that are not current (misses) and the entries are in no index. Run it again through fred,
        // which loads the script if Redis lacks it.
        let nkeys = 2 * dims.len() + 2 * n;
        let keys_and_args = || {
            let keys: Vec<Value> = script_args[..nkeys]
                .iter()
                .map(|k| Value::Bytes(Bytes::copy_from_slice(k)))
                .collect();
            let args = script_args[nkeys..]
                .iter()
                .map(|a| Value::Bytes(Bytes::copy_from_slice(a)))
                .collect();
            (keys, args)
        };
        let options = Options {
            timeout: Some(self.budget_left(oldest).unwrap_or(self.conn.budget)),
            ..Options::default()
        };
        let fut = Box::pin(self.scripts.set.run::<Value, _, _>(
            self.conn.pool.next(),
            options,
            keys_and_args,
        ));
        match self.call_bounded(fut).await {
            Ok(_) => all(Ok(true)),
            Err(e) => {
                // Entries in no index: remove them once Redis is verified.
                for w in &writes {
                    self.remember_uncertain(w.keys.bucket, w.keys.entry.clone(), false)
                        .await;
                }
                all(Err(e))
            }
        }
    }

    /// Records the tokens a Set script answered (after the count of repaired keys).
    fn learn_tokens(&self, dims: &[(&str, &str)], answer: &[OwnedFrame]) {
        if let Some(OwnedFrame::Integer(repaired)) = answer.first() {
            self.note_repaired(*repaired);
        }
        let tokens = answer.iter().skip(1).map(|t| match t {
            OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
                String::from_utf8_lossy(b).into_owned()
            }
            _ => String::new(),
        });
        self.tokens
            .learn(dims.iter().map(|(generation, _)| *generation).zip(tokens));
    }

    /// An only-if-absent Set through `lua/set_nx.lua`. Not fail-fast: a Set's outcome must be known, so it
    /// waits for a reconnection within its budget.
    async fn write_nx(&self, write: Write) -> Result<bool, BackendError> {
        let seed = seed();
        let (keys, args) = single_argv(&write.keys, &write.ttl_ms, write.prune, &seed);
        let deadline = deadline_ms(self.conn.budget);
        let argv = || {
            let mut values: Vec<Value> = args.iter().map(|a| Value::from(a.as_str())).collect();
            values.push(Value::Bytes(write.envelope.clone()));
            values.push(Value::from(deadline.as_str()));
            (
                keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>(),
                values,
            )
        };
        let options = Options {
            timeout: Some(self.conn.budget),
            ..Options::default()
        };
        let fut = Box::pin(self.scripts.set_nx.run::<i64, _, _>(
            self.conn.pool.next(),
            options,
            argv,
        ));
        let answer = self.call_bounded(fut).await?;
        if answer < 0 {
            self.note_late(1);
        }
        Ok(answer == 1)
    }

    /// A large value: `MULTI`, `SET` of the blob under a staging key, `lua/set_large.lua` (sent as `EVAL`:
    /// an `EVALSHA` refused for `NOSCRIPT` inside `EXEC` would leave the Set half done), `EXEC`, over the
    /// bulk pool with a budget that grows with the size.
    async fn write_large(&self, write: Write, only_if_absent: bool) -> Result<bool, BackendError> {
        const MULTI: fred::types::CustomCommand = fred::types::CustomCommand {
            cmd: fred::bytes_utils::Str::from_static("MULTI"),
            cluster_hash: fred::types::ClusterHash::Random,
            blocking: false,
        };
        const EXEC: fred::types::CustomCommand = fred::types::CustomCommand {
            cmd: fred::bytes_utils::Str::from_static("EXEC"),
            cluster_hash: fred::types::ClusterHash::Random,
            blocking: false,
        };
        const EVAL: fred::types::CustomCommand = fred::types::CustomCommand {
            cmd: fred::bytes_utils::Str::from_static("EVAL"),
            cluster_hash: fred::types::ClusterHash::Offset(2),
            blocking: false,
        };
        let version = rand::random::<u64>();
        let Write {
            keys,
            envelope,
            ttl_ms,
            prune,
        } = write;
        let staging = self.layout.staging_key(&keys, version);
        let len = envelope.len() as u64;
        let pointer = Pointer { version, len };
        let mut blob = Vec::with_capacity(envelope.len() + 8);
        blob.extend_from_slice(&version.to_le_bytes());
        blob.extend_from_slice(&envelope);
        drop(envelope);
        let seed = seed();
        let (script_keys, args) = single_argv(&keys, &ttl_ms, prune, &seed);
        let mut eval: Vec<Value> = Vec::with_capacity(6 + script_keys.len() + args.len());
        eval.push(Value::from_static_str(scripts::SET_LARGE));
        eval.push(Value::Integer(script_keys.len() as i64 + 1));
        eval.extend(script_keys.iter().map(|k| Value::from(*k)));
        eval.push(Value::from(staging.as_str()));
        eval.extend(args.iter().map(|a| Value::from(a.as_str())));
        eval.push(Value::Bytes(Bytes::copy_from_slice(&pointer.encode())));
        eval.push(Value::from_static_str(if only_if_absent {
            "1"
        } else {
            "0"
        }));
        let budget = self.conn.bulk_budget(len);
        eval.push(Value::from(deadline_ms(budget)));
        let pipe = self.conn.bulk.next().pipeline();
        let ttl = ttl_ms.parse::<i64>().unwrap_or(1);
        let queued = async {
            pipe.custom::<(), Value>(MULTI, Vec::new()).await?;
            pipe.set::<(), _, _>(
                staging.as_str(),
                Value::Bytes(Bytes::from(blob)),
                Some(Expiration::PX(ttl)),
                None,
                false,
            )
            .await?;
            pipe.custom::<(), _>(EVAL, eval).await?;
            pipe.custom::<(), Value>(EXEC, Vec::new()).await?;
            Ok::<_, fred::error::Error>(pipe.try_all::<Value>().await)
        };
        let answers = self.bulk(len, budget, Box::pin(queued)).await?;
        if let Some(Err(refused)) = answers.iter().take(3).find(|a| a.is_err()) {
            return self.note_outcome(Err(self.classify(refused)));
        }
        let exec = answers
            .into_iter()
            .nth(3)
            .unwrap_or_else(|| Ok(Value::Null))
            .and_then(|exec| exec.convert::<Vec<Value>>());
        match exec {
            Ok(results) => match results.get(1) {
                Some(Value::Integer(1)) => Ok(true),
                Some(Value::Integer(late)) if *late < 0 => {
                    self.note_late(1);
                    Ok(false)
                }
                _ => Ok(false),
            },
            Err(e) => self.note_outcome(Err(self.classify(&e))),
        }
    }

    /// Counts Sets that Redis ran after their deadline, so voided (see `lua/late.lua`), and warns at most
    /// every 10 s: an answer that arrives at all means the clocks of Redis and this server disagree.
    fn note_late(&self, sets: u64) {
        let total = self.stats.late_sets.fetch_add(sets, Ordering::Relaxed) + sets;
        let now = crate::backend::now_ms();
        let last = self.stats.late_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .stats
                .late_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                redis = %self.conn.target,
                late_sets = total,
                "Redis ran Sets after their deadline and voided them, yet answered in time: is its clock ahead of this server's?"
            );
        }
    }

    /// Counts bookkeeping keys of the wrong type that a script repaired.
    pub(super) fn note_repaired(&self, repaired: i64) {
        if repaired > 0 {
            self.stats
                .repaired
                .fetch_add(repaired as u64, Ordering::Relaxed);
            tracing::warn!(
                redis = %self.conn.target,
                repaired,
                "removed bookkeeping keys of the wrong type under this service's prefix"
            );
        }
    }
}
