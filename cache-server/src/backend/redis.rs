//! The Redis tier (fred), the shared source of truth.
//!
//! # Layout in Redis (under the keyspace base, default `cache:default:`)
//! - `<base><rendered>`: the entry, a string holding the encoded envelope, with native expiry (`PX`).
//! - `<base>~:c:<rendered>`: how many times the entry was read (an integer string), same TTL; read with the
//!   entry (not at all once this server knows the count) and incremented in batches (see
//!   [`super::access`]). Concurrent Gets share one `MGET` (see [`super::batch`]).
//! - `<base>~:i:o:<id>` (object types), `<base>~:i:n:<type>:<id>` (preference / config names),
//!   `<base>~:i:u:<user>`, `<base>~:i:p:<project>`, `<base>~:i:t:<type>`: sorted-set indexes of entry keys
//!   scored by expiry (unix ms, rounded up to 1/16 of the TTL, at most a minute). An entry its id alone names
//!   (metadata, object info or config without user or project) is in no id index: invalidation by id removes
//!   it by its key. A Set stretches the index's own TTL past its longest member (with a quarter of slack, so
//!   most writes need not), and one Set in [`PRUNE_EVERY`] also removes the members whose expiry has passed:
//!   a busy index holds little more than its live entries, an idle one expires whole, and invalidation by
//!   selector or `all` costs what it removes, whatever else lives in Redis.
//! - `<base>~:runid`: the Redis `run_id` whose data this service has verified (restart detection).
//!
//! Batches of Sets go, over plain TCP, as one transaction on a connection of their own
//! ([`super::setconn`]); everything else goes through fred's pool.
//!
//! # Failure handling
//! fred is configured to fail fast (see `CRATES.md` §2.5): commands carry the command budget, reconnection
//! runs forever with capped exponential backoff, and the pool connects in the background so the server starts
//! with Redis down. Any outage error marks the tier *down*; a monitor task then verifies Redis before marking
//! it *up* again: same `run_id` as last verified (else — a restart, possibly from a snapshot — every entry of
//! this service is removed through the indexes), then every invalidation remembered during the outage (and
//! every write whose outcome is unknown) is applied. Only then are reads served from Redis again.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, TcpConfig, UnresponsiveConfig};
use fred::types::scan::Scanner as _;
use fred::types::{InfoKind, Value};
use futures::TryStreamExt as _;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, Notify};

use super::access::{AccessCounts, FLUSH_BATCH, FLUSH_INTERVAL};
use super::batch::{Coalescer, RunBatch};
use super::lua::Lua;
use super::setconn::{self, Commands, ConnError, Reply, SetConnection};
use super::{Backend, BackendError, BackendStats, Hit, Removed, Stored, Target, TierKind, now_ms};
use crate::config::RedisConfig;
use crate::keys::{CacheType, Key, KeyTags, Keyspace, Selector, glob_match};

const TIER: &str = "redis";
/// Most invalidations remembered during an outage; past it, recovery removes every entry of the service.
pub const MAX_PENDING_INVALIDATIONS: usize = 10_000;
/// Members removed per drain step (one Lua call each, so Redis is never blocked long).
const DRAIN_BATCH: u32 = 500;
/// Keys per SCAN step for pattern invalidation.
const SCAN_COUNT: u32 = 1000;
/// One Set in this many also prunes its indexes' expired members: a busy index (a type, a user) is pruned
/// many times per TTL, an idle one expires as a whole.
pub const PRUNE_EVERY: u64 = 16;
/// Batches of Gets out to Redis at once (see [`super::batch`]): one being answered while the next fills
/// (double buffering). More lanes make smaller batches, and a batch's fixed cost (a fred command, a Redis
/// read) is most of a small call's cost. A lane is not a connection: batches are pipelined on the pool like
/// any command.
const GET_BATCHES_IN_FLIGHT: usize = 2;
/// Batches of Sets out to Redis at once. One: Redis runs scripts one at a time anyway, so a second batch
/// out only waits there, while the Sets that would have filled it join a larger next batch, and a Set's
/// script cost per call falls with the batch's size. Measured with `scripts/ab-compare --op set` (loadgen,
/// 50 x 1 Sets of 1 KiB on 1000 keys, fred's passthrough in the same rounds, 8 rounds): one lane against
/// two, 1.027x the calls/s (rounds 0.98..1.10), Redis CPU per Set 12.2 -> 11.3 us, server 36.7 -> 35.0 us.
/// (Before, with a batching task: two lanes against four, +4-5 %; one against two, ~4 % better with 1000
/// keys and no better with one key.)
/// The Set connection ([`super::setconn`]) carries one batch at a time as well.
const SET_BATCHES_IN_FLIGHT: usize = 1;
/// Most Gets sent to Redis as one `MGET` (see [`super::batch`]).
const GET_BATCH: usize = 64;
/// Most Sets sent to Redis as one script call.
const SET_BATCH: usize = 32;
/// Envelopes larger than this are written alone, with a plain `SET` in a transaction beside a keys-only
/// script ([`SET_ALONE_LUA`]): a batch of small Sets is never stuck behind a large one, and a large value
/// never becomes a Lua string. Redis' Lua hashes every byte of every string it is handed, so the batch script
/// held Redis ~2 us per KiB of value (a 1 MiB Set: 2.6 ms of Redis against 0.1 ms for the transaction). Below
/// this size the batch's shared script call wins; measured with loadgen, 50 x 1 Sets on 1000 keys, batch
/// against transaction (3 interleaved rounds): 5 KiB 16.1k/13.0k Sets/s, 9 KiB 12.9k/10.5k at the same
/// Redis CPU per Set (33 us); 16 KiB 12.4k/12.9k, Redis CPU per Set 42.5/27.8 us. It also bounds what one
/// batch script hashes to 32 x 16 KiB.
const SET_BATCH_MAX_VALUE: usize = 16 << 10;
/// Wait before replaying writes whose outcome is unknown, so a late write from a hung connection lands first.
const SETTLE_DELAY: Duration = Duration::from_millis(200);

// KEYS = entry, its read counter, entry, counter, ...; ARGV = reads to add to each counter. A counter that
// this call creates gets the entry's remaining TTL, or is removed at once if the entry is gone. Answers each
// counter's new total (0 where the entry is gone).
const FLUSH_LUA: &str = r"
local totals = {}
for i = 1, #ARGV do
  local entry, counter, reads = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[i])
  local total = redis.call('INCRBY', counter, reads)
  if total == reads then
    local ttl = redis.call('PTTL', entry)
    if ttl > 0 then redis.call('PEXPIRE', counter, ttl) else redis.call('DEL', counter); total = 0 end
  end
  totals[i] = total
end
return totals
";

/// Lua shared by the Set scripts (string literals, so that the scripts stay `&'static str`): Redis' clock
/// in unix ms as `now`.
macro_rules! lua_now {
    () => {
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Lua unpacking a Set's flags `c` (see [`set_flags`]) into `prune`, `nx` and `nindexes`.
macro_rules! lua_unpack_set_flags {
    () => {
        r"local prune = c % 2 == 1
c = (c - c % 2) / 2
local nx = c % 2 == 1
local nindexes = (c - c % 2) / 2
"
    };
}

/// Lua setting a Set's index `score` from `now` and `ttl`: its expiry rounded up to 1/16 of the TTL, at
/// most a minute, as a string of digits (see [`SET_LUA`] on why numbers never reach `redis.call`).
macro_rules! lua_index_score {
    () => {
        r"local g = math.min(60000, math.floor(ttl / 16) + 1)
score = string.format('%d', math.ceil((now + ttl) / g) * g)
"
    };
}

/// Lua recording a stored Set's read counter (`KEYS[k + 1]`) for the batch's UNLINK, and looking up the
/// index score of its TTL string `ttl_s`; [`lua_index_score`] computes a new one, then [`lua_join_members`].
macro_rules! lua_join_counter {
    () => {
        r"counters[#counters + 1] = KEYS[k + 1]
local s = scores[ttl_s]
if not s then
local ttl, score = tonumber(ttl_s)
"
    };
}

/// Lua adding a stored Set's `entry` to each of its `nindexes` indexes (`KEYS[k + 2]`...) in the batch's
/// table, keeping each index's longest TTL and whether to prune it.
macro_rules! lua_join_members {
    () => {
        r"s = {ttl, score}
scores[ttl_s] = s
end
local ttl, score = s[1], s[2]
for j = k + 2, k + 1 + nindexes do
  local index = KEYS[j]
  local z = indexes[index]
  if not z then
    z = {ttl, prune}
    indexes[index] = z
    order[#order + 1] = index
  else
    if ttl > z[1] then z[1] = ttl end
    if prune then z[2] = true end
  end
  z[#z + 1] = score
  z[#z + 1] = entry
end
"
    };
}

/// Lua writing a batch's bookkeeping: one UNLINK of the read counters, and per distinct index one ZADD of
/// its members, the pruning of expired members when asked, and a TTL past its longest member.
macro_rules! lua_write_indexes {
    () => {
        r"if #counters > 0 then redis.call('UNLINK', unpack(counters)) end
for _, index in ipairs(order) do
  local z = indexes[index]
  redis.call('ZADD', index, unpack(z, 3))
  if z[2] then redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('%d', now)) end
  if redis.call('PTTL', index) < z[1] then
    redis.call('PEXPIRE', index, string.format('%d', z[1] + math.floor(z[1] / 4) + 1000))
  end
end
"
    };
}

// A batch of Sets that holds an only-if-absent Set, or any batch over TLS (the others go as a transaction
// on the Set connection: see [`Redis::store_transaction`]). Per Set, in order: KEYS = its entry, its read counter, its indexes; ARGV = the envelope,
// the TTL in ms and one number packing the rest, (index count * 2 + only-if-absent) * 2 + prune the indexes'
// expired members (see [`set_flags`]). Answers per Set 1 (stored), 0 (only-if-absent and a live entry) or the
// error the SET met (OOM, say), so one refused Set does not fail the others. The SETs run first; then the
// stored Sets' read counters go in one UNLINK and their index members in one ZADD per distinct index (a
// type's index is shared by every Set of the type), and each distinct index's own TTL is stretched, with a
// quarter of slack, only when it would end before its longest new member's (one PTTL per index and batch). A
// SET refused for memory is the script's first write or none (Redis checks `maxmemory` only until a script
// has written), so the bookkeeping of the Sets that stored never fails for memory.
// Lua glue, not the commands, is most of the cost (under h2load, 50 x 1 Set of one key: 9.5 us per Set in
// the script, 2.1 us of it in its commands), so calls are shared across the batch: 40 -> 13 `redis.call`s per
// batch of 6.4 Sets, 9.5 -> 8.0 us per Set in the script; with 1000 keys (loadgen) 14.4 -> 13.5 us. Every
// argument costs Redis a parse and a Lua string, and fred an encode: packing TTL and flags into one number
// (2 arguments per Set instead of 5) took Redis CPU per Set from 9.6 to 8.5 us (batches of 9, no load); the
// TTL went back to an argument of its own for the reason below (3 arguments per Set).
// Numbers never reach `redis.call`: Redis 7.0 turns each Lua number argument into a string with
// `snprintf("%.17g")`, ~0.9 us apiece (redis-benchmark, a script of one SET PX and one ZADD: 7.8 us with
// number arguments, 5.9 us with the same values as strings). So the TTL travels as its own string argument
// and goes to SET as it came, and each distinct TTL's index score is formatted once per batch with
// `string.format('%d')` (integer formatting). Batches of 9 Sets of 1 KiB, one index each, no load, medians
// of three runs of redis-benchmark: 7.4 -> 6.0, 8.6 -> 6.9 and 8.7 -> 7.6 us per Set in the script.
// Index scores are the expiry rounded up to a grain of 1/16 of the TTL, at most a minute: a key Set again
// within its grain keeps its score, and ZADD leaves such a member where it is instead of moving it in the
// skiplist (9.0 -> 8.2 us per Set, same bench). A member outlives its entry by at most the grain; a score is
// never below its entry's expiry, so pruning never drops a live entry from an index (computed once per Set,
// shared by its indexes).
// Each distinct flags and TTL string of a batch goes through `tonumber` (C's `strtod`) once, not once per
// Set: Redis instructions per Set (`scripts/redis-set-cost`: Debian's redis-server 7.0.15, batches of 12 Sets
// of 1 KiB on 1000 keys) 49.2k -> 47.1k. ~14k of them is Lua hashing the value's every byte into a string.
const SET_LUA: &str = concat!(
    lua_now!(),
    r"local answers, counters, order, indexes, scores, flags = {}, {}, {}, {}, {}, {}
local k = 1
for i = 0, #ARGV / 3 - 1 do
local a = 3 * i
local ttl_s, c_s = ARGV[a + 2], ARGV[a + 3]
local f = flags[c_s]
if not f then
local c = tonumber(c_s)
",
    lua_unpack_set_flags!(),
    r"f = {prune, nx, nindexes}
flags[c_s] = f
end
local prune, nx, nindexes = f[1], f[2], f[3]
local entry = KEYS[k]
local ok
if nx then
  ok = redis.pcall('SET', entry, ARGV[a + 1], 'PX', ttl_s, 'NX')
else
  ok = redis.pcall('SET', entry, ARGV[a + 1], 'PX', ttl_s)
end
if type(ok) == 'table' and ok.err then
  answers[i + 1] = ok.err
elseif not ok then
  answers[i + 1] = 0
else
",
    lua_join_counter!(),
    lua_index_score!(),
    lua_join_members!(),
    r"  answers[i + 1] = 1
end
k = k + 2 + nindexes
end
",
    lua_write_indexes!(),
    r"return answers
"
);

// One Set whose value is written by the plain `SET` before it in the same MULTI/EXEC (see
// [`SET_BATCH_MAX_VALUE`]): KEYS = its entry, its read counter, its indexes; ARGV = its TTL in ms and its
// flags (see [`set_flags`]). The same bookkeeping as [`SET_LUA`] without the value. It cannot see whether an
// only-if-absent SET stored, so for those it leaves the read counter alone (an absent entry has none: a
// counter expires and is invalidated with its entry) and never lowers a member's score (a kept entry may
// live longer than this Set would have). Sent as `EVAL`: an `EVALSHA` refused for `NOSCRIPT` inside EXEC
// would leave the SET done and the entry in no index.
const SET_ALONE_LUA: &str = concat!(
    lua_now!(),
    "local ttl, c, score = tonumber(ARGV[1]), tonumber(ARGV[2])\n",
    lua_unpack_set_flags!(),
    lua_index_score!(),
    r"if not nx then redis.call('UNLINK', KEYS[2]) end
for j = 3, #KEYS do
  local index = KEYS[j]
  local old = redis.call('ZSCORE', index, KEYS[1])
  if not old or tonumber(old) < tonumber(score) then redis.call('ZADD', index, score, KEYS[1]) end
  if prune then redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('%d', now)) end
  if redis.call('PTTL', index) < ttl then
    redis.call('PEXPIRE', index, string.format('%d', ttl + math.floor(ttl / 4) + 1000))
  end
end
return 1
"
);

// A batch of Sets whose values the `MSET` before it in the same MULTI/EXEC wrote (see
// [`Redis::store_transaction`]): KEYS = per Set its entry, its read counter, its indexes; ARGV = per Set its
// TTL in ms and its flags (see [`set_flags`]; never only-if-absent). The same bookkeeping as [`SET_LUA`]
// without the values: each entry gets its TTL (PEXPIRE first: a write Redis never refuses for memory, so the
// ZADDs after it are never refused either), the read counters go in one UNLINK and the index members in one
// ZADD per distinct index.
const SET_KEYS_LUA: &str = concat!(
    lua_now!(),
    r"local counters, order, indexes, scores, flags = {}, {}, {}, {}, {}
local k = 1
for i = 1, #ARGV, 2 do
local ttl_s, c_s = ARGV[i], ARGV[i + 1]
local f = flags[c_s]
if not f then
local c = tonumber(c_s)
",
    lua_unpack_set_flags!(),
    r"f = {prune, nindexes}
flags[c_s] = f
end
local prune, nindexes = f[1], f[2]
local entry = KEYS[k]
redis.call('PEXPIRE', entry, ttl_s)
",
    lua_join_counter!(),
    lua_index_score!(),
    lua_join_members!(),
    r"k = k + 2 + nindexes
end
",
    lua_write_indexes!(),
    r"return 1
"
);

/// `MULTI` and `EXEC`, sent in a pipeline around one large Set (see [`Redis::store_alone`]).
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

/// `EVAL source numkeys key... arg...`, routed by the first key, for [`SET_ALONE_LUA`] inside MULTI.
const EVAL: fred::types::CustomCommand = fred::types::CustomCommand {
    cmd: fred::bytes_utils::Str::from_static("EVAL"),
    cluster_hash: fred::types::ClusterHash::Offset(2),
    blocking: false,
};

/// Lua helper shared by the removal scripts: counts a removed key per type, in `CacheType::ALL` order.
const COUNT_LUA: &str = r"
local slots = {export_result = 1, metadata = 2, object = 3, user = 4, config = 5}
local function remove(k, base, counts)
  if redis.call('UNLINK', k) == 1 then
    local slot = slots[string.match(string.sub(k, #base + 1), '^([^:]+)')]
    if slot then counts[slot] = counts[slot] + 1 end
  end
  redis.call('UNLINK', base .. '~:c:' .. string.sub(k, #base + 1))
end
";

// KEYS[1] = index; ARGV[1] = batch size, ARGV[2] = keyspace base. Pops members and removes their entries.
// Returns removed counts per type, then how many members were popped.
const DRAIN_LUA: &str = r"
local members = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local counts = {0, 0, 0, 0, 0}
for i = 1, #members, 2 do
  remove(members[i], ARGV[2], counts)
end
counts[6] = #members / 2
return counts
";

// KEYS = entry keys; ARGV[1] = keyspace base, ARGV[2] = index to remove them from ('' for none).
// Returns removed counts per type.
const DELETE_LUA: &str = r"
local counts = {0, 0, 0, 0, 0}
for i = 1, #KEYS do
  remove(KEYS[i], ARGV[1], counts)
  if ARGV[2] ~= '' then redis.call('ZREM', ARGV[2], KEYS[i]) end
end
return counts
";

/// Invalidations and unknown-outcome writes to apply when Redis comes back.
#[derive(Debug, Default)]
struct Pending {
    targets: Vec<Target>,
    /// Keys to delete from Redis on recovery: written to memory during the outage (Redis may hold an older
    /// value) or written to Redis with an unknown outcome.
    uncertain: HashSet<Arc<str>>,
    /// Some write timed out: it may still land after Redis resumes, so wait before deleting.
    late_writes: bool,
    /// Too much piled up: remove every entry of the service on recovery.
    everything: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.uncertain.is_empty() && !self.everything
    }

    fn len(&self) -> usize {
        self.targets.len() + self.uncertain.len()
    }

    fn delete_later(&mut self, key: &Key) {
        self.add_key(key.storage_key.clone());
    }

    /// Keys are remembered once however often they are touched: the set is bounded by the distinct keys
    /// of the outage, not by the call rate.
    fn add_key(&mut self, storage_key: Arc<str>) {
        if self.everything {
            return;
        }
        if self.len() >= MAX_PENDING_INVALIDATIONS {
            self.remember(Target::All);
        } else {
            self.uncertain.insert(storage_key);
        }
    }

    fn merge(&mut self, other: Pending) {
        self.targets.extend(other.targets);
        self.uncertain.extend(other.uncertain);
        self.late_writes |= other.late_writes;
        self.everything |= other.everything;
        if self.len() > MAX_PENDING_INVALIDATIONS {
            self.remember(Target::All);
        }
    }

    fn remember(&mut self, target: Target) {
        if self.everything {
            return;
        }
        match target {
            Target::Key(key) => self.add_key(key.storage_key),
            Target::All => {
                self.targets.clear();
                self.uncertain.clear();
                self.everything = true;
            }
            _ if self.len() >= MAX_PENDING_INVALIDATIONS => self.remember(Target::All),
            other => self.targets.push(other),
        }
    }
}

/// The Redis tier.
pub struct Redis {
    pool: Pool,
    keyspace: Keyspace,
    budget: Duration,
    flush_script: Lua,
    set_script: Lua,
    /// [`SET_KEYS_LUA`] through fred: runs the bookkeeping again when a transaction's copy did not run.
    set_keys_script: Lua,
    /// Batches of Sets as one transaction in one write (see [`super::setconn`]); `None` with TLS.
    set_conn: Option<SetConnection>,
    drain_script: Lua,
    delete_script: Lua,
    up: AtomicBool,
    wake_monitor: Notify,
    /// Held (briefly, across awaits) by the last step of a recovery, so nothing is remembered between the
    /// final replay and marking Redis up.
    pending: AsyncMutex<Pending>,
    verified_run_id: Mutex<Option<String>>,
    replayed: AtomicU64,
    recoveries: AtomicU64,
    /// Milliseconds Redis was down in past outages, and when the current one began (unix ms, 0 if up).
    down_total_ms: AtomicU64,
    down_since_ms: AtomicU64,
    last_connection_error: Arc<Mutex<Option<String>>>,
    memory_bytes: AtomicU64,
    entries: AtomicU64,
    target: String,
    /// Reads counted since the last flush of read counters.
    access: AccessCounts,
    /// Sets sent, to prune the indexes on one write in [`PRUNE_EVERY`].
    writes: AtomicU64,
    /// Concurrent Gets, coalesced into `MGET`s (set once, right after construction).
    gets: OnceLock<Coalescer<Read, Fetched>>,
    /// Concurrent Sets, coalesced into script calls (set once, right after construction).
    sets: OnceLock<Coalescer<Write, Written>>,
}

/// A Set for the batch script: its keys (entry, read counter, indexes) and its arguments (the envelope, the
/// TTL and [`set_flags`]), in the script's order.
struct Write {
    keys: Vec<Value>,
    args: [Value; 3],
}

impl Write {
    /// Whether the Set stores only if the entry is absent (see [`set_flags`]).
    fn only_if_absent(&self) -> bool {
        matches!(self.args[2], Value::Integer(flags) if flags & 2 != 0)
    }
}

/// The bytes of a key or argument as the Set paths build them (strings and bytes).
fn bytes_of(value: &Value) -> &[u8] {
    match value {
        Value::Bytes(b) => b,
        Value::String(s) => s.as_bytes(),
        _ => b"",
    }
}

/// Longest TTL sent to Redis, in ms (~4,400 years): Lua's doubles add it to Redis' clock exactly.
const MAX_TTL_MS: u64 = 1 << 47;

/// The number [`SET_LUA`] unpacks into a Set's index count and flags: one argument instead of three.
fn set_flags(indexes: usize, only_if_absent: bool, prune: bool) -> i64 {
    debug_assert!(indexes <= 4, "an entry joins at most 4 indexes");
    ((indexes as i64 * 2) + i64::from(only_if_absent)) * 2 + i64::from(prune)
}
/// A Set's answer from the batch: whether it stored.
type Written = Result<bool, BackendError>;

/// A Get for the batch: the entry's storage key, and whether to fetch its stored read count too.
type Read = (Arc<str>, bool);
/// A Get's answer from the batch: the entry (`Null` if absent) and, if asked for, its stored read count.
type Fetched = (Value, Option<u64>);

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.target)
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

fn fred_config(config: &RedisConfig) -> Result<Config, BackendError> {
    let internal = |reason: String| BackendError::Internal { tier: TIER, reason };
    let mut fred_config = match &config.url {
        Some(url) => Config::from_url(url.expose()).map_err(|e| {
            internal(format!(
                "invalid redis url {}: {}",
                config.display_target(),
                e.details()
            ))
        })?,
        None => Config {
            server: ServerConfig::new_centralized(config.host.clone(), config.port),
            username: config.username.clone(),
            password: config.password.as_ref().map(|p| p.expose().to_owned()),
            database: Some(config.db),
            ..Config::default()
        },
    };
    if config.url.is_some() {
        // Settings given beside a URL fill what the URL leaves out.
        if fred_config.username.is_none() {
            fred_config.username = config.username.clone();
        }
        if fred_config.password.is_none() {
            fred_config.password = config.password.as_ref().map(|p| p.expose().to_owned());
        }
    }
    let wants_tls = config.tls
        || fred_config.tls.is_some()
        || config
            .url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("rediss://"));
    if wants_tls {
        let connector = match &config.tls_ca_file {
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject as _};
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| {
                    internal(format!("failed to read CA file {}: {e}", path.display()))
                })? {
                    let cert = cert.map_err(|e| {
                        internal(format!("invalid certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        internal(format!("unusable certificate in {}: {e}", path.display()))
                    })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let client = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| internal(format!("tls setup failed: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                fred::types::config::TlsConnector::from(client)
            }
            None => fred::types::config::TlsConnector::default_rustls()
                .map_err(|e| internal(format!("tls setup failed: {}", e.details())))?,
        };
        fred_config.tls = Some(connector.into());
    }
    fred_config.fail_fast = false;
    Ok(fred_config)
}

impl Redis {
    /// Builds the pool and starts connecting in the background (the server does not wait for Redis).
    ///
    /// # Errors
    /// Fails only on invalid settings (URL, TLS files), never because Redis is unreachable.
    pub fn connect(config: &RedisConfig, keyspace: Keyspace) -> Result<Arc<Self>, BackendError> {
        let fred_config = fred_config(config)?;
        let set_conn = match &fred_config.server {
            ServerConfig::Centralized { server } if fred_config.tls.is_none() => {
                Some(SetConnection::new(setconn::Target {
                    addr: format!("{}:{}", server.host, server.port),
                    username: fred_config.username.clone(),
                    password: fred_config.password.clone(),
                    database: fred_config.database,
                    script: SET_KEYS_LUA,
                }))
            }
            _ => None,
        };
        let budget = config.command_timeout;
        let connection = ConnectionConfig {
            connection_timeout: config.connect_timeout,
            internal_command_timeout: budget.max(Duration::from_millis(300)),
            max_command_attempts: 1,
            max_command_buffer_len: 10_000,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(budget * 4 + Duration::from_millis(500)),
                interval: Duration::from_millis(250),
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            ..ConnectionConfig::default()
        };
        let performance = PerformanceConfig {
            default_command_timeout: budget,
            ..PerformanceConfig::default()
        };
        let max_delay = config.reconnect_max_delay.as_millis().clamp(50, 60_000) as u32;
        let policy = ReconnectPolicy::new_exponential(0, 50.min(max_delay), max_delay, 2);
        let pool = Builder::from_config(fred_config)
            .set_connection_config(connection)
            .set_performance_config(performance)
            .set_policy(policy)
            .build_pool(config.pool_size)
            .map_err(|e| BackendError::Internal {
                tier: TIER,
                reason: e.details().to_owned(),
            })?;
        let _ = pool.connect_pool();
        let redis = Arc::new(Self {
            pool,
            keyspace,
            budget,
            flush_script: Lua::new(FLUSH_LUA),
            set_script: Lua::new(SET_LUA),
            set_keys_script: Lua::new(SET_KEYS_LUA),
            set_conn,
            drain_script: Lua::new(format!("{COUNT_LUA}{DRAIN_LUA}")),
            delete_script: Lua::new(format!("{COUNT_LUA}{DELETE_LUA}")),
            up: AtomicBool::new(false),
            wake_monitor: Notify::new(),
            pending: AsyncMutex::new(Pending::default()),
            verified_run_id: Mutex::new(None),
            replayed: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            down_total_ms: AtomicU64::new(0),
            down_since_ms: AtomicU64::new(now_ms()),
            last_connection_error: Arc::new(Mutex::new(None)),
            memory_bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            target: config.display_target(),
            access: AccessCounts::default(),
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
        // A lost or re-established connection may mean a restarted Redis: stop reading from it until the
        // monitor has verified it (run id, replay). Events arrive before fred's reconnect delay elapses.
        for client in redis.pool.clients() {
            let weak = Arc::downgrade(&redis);
            drop(client.on_error(move |(err, _server)| {
                if let Some(redis) = weak.upgrade() {
                    *redis.last_connection_error.lock() = Some(err.details().to_owned());
                    redis.connection_lost("connection error");
                }
                async { Ok(()) }
            }));
            let weak = Arc::downgrade(&redis);
            drop(client.on_reconnect(move |_server| {
                if let Some(redis) = weak.upgrade() {
                    redis.connection_lost("reconnected");
                }
                async { Ok(()) }
            }));
        }
        tokio::spawn(Self::monitor(Arc::downgrade(&redis)));
        tokio::spawn(Self::flush_reads_periodically(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// Whether Redis is verified and serving.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Makes sure an invalidation that could not reach Redis reaches it before Redis serves reads again:
    /// remembered while Redis is down, applied directly if Redis came back meanwhile.
    pub async fn remember(&self, target: Target) {
        self.remember_or_apply(|p| p.remember(target.clone()), || self.apply(&target))
            .await;
    }

    /// Makes sure `key` is deleted from Redis before Redis serves reads again (its value there may be older
    /// than one acknowledged during the outage, or a timed-out write may still land).
    pub async fn remember_uncertain(&self, key: &Key) {
        let target = Target::Key(key.clone());
        // `apply` is boxed: its future (every invalidation path) is large and would otherwise be part of
        // every Set's future.
        self.remember_or_apply(|p| p.delete_later(key), || Box::pin(self.apply(&target)))
            .await;
    }

    /// Storage keys whose write may have landed half done: removed once Redis is verified (now, if it is
    /// up).
    async fn remember_uncertain_keys(&self, keys: Vec<Arc<str>>) {
        let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        self.remember_or_apply(
            |p| {
                for key in &keys {
                    p.add_key(key.clone());
                }
            },
            || Box::pin(self.delete_keys(names.clone(), "")),
        )
        .await;
    }

    /// Like [`Redis::remember_uncertain`] for a write that timed out: it may land late, so recovery waits a
    /// moment before deleting it.
    async fn remember_late_write(&self, key: &Key) {
        let target = Target::Key(key.clone());
        self.remember_or_apply(
            |p| {
                p.delete_later(key);
                p.late_writes = true;
            },
            || Box::pin(self.apply(&target)),
        )
        .await;
    }

    async fn remember_or_apply<F: Future<Output = Result<Removed, BackendError>>>(
        &self,
        mut push: impl FnMut(&mut Pending),
        apply: impl Fn() -> F,
    ) {
        for _ in 0..3 {
            {
                let mut pending = self.pending.lock().await;
                if !self.is_up() {
                    push(&mut pending);
                    self.wake_monitor.notify_one();
                    return;
                }
            }
            // Redis was verified since the caller failed over: apply directly.
            if apply().await.is_ok() {
                return;
            }
        }
        let mut pending = self.pending.lock().await;
        push(&mut pending);
        if self.up.swap(false, Ordering::AcqRel) {
            self.note_down();
        }
        self.wake_monitor.notify_one();
    }

    /// Waits until Redis is verified and serving, at most `within`; returns whether it is.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// How many times Redis became verified and serving (each end of an outage).
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Acquire)
    }

    /// Invalidations replayed after outages so far.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    fn note_down(&self) {
        // Redis may come back without its data: read counts are fetched again after recovery.
        self.access.clear();
        let _ =
            self.down_since_ms
                .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Relaxed);
    }

    fn down_seconds(&self) -> f64 {
        let since = self.down_since_ms.load(Ordering::Acquire);
        let current = if since > 0 {
            now_ms().saturating_sub(since)
        } else {
            0
        };
        (self.down_total_ms.load(Ordering::Relaxed) + current) as f64 / 1000.0
    }

    fn connection_lost(&self, what: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.note_down();
            tracing::warn!(redis = %self.target, event = what, "redis connection lost; verifying before serving from it again");
        }
        self.wake_monitor.notify_one();
    }

    fn mark_down(&self, err: &BackendError) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.note_down();
            tracing::warn!(redis = %self.target, error = %err, "redis marked down");
        }
        self.wake_monitor.notify_one();
    }

    fn unavailable(&self) -> BackendError {
        BackendError::Unavailable {
            tier: TIER,
            reason: format!("{} is not reachable", self.target),
        }
    }

    fn classify(&self, err: &Error) -> BackendError {
        let details = err.details();
        match err.kind() {
            ErrorKind::Timeout => BackendError::Timeout {
                tier: TIER,
                budget: self.budget,
            },
            // An error reply from Redis itself: the command reached it and failed there. (fred also reports
            // some client-side conditions, e.g. "Failed to route command.", as Unknown: those are outages.)
            ErrorKind::Unknown
            | ErrorKind::InvalidCommand
            | ErrorKind::InvalidArgument
            | ErrorKind::Parse => {
                // Out of memory, alone or as the reason a transaction was discarded.
                if details.starts_with("OOM")
                    || details.starts_with("EXECABORT") && details.contains("OOM")
                {
                    BackendError::Refused {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                } else if ["ERR", "WRONGTYPE", "NOSCRIPT", "NOPERM", "EXECABORT"]
                    .iter()
                    .any(|p| details.starts_with(p))
                {
                    BackendError::Internal {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                } else {
                    BackendError::Unavailable {
                        tier: TIER,
                        reason: details.to_owned(),
                    }
                }
            }
            // Everything on the client's side of the wire (connection, routing, TLS, auth, backpressure):
            // Redis could not be used for this call.
            _ => BackendError::Unavailable {
                tier: TIER,
                reason: details.to_owned(),
            },
        }
    }

    /// Runs one command under the budget; outage errors mark the tier down.
    async fn call<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let result = match tokio::time::timeout(self.budget, fut).await {
            Ok(result) => result.map_err(|e| self.classify(&e)),
            Err(_) => Err(BackendError::Timeout {
                tier: TIER,
                budget: self.budget,
            }),
        };
        self.note_outcome(result)
    }

    /// [`Redis::call`] for the hot path, without the backstop timer: fred bounds these commands itself
    /// (the per-command timeout the batches set from [`Redis::budget_left`]; CRATES.md 2.5) and reports
    /// expiry as a timeout. One timer less per call.
    async fn call_bounded<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let result = fut.await.map_err(|e| self.classify(&e));
        self.note_outcome(result)
    }

    /// Outage errors mark the tier down.
    fn note_outcome<T>(&self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        if let Err(e) = &result
            && e.is_outage()
        {
            self.mark_down(e);
        }
        result
    }

    fn fast(&self) -> fred::clients::WithOptions<Client> {
        self.pool
            .next()
            .with_options(&self.fail_fast_within(self.budget))
    }

    /// Fail-fast options (CRATES.md 2.5) with `timeout`.
    fn fail_fast_within(&self, timeout: Duration) -> Options {
        Options {
            timeout: Some(timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    /// What is left of the command budget of a batch whose oldest call was queued at `oldest`: calls that
    /// waited for a free slot (Redis slow or hung) must still fail over within their budget. A batch whose
    /// budget is spent fails at once, as a timeout, without being sent; so does any batch once the tier is
    /// down (the calls queued behind a hung Redis go to the memory tier instead of waiting their turn).
    fn budget_left(&self, oldest: Instant) -> Result<Duration, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        match self.budget.checked_sub(oldest.elapsed()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => self.note_outcome(Err(BackendError::Timeout {
                tier: TIER,
                budget: self.budget,
            })),
        }
    }

    fn counter_key(&self, storage_key: &str) -> String {
        let base = self.keyspace.base();
        let rendered = storage_key.strip_prefix(base).unwrap_or(storage_key);
        let mut key = String::with_capacity(base.len() + 4 + rendered.len());
        key.push_str(base);
        key.push_str("~:c:");
        key.push_str(rendered);
        key
    }

    /// `<base>~:i:<dimension parts joined by ':'>:<escaped value>`, built in one allocation (every Set builds
    /// two to four of these).
    fn index_key(&self, dimension: &[&str], value: &str) -> String {
        let base = self.keyspace.base();
        let mut key = String::with_capacity(base.len() + 24 + value.len());
        key.push_str(base);
        key.push_str("~:i:");
        for part in dimension {
            key.push_str(part);
            key.push(':');
        }
        crate::keys::escape_into(&mut key, value);
        key
    }

    fn type_index(&self, t: CacheType) -> String {
        // Type segments need no escaping, so this is `<base>~:i:t:<segment>`.
        self.index_key(&["t"], t.segment())
    }

    fn id_index(&self, t: CacheType, id: &str) -> String {
        if t.is_object() {
            self.index_key(&["o"], id)
        } else {
            self.index_key(&["n", t.segment()], id)
        }
    }

    /// One batch of Gets as one `MGET`: each entry, and the stored read counts asked for. fred's command
    /// futures are ~7 KB: boxed where built. Fail fast (CRATES.md 2.5): while a lost connection is not yet
    /// detected, the batch fails at once and the memory tier answers its calls.
    async fn fetch(&self, reads: Vec<Read>, oldest: Instant) -> Result<Vec<Fetched>, BackendError> {
        let options = self.fail_fast_within(self.budget_left(oldest)?);
        let mut keys = Vec::with_capacity(reads.len() * 2);
        for (storage_key, with_count) in &reads {
            keys.push(storage_key.to_string());
            if *with_count {
                keys.push(self.counter_key(storage_key));
            }
        }
        let expected = keys.len();
        let client = self.pool.next().with_options(&options);
        let values: Vec<Value> = self.call_bounded(Box::pin(client.mget(keys))).await?;
        if values.len() != expected {
            return Err(BackendError::Internal {
                tier: TIER,
                reason: format!("MGET of {expected} keys answered {} values", values.len()),
            });
        }
        let mut values = values.into_iter();
        Ok(reads
            .iter()
            .map(|(_, with_count)| {
                let entry = values.next().unwrap_or(Value::Null);
                let stored =
                    with_count.then(|| values.next().and_then(|v| v.as_u64()).unwrap_or(0));
                (entry, stored)
            })
            .collect())
    }

    /// One batch of Sets as one call of the Set script (see [`SET_LUA`]), each Set with its own answer.
    async fn store(
        &self,
        writes: Vec<Write>,
        oldest: Instant,
    ) -> Result<Vec<Written>, BackendError> {
        if let Some(conn) = &self.set_conn
            && writes.iter().all(|w| !w.only_if_absent())
        {
            return Box::pin(self.store_transaction(conn, writes, oldest)).await;
        }
        // Not fail-fast: a Set's outcome must be known, so it waits for a reconnection within its budget.
        let options = Options {
            timeout: Some(self.budget_left(oldest)?),
            ..Options::default()
        };
        let argv = || {
            let mut keys = Vec::with_capacity(writes.len() * 6);
            let mut args = Vec::with_capacity(writes.len() * 3);
            for write in &writes {
                keys.extend(write.keys.iter().cloned());
                args.extend(write.args.iter().cloned());
            }
            (keys, args)
        };
        // Boxed where it is built: fred's futures are several KB.
        let fut = Box::pin(self.set_script.run::<Vec<Value>, _, _>(
            self.pool.next(),
            options,
            argv,
        ));
        let answers = self.call_bounded(fut).await?;
        if answers.len() != writes.len() {
            return Err(BackendError::Internal {
                tier: TIER,
                reason: format!(
                    "the Set script answered {} of {} Sets",
                    answers.len(),
                    writes.len()
                ),
            });
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                Value::Integer(n) => Ok(n == 1),
                // The error reply its SET met, mapped as if it had been the whole command's.
                other => self.note_outcome(Err(self.classify(&Error::new(
                    ErrorKind::Unknown,
                    other.as_string().unwrap_or_default(),
                )))),
            })
            .collect())
    }

    /// One batch of Sets, none of them only-if-absent, as one transaction on the Set connection:
    /// `MULTI`, one `MSET` of the values, [`SET_KEYS_LUA`] by `EVALSHA`, `EXEC`, in one write. The values
    /// never become Lua strings (see [`super::setconn`]). Atomic like the batch script: a concurrent
    /// invalidation never finds an entry outside its indexes.
    async fn store_transaction(
        &self,
        conn: &SetConnection,
        writes: Vec<Write>,
        oldest: Instant,
    ) -> Result<Vec<Written>, BackendError> {
        let budget = self.budget_left(oldest)?;
        let n = writes.len();
        let nkeys: usize = writes.iter().map(|w| w.keys.len()).sum();
        let values: usize = writes.iter().map(|w| bytes_of(&w.args[0]).len()).sum();
        let mut commands = Commands::with_capacity(values + nkeys * 64 + n * 32 + 128);
        commands.command(1).arg(b"MULTI");
        commands.command(1 + 2 * n).arg(b"MSET");
        for w in &writes {
            commands.arg(bytes_of(&w.keys[0])).arg(bytes_of(&w.args[0]));
        }
        commands
            .command(3 + nkeys + 2 * n)
            .arg(b"EVALSHA")
            .arg(self.set_keys_script.sha1().as_bytes())
            .int(nkeys as i64);
        for w in &writes {
            for key in &w.keys {
                commands.arg(bytes_of(key));
            }
        }
        for w in &writes {
            for arg in &w.args[1..] {
                match arg {
                    Value::Integer(i) => commands.int(*i),
                    other => commands.arg(bytes_of(other)),
                };
            }
        }
        commands.command(1).arg(b"EXEC");
        let replies = match tokio::time::timeout(budget, conn.send(&commands)).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(e)) => {
                // A refused handshake is Redis' own error reply (WRONGPASS: an outage, as for fred's pool;
                // NOPERM: a misconfigured ACL); the rest is the connection.
                let kind = match e {
                    ConnError::Handshake(_) => ErrorKind::Unknown,
                    ConnError::Io(_) | ConnError::Protocol(_) => ErrorKind::IO,
                };
                let e = self.classify(&Error::new(kind, e.to_string()));
                return self.note_outcome(Err(e));
            }
            Err(_) => {
                return self.note_outcome(Err(BackendError::Timeout {
                    tier: TIER,
                    budget: self.budget,
                }));
            }
        };
        let all = |outcome: Written| Ok((0..n).map(|_| outcome.clone()).collect());
        // MULTI, MSET and EVALSHA answer OK / QUEUED, or a refusal (out of memory, an ACL): then EXEC ran
        // nothing, and the refusal is every Set's answer.
        if let Some(Reply::Error(refused)) = replies
            .iter()
            .take(3)
            .find(|r| matches!(r, Reply::Error(_)))
        {
            let e = self.classify(&Error::new(ErrorKind::Unknown, refused.clone()));
            return all(self.note_outcome(Err(e)));
        }
        match replies.get(3) {
            Some(Reply::Array(Some(results))) => {
                if matches!(results.get(1), Some(Reply::Integer(1))) {
                    return all(Ok(true));
                }
            }
            Some(Reply::Error(e)) if e.starts_with("EXECABORT") => {
                let e = self.classify(&Error::new(ErrorKind::Unknown, e.clone()));
                return all(self.note_outcome(Err(e)));
            }
            _ => {}
        }
        // The MSET ran and the bookkeeping did not (the script cache was flushed, say): the entries have no
        // TTL and are in no index. Run it again through fred, which loads the script if Redis lacks it.
        let keys_and_args = || {
            let mut keys = Vec::with_capacity(nkeys);
            let mut args = Vec::with_capacity(2 * n);
            for w in &writes {
                keys.extend(w.keys.iter().cloned());
                args.extend(w.args[1..].iter().cloned());
            }
            (keys, args)
        };
        let options = Options {
            timeout: Some(self.budget_left(oldest).unwrap_or(self.budget)),
            ..Options::default()
        };
        let fut = Box::pin(self.set_keys_script.run::<Value, _, _>(
            self.pool.next(),
            options,
            keys_and_args,
        ));
        match self.call_bounded(fut).await {
            Ok(_) => all(Ok(true)),
            Err(e) => {
                // Entries that may live forever and outside their indexes: remove them once Redis is verified.
                let entries = writes
                    .iter()
                    .filter_map(|w| w.keys[0].as_str().map(|k| Arc::<str>::from(k.as_ref())))
                    .collect();
                self.remember_uncertain_keys(entries).await;
                all(Err(e))
            }
        }
    }

    /// One large Set (see [`SET_BATCH_MAX_VALUE`]): `MULTI`, a plain `SET`, the keys-only
    /// [`SET_ALONE_LUA`], `EXEC`. Atomic like the batch script, so a concurrent invalidation never finds
    /// the entry outside its indexes. Answers whether it stored.
    async fn store_alone(
        &self,
        key: &Key,
        write: Write,
        ttl_ms: u64,
        only_if_absent: bool,
    ) -> Result<bool, BackendError> {
        let Write {
            keys,
            args: [envelope, ttl_arg, flags],
        } = write;
        // A pipeline, not fred's `Transaction`: that waits for the connection to drain and, under load,
        // got the shared connection reset as unresponsive. fred's router writes a pipeline's commands one
        // after the other before any other command, so nothing else lands inside the MULTI. (It flushes the
        // socket after each of them, which is why batches of small Sets go through one script call instead:
        // see `SET_LUA`.)
        let pipe = self.pool.next().pipeline();
        let queued = async {
            let nx = only_if_absent.then_some(SetOptions::NX);
            let ttl = Expiration::PX(ttl_ms as i64);
            let mut eval = Vec::with_capacity(4 + keys.len());
            eval.push(Value::from_static_str(SET_ALONE_LUA));
            eval.push(Value::Integer(keys.len() as i64));
            eval.extend(keys);
            eval.push(ttl_arg);
            eval.push(flags);
            pipe.custom::<(), Value>(MULTI, Vec::new()).await?;
            pipe.set::<(), _, _>(key.storage_key.as_ref(), envelope, Some(ttl), nx, false)
                .await?;
            pipe.custom::<(), _>(EVAL, eval).await?;
            pipe.custom::<(), Value>(EXEC, Vec::new()).await?;
            Ok::<_, Error>(pipe.try_all::<Value>().await)
        };
        let answers = self.call(Box::pin(queued)).await?;
        // MULTI, the SET and the script answer QUEUED, or a refusal (out of memory, an ACL): then EXEC
        // ran nothing, and the refusal is the answer.
        if let Some(Err(refused)) = answers.iter().take(3).find(|a| a.is_err()) {
            return self.note_outcome(Err(self.classify(refused)));
        }
        let exec = answers
            .into_iter()
            .nth(3)
            .unwrap_or_else(|| Ok(Value::Null))
            .and_then(|exec| exec.convert::<Vec<Value>>());
        match exec {
            // The SET's own answer: `OK`, or nil when only-if-absent found a live entry.
            Ok(results) => Ok(results.first().is_some_and(|set| !set.is_null())),
            Err(e) => {
                // EXECABORT (EXEC refused as a whole, e.g. out of memory) ran nothing; otherwise the script
                // may have failed after the SET ran, leaving the entry in no index: remove it.
                let ran_nothing = e.details().starts_with("EXECABORT");
                let e = self.classify(&e);
                if !ran_nothing && !e.is_outage() {
                    self.remember_uncertain(key).await;
                }
                self.note_outcome(Err(e))
            }
        }
    }

    /// The indexes an entry joins. An entry its id alone names (no user, no project, not an export) is
    /// not in its id index: invalidation by id removes it by its key (see [`Self::invalidate_selector`]),
    /// which saves most Sets a ZADD and a TTL check on an index of one member.
    fn push_indexes(&self, tags: &KeyTags, keys: &mut Vec<String>) {
        if !(tags.user_id.is_empty()
            && tags.project_id.is_empty()
            && tags.cache_type.has_unscoped_key())
        {
            keys.push(self.id_index(tags.cache_type, &tags.id));
        }
        keys.push(self.type_index(tags.cache_type));
        if !tags.user_id.is_empty() {
            keys.push(self.index_key(&["u"], &tags.user_id));
        }
        if !tags.project_id.is_empty() {
            keys.push(self.index_key(&["p"], &tags.project_id));
        }
    }

    /// Removes every member entry of an index (single-dimension selectors, `all`). Cost: its members.
    async fn drain(&self, index: &str) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        loop {
            let fut =
                self.drain_script
                    .run::<Value, _, _>(self.pool.next(), Options::default(), || {
                        (
                            vec![index.to_owned()],
                            vec![
                                Value::from(i64::from(DRAIN_BATCH)),
                                Value::from(self.keyspace.base()),
                            ],
                        )
                    });
            let (n, popped) = removed_counts(&self.call(fut).await?);
            removed.merge(n);
            if popped < u64::from(DRAIN_BATCH) {
                return Ok(removed);
            }
        }
    }

    /// Removes the entries of an index that match a selector (multi-field selectors). Cost: the index size.
    async fn filter_index(
        &self,
        index: &str,
        selector: &Selector,
    ) -> Result<Removed, BackendError> {
        let client = self.pool.next();
        let mut doomed = Vec::new();
        let mut stream = std::pin::pin!(client.zscan(index.to_owned(), "*", Some(1000)));
        loop {
            let Some(mut page) = self.next_page(&mut stream).await? else {
                break;
            };
            for (member, _) in page.take_results().unwrap_or_default() {
                if let Some(k) = member.as_string()
                    && self
                        .keyspace
                        .parse(&k)
                        .is_some_and(|tags| selector.matches(&tags))
                {
                    doomed.push(k);
                }
            }
            page.next();
        }
        self.delete_keys(doomed, index).await
    }

    /// The next page of a SCAN-family stream, within four command budgets.
    async fn next_page<P>(
        &self,
        stream: &mut (impl futures::Stream<Item = Result<P, Error>> + Unpin),
    ) -> Result<Option<P>, BackendError> {
        let budget = self.budget * 4;
        match tokio::time::timeout(budget, stream.try_next()).await {
            Ok(page) => page.map_err(|e| self.classify(&e)),
            Err(_) => Err(BackendError::Timeout { tier: TIER, budget }),
        }
    }

    async fn delete_keys(&self, keys: Vec<String>, index: &str) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        for chunk in keys.chunks(DRAIN_BATCH as usize) {
            let fut =
                self.delete_script
                    .run::<Value, _, _>(self.pool.next(), Options::default(), || {
                        (
                            chunk.to_vec(),
                            vec![Value::from(self.keyspace.base()), Value::from(index)],
                        )
                    });
            removed.merge(removed_counts(&self.call(fut).await?).0);
        }
        Ok(removed)
    }

    async fn invalidate_selector(&self, s: &Selector) -> Result<Removed, BackendError> {
        let single = [
            s.cache_type.is_some(),
            s.object_id.is_some(),
            s.user_id.is_some(),
            s.project_id.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
            == 1;
        let index = match (&s.object_id, &s.user_id, &s.project_id, s.cache_type) {
            (Some(id), ..) => match s.cache_type {
                Some(t) if !t.is_object() => self.id_index(t, id),
                _ => self.index_key(&["o"], id),
            },
            (None, Some(u), ..) => self.index_key(&["u"], u),
            (None, None, Some(p), _) => self.index_key(&["p"], p),
            (None, None, None, Some(t)) => self.type_index(t),
            (None, None, None, None) => return Ok(Removed::default()),
        };
        let name_index = s.object_id.is_some() && s.cache_type.is_some_and(|t| !t.is_object());
        let mut removed = if single || (name_index && s.user_id.is_none() && s.project_id.is_none())
        {
            self.drain(&index).await?
        } else {
            self.filter_index(&index, s).await?
        };
        // Entries their id alone names are in no id index (see `push_indexes`): removed by key.
        if let Some(id) = &s.object_id
            && s.user_id.is_none()
            && s.project_id.is_none()
        {
            let keys: Vec<String> = match s.cache_type {
                Some(t) => self.keyspace.unscoped_key(t, id).into_iter().collect(),
                None => CacheType::ALL
                    .iter()
                    .filter(|t| t.is_object())
                    .filter_map(|t| self.keyspace.unscoped_key(*t, id))
                    .collect(),
            };
            if !keys.is_empty() {
                removed.merge(self.delete_keys(keys, "").await?);
            }
        }
        Ok(removed)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<Removed, BackendError> {
        let meta_prefix = format!("{}~:", self.keyspace.base());
        let client = self.pool.next();
        let mut stream = std::pin::pin!(client.scan(pattern.to_owned(), Some(SCAN_COUNT), None));
        let mut removed = Removed::default();
        loop {
            let Some(mut page) = self.next_page(&mut stream).await? else {
                break;
            };
            let keys: Vec<String> = page
                .take_results()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|k| k.into_string())
                .filter(|k| {
                    !k.starts_with(&meta_prefix) && glob_match(pattern.as_bytes(), k.as_bytes())
                })
                .collect();
            if !keys.is_empty() {
                removed.merge(self.delete_keys(keys, "").await?);
            }
            page.next();
        }
        Ok(removed)
    }

    async fn invalidate_all(&self) -> Result<Removed, BackendError> {
        let mut removed = Removed::default();
        for t in CacheType::ALL {
            removed.merge(self.drain(&self.type_index(t)).await?);
        }
        Ok(removed)
    }

    async fn apply(&self, target: &Target) -> Result<Removed, BackendError> {
        match target {
            Target::Key(key) => self.access.forget(&key.storage_key),
            _ => self.access.clear(),
        }
        match target {
            Target::Key(key) => {
                self.delete_keys(vec![key.storage_key.to_string()], "")
                    .await
            }
            Target::Selector(s) => self.invalidate_selector(s).await,
            Target::Pattern(p) => self.invalidate_pattern(p).await,
            Target::All => self.invalidate_all().await,
        }
    }

    /// Checks Redis is reachable and holds no data older than our invalidations, replays what is pending,
    /// and only then marks the tier up.
    async fn verify_and_recover(&self) -> Result<(), BackendError> {
        let client = self.fast();
        self.call(client.ping::<String>(None)).await?;
        let info: String = self.call(self.fast().info(Some(InfoKind::Server))).await?;
        let run_id = info_field(&info, "run_id").unwrap_or_default().to_owned();
        let marker = format!("{}~:runid", self.keyspace.base());
        let stored: Option<String> = self.call(self.fast().get(marker.as_str())).await?;
        if stored.as_deref() != Some(run_id.as_str()) {
            // A Redis we have not verified: new, restarted, or restored from a snapshot that may predate
            // invalidations. Remove every entry of ours it may hold, then record that it is verified.
            let removed = self.invalidate_all().await?;
            tracing::warn!(redis = %self.target, removed = removed.total(), "redis run id changed (restart or new instance): removed this service's entries");
            let _: () = self
                .call(
                    self.fast()
                        .set(marker.as_str(), run_id.as_str(), None, None, false),
                )
                .await?;
        }
        *self.verified_run_id.lock() = Some(run_id);
        // Replay what piled up, in rounds, outside the lock (writers keep failing over meanwhile) ...
        for _ in 0..8 {
            let batch = std::mem::take(&mut *self.pending.lock().await);
            if batch.len() <= 64 && !batch.everything && !batch.late_writes {
                self.pending.lock().await.merge(batch);
                break;
            }
            if let Err(e) = self.replay(&batch).await {
                self.pending.lock().await.merge(batch);
                return Err(e);
            }
        }
        // ... then the rest while holding the lock, and mark Redis up before anyone can remember more.
        let mut pending = self.pending.lock().await;
        let batch = std::mem::take(&mut *pending);
        if let Err(e) = self.replay(&batch).await {
            pending.merge(batch);
            return Err(e);
        }
        self.up.store(true, Ordering::Release);
        self.recoveries.fetch_add(1, Ordering::AcqRel);
        let since = self.down_since_ms.swap(0, Ordering::AcqRel);
        if since > 0 {
            self.down_total_ms
                .fetch_add(now_ms().saturating_sub(since), Ordering::Relaxed);
        }
        drop(pending);
        tracing::info!(redis = %self.target, "redis verified and serving");
        Ok(())
    }

    async fn replay(&self, pending: &Pending) -> Result<(), BackendError> {
        if pending.is_empty() {
            return Ok(());
        }
        if pending.late_writes {
            tokio::time::sleep(SETTLE_DELAY).await;
        }
        if pending.everything {
            self.invalidate_all().await?;
        }
        // Keys (invalidated or uncertain) go in batches; selectors and patterns one by one.
        let mut keys: Vec<String> = pending.uncertain.iter().map(|k| k.to_string()).collect();
        for target in &pending.targets {
            match target {
                Target::Key(key) => keys.push(key.storage_key.to_string()),
                other => {
                    self.apply(other).await?;
                }
            }
        }
        self.delete_keys(keys, "").await?;
        let n = pending.targets.len() as u64
            + pending.uncertain.len() as u64
            + u64::from(pending.everything);
        self.replayed.fetch_add(n, Ordering::Relaxed);
        tracing::info!(redis = %self.target, replayed = n, "replayed invalidations remembered during the outage");
        Ok(())
    }

    async fn monitor(this: std::sync::Weak<Self>) {
        let mut delay = Duration::from_millis(50);
        let mut logged_outage = false;
        loop {
            let Some(redis) = this.upgrade() else { return };
            if redis.is_up() {
                // Healthy: a cheap ping every second catches restarts even without traffic.
                let tick = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! { () = redis.wake_monitor.notified() => {}, () = tick => {} }
                drop(redis);
                let Some(redis) = this.upgrade() else { return };
                if redis.is_up()
                    && redis.check_run_id().await.is_err()
                    && redis.up.swap(false, Ordering::AcqRel)
                {
                    redis.note_down();
                }
                delay = Duration::from_millis(50);
                continue;
            }
            let outcome = redis.verify_and_recover().await;
            match outcome {
                Ok(()) => {
                    delay = Duration::from_millis(50);
                    logged_outage = false;
                }
                Err(e) => {
                    if !logged_outage {
                        let connection = redis
                            .last_connection_error
                            .lock()
                            .clone()
                            .unwrap_or_else(|| "none reported".into());
                        tracing::warn!(redis = %redis.target, error = %e, connection_error = %connection, "redis unreachable; retrying in the background");
                        logged_outage = true;
                    }
                    drop(redis);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// Adds the reads counted since the last flush to the entries' counters in Redis.
    ///
    /// Counts that cannot be written (Redis down, a timeout) are dropped: they are statistics, and the
    /// entries they belong to may not survive the outage anyway.
    async fn flush_reads(&self) {
        let counted = self.access.take();
        if counted.is_empty() || !self.is_up() {
            return;
        }
        for batch in counted.chunks(FLUSH_BATCH) {
            let argv = || {
                let mut keys = Vec::with_capacity(batch.len() * 2);
                let mut reads = Vec::with_capacity(batch.len());
                for (storage_key, n) in batch {
                    keys.push(storage_key.to_string());
                    keys.push(self.counter_key(storage_key));
                    reads.push(Value::from(*n as i64));
                }
                (keys, reads)
            };
            let fut =
                self.flush_script
                    .run::<Vec<u64>, _, _>(self.pool.next(), Options::default(), argv);
            match self.call(fut).await {
                Ok(totals) => self.access.settle(
                    batch
                        .iter()
                        .zip(totals)
                        .map(|((key, _), total)| (Arc::clone(key), total)),
                ),
                Err(e) => {
                    tracing::debug!(redis = %self.target, error = %e, "read counters not flushed");
                    return;
                }
            }
        }
    }

    async fn flush_reads_periodically(this: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(redis) = this.upgrade() else { return };
            redis.flush_reads().await;
        }
    }

    async fn check_run_id(&self) -> Result<(), BackendError> {
        let info: String = self.call(self.fast().info(Some(InfoKind::Server))).await?;
        let run_id = info_field(&info, "run_id").unwrap_or_default();
        if self.verified_run_id.lock().as_deref() != Some(run_id) {
            tracing::warn!(redis = %self.target, "redis restarted: verifying before serving from it again");
            return Err(self.unavailable());
        }
        Ok(())
    }
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Splits a removal script's reply: counts per type, then (drain only) the members popped.
fn removed_counts(v: &Value) -> (Removed, u64) {
    let Value::Array(items) = v else {
        return (Removed::default(), 0);
    };
    let n = |i: usize| items.get(i).and_then(Value::as_u64).unwrap_or(0);
    (Removed([n(0), n(1), n(2), n(3), n(4)]), n(5))
}

#[async_trait]
impl Backend for Redis {
    async fn get(&self, key: &Key) -> Result<Option<Hit>, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        // Only the entry when this server knows its read count, else the entry and its stored count (see
        // `access`); concurrent Gets share one MGET (see `fetch`).
        let known = self.access.read_known(&key.storage_key);
        let read = (Arc::clone(&key.storage_key), known.is_none());
        let gets = self.gets.get().expect("set at construction");
        let (reply, stored) = gets.call(read).await?;
        let envelope = match reply {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            _ => return Ok(None),
        };
        // Counted already (the total was known), or counted now on top of the stored count.
        let access_count = match known {
            Some(count) => count,
            None => self
                .access
                .record(&key.storage_key, stored.unwrap_or_default()),
        };
        Ok(Some(Hit {
            envelope,
            access_count,
            tier: TierKind::Redis,
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
        if !self.is_up() {
            return Err(self.unavailable());
        }
        // Capped once, so that the script's bookkeeping and a large value's plain SET see the same TTL.
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(MAX_TTL_MS)) as u64;
        let prune = self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        let mut keys = Vec::with_capacity(6);
        keys.push(key.storage_key.to_string());
        keys.push(self.counter_key(&key.storage_key));
        self.push_indexes(&key.tags, &mut keys);
        let flags = set_flags(keys.len() - 2, only_if_absent, prune);
        let alone = envelope.len() > SET_BATCH_MAX_VALUE;
        let write = Write {
            keys: keys.into_iter().map(Value::from).collect(),
            // fred sends an integer as its decimal digits: Lua gets a string it hands to SET as is.
            args: [
                Value::Bytes(envelope),
                Value::Integer(ttl_ms as i64),
                Value::Integer(flags),
            ],
        };
        let outcome = if alone {
            Box::pin(self.store_alone(key, write, ttl_ms, only_if_absent)).await
        } else {
            let sets = self.sets.get().expect("set at construction");
            sets.call(write).await.and_then(|written| written)
        };
        match outcome {
            Ok(stored) => {
                if stored {
                    // A new entry: its read counter was removed with the old one.
                    self.access.forget(&key.storage_key);
                }
                Ok(Stored {
                    stored,
                    tier: TierKind::Redis,
                    fallback: false,
                })
            }
            Err(e) => {
                if matches!(e, BackendError::Timeout { .. }) {
                    // fred cannot cancel a written command: the write may still land after a later
                    // invalidation. Delete it again when Redis is verified.
                    self.remember_late_write(key).await;
                }
                Err(e)
            }
        }
    }

    async fn invalidate(&self, target: &Target) -> Result<Removed, BackendError> {
        if !self.is_up() {
            return Err(self.unavailable());
        }
        self.apply(target).await
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            redis_connected: self.is_up(),
            redis_memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            redis_entries: Some(self.entries.load(Ordering::Relaxed)),
            invalidations_replayed: self.replayed(),
            redis_down_seconds: self.down_seconds(),
            ..BackendStats::default()
        }
    }

    async fn refresh_stats(&self) {
        if !self.is_up() {
            return;
        }
        if let Ok(info) = self
            .call(self.fast().info::<String>(Some(InfoKind::Memory)))
            .await
            && let Some(used) = info_field(&info, "used_memory").and_then(|v| v.parse().ok())
        {
            self.memory_bytes.store(used, Ordering::Relaxed);
        }
        let mut entries = 0u64;
        for t in CacheType::ALL {
            if let Ok(n) = self
                .call(self.fast().zcard::<u64, _>(self.type_index(t)))
                .await
            {
                entries += n;
            }
        }
        self.entries.store(entries, Ordering::Relaxed);
    }

    fn is_serving(&self) -> bool {
        self.is_up()
    }

    async fn warm_up(&self, within: Duration) {
        self.wait_up(within).await;
    }

    async fn close(&self) {
        self.flush_reads().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pool.quit()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::set_flags;

    /// What the Set scripts do with the flags, in the doubles Lua computes with.
    fn unpack(flags: i64) -> (f64, bool, bool) {
        let mut c = flags as f64;
        let prune = c % 2.0 == 1.0;
        c = (c - c % 2.0) / 2.0;
        let nx = c % 2.0 == 1.0;
        ((c - c % 2.0) / 2.0, nx, prune)
    }

    #[test]
    fn the_set_scripts_unpack_what_set_flags_packs() {
        for indexes in 1..=4 {
            for nx in [false, true] {
                for prune in [false, true] {
                    assert_eq!(
                        unpack(set_flags(indexes, nx, prune)),
                        (indexes as f64, nx, prune)
                    );
                }
            }
        }
    }
}
