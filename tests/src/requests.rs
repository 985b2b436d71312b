//! Small builders for keys and requests, the JSON → `google.protobuf.Struct` conversion export keys need,
//! an INVALID_ARGUMENT assertion, and test payloads (compressible JSON, random bytes).

use cache_proto::pb;

/// A key of `cache_type` with `id` and nothing else.
pub fn key(cache_type: pb::CacheType, id: &str) -> pb::CacheKey {
    pb::CacheKey {
        r#type: cache_type as i32,
        id: id.to_owned(),
        ..Default::default()
    }
}

/// An export-result key: object `id`, `format`, export options from a JSON object (`null` for none) and
/// optional user / project scopes (empty strings for none).
///
/// # Panics
/// If `options_json` is neither an object nor null.
pub fn export_key(
    id: &str,
    format: &str,
    options_json: serde_json::Value,
    user: &str,
    project: &str,
) -> pb::CacheKey {
    let options = match options_json {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) => Some(cache_proto::json::struct_from_json_object(map)),
        other => panic!("export options must be a JSON object, got {other}"),
    };
    pb::CacheKey {
        r#type: pb::CacheType::ExportResult as i32,
        id: id.to_owned(),
        format: format.to_owned(),
        options,
        user_id: user.to_owned(),
        project_id: project.to_owned(),
    }
}

/// A Set of `value` under `key` with every other field defaulted (AUTO compression, type's default TTL).
pub fn set_req(key: pb::CacheKey, value: impl Into<bytes::Bytes>) -> pb::SetRequest {
    pb::SetRequest {
        key: Some(key),
        value: value.into(),
        ..Default::default()
    }
}

/// A Get of `key` with every other field defaulted.
pub fn get_req(key: pb::CacheKey) -> pb::GetRequest {
    pb::GetRequest {
        key: Some(key),
        ..Default::default()
    }
}

/// Asserts that `result` failed with INVALID_ARGUMENT whose message starts with `field` followed by `:`
/// (so "key" does not accept "key.id: ...").
///
/// # Panics
/// If it succeeded or failed otherwise.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    match result {
        Ok(v) => panic!("expected INVALID_ARGUMENT naming {field:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "expected INVALID_ARGUMENT naming {field:?}, got {status:?}"
            );
            assert!(
                status.message().starts_with(&format!("{field}:")),
                "expected the message to start with {field:?}, got {:?}",
                status.message()
            );
        }
    }
}

/// A compressible JSON document of roughly `bytes` bytes (repetitive records, like a real export).
pub fn compressible_json(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 128);
    out.extend_from_slice(b"{\"elements\":[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(b',');
        }
        let record = format!(
            "{{\"id\":{i},\"kind\":\"IfcWall\",\"name\":\"Wall {}\",\"level\":{},\"material\":\"concrete\",\"height\":3.0}}",
            i % 97,
            i % 12
        );
        out.extend_from_slice(record.as_bytes());
        i += 1;
    }
    out.extend_from_slice(b"]}");
    out
}

/// `len` random (incompressible) bytes: a SplitMix64 stream from a random seed (the `rand` generators take
/// seconds per 64 MiB in a debug build).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = rand::random();
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v = vec![0u8; len];
    let mut chunks = v.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    v
}

/// The server's Metrics answer.
///
/// # Panics
/// If the call fails.
pub async fn metrics(
    client: &mut pb::cache_service_client::CacheServiceClient<tonic::transport::Channel>,
) -> pb::MetricsResponse {
    client
        .metrics(pb::MetricsRequest {})
        .await
        .expect("metrics")
        .into_inner()
}

/// Stores a small value under `k` and checks it was stored.
///
/// # Panics
/// If the call fails or nothing is stored.
pub async fn put(
    client: &mut pb::cache_service_client::CacheServiceClient<tonic::transport::Channel>,
    k: &pb::CacheKey,
) {
    assert!(
        client
            .set(set_req(k.clone(), &b"value"[..]))
            .await
            .expect("set")
            .into_inner()
            .stored
    );
}
