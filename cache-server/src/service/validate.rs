//! Request validation: what each request must satisfy before any tier is touched, and what a valid one becomes
//! (a [`SetPlan`], a [`Key`], the keys of a GetMany, an invalidation [`Target`]). Pure functions of the request,
//! the keyspace and the configuration; error paths are relative to the request (batch calls prefix them with
//! [`InvalidField::within`]).

use std::time::Duration;

use bytes::Bytes;
use cache_proto::pb;

use crate::backend::{Target, now_ms};
use crate::codec::{CompressionRequest, Header};
use crate::config::Config;
use crate::keys::{InvalidField, Key, Keyspace, check_text};

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

/// A validated Set, ready to encode.
#[derive(Debug)]
pub struct SetPlan {
    /// The validated key.
    pub key: Key,
    /// The request's export options, answered back in the entry (export results only).
    pub options: Option<prost_types::Struct>,
    /// The value, as given.
    pub value: Bytes,
    /// The entry's time to live.
    pub ttl: Duration,
    /// The compression asked for.
    pub request: CompressionRequest,
    /// The envelope header to store.
    pub header: Header,
    /// Store only if no current entry exists.
    pub only_if_absent: bool,
}

/// Validates a Set (consumed: its value, strings and options move into the plan).
pub fn set_request(
    keyspace: &Keyspace,
    config: &Config,
    mut req: pb::SetRequest,
) -> Result<SetPlan, InvalidField> {
    let key = keyspace.key(req.key.as_ref(), "key")?;
    // Moved out of the request, which is consumed here (a Get clones it: see `request_options`).
    let options = (!key.options_json.is_empty()).then(|| {
        req.key
            .as_mut()
            .and_then(|k| k.options.take())
            .unwrap_or_default()
    });
    let max = config.max_value_bytes;
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
        0 => config.default_ttl(key.tags.cache_type),
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl > config.max_ttl {
        return Err(InvalidField::new(
            "ttl_seconds",
            format!(
                "is more than the maximum of {} seconds",
                config.max_ttl.as_secs()
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

/// Validates a Get: its key.
pub fn get_request(keyspace: &Keyspace, req: &pb::GetRequest) -> Result<Key, InvalidField> {
    keyspace.key(req.key.as_ref(), "key")
}

/// Validates a GetMany: at most [`MAX_BATCH`] requests, and every key, before any is read.
pub fn get_many_request(
    keyspace: &Keyspace,
    requests: &[pb::GetRequest],
) -> Result<Vec<Key>, InvalidField> {
    check_batch(requests.len())?;
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| get_request(keyspace, r).map_err(|e| e.within(&format!("requests[{i}]"))))
        .collect()
}

/// Validates the size of a batch (GetMany, SetMany).
pub fn check_batch(len: usize) -> Result<(), InvalidField> {
    if len > MAX_BATCH {
        return Err(InvalidField::new(
            "requests",
            format!("has {len} items, more than {MAX_BATCH}"),
        ));
    }
    Ok(())
}

/// Validates an Invalidate: exactly one target, itself valid.
pub fn invalidate_request(
    keyspace: &Keyspace,
    req: pb::InvalidateRequest,
) -> Result<Target, InvalidField> {
    use pb::invalidate_request::Target as T;
    Ok(match req.target {
        Some(T::Key(k)) => Target::Key(keyspace.key(Some(&k), "key")?),
        Some(T::Selector(s)) => {
            Target::Selector(keyspace.clone(), keyspace.selector(&s, "selector")?)
        }
        Some(T::Pattern(p)) => Target::Pattern(keyspace.clone(), keyspace.pattern(&p, "pattern")?),
        Some(T::All(true)) => Target::All(keyspace.clone()),
        Some(T::All(false)) => {
            return Err(InvalidField::new(
                "all",
                "must be true to invalidate everything",
            ));
        }
        None => {
            return Err(InvalidField::new(
                "target",
                "one of key, selector, pattern or all is required",
            ));
        }
    })
}
