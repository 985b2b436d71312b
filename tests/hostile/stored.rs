//! What Redis hands back is outside input too: entries overwritten in Redis with garbage or with a
//! decompression bomb behind valid checksums are clean misses (counted as corrupt), cheap, and harm nothing
//! else; and the memory tier holds its cap under concurrent large writers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_proto::pb;
use cache_server::envelope::{self, Codec, CompressionPolicy, CompressionRequest, Header};
use cache_tests::{RedisServer, ServerProcess, get_req, key, set_req};
use fred::prelude::*;

use crate::mib;

/// The Redis key of `storage_key`'s entry under the default keyspace and one bucket.
fn entry_in_redis(storage_key: &str) -> String {
    let rendered = storage_key
        .strip_prefix("cache:default:")
        .expect("the default keyspace");
    format!("cache:default:{{0}}:{rendered}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_and_bomb_entries_in_redis_are_clean_misses() {
    let redis = RedisServer::start().await;
    let server = ServerProcess::start(
        &[("REDIS_URL", &redis.url()), ("CACHE_BACKEND", "redis")],
        &[],
    )
    .await;
    let mut client = server.client().await;
    let raw = fred::clients::Client::new(
        fred::types::config::Config::from_url(&redis.url()).unwrap(),
        None,
        None,
        None,
    );
    raw.init().await.expect("connect to redis");

    // A bomb: 256 MiB of zeros as zstd, behind a header that says 1 MiB and valid checksums.
    let policy = CompressionPolicy::default();
    let (codec, bomb) = envelope::compress(
        &Bytes::from(vec![0u8; 256 << 20]),
        CompressionRequest::Zstd,
        &policy,
    );
    assert_eq!(codec, Codec::Zstd);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let header = Header {
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
        size_bytes: 1 << 20,
        content_type: String::new(),
        model_hash: String::new(),
        metadata: Vec::new(),
        export_options_json: String::new(),
    };
    let crafted: [(&str, Bytes); 3] = [
        ("garbage", Bytes::from_static(b"not an envelope at all")),
        (
            "truncated",
            envelope::encode(&header, Codec::None, &[1u8; 16]).slice(..20),
        ),
        (
            "a zstd bomb with valid checksums",
            envelope::encode(&header, Codec::Zstd, &bomb),
        ),
    ];
    let healthy = key(pb::CacheType::Metadata, "healthy");
    client
        .set(set_req(healthy.clone(), &b"fine"[..]))
        .await
        .unwrap();
    for (i, (what, bytes)) in crafted.into_iter().enumerate() {
        let k = key(pb::CacheType::Metadata, &format!("crafted-{i}"));
        let stored = client
            .set(set_req(k.clone(), &b"original"[..]))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        let name = entry_in_redis(&stored.key);
        let _: () = raw
            .set(&name, bytes.as_ref(), None, Some(SetOptions::XX), false)
            .await
            .expect("overwrite the entry in redis");
        let started = Instant::now();
        let found = client
            .get(get_req(k))
            .await
            .expect("a Get")
            .into_inner()
            .found;
        let took = started.elapsed();
        eprintln!("hostile stored: {what}: found {found}, in {took:?}");
        assert!(!found, "{what} was served");
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    }
    let metrics = client
        .metrics(pb::MetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metrics.corrupt_entries, 3, "each crafted entry is counted");
    assert!(
        client
            .get(get_req(healthy))
            .await
            .unwrap()
            .into_inner()
            .found,
        "other entries are unharmed"
    );
    assert!(
        server.status_kib("VmHWM") < 256 << 10,
        "the bomb was expanded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_holds_its_cap_under_concurrent_large_writers() {
    const TIER_MB: u64 = 128;
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_MAX_SIZE_MB", &TIER_MB.to_string()),
        ],
        &[],
    )
    .await;
    let value = Bytes::from(cache_tests::random_bytes(4 << 20));
    let writers = (0..8).map(|w| {
        let (addr, value) = (server.addr(), value.clone());
        async move {
            let mut client = cache_tests::connect_client(addr).await;
            for i in 0..40 {
                let mut req = set_req(
                    key(pb::CacheType::ObjectInfo, &format!("w{w}-{i}")),
                    value.clone(),
                );
                req.compression = pb::Compression::None as i32;
                client.set(req).await.expect("a 4 MiB Set");
            }
        }
    });
    futures::future::join_all(writers).await;
    let peak = server.status_kib("VmHWM");
    // The in-flight budget's default here is 4 x (64 MiB + 1 MiB).
    let allowed = TIER_MB + 4 * 65 + 64;
    eprintln!(
        "hostile stored: 8 writers x 40 x 4 MiB (1.25 GiB) into a {TIER_MB} MiB tier: peak RSS {} MiB (allowed {allowed})",
        mib(peak)
    );
    assert!(peak <= allowed << 10, "peak RSS {} MiB", mib(peak));
}
