//! Histories of concurrent calls against one or several replicas, and the checker of the invalidation
//! contract: after an `Invalidate` answered OK, no read returns a value written before it.
//!
//! Each Set writes a value never written before, so a read names the Set it observed. The checker knows
//! which calls the servers answered from their memory tier during an outage (`FALLBACK`): such a write never
//! reached the shared store and is private to its replica, and other replicas' invalidations cannot reach it
//! (the documented bound: at most the fallback TTL). Those reads are counted apart, never hidden.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use pb::invalidate_request::Target;
use tonic::transport::Channel;

use crate::{get_req, key, set_req};

/// One call's operation and what it observed.
#[derive(Debug, Clone)]
pub enum Op {
    /// A Get; `read` is the value found, `fallback` whether the memory tier answered during an outage.
    Get {
        /// The value found, if any.
        read: Option<String>,
        /// Answered with status `FALLBACK`.
        fallback: bool,
    },
    /// A Set of a value never written before.
    Set {
        /// The value written.
        value: String,
        /// Answered with status `FALLBACK` (written to the memory tier only).
        fallback: bool,
    },
    /// An invalidation of the key.
    Invalidate,
}

/// One call: on which key, through which replica, when, and its outcome.
#[derive(Debug, Clone)]
pub struct Event {
    /// The key's number.
    pub key: usize,
    /// The replica that answered.
    pub replica: usize,
    /// What was asked, and what it observed.
    pub op: Op,
    /// When the call was sent.
    pub invoked: Instant,
    /// When its answer arrived.
    pub completed: Instant,
    /// Its error, if it failed.
    pub error: Option<tonic::Code>,
}

impl Event {
    /// How long the call took.
    pub fn took(&self) -> Duration {
        self.completed - self.invoked
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Reads of a value after an acknowledged invalidation that should have removed it: contract breaches.
    pub stale: Vec<String>,
    /// Reads, answered from a replica's memory tier during an outage, of a value that replica wrote during
    /// the outage and that another replica's invalidation could not reach: the documented bound.
    pub fallback_divergent: usize,
}

/// Checks `history` (every replica's calls, in any order).
pub fn check(history: &[Event]) -> Verdict {
    // value -> (key, completed, replica, fallback) of its acknowledged Set.
    let mut sets: HashMap<&str, (usize, Instant, usize, bool)> = HashMap::new();
    // Values whose Set failed: it may still have been applied; such reads are not judged.
    let mut unsure: HashMap<&str, usize> = HashMap::new();
    let mut invalidations: HashMap<usize, Vec<(Instant, Instant, usize)>> = HashMap::new();
    for e in history {
        match (&e.op, e.error) {
            (Op::Set { value, fallback }, None) => {
                sets.insert(value, (e.key, e.completed, e.replica, *fallback));
            }
            (Op::Set { value, .. }, Some(_)) => {
                unsure.insert(value, e.key);
            }
            (Op::Invalidate, None) => {
                invalidations
                    .entry(e.key)
                    .or_default()
                    .push((e.invoked, e.completed, e.replica))
            }
            _ => {}
        }
    }
    let mut verdict = Verdict::default();
    for e in history.iter().filter(|e| e.error.is_none()) {
        let Op::Get {
            read: Some(value),
            fallback: read_fallback,
        } = &e.op
        else {
            continue;
        };
        let Some(&(key, set_completed, set_replica, set_fallback)) = sets.get(value.as_str())
        else {
            if unsure.get(value.as_str()) != Some(&e.key) {
                verdict.stale.push(format!(
                    "replica {}: read {value} that no Set of key {} wrote",
                    e.replica, e.key
                ));
            }
            continue;
        };
        assert_eq!(key, e.key, "a value is only ever written under its own key");
        let before: Vec<usize> = invalidations
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|&&(inv_invoked, inv_completed, _)| {
                set_completed < inv_invoked && inv_completed < e.invoked
            })
            .map(|&(_, _, replica)| replica)
            .collect();
        if before.is_empty() {
            continue;
        }
        // A value written to a replica's memory during an outage, read from that memory: stale only if that
        // replica itself acknowledged an invalidation since (it purges its memory before answering).
        let private = set_fallback && *read_fallback && set_replica == e.replica;
        if private && !before.contains(&e.replica) {
            verdict.fallback_divergent += 1;
        } else {
            verdict.stale.push(format!(
                "replica {}: key {key}: read {value} (written via replica {set_replica}{}) after an \
                 invalidation acknowledged by replica(s) {before:?}",
                e.replica,
                if set_fallback { ", fallback" } else { "" }
            ));
        }
    }
    verdict
}

/// The latency percentile `p` (0..=1) of `history`'s calls.
pub fn percentile(history: &[Event], p: f64) -> Duration {
    let mut took: Vec<Duration> = history.iter().map(Event::took).collect();
    took.sort();
    took.get(((took.len() as f64 * p) as usize).min(took.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A small xorshift generator: deterministic per worker, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Runs one call, 80 % Gets, 15 % Sets, 5 % invalidations, of key `k` (a metadata entry `k<k>`), through
/// `client` (replica `replica`) with `deadline`; `seq` numbers this worker's values.
pub async fn call(
    client: &mut CacheServiceClient<Channel>,
    replica: usize,
    worker: usize,
    seq: &mut u64,
    k: usize,
    roll: usize,
    deadline: Duration,
) -> Event {
    fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline);
        request
    }
    let cache_key = key(pb::CacheType::Metadata, &format!("k{k}"));
    let invoked = Instant::now();
    let fallback = |entry: Option<pb::CacheEntry>| {
        entry.is_some_and(|e| e.status == pb::EntryStatus::Fallback as i32)
    };
    let (op, error) = if roll < 80 {
        match client
            .get(with_deadline(get_req(cache_key), deadline))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let read = r
                    .found
                    .then(|| String::from_utf8_lossy(&r.value).into_owned());
                (
                    Op::Get {
                        read,
                        fallback: fallback(r.entry),
                    },
                    None,
                )
            }
            Err(s) => (
                Op::Get {
                    read: None,
                    fallback: false,
                },
                Some(s.code()),
            ),
        }
    } else if roll < 95 {
        *seq += 1;
        let value = format!("w{worker}-{seq}");
        let result = client
            .set(with_deadline(
                set_req(cache_key, value.clone().into_bytes()),
                deadline,
            ))
            .await;
        match result {
            Ok(r) => (
                Op::Set {
                    value,
                    fallback: fallback(r.into_inner().entry),
                },
                None,
            ),
            Err(s) => (
                Op::Set {
                    value,
                    fallback: false,
                },
                Some(s.code()),
            ),
        }
    } else {
        let result = client
            .invalidate(with_deadline(
                pb::InvalidateRequest {
                    target: Some(Target::Key(cache_key)),
                },
                deadline,
            ))
            .await;
        (Op::Invalidate, result.err().map(|s| s.code()))
    };
    Event {
        key: k,
        replica,
        op,
        invoked,
        completed: Instant::now(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: usize, replica: usize, op: Op, at: u64, took: u64) -> Event {
        let base = Instant::now();
        Event {
            key,
            replica,
            op,
            invoked: base + Duration::from_millis(at),
            completed: base + Duration::from_millis(at + took),
            error: None,
        }
    }

    fn set(value: &str, fallback: bool) -> Op {
        Op::Set {
            value: value.into(),
            fallback,
        }
    }

    fn get(value: &str, fallback: bool) -> Op {
        Op::Get {
            read: Some(value.into()),
            fallback,
        }
    }

    #[test]
    fn finds_a_stale_read_across_replicas() {
        let history = vec![
            event(1, 0, set("a", false), 0, 1),
            event(1, 1, Op::Invalidate, 10, 1),
            event(1, 2, get("a", false), 20, 1),
        ];
        assert_eq!(check(&history).stale.len(), 1);
    }

    #[test]
    fn concurrent_calls_are_not_stale() {
        let history = vec![
            event(1, 0, set("a", false), 0, 1),
            event(1, 1, Op::Invalidate, 10, 20),
            event(1, 2, get("a", false), 20, 1),
        ];
        assert!(check(&history).stale.is_empty());
    }

    #[test]
    fn a_private_fallback_write_is_the_documented_bound_unless_its_replica_invalidated() {
        let history = vec![
            event(1, 0, set("a", true), 0, 1),
            event(1, 1, Op::Invalidate, 10, 1),
            event(1, 0, get("a", true), 20, 1),
        ];
        let verdict = check(&history);
        assert!(verdict.stale.is_empty());
        assert_eq!(verdict.fallback_divergent, 1);
        let history = vec![
            event(1, 0, set("a", true), 0, 1),
            event(1, 0, Op::Invalidate, 10, 1),
            event(1, 0, get("a", true), 20, 1),
        ];
        assert_eq!(check(&history).stale.len(), 1);
    }
}
