//! The `cache.v1.CacheService` handlers. A Get: validate → key → tier → codec → reply; a Set: validate → key →
//! codec → tier → reply (docs/design/README.md).
//!
//! - [`entry`]: the `CacheEntry` an answer describes an entry with.
//! - [`metrics_reply`]: the Metrics RPC's answer.
//! - [`read`]: Get and GetMany.
//! - [`validate`]: what each request must satisfy before any tier is touched.

mod entry;
mod metrics_reply;
mod read;
pub(crate) mod validate;

use entry::{Origin, entry_message};
use validate::SetPlan;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use cache_proto::pb;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, CallerRef, Scope};
use crate::backend::{Backend, Target};
use crate::codec::{self, CompressionPolicy};
use crate::config::Config;
use crate::error::CacheError;
use crate::inflight::{Budget, Permit, ReplyPermit};
use crate::keys::{Key, Keyspace};
use crate::metrics::{Metrics, Rpc};

/// The gRPC service: cheap to clone, shared state behind an `Arc`.
#[derive(Debug, Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Who may call, and in which keyspace.
    auth: Arc<Auth>,
    backend: Arc<dyn Backend>,
    config: Config,
    policy: CompressionPolicy,
    metrics: Arc<Metrics>,
    /// The in-flight memory budget (`CACHE_MAX_INFLIGHT_MB`).
    budget: Arc<Budget>,
    /// The largest reply the server sends (the encoding limit of its messages).
    max_reply_bytes: u64,
}

impl CacheService {
    /// Builds the service over a backend, open to every caller (no tokens file).
    pub fn new(config: Config, backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        let auth = Arc::new(Auth::open(Keyspace::new(&config.prefix, &config.namespace)));
        Self::with_auth(config, backend, metrics, auth)
    }

    /// Builds the service over a backend, for the callers `auth` knows.
    pub fn with_auth(
        config: Config,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        auth: Arc<Auth>,
    ) -> Self {
        let budget = Arc::new(Budget::new(config.max_inflight_bytes));
        let policy = CompressionPolicy {
            threshold_bytes: config.compression_threshold_bytes,
            max_value_bytes: config.max_value_bytes,
            ..CompressionPolicy::default()
        };
        let max_reply_bytes = crate::config::max_message_bytes(config.max_value_bytes);
        Self {
            inner: Arc::new(Inner {
                auth,
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
    /// Who sent `request`, when they may make this call: `scope` names what it needs.
    fn caller<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
        call: &'static str,
    ) -> Result<CallerRef<'_>, CacheError> {
        let subject = request
            .extensions()
            .get::<crate::connections::ConnInfo>()
            .and_then(|c| c.peer_subject.as_deref());
        let caller = self.auth.authenticate(request.metadata(), subject)?;
        if let Err(e) = caller.require(scope, call) {
            self.auth.denied.fetch_add(1, Relaxed);
            return Err(e);
        }
        Ok(caller)
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

    async fn invalidate(
        &self,
        keyspace: &Keyspace,
        req: pb::InvalidateRequest,
    ) -> Result<u64, CacheError> {
        let target = validate::invalidate_request(keyspace, req)?;
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
        keyspace: &Keyspace,
        requests: Vec<pb::SetRequest>,
    ) -> Result<pb::SetManyResponse, CacheError> {
        validate::check_batch(requests.len())?;
        let plans = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                validate::set_request(keyspace, &self.config, r)
                    .map_err(|e| e.within(&format!("requests[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Distinct keys are stored concurrently, so the Redis tier writes them in few transactions (its Set
        // coalescer); a key named twice keeps the request's order (the last value wins), so then one by one.
        // The values' budget is bounded by the message size, which the in-flight budget always holds twice.
        let mut seen = std::collections::HashSet::with_capacity(plans.len());
        let distinct = plans.iter().all(|p| seen.insert(p.key.storage_key.clone()));
        let responses = if distinct {
            futures::future::try_join_all(plans.into_iter().map(|plan| self.set(plan))).await?
        } else {
            let mut responses = Vec::with_capacity(plans.len());
            for plan in plans {
                responses.push(self.set(plan).await?);
            }
            responses
        };
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
        Target::Selector(..) => "selector",
        Target::Pattern(..) => "pattern",
        Target::All(_) => "all",
    }
}

#[tonic::async_trait]
impl pb::cache_service_server::CacheService for CacheService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let result = match self.inner.caller(&request, Scope::Read, "Get") {
            Ok(caller) => self.inner.get(&caller.keyspace, request.get_ref()).await,
            Err(e) => Err(e),
        };
        self.finish_holding(Rpc::Get, started, result)
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let started = Instant::now();
        let inner = &self.inner;
        let result = match inner.caller(&request, Scope::Write, "Set") {
            Ok(caller) => {
                match validate::set_request(&caller.keyspace, &inner.config, request.into_inner()) {
                    Ok(plan) => inner.set(plan).await,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        };
        self.finish(Rpc::Set, started, result)
    }

    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        use pb::invalidate_request::Target as T;
        let started = Instant::now();
        let (scope, call) = match request.get_ref().target {
            Some(T::Pattern(_)) => (Scope::Admin, "Invalidate with a pattern"),
            Some(T::All(_)) => (Scope::Admin, "Invalidate all"),
            _ => (Scope::Invalidate, "Invalidate"),
        };
        let result = match self.inner.caller(&request, scope, call) {
            Ok(caller) => self
                .inner
                .invalidate(&caller.keyspace, request.into_inner())
                .await
                .map(|invalidated| pb::InvalidateResponse { invalidated }),
            Err(e) => Err(e),
        };
        self.finish(Rpc::Invalidate, started, result)
    }

    async fn metrics(
        &self,
        request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let started = Instant::now();
        let result = self
            .inner
            .caller(&request, Scope::Admin, "Metrics")
            .map(|_| self.inner.metrics_response());
        self.finish(Rpc::Metrics, started, result)
    }

    async fn get_many(
        &self,
        request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let started = Instant::now();
        let result = match self.inner.caller(&request, Scope::Read, "GetMany") {
            Ok(caller) => {
                self.inner
                    .get_many(&caller.keyspace, request.into_inner().requests)
                    .await
            }
            Err(e) => Err(e),
        };
        self.finish_holding(Rpc::GetMany, started, result)
    }

    async fn set_many(
        &self,
        request: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let started = Instant::now();
        let result = match self.inner.caller(&request, Scope::Write, "SetMany") {
            Ok(caller) => {
                self.inner
                    .set_many(&caller.keyspace, request.into_inner().requests)
                    .await
            }
            Err(e) => Err(e),
        };
        self.finish(Rpc::SetMany, started, result)
    }
}
