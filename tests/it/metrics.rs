//! The Metrics RPC, end to end in memory mode: after a scripted sequence of calls the counters are exact.

use std::collections::HashMap;

use cache_proto::pb;
use cache_proto::pb::invalidate_request::Target;
use cache_tests::{TestServer, compressible_json, export_key, get_req, key, metrics, set_req};
use serde_json::json;

fn row(m: &pb::MetricsResponse, t: pb::CacheType) -> Option<pb::TypeMetrics> {
    m.by_type.iter().find(|r| r.r#type == t as i32).cloned()
}

#[tokio::test]
async fn counters_are_exact_after_a_scripted_sequence() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;

    let fresh = metrics(&mut client).await;
    assert_eq!(fresh.mode, "memory");
    let m = fresh.metrics.unwrap();
    assert_eq!((m.hit_count, m.miss_count, m.hit_rate), (0, 0, 0.0));
    assert_eq!(fresh.set_count, 0);
    assert!(
        fresh.by_type.is_empty(),
        "no traffic, no rows: {:?}",
        fresh.by_type
    );
    assert!(fresh.errors_by_code.is_empty());

    // N = 5 sets.
    let m1 = key(pb::CacheType::Metadata, "m1");
    let m2 = key(pb::CacheType::Metadata, "m2");
    let m3 = pb::CacheKey {
        user_id: "u".into(),
        ..key(pb::CacheType::Metadata, "m3")
    };
    let e1 = export_key("o", "json", json!({"lod": 1}), "", "");
    let p1 = pb::CacheKey {
        user_id: "u".into(),
        ..key(pb::CacheType::UserPreference, "theme")
    };
    let values: [(&pb::CacheKey, &[u8]); 5] = [
        (&m1, b"one"),
        (&m2, b"two!"),
        (&m3, b"three"),
        (&e1, b"{\"export\":true}"),
        (&p1, b"dark"),
    ];
    for (k, v) in values {
        assert!(
            client
                .set(set_req(k.clone(), v))
                .await
                .unwrap()
                .into_inner()
                .stored
        );
    }
    // A Set refused by only_if_absent is not a set.
    assert!(
        !client
            .set(pb::SetRequest {
                only_if_absent: true,
                ..set_req(m1.clone(), &b"again"[..])
            })
            .await
            .unwrap()
            .into_inner()
            .stored
    );

    // M = 4 hits.
    for k in [&m1, &m2, &e1, &p1] {
        assert!(
            client
                .get(get_req(k.clone()))
                .await
                .unwrap()
                .into_inner()
                .found
        );
    }
    // K = 3 misses, one of them a model-hash mismatch.
    for k in [
        key(pb::CacheType::Metadata, "absent"),
        key(pb::CacheType::ObjectInfo, "absent"),
    ] {
        assert!(!client.get(get_req(k)).await.unwrap().into_inner().found);
    }
    assert!(
        !client
            .get(pb::GetRequest {
                key: Some(e1.clone()),
                model_hash: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .found
    );

    // One invalidation (by key): removes m3.
    let removed = client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::Key(m3.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(removed, 1);

    // Three invalid requests: none is a hit, a miss or a set.
    assert!(
        client
            .get(get_req(key(pb::CacheType::Metadata, "")))
            .await
            .is_err()
    );
    assert!(
        client
            .set(set_req(key(pb::CacheType::Unspecified, "x"), &b"v"[..]))
            .await
            .is_err()
    );
    assert!(
        client
            .invalidate(pb::InvalidateRequest { target: None })
            .await
            .is_err()
    );

    let r = metrics(&mut client).await;
    let m = r.metrics.unwrap();
    assert_eq!(r.mode, "memory");
    assert_eq!(m.hit_count, 4);
    assert_eq!(m.miss_count, 3);
    assert!(
        (m.hit_rate - 4.0 / 7.0).abs() < 1e-9,
        "hit_rate {}",
        m.hit_rate
    );
    assert_eq!(r.set_count, 5);
    assert_eq!(r.invalidated_count, 1);
    assert_eq!(
        r.errors_by_code,
        HashMap::from([("INVALID_ARGUMENT".to_owned(), 3u64)])
    );
    assert_eq!(m.memory_cache_entries, 4);
    assert_eq!(m.total_entries, 4);
    assert!(m.memory_cache_size > 0);
    assert_eq!(m.memory_cache_capacity, 256 << 20);
    assert!(!m.redis_connected);
    assert_eq!(m.redis_memory_usage, 0);
    assert!((m.compression_ratio - 1.0).abs() < 1e-9);
    assert!(m.avg_response_time_ms > 0.0);
    assert!(m.last_updated.is_some());
    assert!(m.memory_usage_mb > 0.0);
    assert_eq!(r.compression_saved_bytes, 0);
    assert_eq!(r.corrupt_entries, 0);
    assert!(!r.fallback_active);
    assert_eq!(r.fallback_served, 0);
    assert_eq!(r.memory_rejected, 0);

    let expect = |t: pb::CacheType, hits, misses, sets, invalidations, bytes_set| pb::TypeMetrics {
        r#type: t as i32,
        hits,
        misses,
        sets,
        invalidations,
        bytes_set,
    };
    assert_eq!(
        row(&r, pb::CacheType::Metadata),
        Some(expect(pb::CacheType::Metadata, 2, 1, 3, 1, 3 + 4 + 5))
    );
    assert_eq!(
        row(&r, pb::CacheType::ExportResult),
        Some(expect(pb::CacheType::ExportResult, 1, 1, 1, 0, 15))
    );
    assert_eq!(
        row(&r, pb::CacheType::ObjectInfo),
        Some(expect(pb::CacheType::ObjectInfo, 0, 1, 0, 0, 0))
    );
    assert_eq!(
        row(&r, pb::CacheType::UserPreference),
        Some(expect(pb::CacheType::UserPreference, 1, 0, 1, 0, 4))
    );
    assert_eq!(
        row(&r, pb::CacheType::SystemConfig),
        None,
        "no traffic, no row"
    );
    assert_eq!(r.by_type.len(), 4);

    // Batch calls count per item.
    client
        .get_many(pb::GetManyRequest {
            requests: vec![get_req(m1.clone()), get_req(m3.clone())],
        })
        .await
        .unwrap();
    let r = metrics(&mut client).await;
    let m = r.metrics.unwrap();
    assert_eq!((m.hit_count, m.miss_count), (5, 4));
    server.shutdown().await;
}

#[tokio::test]
async fn compression_savings_are_reported() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let doc = compressible_json(2 << 20);
    let e = client
        .set(set_req(key(pb::CacheType::ObjectInfo, "big"), doc.clone()))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(e.compression, pb::Compression::Zstd as i32);
    let r = metrics(&mut client).await;
    assert_eq!(r.compression_saved_bytes, e.size_bytes - e.stored_bytes);
    assert_eq!(
        row(&r, pb::CacheType::ObjectInfo).unwrap().bytes_set,
        doc.len() as u64
    );
    let m = r.metrics.unwrap();
    assert!(
        (m.compression_ratio - e.size_bytes as f64 / e.stored_bytes as f64).abs() < 1e-6,
        "{} vs {}/{}",
        m.compression_ratio,
        e.size_bytes,
        e.stored_bytes
    );
    server.shutdown().await;
}

/// `TypeMetrics.invalidations` counts "entries removed by key or selector invalidation of this type": an
/// object selector removes entries of several types, and each type must count its own.
#[tokio::test]
async fn untyped_selector_invalidations_are_counted_per_type() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    for k in [
        key(pb::CacheType::Metadata, "42"),
        key(pb::CacheType::ObjectInfo, "42"),
        export_key("42", "json", json!(null), "", ""),
        export_key("42", "ifc", json!(null), "", ""),
    ] {
        client.set(set_req(k, &b"v"[..])).await.unwrap();
    }
    let removed = client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::Selector(pb::Selector {
                object_id: "42".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(removed, 4);
    let r = metrics(&mut client).await;
    assert_eq!(r.invalidated_count, 4);
    let per_type: Vec<(i32, u64)> = r
        .by_type
        .iter()
        .map(|t| (t.r#type, t.invalidations))
        .collect();
    assert_eq!(
        per_type,
        vec![
            (pb::CacheType::ExportResult as i32, 2),
            (pb::CacheType::Metadata as i32, 1),
            (pb::CacheType::ObjectInfo as i32, 1),
        ],
        "per-type invalidations must add up to the entries the selector removed"
    );
    server.shutdown().await;
}

/// `CacheMetrics.total_size_bytes` is documented as the "logical bytes of those entries (memory tier:
/// exact)": the sum of `size_bytes` of the live entries, whatever their key length, envelope or compression.
#[tokio::test]
async fn total_size_bytes_is_the_memory_footprint_of_live_entries() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let small = key(pb::CacheType::Metadata, "small");
    let doc = compressible_json(2 << 20);
    let logical = [
        (small.clone(), vec![b'x'; 1000]),
        (key(pb::CacheType::Metadata, "medium"), vec![b'y'; 20_000]),
        (key(pb::CacheType::ObjectInfo, "compressed"), doc.clone()),
    ];
    let mut stored = 0;
    for (k, v) in &logical {
        let entry = client
            .set(set_req(k.clone(), v.clone()))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        stored += entry.stored_bytes;
    }
    let total: u64 = logical.iter().map(|(_, v)| v.len() as u64).sum();
    let m = metrics(&mut client).await.metrics.unwrap();
    assert_eq!(m.total_entries, 3);
    // Memory mode reports what the entries occupy: stored (compressed) payloads plus envelope, key and
    // bookkeeping, which is what the tier's capacity is spent on (see CacheMetrics.total_size_bytes).
    assert_eq!(m.total_size_bytes, m.memory_cache_size);
    assert!(
        m.total_size_bytes > stored && m.total_size_bytes < stored + 3 * 2048,
        "{} vs stored {stored}",
        m.total_size_bytes
    );
    assert!(
        m.total_size_bytes < total,
        "the 2 MiB document is held compressed"
    );
    let before = m.total_size_bytes;
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::Key(small)),
        })
        .await
        .unwrap();
    let m = metrics(&mut client).await.metrics.unwrap();
    assert!(
        before - m.total_size_bytes > 1000,
        "removing the 1000-byte entry frees its footprint"
    );
    server.shutdown().await;
}
