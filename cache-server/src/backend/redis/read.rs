//! Gets: an entry is read with its meta and the current generation tokens of its dimensions, in one `MGET`
//! shared by concurrent Gets (see [`super::batch`]), and served only if the meta's snapshot is exactly
//! those tokens. An invalidated dimension (its token removed), an evicted token, an evicted meta: each is a
//! miss, never a hit. A large value's entry is a [`Pointer`]: its blob is read next, over the bulk pool.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fred::prelude::*;
use fred::types::Value;
use futures::StreamExt as _;

use super::layout::{EntryKeys, Pointer, meta_reads, snapshot_matches};
use super::{Redis, TIER};
use crate::backend::{BackendError, Hit, TierKind, now_ms};
use crate::codec::Provenance;
use crate::keys::Key;

/// A large value's blob is read in ranges of this many bytes.
const BLOB_CHUNK: u64 = 512 << 10;
/// Ranges of one blob requested at a time (fewer when other blobs are being read: see
/// [`super::conn::RANGES_IN_FLIGHT`]).
const CHUNKS_IN_FLIGHT: usize = 4;
/// How often the bulk pool's watchdog pings Redis while a large value is in flight.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(50);

/// A Get for the batch: the keys to read, the entry first, its meta second, then its generation keys.
pub(super) type Read = Vec<String>;
/// What `MGET` answered for a [`Read`], in the same order.
pub(super) type Fetched = Vec<Value>;

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

impl Redis {
    /// One batch of Gets as one `MGET`, each key once. fred's command futures are ~7 KB: boxed where built.
    /// Fail fast: while a lost connection is not yet detected, the batch fails at once and the memory tier
    /// answers its calls.
    pub(super) async fn fetch(
        &self,
        reads: Vec<Read>,
        oldest: Instant,
    ) -> Result<Vec<Fetched>, BackendError> {
        let options = Self::fail_fast_within(self.budget_left(oldest)?);
        let mut keys: Vec<&str> = Vec::with_capacity(reads.len() * 4);
        let mut slots: Vec<Vec<usize>> = Vec::with_capacity(reads.len());
        if reads.len() == 1 {
            keys.extend(reads[0].iter().map(String::as_str));
            slots.push((0..keys.len()).collect());
        } else {
            // Gets of one type share their type's generation; many share an object's or a user's.
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(reads.len() * 4);
            for read in &reads {
                slots.push(
                    read.iter()
                        .map(|k| {
                            *seen.entry(k.as_str()).or_insert_with(|| {
                                keys.push(k.as_str());
                                keys.len() - 1
                            })
                        })
                        .collect(),
                );
            }
        }
        let expected = keys.len();
        let names: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        let client = self.conn.pool.next().with_options(&options);
        let values: Vec<Value> = self.call_bounded(Box::pin(client.mget(names))).await?;
        if values.len() != expected {
            return Err(BackendError::Internal {
                tier: TIER,
                reason: format!("MGET of {expected} keys answered {} values", values.len()),
            });
        }
        Ok(slots
            .into_iter()
            .map(|positions| positions.into_iter().map(|i| values[i].clone()).collect())
            .collect())
    }

    /// Reads `key`: its envelope if a valid entry is stored, with its read count and previous read.
    pub(super) async fn read(&self, key: &Key) -> Result<Option<Hit>, BackendError> {
        let EntryKeys {
            bucket,
            entry,
            meta,
            blob,
            dims,
        } = self.layout.entry_keys(key.base(), key);
        let meta_name = meta.clone();
        let mut read = Vec::with_capacity(2 + dims.len());
        read.push(entry);
        read.push(meta);
        read.extend(dims.into_iter().map(|(generation, _)| generation));
        let gets = self.gets.get().expect("set at construction");
        let mut values = gets.call(read).await?.into_iter();
        let (Some(stored), Some(meta_value)) = (
            values.next().and_then(bytes_of),
            values.next().and_then(bytes_of),
        ) else {
            return Ok(None);
        };
        let tokens: Vec<Option<Bytes>> = values.map(bytes_of).collect();
        let tokens: Vec<Option<&[u8]>> = tokens.iter().map(|t| t.as_deref()).collect();
        if !snapshot_matches(&meta_value, &tokens) {
            self.stats
                .invalidated_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let envelope = match Pointer::decode(&stored) {
            Some(pointer) => match self.read_blob(&blob, pointer).await? {
                Some(envelope) => envelope,
                None => return Ok(None),
            },
            None => stored,
        };
        let (count, last) = meta_reads(&meta_value);
        let (access_count, previous_read_ms) =
            self.reads.record(bucket, &meta_name, count, last, now_ms());
        Ok(Some(Hit {
            envelope,
            access_count,
            previous_read_ms,
            tier: TierKind::Redis,
            provenance: Provenance::Outside,
            fallback: false,
        }))
    }

    /// A large value's blob, if it is the version the pointer names (an overwrite may have replaced it).
    ///
    /// Read in [`BLOB_CHUNK`] ranges, at most [`CHUNKS_IN_FLIGHT`] at a time and at most
    /// [`super::conn::RANGES_IN_FLIGHT`] over all blobs: Redis copies a reply into its output buffer in one
    /// go, so one `GET` of 64 MiB holds its event loop ~40 ms, and it executes every command pipelined on a
    /// connection in one turn of its loop: 32 ranges of 1 MiB queued by eight concurrent reads held it
    /// 20-50 ms (measured as the small Gets' `MGET` time). A few ranges of 512 KiB hold it about a
    /// millisecond: other clients' commands interleave.
    async fn read_blob(&self, blob: &str, pointer: Pointer) -> Result<Option<Bytes>, BackendError> {
        let client = self.conn.bulk.next();
        let budget = self.conn.bulk_budget(pointer.len);
        let options = Self::fail_fast_within(budget);
        let with = client.with_options(&options);
        let total = pointer.len + 8;
        let version = pointer.version.to_le_bytes();
        let fut = async {
            let mut out = BytesMut::with_capacity(total as usize);
            let mut ranges =
                futures::stream::iter((0..total).step_by(BLOB_CHUNK as usize).map(|start| {
                    let end = (start + BLOB_CHUNK).min(total) - 1;
                    let range =
                        Box::pin(with.getrange::<Value, _>(blob, start as usize, end as usize));
                    async move {
                        // Closed never: the semaphore lives as long as the pools.
                        let _permit = self.conn.ranges.acquire().await;
                        range.await.map(|v| (bytes_of(v), end + 1 - start))
                    }
                }))
                .buffered(CHUNKS_IN_FLIGHT);
            while let Some(range) = ranges.next().await {
                match range? {
                    (Some(part), len) if part.len() as u64 == len => out.extend_from_slice(&part),
                    // Gone or replaced (shorter) meanwhile.
                    _ => return Ok(None),
                }
            }
            if total > BLOB_CHUNK {
                // Replaced by a blob as long meanwhile: its version differs (each Set has its own).
                let head = with.getrange::<Value, _>(blob, 0, 7).await?;
                if bytes_of(head).as_deref() != Some(&version[..]) {
                    return Ok(None);
                }
            }
            Ok(Some(out.freeze()))
        };
        let value = self.bulk(pointer.len, budget, fut).await?;
        Ok(value.and_then(|b| (b[..8] == version).then(|| b.slice(8..))))
    }

    /// Runs a large value's command within `budget`, counting its bytes as in flight on the bulk pool, while
    /// a watchdog pings Redis over the main pool: a hung Redis is still detected within the command budget
    /// (plus the watchdog's interval), whatever the transfer's own budget.
    pub(super) async fn bulk<T>(
        &self,
        bytes: u64,
        budget: Duration,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, BackendError> {
        struct InFlight<'a>(&'a std::sync::atomic::AtomicU64, u64);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(self.1, Ordering::Relaxed);
            }
        }
        self.conn.bulk_in_flight.fetch_add(bytes, Ordering::Relaxed);
        let _in_flight = InFlight(&self.conn.bulk_in_flight, bytes);
        let watchdog = async {
            loop {
                tokio::time::sleep(WATCHDOG_INTERVAL).await;
                let fast = self.fast();
                if let Err(e) = self.call(fast.ping::<String>(None)).await
                    && e.is_outage()
                {
                    return e;
                }
            }
        };
        tokio::select! {
            result = self.call_within(budget, fut) => result,
            e = watchdog => Err(e),
        }
    }
}
