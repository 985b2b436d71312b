//! The `CacheEntry` that answers describe an entry with: where it came from, its header, how it is stored.

use cache_proto::pb;

use crate::backend::{Hit, TierKind};
use crate::codec::{self, Codec, Header};
use crate::keys::Key;

pub(super) fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Where an answered entry came from, and how it has been read.
pub(super) struct Origin {
    pub tier: TierKind,
    pub fallback: bool,
    pub access_count: u64,
    pub last_accessed_ms: u64,
}

impl Origin {
    pub fn of_hit(hit: &Hit) -> Self {
        Self {
            tier: hit.tier,
            fallback: hit.fallback,
            access_count: hit.access_count,
            last_accessed_ms: hit.previous_read_ms,
        }
    }
}

pub(super) fn entry_message(
    key: &Key,
    export_options: Option<prost_types::Struct>,
    header: &Header,
    codec: Codec,
    stored_bytes: u64,
    origin: &Origin,
) -> pb::CacheEntry {
    let compression = match codec {
        Codec::None => pb::Compression::None,
        Codec::Gzip => pb::Compression::Gzip,
        Codec::Zstd => pb::Compression::Zstd,
    };
    let tier = match origin.tier {
        TierKind::Memory => pb::Tier::Memory,
        TierKind::Redis => pb::Tier::Redis,
    };
    let status = if origin.fallback {
        pb::EntryStatus::Fallback
    } else {
        pb::EntryStatus::Valid
    };
    let (access_count, last_accessed_ms) = (origin.access_count, origin.last_accessed_ms);
    pb::CacheEntry {
        key: key.storage_key.to_string(),
        r#type: key.tags.cache_type.to_proto() as i32,
        format: key.format.clone(),
        model_hash: header.model_hash.clone(),
        export_options,
        created_at: Some(timestamp(header.created_at_ms)),
        expires_at: Some(timestamp(header.expires_at_ms)),
        // The contract: equals created_at until the first read.
        last_accessed: Some(timestamp(if last_accessed_ms > 0 {
            last_accessed_ms
        } else {
            header.created_at_ms
        })),
        access_count,
        size_bytes: header.size_bytes,
        stored_bytes,
        compression: compression as i32,
        compression_ratio: if stored_bytes == 0 {
            1.0
        } else {
            header.size_bytes as f64 / stored_bytes as f64
        },
        status: status as i32,
        metadata: header.metadata.iter().cloned().collect(),
        user_id: key.tags.user_id.clone(),
        project_id: key.tags.project_id.clone(),
        version: u32::from(codec::ENVELOPE_VERSION),
        content_type: header.content_type.clone(),
        tier: tier as i32,
        id: key.tags.id.clone(),
    }
}
