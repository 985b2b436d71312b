//! Bad input, end to end: every invalid request is INVALID_ARGUMENT whose message starts with the offending
//! field's path, nothing is stored by a rejected call, and the server keeps serving afterwards.

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_tests::{TestServer, assert_invalid, export_key, get_req, key, set_req};
use serde_json::json;
use tonic::transport::Channel;

/// The server still answers a well-formed Get after a rejected call.
async fn still_serving(client: &mut CacheServiceClient<Channel>, canary: &pb::CacheKey) {
    let got = client
        .get(get_req(canary.clone()))
        .await
        .expect("a valid Get after a rejected call")
        .into_inner();
    assert!(got.found, "the canary entry must still be readable");
    assert_eq!(&got.value[..], b"canary");
}

#[tokio::test]
async fn bad_keys_name_the_offending_field() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let canary = key(pb::CacheType::SystemConfig, "canary");
    client
        .set(set_req(canary.clone(), &b"canary"[..]))
        .await
        .unwrap();

    let with = |f: &dyn Fn(&mut pb::CacheKey)| {
        let mut k = key(pb::CacheType::Metadata, "42");
        f(&mut k);
        k
    };
    let cases: Vec<(pb::CacheKey, &str)> = vec![
        (with(&|k| k.r#type = 0), "key.type"),
        (with(&|k| k.r#type = 42), "key.type"),
        (with(&|k| k.id.clear()), "key.id"),
        (with(&|k| k.id = "x".repeat(513)), "key.id"),
        (with(&|k| k.id = "a\u{1}b".into()), "key.id"),
        (with(&|k| k.id = "a\nb".into()), "key.id"),
        (with(&|k| k.user_id = "u\u{7f}".into()), "key.user_id"),
        (with(&|k| k.project_id = "p".repeat(600)), "key.project_id"),
        (export_key("42", "", json!(null), "", ""), "key.format"),
        (with(&|k| k.format = "json".into()), "key.format"),
        (
            with(&|k| k.options = export_key("42", "json", json!({"a": 1}), "", "").options),
            "key.options",
        ),
        (key(pb::CacheType::UserPreference, "theme"), "key.user_id"),
    ];
    for (bad, field) in cases {
        assert_invalid(client.get(get_req(bad.clone())).await, field);
        still_serving(&mut client, &canary).await;
        assert_invalid(client.set(set_req(bad.clone(), &b"v"[..])).await, field);
        still_serving(&mut client, &canary).await;
        assert_invalid(
            client
                .invalidate(pb::InvalidateRequest {
                    target: Some(pb::invalidate_request::Target::Key(bad)),
                })
                .await,
            field,
        );
        still_serving(&mut client, &canary).await;
    }
    // 512 bytes is the limit, not above it.
    let longest = with(&|k| k.id = "x".repeat(512));
    assert!(
        client
            .set(set_req(longest, &b"v"[..]))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    server.shutdown().await;
}

#[tokio::test]
async fn missing_key_and_bad_set_fields_are_rejected() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let canary = key(pb::CacheType::SystemConfig, "canary");
    client
        .set(set_req(canary.clone(), &b"canary"[..]))
        .await
        .unwrap();
    let good = key(pb::CacheType::Metadata, "42");

    assert_invalid(client.get(pb::GetRequest::default()).await, "key");
    still_serving(&mut client, &canary).await;
    assert_invalid(
        client
            .set(pb::SetRequest {
                value: b"v".to_vec().into(),
                ..Default::default()
            })
            .await,
        "key",
    );
    still_serving(&mut client, &canary).await;

    let bad_sets = [
        (
            pb::SetRequest {
                compression: 9,
                ..set_req(good.clone(), &b"v"[..])
            },
            "compression",
        ),
        (
            pb::SetRequest {
                ttl_seconds: 30 * 24 * 3600 + 1,
                ..set_req(good.clone(), &b"v"[..])
            },
            "ttl_seconds",
        ),
        (
            pb::SetRequest {
                content_type: "x".repeat(257),
                ..set_req(good.clone(), &b"v"[..])
            },
            "content_type",
        ),
        (
            pb::SetRequest {
                model_hash: "h\u{0}".into(),
                ..set_req(good.clone(), &b"v"[..])
            },
            "model_hash",
        ),
        (
            pb::SetRequest {
                metadata: (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
                ..set_req(good.clone(), &b"v"[..])
            },
            "metadata",
        ),
    ];
    for (bad, field) in bad_sets {
        assert_invalid(client.set(bad).await, field);
        still_serving(&mut client, &canary).await;
    }
    assert!(
        !client
            .get(get_req(good.clone()))
            .await
            .unwrap()
            .into_inner()
            .found,
        "no rejected Set may store anything"
    );
    // The maximum TTL itself is accepted.
    assert!(
        client
            .set(pb::SetRequest {
                ttl_seconds: 30 * 24 * 3600,
                ..set_req(good, &b"v"[..])
            })
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_invalidations_name_the_target() {
    use pb::invalidate_request::Target;
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let canary = key(pb::CacheType::SystemConfig, "canary");
    client
        .set(set_req(canary.clone(), &b"canary"[..]))
        .await
        .unwrap();
    let cases = [
        (None, "target"),
        (Some(Target::Selector(pb::Selector::default())), "selector"),
        (
            Some(Target::Selector(pb::Selector {
                r#type: 77,
                ..Default::default()
            })),
            "selector.type",
        ),
        (
            Some(Target::Selector(pb::Selector {
                object_id: "o\u{1}".into(),
                ..Default::default()
            })),
            "selector.object_id",
        ),
        (Some(Target::Pattern(String::new())), "pattern"),
        (Some(Target::Pattern("x".repeat(1025))), "pattern"),
        (Some(Target::All(false)), "all"),
    ];
    for (target, field) in cases {
        assert_invalid(
            client.invalidate(pb::InvalidateRequest { target }).await,
            field,
        );
        still_serving(&mut client, &canary).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn batch_calls_reject_the_whole_batch_naming_the_item() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let canary = key(pb::CacheType::SystemConfig, "canary");
    client
        .set(set_req(canary.clone(), &b"canary"[..]))
        .await
        .unwrap();

    let items: Vec<pb::CacheKey> = (0..4)
        .map(|i| key(pb::CacheType::Metadata, &format!("batch-{i}")))
        .collect();
    let mut requests: Vec<pb::SetRequest> = items
        .iter()
        .map(|k| set_req(k.clone(), &b"v"[..]))
        .collect();
    requests[2].key.as_mut().unwrap().id.clear();
    assert_invalid(
        client.set_many(pb::SetManyRequest { requests }).await,
        "requests[2].key.id",
    );
    for (i, k) in items.iter().enumerate() {
        assert!(
            !client
                .get(get_req(k.clone()))
                .await
                .unwrap()
                .into_inner()
                .found,
            "item {i} must not be stored when the batch is rejected"
        );
    }
    still_serving(&mut client, &canary).await;

    // A bad Set field deeper in an item.
    let mut requests: Vec<pb::SetRequest> = items
        .iter()
        .map(|k| set_req(k.clone(), &b"v"[..]))
        .collect();
    requests[3].compression = 9;
    assert_invalid(
        client.set_many(pb::SetManyRequest { requests }).await,
        "requests[3].compression",
    );
    assert!(
        !client
            .get(get_req(items[0].clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    // GetMany: a bad item is named, more than 1000 items are refused.
    let mut gets: Vec<pb::GetRequest> = items.iter().map(|k| get_req(k.clone())).collect();
    gets[1].key.as_mut().unwrap().r#type = 0;
    assert_invalid(
        client.get_many(pb::GetManyRequest { requests: gets }).await,
        "requests[1].key.type",
    );
    still_serving(&mut client, &canary).await;
    let too_many = (0..1001).map(|_| get_req(canary.clone())).collect();
    assert_invalid(
        client
            .get_many(pb::GetManyRequest { requests: too_many })
            .await,
        "requests",
    );
    let too_many = (0..1001)
        .map(|i| set_req(key(pb::CacheType::Metadata, &i.to_string()), &b"v"[..]))
        .collect();
    assert_invalid(
        client
            .set_many(pb::SetManyRequest { requests: too_many })
            .await,
        "requests",
    );
    assert!(
        !client
            .get(get_req(key(pb::CacheType::Metadata, "0")))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // Exactly 1000 is fine.
    let thousand = (0..1000).map(|_| get_req(canary.clone())).collect();
    let answers = client
        .get_many(pb::GetManyRequest { requests: thousand })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().all(|a| a.found));
    still_serving(&mut client, &canary).await;
    server.shutdown().await;
}
