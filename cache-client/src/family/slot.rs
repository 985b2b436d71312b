//! The operations every family shares, on one entry.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Cached, JSON_CONTENT_TYPE, SetOptions, ttl_seconds};
use crate::client::CacheClient;
use crate::error::Error;
use crate::pb;
use crate::pb::invalidate_request::Target;
use crate::single_flight::{FlightKey, Role, follow};

/// One entry as the families address it: the key, and the model hash a read requires / a write records.
#[derive(Clone)]
pub(super) struct Slot<'a> {
    pub client: &'a CacheClient,
    pub family: &'static str,
    pub key: pb::CacheKey,
    pub model_hash: String,
    pub default_ttl: Option<Duration>,
}

impl Slot<'_> {
    pub async fn get_bytes(&self) -> Result<Option<Cached<Bytes>>, Error> {
        let request = pb::GetRequest {
            key: Some(self.key.clone()),
            metadata_only: false,
            model_hash: self.model_hash.clone(),
        };
        let response = self
            .client
            .call("Get", request, |mut stub, request| async move {
                stub.get(request).await
            })
            .await?;
        if !response.found {
            return Ok(None);
        }
        Ok(Some(Cached {
            value: response.value,
            entry: response.entry.unwrap_or_default(),
        }))
    }

    pub async fn get<V: DeserializeOwned>(&self) -> Result<Option<Cached<V>>, Error> {
        let Some(cached) = self.get_bytes().await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&cached.value).map_err(|source| Error::Decode {
            family: self.family,
            source,
        })?;
        Ok(Some(Cached {
            value,
            entry: cached.entry,
        }))
    }

    pub async fn set_bytes(
        &self,
        value: Bytes,
        options: SetOptions,
        default_content_type: &str,
    ) -> Result<pb::CacheEntry, Error> {
        let ttl = options.ttl.or(self.default_ttl).map_or(0, ttl_seconds);
        let request = pb::SetRequest {
            key: Some(self.key.clone()),
            value,
            content_type: options
                .content_type
                .unwrap_or_else(|| default_content_type.to_owned()),
            ttl_seconds: ttl,
            metadata: options.metadata,
            model_hash: self.model_hash.clone(),
            compression: options.compression as i32,
            only_if_absent: false,
        };
        let response = self
            .client
            .call("Set", request, |mut stub, request| async move {
                stub.set(request).await
            })
            .await?;
        Ok(response.entry.unwrap_or_default())
    }

    pub async fn set<V: Serialize + ?Sized>(
        &self,
        value: &V,
        options: SetOptions,
    ) -> Result<pb::CacheEntry, Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            family: self.family,
            source,
        })?;
        self.set_bytes(Bytes::from(bytes), options, JSON_CONTENT_TYPE)
            .await
    }

    pub async fn invalidate(&self) -> Result<bool, Error> {
        let removed = self
            .client
            .invalidate(Target::Key(self.key.clone()))
            .await?;
        Ok(removed > 0)
    }

    pub async fn get_or_compute<V, E, F, Fut>(&self, compute: F) -> Result<V, Arc<E>>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let flight_key = FlightKey {
            key: self.key.encode_to_vec(),
            model_hash: self.model_hash.clone(),
            output: TypeId::of::<Result<V, Arc<E>>>(),
        };
        let leader = loop {
            match self.client.flights().join(&flight_key) {
                Role::Leader(leader) => break leader,
                Role::Follower(outcome_rx) => {
                    if let Some(outcome) = follow(outcome_rx).await {
                        return outcome
                            .downcast_ref::<Result<V, Arc<E>>>()
                            .expect("the flight key includes the outcome type")
                            .clone();
                    }
                    // The leader was cancelled before it finished: lead a new flight, or follow whoever does.
                }
            }
        };
        let store = match self.get::<V>().await {
            Ok(Some(cached)) => {
                leader.publish(Arc::new(Ok::<V, Arc<E>>(cached.value.clone())));
                return Ok(cached.value);
            }
            Ok(None) => true,
            Err(err) => {
                // A transient failure (unavailable, deadline) would likely fail the write too, doubling the
                // caller's wait: skip it. Anything else (e.g. an undecodable old value) is overwritten.
                let store = !err.is_retryable();
                tracing::warn!(family = self.family, error = %err, store, "cache read failed; computing without the cache");
                store
            }
        };
        let result = compute().await.map_err(Arc::new);
        leader.publish(Arc::new(result.clone()));
        if let (Ok(value), true) = (&result, store)
            && let Err(err) = self.set(value, SetOptions::default()).await
        {
            tracing::warn!(family = self.family, error = %err, "cache write failed; returning the computed value");
        }
        // Callers that joined during the write got the value; from here on, they read the cache.
        drop(leader);
        result
    }
}
