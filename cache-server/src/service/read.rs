//! Get and GetMany: validate → key → tier → codec → reply.
//!
//! Both know a reply's size from the envelope headers before they decompress anything: a reply larger than
//! the largest message the server sends is refused (`RESOURCE_EXHAUSTED`, as gRPC's own code table says for a
//! message over the configured limit), and the reply's bytes are taken from the in-flight budget
//! ([`crate::inflight`]) before they are made. A GetMany reads and decompresses each distinct key once,
//! however often it is named, and sums its items (duplicates included: each is encoded in the reply) first.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use cache_proto::pb;
use prost::Message as _;

use super::entry::{Origin, entry_message};
use super::{Inner, request_options, validate};
use crate::codec::{self, Codec, Envelope};
use crate::error::CacheError;
use crate::inflight::Permit;
use crate::keys::{Key, Keyspace};

/// Stored payloads at least this large are decompressed on the blocking pool.
const OFFLOAD_DECOMPRESS_BYTES: usize = 256 << 10;
/// Bytes a reply item's value adds to an encoded message beside the value itself (tag and length prefix).
const VALUE_FIELD_OVERHEAD: u64 = 11;

/// An entry read and decoded, before its value is decompressed.
struct Found {
    envelope: Envelope,
    origin: Origin,
}

impl Found {
    /// Whether this entry answers `req` (a Get naming a model hash wants that model's entry only).
    fn answers(&self, req: &pb::GetRequest) -> bool {
        req.model_hash.is_empty() || self.envelope.header.model_hash == req.model_hash
    }

    /// The bytes of value this entry adds to the answer of `req`.
    fn value_bytes(&self, req: &pb::GetRequest) -> u64 {
        if req.metadata_only {
            0
        } else {
            self.envelope.header.size_bytes
        }
    }
}

impl Inner {
    pub(super) async fn get(
        &self,
        keyspace: &Keyspace,
        req: &pb::GetRequest,
    ) -> Result<(pb::GetResponse, Option<Permit>), CacheError> {
        let key = validate::get_request(keyspace, req)?;
        let cache_type = key.tags.cache_type;
        let Some(found) = self.read(&key).await?.filter(|f| f.answers(req)) else {
            self.metrics.record_get(cache_type, false);
            return Ok((pb::GetResponse::default(), None));
        };
        let value_bytes = found.value_bytes(req);
        let permit = self
            .reserve_reply(value_bytes + VALUE_FIELD_OVERHEAD, 0)
            .await?;
        let value = if req.metadata_only {
            Bytes::new()
        } else {
            match self.decompress(&key, &found.envelope).await? {
                Some(value) => value,
                None => {
                    self.metrics.record_get(cache_type, false);
                    return Ok((pb::GetResponse::default(), None));
                }
            }
        };
        self.metrics.record_get(cache_type, true);
        Ok((self.answer(&key, req, &found, value), permit))
    }

    pub(super) async fn get_many(
        &self,
        keyspace: &Keyspace,
        requests: Vec<pb::GetRequest>,
    ) -> Result<(pb::GetManyResponse, Option<Permit>), CacheError> {
        // Every key is validated first, so one bad request fails the call before any work is done.
        let keys = validate::get_many_request(keyspace, &requests)?;

        // Each distinct key is read once: `slot[i]` is request i's index among the distinct keys, `first[d]`
        // the first request naming distinct key d.
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        let mut first: Vec<usize> = Vec::with_capacity(keys.len());
        let slot: Vec<usize> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                *seen.entry(&*key.storage_key).or_insert_with(|| {
                    first.push(i);
                    first.len() - 1
                })
            })
            .collect();
        let found: Vec<Option<Found>> =
            futures::future::join_all(first.iter().map(|&i| self.read(&keys[i])))
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        let answering = |i: usize| found[slot[i]].as_ref().filter(|f| f.answers(&requests[i]));

        // The reply without its values, then its size with them, before anything is decompressed.
        let mut reply = pb::GetManyResponse {
            responses: (0..requests.len())
                .map(|i| match answering(i) {
                    Some(f) => self.answer(&keys[i], &requests[i], f, Bytes::new()),
                    None => pb::GetResponse::default(),
                })
                .collect(),
        };
        let values: u64 = (0..requests.len())
            .filter_map(|i| answering(i).map(|f| f.value_bytes(&requests[i])))
            .map(|bytes| bytes + VALUE_FIELD_OVERHEAD)
            .sum();
        let permit = self
            .reserve_reply(values, reply.encoded_len() as u64)
            .await?;

        // Each needed value is decompressed once, and shared (`Bytes`) by the requests naming its key.
        let mut needed = vec![false; first.len()];
        for (i, req) in requests.iter().enumerate() {
            if answering(i).is_some() && !req.metadata_only {
                needed[slot[i]] = true;
            }
        }
        let decompressed: Vec<Option<Bytes>> =
            futures::future::join_all(first.iter().enumerate().map(|(d, &i)| {
                let (key, found, needed) = (&keys[i], found[d].as_ref(), needed[d]);
                async move {
                    match found {
                        Some(f) if needed => self.decompress(key, &f.envelope).await,
                        _ => Ok(None),
                    }
                }
            }))
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;

        for (i, response) in reply.responses.iter_mut().enumerate() {
            let hit = match answering(i) {
                None => false,
                Some(_) if requests[i].metadata_only => true,
                Some(_) => match &decompressed[slot[i]] {
                    Some(value) => {
                        response.value = value.clone();
                        true
                    }
                    None => {
                        *response = pb::GetResponse::default();
                        false
                    }
                },
            };
            self.metrics.record_get(keys[i].tags.cache_type, hit);
        }
        Ok((reply, permit))
    }

    /// Reads and decodes `key`'s entry: `None` when there is none, or when it fails to decode (counted as
    /// corrupt and served as a miss).
    async fn read(&self, key: &Key) -> Result<Option<Found>, CacheError> {
        let hit = crate::telemetry::traced("backend.get", self.backend.get(key)).await?;
        let Some(hit) = hit else {
            return Ok(None);
        };
        // The tier said where the bytes have been; the codec decides what that requires verifying.
        match codec::decode_from(hit.envelope.clone(), hit.provenance) {
            Ok(envelope) => Ok(Some(Found {
                envelope,
                origin: Origin::of_hit(&hit),
            })),
            Err(err) => {
                self.metrics.corrupt.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, cache_type = key.tags.cache_type.label(), "stored value failed to decode; served as a miss");
                Ok(None)
            }
        }
    }

    /// Refuses a reply larger than the largest message the server sends, and takes its bytes from the
    /// in-flight budget (`values` and the encoded rest, `skeleton`).
    async fn reserve_reply(
        &self,
        values: u64,
        skeleton: u64,
    ) -> Result<Option<Permit>, CacheError> {
        let bytes = values + skeleton;
        if bytes > self.max_reply_bytes {
            return Err(CacheError::ReplyTooLarge {
                bytes,
                limit: self.max_reply_bytes,
            });
        }
        Ok(self.budget.acquire(bytes).await?)
    }

    /// The stored payload's value: `None` when it fails to decompress (counted as corrupt, served as a miss).
    async fn decompress(
        &self,
        key: &Key,
        envelope: &Envelope,
    ) -> Result<Option<Bytes>, CacheError> {
        let size = envelope.header.size_bytes;
        let result = if envelope.codec != Codec::None
            && envelope.payload.len() >= OFFLOAD_DECOMPRESS_BYTES
        {
            let (c, payload, policy) = (envelope.codec, envelope.payload.clone(), self.policy);
            tokio::task::spawn_blocking(move || codec::decompress(c, &payload, size, &policy))
                .await
                .map_err(|e| CacheError::Internal(format!("decompression task failed: {e}")))?
        } else {
            codec::decompress(envelope.codec, &envelope.payload, size, &self.policy)
        };
        match result {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                self.metrics.corrupt.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, cache_type = key.tags.cache_type.label(), "stored value failed to decompress; served as a miss");
                Ok(None)
            }
        }
    }

    /// A hit's answer.
    fn answer(
        &self,
        key: &Key,
        req: &pb::GetRequest,
        found: &Found,
        value: Bytes,
    ) -> pb::GetResponse {
        let entry = entry_message(
            key,
            request_options(key, req.key.as_ref()),
            &found.envelope.header,
            found.envelope.codec,
            found.envelope.payload.len() as u64,
            &found.origin,
        );
        pb::GetResponse {
            found: true,
            value,
            entry: Some(entry),
        }
    }
}
