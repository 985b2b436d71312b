//! The `cache.v1.CacheService` handlers. A Get: validate → key → tier → codec → reply; a Set: validate → key →
//! codec → tier → reply (docs/design/README.md).
//!
//! - [`entry`]: the `CacheEntry` an answer describes an entry with.
//! - [`metrics_reply`]: the Metrics RPC's answer.
//! - [`read`]: Get and GetMany.

mod entry;
mod metrics_reply;
mod read;

use entry::{Origin, entry_message};

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_proto::pb;
use tonic::{Request, Response, Status};

use crate::backend::{Backend, Target, now_ms};
use crate::codec::{self, CompressionPolicy, CompressionRequest, Header};
use crate::config::Config;
use crate::error::CacheError;
use crate::inflight::{Budget, Permit, ReplyPermit};
use crate::keys::{InvalidField, Key, Keyspace, check_text};
use crate::metrics::{Metrics, Rpc};

/// Most requests accepted in one GetMany / SetMany.
pub const MAX_BATCH: usize = 1000;
/// Longest content type accepted.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;
/// Longest model hash accepted.
pub const MAX_MODEL_HASH_BYTES: usize = 512;
/// Most metadata pairs accepted per entry.
pub const MAX_METADATA_PAIRS: usize = 64;
/// Most metadata bytes (keys + values) accepted per entry.
pub const MAX_METADATA_BYTES: usize = 16 << 10;

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
    /// The in-flight memory budget (`CACHE_MAX_INFLIGHT_MB`).
    budget: Arc<Budget>,
    /// The largest reply the server sends (the encoding limit of its messages).
    max_reply_bytes: u64,
}

/// A validated Set, ready to encode.
struct SetPlan {
    key: Key,
    /// The request's export options, answered back in the entry (see [`request_options`]).
    options: Option<prost_types::Struct>,
    value: Bytes,
    ttl: Duration,
    request: CompressionRequest,
    header: Header,
    only_if_absent: bool,
}

impl CacheService {
    /// Builds the service over a backend.
    pub fn new(config: Config, backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        let budget = Arc::new(Budget::new(config.max_inflight_bytes));
        let policy = CompressionPolicy {
            threshold_bytes: config.compression_threshold_bytes,
            max_value_bytes: config.max_value_bytes,
            ..CompressionPolicy::default()
        };
        let keyspace = Keyspace::new(&config.prefix, &config.namespace);
        let max_reply_bytes = crate::config::max_message_bytes(config.max_value_bytes);
        Self {
            inner: Arc::new(Inner {
                keyspace,
                backend,
                config,
                policy,
                metrics,
                budget,
                max_reply_bytes,
            }),
        }
    }

    /// The in-flight memory budget the calls share.
    pub fn budget(&self) -> Arc<Budget> {
        self.inner.budget.clone()
    }

    /// Records the call's latency (and error) and turns the result into the gRPC answer.
    fn finish<T>(
        &self,
        rpc: Rpc,
        started: Instant,
        result: Result<T, CacheError>,
    ) -> Result<Response<T>, Status> {
        self.finish_holding(rpc, started, result.map(|answer| (answer, None)))
    }

    /// [`Self::finish`] for an answer whose bytes are held in the in-flight budget until it has been sent.
    fn finish_holding<T>(
        &self,
        rpc: Rpc,
        started: Instant,
        result: Result<(T, Option<Permit>), CacheError>,
    ) -> Result<Response<T>, Status> {
        self.inner.metrics.record_latency(rpc, started.elapsed());
        match result {
            Ok((answer, permit)) => {
                crate::telemetry::record_status(tonic::Code::Ok);
                let mut response = Response::new(answer);
                if let Some(permit) = permit {
                    response.extensions_mut().insert(ReplyPermit::new(permit));
                }
                Ok(response)
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
    /// Validates a Set; error paths are relative to the request (SetMany prefixes them with `within`).
    fn validate_set(&self, mut req: pb::SetRequest) -> Result<SetPlan, InvalidField> {
        let key = self.keyspace.key(req.key.as_ref(), "key")?;
        // Moved out of the request, which is consumed here (a Get clones it: see `request_options`).
        let options = (!key.options_json.is_empty()).then(|| {
            req.key
                .as_mut()
                .and_then(|k| k.options.take())
                .unwrap_or_default()
        });
        let max = self.config.max_value_bytes;
        if req.value.len() as u64 > max {
            return Err(InvalidField::new(
                "value",
                format!(
                    "is {} bytes, more than the maximum of {max} bytes",
                    req.value.len()
                ),
            ));
        }
        let ttl = match req.ttl_seconds {
            0 => self.config.default_ttl(key.tags.cache_type),
            s => Duration::from_secs(u64::from(s)),
        };
        if ttl > self.config.max_ttl {
            return Err(InvalidField::new(
                "ttl_seconds",
                format!(
                    "is more than the maximum of {} seconds",
                    self.config.max_ttl.as_secs()
                ),
            ));
        }
        let request = match pb::Compression::try_from(req.compression) {
            Ok(pb::Compression::Auto) => CompressionRequest::Auto,
            Ok(pb::Compression::None) => CompressionRequest::None,
            Ok(pb::Compression::Gzip) => CompressionRequest::Gzip,
            Ok(pb::Compression::Zstd) => CompressionRequest::Zstd,
            Err(_) => {
                return Err(InvalidField::new(
                    "compression",
                    format!("{} is not a known compression", req.compression),
                ));
            }
        };
        check_text(&req.content_type, MAX_CONTENT_TYPE_BYTES, || {
            "content_type".to_owned()
        })?;
        check_text(&req.model_hash, MAX_MODEL_HASH_BYTES, || {
            "model_hash".to_owned()
        })?;
        if req.metadata.len() > MAX_METADATA_PAIRS {
            return Err(InvalidField::new(
                "metadata",
                format!(
                    "has {} pairs, more than {MAX_METADATA_PAIRS}",
                    req.metadata.len()
                ),
            ));
        }
        let metadata_bytes: usize = req.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata_bytes > MAX_METADATA_BYTES {
            return Err(InvalidField::new(
                "metadata",
                format!("is {metadata_bytes} bytes, more than {MAX_METADATA_BYTES}"),
            ));
        }
        let mut metadata: Vec<(String, String)> = req.metadata.into_iter().collect();
        metadata.sort_unstable();
        let now = now_ms();
        let header = Header {
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as u64,
            size_bytes: req.value.len() as u64,
            content_type: req.content_type,
            model_hash: req.model_hash,
            metadata,
            export_options_json: key.options_json.clone(),
        };
        Ok(SetPlan {
            key,
            options,
            value: req.value,
            ttl,
            request,
            header,
            only_if_absent: req.only_if_absent,
        })
    }

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
        // The value and the envelope made of it, until the Set is answered.
        let _permit = self.budget.acquire(2 * size).await?;
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

    async fn invalidate(&self, req: pb::InvalidateRequest) -> Result<u64, CacheError> {
        use pb::invalidate_request::Target as T;
        let target = match req.target {
            Some(T::Key(k)) => Target::Key(self.keyspace.key(Some(&k), "key")?),
            Some(T::Selector(s)) => Target::Selector(self.keyspace.selector(&s, "selector")?),
            Some(T::Pattern(p)) => Target::Pattern(self.keyspace.pattern(&p, "pattern")?),
            Some(T::All(true)) => Target::All,
            Some(T::All(false)) => {
                return Err(
                    InvalidField::new("all", "must be true to invalidate everything").into(),
                );
            }
            None => {
                return Err(InvalidField::new(
                    "target",
                    "one of key, selector, pattern or all is required",
                )
                .into());
            }
        };
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

    async fn set_many(
        &self,
        requests: Vec<pb::SetRequest>,
    ) -> Result<pb::SetManyResponse, CacheError> {
        check_batch(requests.len())?;
        let plans = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                self.validate_set(r)
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

/// Refuses a GetMany / SetMany of more than [`MAX_BATCH`] requests.
fn check_batch(len: usize) -> Result<(), InvalidField> {
    if len > MAX_BATCH {
        return Err(InvalidField::new(
            "requests",
            format!("has {len} items, more than {MAX_BATCH}"),
        ));
    }
    Ok(())
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
        self.finish_holding(Rpc::Get, started, result)
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let started = Instant::now();
        let result = match self.inner.validate_set(request.into_inner()) {
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
        self.finish_holding(Rpc::GetMany, started, result)
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
