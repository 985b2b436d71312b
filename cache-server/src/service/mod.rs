//! The `cache.v1.CacheService` handlers. A Get: validate → key → tier → codec → reply; a Set: validate → key →
//! codec → tier → reply (docs/design/README.md).
//!
//! - [`entry`]: the `CacheEntry` an answer describes an entry with.
//! - [`metrics_reply`]: the Metrics RPC's answer.
//! - [`validate`]: what each request must satisfy before any tier is touched.

mod entry;
mod metrics_reply;
pub(crate) mod validate;

use entry::{Origin, entry_message};
use validate::SetPlan;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use cache_proto::pb;
use tonic::{Request, Response, Status};

use crate::backend::{Backend, Target};
use crate::codec::{self, Codec, CompressionPolicy};
use crate::config::Config;
use crate::error::CacheError;
use crate::keys::{Key, Keyspace};
use crate::metrics::{Metrics, Rpc};

/// Stored payloads at least this large are decompressed on the blocking pool.
const OFFLOAD_DECOMPRESS_BYTES: usize = 256 << 10;

/// The gRPC service: cheap to clone, shared state behind an `Arc`.
#[derive(Debug, Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keyspace: Keyspace,
    backend: Arc<dyn Backend>,
    config: Config,
    policy: CompressionPolicy,
    metrics: Arc<Metrics>,
}

impl CacheService {
    /// Builds the service over a backend.
    pub fn new(config: Config, backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        let policy = CompressionPolicy {
            threshold_bytes: config.compression_threshold_bytes,
            max_value_bytes: config.max_value_bytes,
            ..CompressionPolicy::default()
        };
        let keyspace = Keyspace::new(&config.prefix, &config.namespace);
        Self {
            inner: Arc::new(Inner {
                keyspace,
                backend,
                config,
                policy,
                metrics,
            }),
        }
    }

    /// Records the call's latency (and error) and turns the result into the gRPC answer.
    fn finish<T>(
        &self,
        rpc: Rpc,
        started: Instant,
        result: Result<T, CacheError>,
    ) -> Result<Response<T>, Status> {
        self.inner.metrics.record_latency(rpc, started.elapsed());
        match result {
            Ok(answer) => {
                crate::telemetry::record_status(tonic::Code::Ok);
                Ok(Response::new(answer))
            }
            Err(err) => {
                let status = Status::from(err);
                self.inner.metrics.record_error(rpc, status.code());
                crate::telemetry::record_status(status.code());
                Err(status)
            }
        }
    }
}

impl Inner {
    async fn set(&self, plan: SetPlan) -> Result<pb::SetResponse, CacheError> {
        let SetPlan {
            key,
            options,
            value,
            ttl,
            request,
            header,
            only_if_absent,
        } = plan;
        let size = value.len() as u64;
        let (codec, stored) = if codec::should_offload(value.len(), request, &self.policy) {
            let policy = self.policy;
            let value = value.clone();
            tokio::task::spawn_blocking(move || codec::compress(&value, request, &policy))
                .await
                .map_err(|e| CacheError::Internal(format!("compression task failed: {e}")))?
        } else {
            codec::compress(&value, request, &self.policy)
        };
        let stored_len = stored.len() as u64;
        let envelope = codec::encode(&header, codec, &stored);
        drop(stored);
        let outcome = self.backend.set(&key, envelope, ttl, only_if_absent);
        let outcome = crate::telemetry::traced("backend.set", outcome).await?;
        if !outcome.stored {
            return Ok(pb::SetResponse {
                stored: false,
                entry: None,
            });
        }
        self.metrics
            .record_set(key.tags.cache_type, size, stored_len);
        let origin = Origin {
            tier: outcome.tier,
            fallback: outcome.fallback,
            access_count: 0,
            last_accessed_ms: 0,
        };
        let entry = entry_message(&key, options, &header, codec, stored_len, &origin);
        Ok(pb::SetResponse {
            stored: true,
            entry: Some(entry),
        })
    }

    async fn get(&self, req: &pb::GetRequest) -> Result<pb::GetResponse, CacheError> {
        let key = validate::get_request(&self.keyspace, req)?;
        self.get_key(&key, req).await
    }

    /// Get for a key already validated (GetMany validates every key before reading any).
    async fn get_key(
        &self,
        key: &Key,
        req: &pb::GetRequest,
    ) -> Result<pb::GetResponse, CacheError> {
        let hit = crate::telemetry::traced("backend.get", self.backend.get(key)).await?;
        let cache_type = key.tags.cache_type;
        let Some(hit) = hit else {
            self.metrics.record_get(cache_type, false);
            return Ok(pb::GetResponse::default());
        };
        // The tier said where the bytes have been; the codec decides what that requires verifying.
        let envelope = match codec::decode_from(hit.envelope.clone(), hit.provenance) {
            Ok(e) => e,
            Err(err) => {
                self.metrics.corrupt.fetch_add(1, Relaxed);
                self.metrics.record_get(cache_type, false);
                tracing::warn!(error = %err, cache_type = cache_type.label(), "stored value failed to decode; served as a miss");
                return Ok(pb::GetResponse::default());
            }
        };
        if !req.model_hash.is_empty() && envelope.header.model_hash != req.model_hash {
            self.metrics.record_get(cache_type, false);
            return Ok(pb::GetResponse::default());
        }
        let value = if req.metadata_only {
            Bytes::new()
        } else {
            match self.decompress(&envelope).await {
                Ok(v) => v,
                Err(err) => {
                    self.metrics.corrupt.fetch_add(1, Relaxed);
                    self.metrics.record_get(cache_type, false);
                    tracing::warn!(error = %err, cache_type = cache_type.label(), "stored value failed to decompress; served as a miss");
                    return Ok(pb::GetResponse::default());
                }
            }
        };
        self.metrics.record_get(cache_type, true);
        let entry = entry_message(
            key,
            request_options(key, req.key.as_ref()),
            &envelope.header,
            envelope.codec,
            envelope.payload.len() as u64,
            &Origin::of_hit(&hit),
        );
        Ok(pb::GetResponse {
            found: true,
            value,
            entry: Some(entry),
        })
    }

    async fn decompress(&self, envelope: &codec::Envelope) -> Result<Bytes, CacheError> {
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
        result.map_err(|e| CacheError::Internal(e.to_string()))
    }

    async fn invalidate(&self, req: pb::InvalidateRequest) -> Result<u64, CacheError> {
        let target = validate::invalidate_request(&self.keyspace, req)?;
        let removed_by_type =
            crate::telemetry::traced("backend.invalidate", self.backend.invalidate(&target))
                .await?;
        let removed = removed_by_type.total();
        self.metrics.invalidated.fetch_add(removed, Relaxed);
        for t in crate::keys::CacheType::ALL {
            self.metrics
                .of(t)
                .invalidations
                .fetch_add(removed_by_type.of(t), Relaxed);
        }
        tracing::info!(target = target_label(&target), removed, "invalidated");
        Ok(removed)
    }

    async fn get_many(
        &self,
        requests: Vec<pb::GetRequest>,
    ) -> Result<pb::GetManyResponse, CacheError> {
        // Every key is validated first, so one bad request fails the call before any work is done.
        let keys = validate::get_many_request(&self.keyspace, &requests)?;
        let answers = futures::future::join_all(
            keys.iter()
                .zip(&requests)
                .map(|(key, r)| self.get_key(key, r)),
        )
        .await;
        Ok(pb::GetManyResponse {
            responses: answers.into_iter().collect::<Result<Vec<_>, _>>()?,
        })
    }

    async fn set_many(
        &self,
        requests: Vec<pb::SetRequest>,
    ) -> Result<pb::SetManyResponse, CacheError> {
        validate::check_batch(requests.len())?;
        let plans = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                validate::set_request(&self.keyspace, &self.config, r)
                    .map_err(|e| e.within(&format!("requests[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut responses = Vec::with_capacity(plans.len());
        for plan in plans {
            responses.push(self.set(plan).await?);
        }
        Ok(pb::SetManyResponse { responses })
    }
}

/// The export options an answered entry carries: the request's own `Struct`, which names the same options as the
/// stored canonical JSON (the key is derived from that JSON), so a hit never parses the JSON back. `None` for
/// the cache types without options; an export without options answers an empty `Struct`, as it is stored (`{}`).
fn request_options(key: &Key, requested: Option<&pb::CacheKey>) -> Option<prost_types::Struct> {
    if key.options_json.is_empty() {
        return None;
    }
    Some(
        requested
            .and_then(|k| k.options.clone())
            .unwrap_or_default(),
    )
}

fn target_label(target: &Target) -> &'static str {
    match target {
        Target::Key(_) => "key",
        Target::Selector(_) => "selector",
        Target::Pattern(_) => "pattern",
        Target::All => "all",
    }
}

#[tonic::async_trait]
impl pb::cache_service_server::CacheService for CacheService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let result = self.inner.get(request.get_ref()).await;
        self.finish(Rpc::Get, started, result)
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let started = Instant::now();
        let inner = &self.inner;
        let result =
            match validate::set_request(&inner.keyspace, &inner.config, request.into_inner()) {
                Ok(plan) => self.inner.set(plan).await,
                Err(e) => Err(e.into()),
            };
        self.finish(Rpc::Set, started, result)
    }

    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let started = Instant::now();
        let result = self
            .inner
            .invalidate(request.into_inner())
            .await
            .map(|invalidated| pb::InvalidateResponse { invalidated });
        self.finish(Rpc::Invalidate, started, result)
    }

    async fn metrics(
        &self,
        _request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let started = Instant::now();
        let response = self.inner.metrics_response();
        self.finish(Rpc::Metrics, started, Ok(response))
    }

    async fn get_many(
        &self,
        request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let started = Instant::now();
        let result = self.inner.get_many(request.into_inner().requests).await;
        self.finish(Rpc::GetMany, started, result)
    }

    async fn set_many(
        &self,
        request: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let started = Instant::now();
        let result = self.inner.set_many(request.into_inner().requests).await;
        self.finish(Rpc::SetMany, started, result)
    }
}
