//! Typed families: [`Family`] (metadata, object info, user preferences, system config, keyed by id) and
//! [`ExportResults`] (keyed by [`ExportKey`]). Values go through serde JSON; `*_bytes` methods take and return
//! the stored bytes as they are.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::CacheClient;
use crate::error::Error;
use crate::pb;
use crate::pb::invalidate_request::Target;
use crate::single_flight::{FlightKey, Role, follow};

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
// The operations every family shares
// -------------------------------------------------------------------------------------------------------------

/// One entry as the families address it: the key, and the model hash a read requires / a write records.
#[derive(Clone)]
struct Slot<'a> {
    client: &'a CacheClient,
    family: &'static str,
    key: pb::CacheKey,
    model_hash: String,
    default_ttl: Option<Duration>,
}

impl Slot<'_> {
    async fn get_bytes(&self) -> Result<Option<Cached<Bytes>>, Error> {
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

    async fn get<V: DeserializeOwned>(&self) -> Result<Option<Cached<V>>, Error> {
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

    async fn set_bytes(
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

    async fn set<V: Serialize + ?Sized>(
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

    async fn invalidate(&self) -> Result<bool, Error> {
        let removed = self
            .client
            .invalidate(Target::Key(self.key.clone()))
            .await?;
        Ok(removed > 0)
    }

    async fn get_or_compute<V, E, F, Fut>(&self, compute: F) -> Result<V, Arc<E>>
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

// -------------------------------------------------------------------------------------------------------------
// Export results
// -------------------------------------------------------------------------------------------------------------

/// Identifies one export result: the object, the format, the export options and the user / project scope,
/// plus the model hash the value must have been computed from.
///
/// Options are hashed by the server from their canonical JSON, so equal options in any field order address
/// the same entry.
///
/// ```
/// use serde::Serialize;
/// use cache_client::ExportKey;
///
/// #[derive(Serialize)]
/// struct IfcOptions { schema: &'static str, include_geometry: bool }
///
/// let key = ExportKey::new("model-42", "ifc")
///     .options(&IfcOptions { schema: "IFC4", include_geometry: true })?
///     .user("u-7")
///     .project("p-1")
///     .model_hash("sha256:9f2c");
/// assert_eq!(key.object_id(), "model-42");
/// # Ok::<(), cache_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ExportKey {
    object_id: String,
    format: String,
    options: Option<prost_types::Struct>,
    user_id: String,
    project_id: String,
    model_hash: String,
}

impl ExportKey {
    /// The export of `object_id` to `format` (e.g. `json`, `ifc`, `svg`), without options or scope.
    pub fn new(object_id: impl Into<String>, format: impl Into<String>) -> Self {
        Self {
            object_id: object_id.into(),
            format: format.into(),
            options: None,
            user_id: String::new(),
            project_id: String::new(),
            model_hash: String::new(),
        }
    }

    /// Sets the export options from anything that serializes to a JSON object (`null`, e.g. `None`, means no
    /// options). Numbers become JSON doubles, as in `google.protobuf.Struct`.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if `options` fails to serialize or is not an object.
    pub fn options<O: Serialize + ?Sized>(mut self, options: &O) -> Result<Self, Error> {
        let value = serde_json::to_value(options).map_err(|source| Error::InvalidOptions {
            reason: "failed to serialize".to_owned(),
            source: Some(source),
        })?;
        self.options = match value {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) if map.is_empty() => None,
            serde_json::Value::Object(map) => Some(json_object_to_struct(map)),
            other => {
                return Err(Error::InvalidOptions {
                    reason: format!("must serialize to a JSON object, not {}", json_kind(&other)),
                    source: None,
                });
            }
        };
        Ok(self)
    }

    /// Scopes the export to a user.
    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = user_id.into();
        self
    }

    /// Scopes the export to a project.
    #[must_use]
    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = project_id.into();
        self
    }

    /// The hash of the model version: stored with the value on writes, and required on reads (an entry
    /// stored with another hash, or none, is a miss). Not part of the storage key.
    #[must_use]
    pub fn model_hash(mut self, model_hash: impl Into<String>) -> Self {
        self.model_hash = model_hash.into();
        self
    }

    /// The object id.
    pub fn object_id(&self) -> &str {
        &self.object_id
    }

    /// The export format.
    pub fn format(&self) -> &str {
        &self.format
    }

    /// The protocol key (for the raw [`pb`] API); the model hash travels separately.
    pub fn to_proto(&self) -> pb::CacheKey {
        pb::CacheKey {
            r#type: pb::CacheType::ExportResult as i32,
            id: self.object_id.clone(),
            format: self.format.clone(),
            options: self.options.clone(),
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone(),
        }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A typed handle on export results (values of type `V`, through serde JSON), with a default TTL.
/// Obtained from [`CacheClient::export_results`]; cheap to clone.
///
/// ```no_run
/// # async fn run(client: cache_client::CacheClient) -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use cache_client::ExportKey;
///
/// let exports = client.export_results::<serde_json::Value>();
/// let key = ExportKey::new("model-42", "json")
///     .options(&json!({"precision": 3, "units": "mm"}))?
///     .project("p-1")
///     .model_hash("v17");
/// exports.set(&key, &json!({"elements": []})).await?;
/// assert!(exports.get(&key).await?.is_some());
/// assert!(exports.get(&key.clone().model_hash("v18")).await?.is_none(), "another model version misses");
/// # Ok(()) }
/// ```
pub struct ExportResults<V> {
    client: CacheClient,
    ttl: Option<Duration>,
    value: PhantomData<fn() -> V>,
}

impl<V> Clone for ExportResults<V> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            ttl: self.ttl,
            value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for ExportResults<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportResults")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<V> ExportResults<V> {
    pub(crate) fn new(client: CacheClient) -> Self {
        Self {
            client,
            ttl: None,
            value: PhantomData,
        }
    }

    /// TTL of the values this handle writes (unless [`SetOptions::ttl`] says otherwise). Default: 24 h, the
    /// server's default for export results.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    fn slot(&self, key: &ExportKey) -> Slot<'_> {
        Slot {
            client: &self.client,
            family: family_name(pb::CacheType::ExportResult),
            key: key.to_proto(),
            model_hash: key.model_hash.clone(),
            default_ttl: self.ttl,
        }
    }

    /// Reads an export. `Ok(None)` on a miss, including an entry stored for another model hash when `key`
    /// has one.
    ///
    /// # Errors
    /// See [`Error`]; [`Error::Decode`] if the stored JSON is not a `V`.
    pub async fn get(&self, key: &ExportKey) -> Result<Option<V>, Error>
    where
        V: DeserializeOwned,
    {
        Ok(self.slot(key).get().await?.map(|c| c.value))
    }

    /// Reads an export with its metadata ([`pb::CacheEntry`]: format, options, model hash, sizes...).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_entry(&self, key: &ExportKey) -> Result<Option<Cached<V>>, Error>
    where
        V: DeserializeOwned,
    {
        self.slot(key).get().await
    }

    /// Reads an export as the bytes stored (e.g. an IFC or SVG file), with its metadata.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn get_bytes(&self, key: &ExportKey) -> Result<Option<Cached<Bytes>>, Error> {
        self.slot(key).get_bytes().await
    }

    /// Stores an export (as JSON) with the handle's TTL and the key's model hash.
    ///
    /// # Errors
    /// See [`Error`]; [`Error::Encode`] if `value` cannot be serialized.
    pub async fn set(&self, key: &ExportKey, value: &V) -> Result<pb::CacheEntry, Error>
    where
        V: Serialize,
    {
        self.slot(key).set(value, SetOptions::default()).await
    }

    /// Stores an export (as JSON) with explicit options.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_with(
        &self,
        key: &ExportKey,
        value: &V,
        options: SetOptions,
    ) -> Result<pb::CacheEntry, Error>
    where
        V: Serialize,
    {
        self.slot(key).set(value, options).await
    }

    /// Stores an export as it is (e.g. an IFC file with content type `application/x-step`).
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_bytes(
        &self,
        key: &ExportKey,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<pb::CacheEntry, Error> {
        self.slot(key).set_bytes(value.into(), options, "").await
    }

    /// Removes one export. Returns whether it existed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate(&self, key: &ExportKey) -> Result<bool, Error> {
        self.slot(key).invalidate().await
    }

    /// Removes every export of an object (all formats, options and scopes), leaving its metadata and
    /// object info. Returns how many entries were removed.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn invalidate_object(&self, object_id: impl Into<String>) -> Result<u64, Error> {
        self.client
            .invalidate_matching(pb::Selector {
                r#type: pb::CacheType::ExportResult as i32,
                object_id: object_id.into(),
                ..Default::default()
            })
            .await
    }

    /// Returns the cached export, or runs `compute`, stores its value (with the key's model hash and the
    /// handle's TTL) and returns it; with the guarantees of [`Family::get_or_compute`]. Calls that differ
    /// only in model hash do not share a computation.
    ///
    /// # Errors
    /// Only the error of `compute`.
    pub async fn get_or_compute<E, F, Fut>(&self, key: &ExportKey, compute: F) -> Result<V, Arc<E>>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.slot(key).get_or_compute(compute).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_in_any_field_order_make_the_same_key() {
        let a = ExportKey::new("m", "ifc")
            .options(&json!({"b": 1, "a": {"y": [1.5, "x"], "x": true}}))
            .unwrap();
        let b = ExportKey::new("m", "ifc")
            .options(&json!({"a": {"x": true, "y": [1.5, "x"]}, "b": 1.0}))
            .unwrap();
        assert_eq!(a.to_proto().encode_to_vec(), b.to_proto().encode_to_vec());
    }

    #[test]
    fn empty_and_null_options_are_no_options() {
        let none = ExportKey::new("m", "ifc");
        assert_eq!(none.clone().options(&json!({})).unwrap(), none);
        assert_eq!(none.clone().options(&None::<u8>).unwrap(), none);
    }

    #[test]
    fn options_that_are_not_an_object_are_rejected() {
        for bad in [json!([1, 2]), json!("x"), json!(3), json!(true)] {
            let err = ExportKey::new("m", "ifc").options(&bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidOptions { source: None, .. }),
                "{err:?}"
            );
        }
        #[derive(Serialize)]
        struct Tuple(u8, u8);
        assert!(ExportKey::new("m", "ifc").options(&Tuple(1, 2)).is_err());
    }

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 0);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(60)), 60);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
