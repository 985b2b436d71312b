//! Export results: [`ExportKey`] and the [`ExportResults`] family.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::slot::Slot;
use super::{Cached, SetOptions, family_name};
use crate::client::CacheClient;
use crate::error::Error;
use crate::pb;

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
            serde_json::Value::Object(map) => Some(cache_proto::json::struct_from_json_object(map)),
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
    use prost::Message;
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
}
