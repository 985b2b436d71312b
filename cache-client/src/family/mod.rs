//! Typed families: [`Family`] (metadata, object info, user preferences, system config, keyed by id) and
//! [`ExportResults`] (keyed by [`ExportKey`]). Values go through serde JSON; `*_bytes` methods take and return
//! the stored bytes as they are.
//!
//! - [`slot`]: the operations every family shares, on one entry (get, set, invalidate, get-or-compute).
//! - [`export`]: [`ExportKey`] and [`ExportResults`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod export;
mod slot;

pub use export::{ExportKey, ExportResults};
use slot::Slot;

use crate::client::CacheClient;
use crate::error::Error;
use crate::pb;

/// The content type stored with values written through serde.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A value read from the cache with the server's metadata about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<V> {
    /// The value.
    pub value: V,
    /// The entry's metadata: storage key, expiry, access count, sizes, compression, content type, tier...
    pub entry: pb::CacheEntry,
}

/// Optional settings of a Set.
///
/// ```
/// use std::time::Duration;
/// use cache_client::SetOptions;
/// use cache_client::pb::Compression;
///
/// let options = SetOptions::new()
///     .ttl(Duration::from_secs(600))
///     .metadata("source", "exporter-v2")
///     .compression(Compression::Zstd);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetOptions {
    ttl: Option<Duration>,
    content_type: Option<String>,
    metadata: HashMap<String, String>,
    compression: pb::Compression,
}

impl SetOptions {
    /// No options: the family's TTL (else the type's default), the family's content type, no metadata,
    /// automatic compression.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time to live, rounded up to whole seconds; zero means the type's default on the server (metadata 1 h,
    /// object info 30 min, export results 24 h, preferences 7 days, config 1 h). Default: the family's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The MIME type stored with the value. Default `application/json` for serde values, none for bytes.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a free-form metadata pair returned with the entry (at most 64 pairs, 16 KiB in all).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// How the server compresses the value at rest. Default [`pb::Compression::Auto`] (zstd from 1 MiB).
    pub fn compression(mut self, compression: pb::Compression) -> Self {
        self.compression = compression;
        self
    }
}

/// Converts a TTL to the protocol's whole seconds (rounded up; 0 = the type's default).
fn ttl_seconds(ttl: Duration) -> u32 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// The family name used in errors and logs.
fn family_name(cache_type: pb::CacheType) -> &'static str {
    match cache_type {
        pb::CacheType::ExportResult => "export_result",
        pb::CacheType::Metadata => "metadata",
        pb::CacheType::ObjectInfo => "object_info",
        pb::CacheType::UserPreference => "user_preference",
        pb::CacheType::SystemConfig => "system_config",
        pb::CacheType::Unspecified => "unspecified",
    }
}

// -------------------------------------------------------------------------------------------------------------
// Families keyed by id
// -------------------------------------------------------------------------------------------------------------

/// A typed handle on one cache type keyed by id (metadata, object info, user preferences, system config),
/// optionally scoped to a user and a project, with a default TTL. Values of type `V` go through serde JSON.
///
/// Cheap to clone; obtained from [`CacheClient::metadata`], [`CacheClient::object_info`],
/// [`CacheClient::user_preferences`] or [`CacheClient::system_config`].
///
/// ```no_run
/// # async fn run(client: cache_client::CacheClient) -> Result<(), cache_client::Error> {
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct ModelMetadata { name: String, elements: u64 }
///
/// let metadata = client.metadata::<ModelMetadata>().ttl(Duration::from_secs(3600));
/// metadata.set("model-42", &ModelMetadata { name: "Tower".into(), elements: 18_000 }).await?;
/// let found: Option<ModelMetadata> = metadata.get("model-42").await?;
/// metadata.invalidate("model-42").await?;
/// # Ok(()) }
/// ```
pub struct Family<V> {
    client: CacheClient,
    cache_type: pb::CacheType,
    user_id: String,
    project_id: String,
    ttl: Option<Duration>,
    value: PhantomData<fn() -> V>,
}

impl<V> Clone for Family<V> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            cache_type: self.cache_type,
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone(),
            ttl: self.ttl,
            value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for Family<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("cache_type", &self.cache_type)
            .field("user_id", &self.user_id)
            .field("project_id", &self.project_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<V> Family<V> {
    pub(crate) fn new(client: CacheClient, cache_type: pb::CacheType) -> Self {
        Self {
            client,
            cache_type,
            user_id: String::new(),
            project_id: String::new(),
            ttl: None,
            value: PhantomData,
        }
    }

    /// Scopes the handle to a user: its entries are distinct from the unscoped ones with the same id.
    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = user_id.into();
        self
    }

    /// Scopes the handle to a project.
    #[must_use]
    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = project_id.into();
        self
    }

    /// TTL of the values this handle writes (unless [`SetOptions::ttl`] says otherwise). Default: the type's
    /// default on the server.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The cache type of this family.
    pub fn cache_type(&self) -> pb::CacheType {
        self.cache_type
    }

    /// The protocol key of entry `id` in this family and scope (for the raw [`pb`] API).
    pub fn key(&self, id: &str) -> pb::CacheKey {
        pb::CacheKey {
            r#type: self.cache_type as i32,
            id: id.to_owned(),
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone(),
            ..Default::default()
        }
    }

    fn slot(&self, id: &str) -> Slot<'_> {
        Slot {
            client: &self.client,
            family: family_name(self.cache_type),
            key: self.key(id),
            model_hash: String::new(),
            default_ttl: self.ttl,
        }
    }

    /// Reads entry `id`. `Ok(None)` on a miss.
    ///
    /// # Errors
    /// See [`Error`]; [`Error::Decode`] if the stored JSON is not a `V`.
    pub async fn get(&self, id: &str) -> Result<Option<V>, Error>
    where
        V: DeserializeOwned,
    {
        Ok(self.slot(id).get().await?.map(|c| c.value))
    }

    /// Reads entry `id` with its metadata ([`pb::CacheEntry`]). `Ok(None)` on a miss.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_entry(&self, id: &str) -> Result<Option<Cached<V>>, Error>
    where
        V: DeserializeOwned,
    {
        self.slot(id).get().await
    }

    /// Reads entry `id` as the bytes stored, with its metadata. `Ok(None)` on a miss.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn get_bytes(&self, id: &str) -> Result<Option<Cached<Bytes>>, Error> {
        self.slot(id).get_bytes().await
    }

    /// Stores `value` (as JSON) under `id` with the handle's TTL, replacing any previous value. Returns the
    /// stored entry's metadata.
    ///
    /// # Errors
    /// See [`Error`]; [`Error::Encode`] if `value` cannot be serialized.
    pub async fn set(&self, id: &str, value: &V) -> Result<pb::CacheEntry, Error>
    where
        V: Serialize,
    {
        self.slot(id).set(value, SetOptions::default()).await
    }

    /// Stores `value` (as JSON) under `id` with explicit options (TTL, metadata, compression...).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_with(
        &self,
        id: &str,
        value: &V,
        options: SetOptions,
    ) -> Result<pb::CacheEntry, Error>
    where
        V: Serialize,
    {
        self.slot(id).set(value, options).await
    }

    /// Stores `value` as it is under `id`.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_bytes(
        &self,
        id: &str,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<pb::CacheEntry, Error> {
        self.slot(id).set_bytes(value.into(), options, "").await
    }

    /// Removes entry `id`. Returns whether it existed.
    ///
    /// # Errors
    /// See [`Error`]; `Unavailable` means it was not removed.
    pub async fn invalidate(&self, id: &str) -> Result<bool, Error> {
        self.slot(id).invalidate().await
    }

    /// Removes every entry of this type within the handle's scope (without a scope: every entry of this type,
    /// scoped or not). Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn clear(&self) -> Result<u64, Error> {
        self.client
            .invalidate_matching(pb::Selector {
                r#type: self.cache_type as i32,
                object_id: String::new(),
                user_id: self.user_id.clone(),
                project_id: self.project_id.clone(),
            })
            .await
    }

    /// Returns the cached value of `id`, or runs `compute`, stores its value with the handle's TTL and
    /// returns it.
    ///
    /// - Concurrent calls for the same entry and value type in this process (any clone of the client) run
    ///   `compute` once; the others wait and receive its outcome.
    /// - An error of `compute` is returned to every caller waiting for it and never cached: the next call
    ///   computes again.
    /// - A caller dropped while computing does not poison the entry: a waiting caller takes over.
    /// - The cache never fails the call: if reading or writing it fails, `compute` still runs and its value is
    ///   returned, and the cache error is reported through `tracing::warn!`. After a transient read failure
    ///   (unavailable, deadline) the write is skipped so the caller waits for at most one cache deadline.
    ///
    /// ```no_run
    /// # async fn run(client: cache_client::CacheClient) -> Result<(), Box<dyn std::error::Error>> {
    /// # async fn load_info(id: &str) -> Result<String, std::io::Error> { Ok(id.to_owned()) }
    /// let info = client
    ///     .object_info::<String>()
    ///     .get_or_compute("model-42", || load_info("model-42"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Only the error of `compute` (shared by every caller that waited for it, hence the `Arc`).
    pub async fn get_or_compute<E, F, Fut>(&self, id: &str, compute: F) -> Result<V, Arc<E>>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.slot(id).get_or_compute(compute).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 0);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(60)), 60);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
