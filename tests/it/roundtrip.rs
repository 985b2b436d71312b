//! Memory mode, end to end over gRPC: values come back byte-identical with their entry metadata, compression
//! is chosen as documented, large values pass, export keys and model hashes behave, and the Set options
//! (metadata_only, only_if_absent, ttl_seconds) and the batch calls do what the contract says.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_proto::pb;
use cache_server::config::Settings;
use cache_tests::{
    TestServer, assert_invalid, compressible_json, export_key, get_req, key,
    key_bytes_with_options, memory_config, random_bytes, raw_unary, request_bytes_with_key,
    set_req, struct_bytes_in_order,
};
use prost::Message as _;
use serde_json::json;

fn unix_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// Lower-case hex MD5, computed independently of the server.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn json_value_round_trips_with_full_entry_metadata() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let value =
        br#"{"object":42,"name":"Wall \u00e9","levels":[1,2,3],"props":{"fire":"EI60"}}"#.to_vec();
    let mut k = key(pb::CacheType::Metadata, "42");
    k.user_id = "7".into();
    let metadata: HashMap<String, String> = [("source", "ifc-parser"), ("rev", "3")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let before = now_ms();
    let set = client
        .set(pb::SetRequest {
            content_type: "application/json".into(),
            metadata: metadata.clone(),
            ..set_req(k.clone(), value.clone())
        })
        .await
        .unwrap()
        .into_inner();
    let after = now_ms();
    assert!(set.stored);
    let stored = set.entry.expect("Set returns the stored entry");
    assert_eq!(stored.key, "cache:default:metadata:42:user:7");
    assert_eq!(stored.size_bytes, value.len() as u64);
    assert_eq!(stored.access_count, 0);
    assert_eq!(stored.last_accessed, stored.created_at);
    let created = unix_ms(stored.created_at.as_ref().unwrap());
    assert!(
        (before - 1000..=after + 1000).contains(&created),
        "created_at {created} not within [{before}, {after}]"
    );

    let mut last_accessed = created;
    for expected_count in [1u64, 2] {
        let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
        assert!(got.found);
        assert_eq!(got.value, value, "value must come back byte-identical");
        let e = got.entry.expect("a hit carries its entry");
        assert_eq!(e.key, "cache:default:metadata:42:user:7");
        assert_eq!(e.r#type, pb::CacheType::Metadata as i32);
        assert_eq!(e.id, "42");
        assert_eq!(e.format, "");
        assert_eq!(e.model_hash, "");
        assert_eq!(e.export_options, None);
        assert_eq!(unix_ms(e.created_at.as_ref().unwrap()), created);
        assert_eq!(
            unix_ms(e.expires_at.as_ref().unwrap()) - created,
            3600 * 1000,
            "metadata default TTL is 1 h"
        );
        let accessed = unix_ms(e.last_accessed.as_ref().unwrap());
        assert!(accessed >= last_accessed && accessed <= now_ms() + 1000);
        last_accessed = accessed;
        assert_eq!(e.access_count, expected_count);
        assert_eq!(e.size_bytes, value.len() as u64);
        assert_eq!(e.stored_bytes, value.len() as u64);
        assert_eq!(e.compression, pb::Compression::None as i32);
        assert!((e.compression_ratio - 1.0).abs() < 1e-9);
        assert_eq!(e.content_type, "application/json");
        assert_eq!(e.metadata, metadata);
        assert_eq!(e.user_id, "7");
        assert_eq!(e.project_id, "");
        assert_eq!(e.tier, pb::Tier::Memory as i32);
        assert_eq!(e.status, pb::EntryStatus::Valid as i32);
        assert_eq!(e.version, 1);
    }

    // Project scope is rendered and reported too.
    let mut scoped = key(pb::CacheType::ObjectInfo, "42");
    scoped.project_id = "p:1".into();
    client
        .set(set_req(scoped.clone(), &b"info"[..]))
        .await
        .unwrap();
    let e = client
        .get(get_req(scoped))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(e.key, "cache:default:object:42:project:p%3A1");
    assert_eq!(e.project_id, "p:1");
    assert_eq!(e.user_id, "");
    server.shutdown().await;
}

/// SetResponse.entry documents "which tier answered"; TIER_UNSPECIFIED is for entries never stored.
#[tokio::test]
async fn set_response_reports_the_tier_that_stored_the_entry() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let set = client
        .set(set_req(
            key(pb::CacheType::SystemConfig, "flags"),
            &b"{}"[..],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(set.stored);
    assert_eq!(
        set.entry.unwrap().tier,
        pb::Tier::Memory as i32,
        "a value stored in the memory tier must report TIER_MEMORY"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn compression_is_chosen_as_documented_and_values_round_trip() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;

    // AUTO, compressible, at/above the 1 MiB threshold: zstd, much smaller.
    let json_doc = compressible_json(2 << 20);
    let k = key(pb::CacheType::ObjectInfo, "big-json");
    let set = client
        .set(set_req(k.clone(), json_doc.clone()))
        .await
        .unwrap()
        .into_inner();
    let e = set.entry.unwrap();
    assert_eq!(e.compression, pb::Compression::Zstd as i32);
    assert_eq!(e.size_bytes, json_doc.len() as u64);
    assert!(
        e.stored_bytes < e.size_bytes / 3,
        "zstd stored {} of {} bytes",
        e.stored_bytes,
        e.size_bytes
    );
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert_eq!(got.value, json_doc);
    let e = got.entry.unwrap();
    assert_eq!(e.compression, pb::Compression::Zstd as i32);
    assert!(e.stored_bytes < e.size_bytes / 3);
    assert!((e.compression_ratio - e.size_bytes as f64 / e.stored_bytes as f64).abs() < 1e-6);

    // Explicit GZIP applies whatever the size.
    let small_json = compressible_json(64 << 10);
    let k = key(pb::CacheType::ObjectInfo, "gz");
    let set = client
        .set(pb::SetRequest {
            compression: pb::Compression::Gzip as i32,
            ..set_req(k.clone(), small_json.clone())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.entry.unwrap().compression, pb::Compression::Gzip as i32);
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert_eq!(got.value, small_json);
    let e = got.entry.unwrap();
    assert_eq!(e.compression, pb::Compression::Gzip as i32);
    assert!(e.stored_bytes < e.size_bytes / 3);

    // Explicit ZSTD below the threshold too.
    let k = key(pb::CacheType::ObjectInfo, "zs");
    client
        .set(pb::SetRequest {
            compression: pb::Compression::Zstd as i32,
            ..set_req(k.clone(), small_json.clone())
        })
        .await
        .unwrap();
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert_eq!(got.value, small_json);
    assert_eq!(got.entry.unwrap().compression, pb::Compression::Zstd as i32);

    // Incompressible: compression would not save 10 %, so it is stored as is.
    let noise = random_bytes(2 << 20);
    let k = key(pb::CacheType::ObjectInfo, "noise");
    let set = client
        .set(set_req(k.clone(), noise.clone()))
        .await
        .unwrap()
        .into_inner();
    let e = set.entry.unwrap();
    assert_eq!(e.compression, pb::Compression::None as i32);
    assert_eq!(e.stored_bytes, e.size_bytes);
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert_eq!(got.value, noise);
    assert_eq!(got.entry.unwrap().compression, pb::Compression::None as i32);

    // COMPRESSION_NONE on a compressible value above the threshold is honoured.
    let k = key(pb::CacheType::ObjectInfo, "plain");
    let set = client
        .set(pb::SetRequest {
            compression: pb::Compression::None as i32,
            ..set_req(k.clone(), json_doc.clone())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.entry.unwrap().compression, pb::Compression::None as i32);
    assert_eq!(
        client.get(get_req(k)).await.unwrap().into_inner().value,
        json_doc
    );
    server.shutdown().await;
}

#[tokio::test]
async fn values_above_grpc_default_limit_round_trip() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let value = random_bytes(10 << 20);
    let k = export_key("model-9", "ifc", json!(null), "", "");
    let set = client
        .set(set_req(k.clone(), value.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(set.stored);
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert!(got.found);
    assert_eq!(got.value.len(), value.len());
    assert!(got.value == value, "10 MiB value differs after round trip");
    assert_eq!(got.entry.unwrap().size_bytes, 10 << 20);
    server.shutdown().await;
}

#[tokio::test]
async fn values_above_the_maximum_size_are_rejected_naming_value() {
    let server = TestServer::start(memory_config(Settings {
        max_value_bytes: Some(1 << 20),
        max_size_mb: Some(16),
        ..Default::default()
    }))
    .await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::ObjectInfo, "too-big");
    assert_invalid(
        client
            .set(set_req(k.clone(), random_bytes((1 << 20) + 1)))
            .await,
        "value",
    );
    assert!(
        !client
            .get(get_req(k.clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // Exactly the maximum is fine.
    let exact = random_bytes(1 << 20);
    assert!(
        client
            .set(set_req(k.clone(), exact.clone()))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    assert_eq!(
        client.get(get_req(k)).await.unwrap().into_inner().value,
        exact
    );
    server.shutdown().await;
}

#[tokio::test]
async fn export_keys_hash_options_canonically_and_honour_model_hash() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Set with the options' map entries on the wire in one order (and 2.0 for 2)...
    let bare = export_key("obj-1", "json", json!(null), "u1", "");
    let order_a = struct_bytes_in_order(&[
        ("zoom", json!(2.0)),
        ("alpha", json!("x")),
        ("mid", json!([1, true, {"b": 1, "a": 2}])),
    ]);
    let set = pb::SetRequest {
        key: None,
        value: b"exported".to_vec().into(),
        model_hash: "h1".into(),
        ..Default::default()
    };
    let reply = raw_unary(
        channel.clone(),
        "/cache.v1.CacheService/Set",
        request_bytes_with_key(&set, &key_bytes_with_options(&bare, &order_a)),
    )
    .await
    .unwrap();
    let set_reply = pb::SetResponse::decode(&reply[..]).unwrap();
    assert!(set_reply.stored);
    let rendered = set_reply.entry.unwrap().key;
    // The documented rendering: md5 of the canonical JSON (sorted keys, integral numbers without fraction).
    let canonical = r#"{"alpha":"x","mid":[1,true,{"a":2,"b":1}],"zoom":2}"#;
    assert_eq!(
        rendered,
        format!(
            "cache:default:export_result:obj-1:json:{}:user:u1",
            md5_hex(canonical.as_bytes())
        )
    );

    // ...and read it with them in another order: same entry.
    let order_b = struct_bytes_in_order(&[
        ("mid", json!([1, true, {"a": 2, "b": 1}])),
        ("alpha", json!("x")),
        ("zoom", json!(2)),
    ]);
    let reply = raw_unary(
        channel.clone(),
        "/cache.v1.CacheService/Get",
        request_bytes_with_key(
            &pb::GetRequest::default(),
            &key_bytes_with_options(&bare, &order_b),
        ),
    )
    .await
    .unwrap();
    let got = pb::GetResponse::decode(&reply[..]).unwrap();
    assert!(got.found, "same options in another field order must hit");
    assert_eq!(&got.value[..], b"exported");
    let e = got.entry.unwrap();
    assert_eq!(e.key, rendered);
    assert_eq!(e.format, "json");
    assert_eq!(e.model_hash, "h1");
    assert_eq!(
        e.export_options,
        export_key(
            "x",
            "x",
            json!({"alpha": "x", "mid": [1, true, {"a": 2, "b": 1}], "zoom": 2}),
            "",
            ""
        )
        .options,
        "the entry reports the export options"
    );

    let same = export_key(
        "obj-1",
        "json",
        json!({"mid": [1.0, true, {"b": 1, "a": 2}], "zoom": 2, "alpha": "x"}),
        "u1",
        "",
    );
    assert!(
        client
            .get(get_req(same.clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    // Different options, format or scope: different entries.
    for other in [
        export_key(
            "obj-1",
            "json",
            json!({"mid": [1, true, {"b": 1, "a": 2}], "zoom": 3, "alpha": "x"}),
            "u1",
            "",
        ),
        export_key(
            "obj-1",
            "json",
            json!({"mid": [1, true, {"b": 1, "a": 2}], "zoom": 2}),
            "u1",
            "",
        ),
        export_key(
            "obj-1",
            "json",
            json!({"mid": [true, 1, {"b": 1, "a": 2}], "zoom": 2, "alpha": "x"}),
            "u1",
            "",
        ),
        export_key("obj-1", "json", json!(null), "u1", ""),
        export_key(
            "obj-1",
            "ifc",
            json!({"mid": [1, true, {"b": 1, "a": 2}], "zoom": 2, "alpha": "x"}),
            "u1",
            "",
        ),
        export_key(
            "obj-1",
            "json",
            json!({"mid": [1, true, {"b": 1, "a": 2}], "zoom": 2, "alpha": "x"}),
            "",
            "",
        ),
    ] {
        let got = client
            .get(get_req(other.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(!got.found, "{other:?} must miss");
    }

    // model_hash: another hash misses, the same hash hits, no hash hits.
    let with_hash = |h: &str| pb::GetRequest {
        key: Some(same.clone()),
        model_hash: h.into(),
        ..Default::default()
    };
    assert!(
        !client
            .get(with_hash("h2"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    let got = client.get(with_hash("h1")).await.unwrap().into_inner();
    assert!(got.found);
    assert_eq!(got.entry.unwrap().model_hash, "h1");
    assert!(client.get(with_hash("")).await.unwrap().into_inner().found);

    // An entry stored without a model hash misses for a Get that names one.
    let unhashed = export_key("obj-2", "svg", json!({}), "", "");
    let e = client
        .set(set_req(unhashed.clone(), &b"<svg/>"[..]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(
        e.key,
        format!("cache:default:export_result:obj-2:svg:{}", md5_hex(b"{}"))
    );
    assert!(
        !client
            .get(pb::GetRequest {
                key: Some(unhashed.clone()),
                model_hash: "h1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .found
    );
    assert!(
        client
            .get(get_req(unhashed))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_only_returns_the_entry_without_the_value() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::ObjectInfo, "o1");
    let value = compressible_json(3 << 20);
    client.set(set_req(k.clone(), value.clone())).await.unwrap();
    let got = client
        .get(pb::GetRequest {
            key: Some(k.clone()),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert!(
        got.value.is_empty(),
        "metadata_only must not carry the value"
    );
    let e = got.entry.unwrap();
    assert_eq!(e.size_bytes, value.len() as u64);
    assert_eq!(e.compression, pb::Compression::Zstd as i32);
    assert_eq!(e.key, "cache:default:object:o1");
    assert_eq!(e.access_count, 1);
    // A miss with metadata_only is still a miss.
    let miss = client
        .get(pb::GetRequest {
            key: Some(key(pb::CacheType::ObjectInfo, "absent")),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!miss.found && miss.entry.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn only_if_absent_stores_once_and_keeps_the_first_value() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::SystemConfig, "feature-flags");
    let first = client
        .set(pb::SetRequest {
            only_if_absent: true,
            ..set_req(k.clone(), &b"first"[..])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.stored);
    let second = client
        .set(pb::SetRequest {
            only_if_absent: true,
            ..set_req(k.clone(), &b"second"[..])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!second.stored);
    let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
    assert_eq!(&got.value[..], b"first");
    // A plain Set still replaces.
    assert!(
        client
            .set(set_req(k.clone(), &b"third"[..]))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    assert_eq!(
        &client.get(get_req(k)).await.unwrap().into_inner().value[..],
        b"third"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::Metadata, "short-lived");
    let set_at = Instant::now();
    let set = client
        .set(pb::SetRequest {
            ttl_seconds: 1,
            ..set_req(k.clone(), &b"v"[..])
        })
        .await
        .unwrap()
        .into_inner();
    let e = set.entry.unwrap();
    assert_eq!(
        unix_ms(e.expires_at.as_ref().unwrap()) - unix_ms(e.created_at.as_ref().unwrap()),
        1000
    );
    assert!(
        client
            .get(get_req(k.clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    loop {
        let found = client
            .get(get_req(k.clone()))
            .await
            .unwrap()
            .into_inner()
            .found;
        let elapsed = set_at.elapsed();
        if !found {
            assert!(
                elapsed >= Duration::from_millis(900),
                "expired too early, after {elapsed:?}"
            );
            break;
        }
        assert!(
            elapsed < Duration::from_millis(2500),
            "still found {elapsed:?} after a 1 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An expired entry does not block only_if_absent.
    assert!(
        client
            .set(pb::SetRequest {
                only_if_absent: true,
                ..set_req(k.clone(), &b"again"[..])
            })
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    assert_eq!(
        &client.get(get_req(k)).await.unwrap().into_inner().value[..],
        b"again"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn batch_calls_answer_in_request_order() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let keys = [
        key(pb::CacheType::Metadata, "b1"),
        export_key("b2", "json", json!({"lod": 1}), "", "p"),
        pb::CacheKey {
            user_id: "u".into(),
            ..key(pb::CacheType::UserPreference, "theme")
        },
    ];
    let values: [&[u8]; 3] = [b"one", b"two", b"three"];
    let set = client
        .set_many(pb::SetManyRequest {
            requests: keys
                .iter()
                .zip(values)
                .map(|(k, v)| set_req(k.clone(), v))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let rendered: Vec<String> = set
        .responses
        .iter()
        .map(|r| {
            assert!(r.stored);
            r.entry.as_ref().unwrap().key.clone()
        })
        .collect();
    assert_eq!(rendered[0], "cache:default:metadata:b1");
    assert!(rendered[1].starts_with("cache:default:export_result:b2:json:"));
    assert!(rendered[1].ends_with(":project:p"));
    assert_eq!(rendered[2], "cache:default:user:u:preference:theme");

    let absent = key(pb::CacheType::Metadata, "nope");
    let order = [Some(2usize), None, Some(0), Some(1), None, Some(2)];
    let got = client
        .get_many(pb::GetManyRequest {
            requests: order
                .iter()
                .map(|i| get_req(i.map_or_else(|| absent.clone(), |i| keys[i].clone())))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.responses.len(), order.len());
    for (slot, (want, answer)) in order.iter().zip(&got.responses).enumerate() {
        match want {
            Some(i) => {
                assert!(answer.found, "slot {slot} must hit");
                assert_eq!(&answer.value[..], values[*i], "slot {slot}");
                assert_eq!(answer.entry.as_ref().unwrap().key, rendered[*i]);
            }
            None => {
                assert!(!answer.found, "slot {slot} must miss");
                assert!(answer.value.is_empty() && answer.entry.is_none());
            }
        }
    }
    // The preference was named twice in the batch: read (and decoded) once, both answers are that read.
    let counts = [0usize, 5].map(|i| got.responses[i].entry.as_ref().unwrap().access_count);
    assert_eq!(counts, [1, 1]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_largest_allowed_value_round_trips() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let max = server.config().max_value_bytes as usize;
    assert_eq!(max, 64 << 20);
    let value = random_bytes(max);
    let k = export_key("huge", "ifc", json!({"lod": 400}), "u", "p");
    let set = client
        .set(set_req(k.clone(), value.clone()))
        .await
        .expect("a value of exactly the maximum size is accepted")
        .into_inner();
    assert!(set.stored);
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert!(got.found);
    assert!(got.value == value, "64 MiB value differs after round trip");
    server.shutdown().await;
}

#[tokio::test]
async fn compressed_requests_are_accepted() {
    use tonic::codec::CompressionEncoding;
    let server = TestServer::memory().await;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client = server.client().await.send_compressed(encoding);
        let doc = compressible_json(1 << 20);
        let k = key(pb::CacheType::ObjectInfo, &format!("{encoding:?}"));
        let set = client
            .set(set_req(k.clone(), doc.clone()))
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}-compressed Set: {e:?}"))
            .into_inner();
        assert!(set.stored);
        let got = client.get(get_req(k)).await.unwrap().into_inner();
        assert_eq!(got.value, doc);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ids_with_separators_and_glob_characters_are_escaped() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let cases = [
        ("a b:c", "cache:default:object:a%20b%3Ac"),
        ("50%*?", "cache:default:object:50%25%2A%3F"),
        ("[x]\\y", "cache:default:object:%5Bx%5D%5Cy"),
        ("é/ü", "cache:default:object:é/ü"),
    ];
    for (id, rendered) in cases {
        let k = key(pb::CacheType::ObjectInfo, id);
        let set = client
            .set(set_req(k.clone(), id.as_bytes().to_vec()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.entry.unwrap().key, rendered);
        let got = client.get(get_req(k)).await.unwrap().into_inner();
        assert_eq!(got.value, id.as_bytes());
        let e = got.entry.unwrap();
        assert_eq!(e.id, id);
        assert_eq!(e.key, rendered);
    }
    // "a:b" as an id and "a" scoped to user "b" never share an entry.
    let colon = key(pb::CacheType::Metadata, "a:user:b");
    let scoped = pb::CacheKey {
        user_id: "b".into(),
        ..key(pb::CacheType::Metadata, "a")
    };
    client
        .set(set_req(colon.clone(), &b"colon"[..]))
        .await
        .unwrap();
    client
        .set(set_req(scoped.clone(), &b"scoped"[..]))
        .await
        .unwrap();
    assert_eq!(
        &client.get(get_req(colon)).await.unwrap().into_inner().value[..],
        b"colon"
    );
    assert_eq!(
        &client
            .get(get_req(scoped))
            .await
            .unwrap()
            .into_inner()
            .value[..],
        b"scoped"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn empty_values_and_batches_applied_in_order() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::SystemConfig, "empty");
    assert!(
        client
            .set(set_req(k.clone(), Vec::new()))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
    assert!(got.found, "an empty value is a value");
    assert!(got.value.is_empty());
    assert_eq!(got.entry.unwrap().size_bytes, 0);

    // SetMany applies its writes in order: the last write of a key wins.
    let set = client
        .set_many(pb::SetManyRequest {
            requests: vec![
                set_req(k.clone(), &b"first"[..]),
                set_req(k.clone(), &b"second"[..]),
                pb::SetRequest {
                    only_if_absent: true,
                    ..set_req(k.clone(), &b"third"[..])
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<bool> = set.responses.iter().map(|r| r.stored).collect();
    assert_eq!(stored, [true, true, false]);
    assert_eq!(
        &client.get(get_req(k)).await.unwrap().into_inner().value[..],
        b"second"
    );
    server.shutdown().await;
}
