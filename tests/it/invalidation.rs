//! Invalidation, end to end in memory mode and in redis mode: by key, by selector (object, user, project,
//! type and combinations), by pattern and everything. Each removes exactly what it names, no more, and
//! reports how many entries it removed.

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_proto::pb::invalidate_request::Target;
use cache_server::config::BackendMode;
use cache_tests::{RedisServer, TestServer, export_key, key, redis_config, set_req};
use serde_json::json;
use tonic::transport::Channel;

type Client = CacheServiceClient<Channel>;

fn scoped(cache_type: pb::CacheType, id: &str, user: &str, project: &str) -> pb::CacheKey {
    pb::CacheKey {
        user_id: user.into(),
        project_id: project.into(),
        ..key(cache_type, id)
    }
}

/// Runs `body` against a memory-mode server, then a redis-mode one on a private `redis-server`: each tier
/// must remove exactly the same entries (the Redis tier finds them through its indexes, or by key).
async fn in_each_mode<F, Fut>(body: F)
where
    F: Fn(TestServer) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    body(TestServer::memory().await).await;
    let redis = RedisServer::start().await;
    let config = redis_config(BackendMode::Redis, redis.settings());
    body(TestServer::start(config).await).await;
}

async fn put(client: &mut Client, keys: &[pb::CacheKey]) {
    let requests = keys
        .iter()
        .map(|k| set_req(k.clone(), format!("value of {k:?}").into_bytes()))
        .collect();
    let set = client
        .set_many(pb::SetManyRequest { requests })
        .await
        .unwrap()
        .into_inner();
    assert!(set.responses.iter().all(|r| r.stored));
}

async fn present(client: &mut Client, k: &pb::CacheKey) -> bool {
    client
        .get(pb::GetRequest {
            key: Some(k.clone()),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .found
}

async fn invalidate(client: &mut Client, target: Target) -> u64 {
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(target),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated
}

/// Asserts every `gone` key misses and every `kept` key hits.
async fn assert_gone_and_kept(client: &mut Client, gone: &[pb::CacheKey], kept: &[pb::CacheKey]) {
    for k in gone {
        assert!(!present(client, k).await, "{k:?} must be invalidated");
    }
    for k in kept {
        assert!(present(client, k).await, "{k:?} must survive");
    }
}

fn selector(t: pb::CacheType, object: &str, user: &str, project: &str) -> Target {
    Target::Selector(pb::Selector {
        r#type: t as i32,
        object_id: object.into(),
        user_id: user.into(),
        project_id: project.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_selector_removes_exactly_that_objects_entries() {
    in_each_mode(object_selector_removes_exactly_that_objects_entries_in).await;
}

async fn object_selector_removes_exactly_that_objects_entries_in(server: TestServer) {
    let mut client = server.client().await;
    let object = [
        key(pb::CacheType::Metadata, "42"),
        scoped(pb::CacheType::Metadata, "42", "7", ""),
        key(pb::CacheType::ObjectInfo, "42"),
        scoped(pb::CacheType::ObjectInfo, "42", "", "p1"),
        export_key("42", "json", json!(null), "", ""),
        export_key("42", "json", json!({"lod": 2}), "", ""),
        export_key("42", "ifc", json!({"schema": "IFC4"}), "u1", ""),
        export_key("42", "svg", json!({}), "u2", "p1"),
    ];
    let others = [
        key(pb::CacheType::Metadata, "420"),
        key(pb::CacheType::Metadata, "4"),
        key(pb::CacheType::ObjectInfo, "43"),
        export_key("43", "json", json!(null), "", ""),
        export_key("4:2", "json", json!(null), "", ""),
        // Same name as the object, but not an object: a preference and a configuration value.
        scoped(pb::CacheType::UserPreference, "42", "u1", ""),
        key(pb::CacheType::SystemConfig, "42"),
    ];
    put(&mut client, &object).await;
    put(&mut client, &others).await;

    let removed = invalidate(
        &mut client,
        selector(pb::CacheType::Unspecified, "42", "", ""),
    )
    .await;
    assert_eq!(removed, object.len() as u64);
    assert_gone_and_kept(&mut client, &object, &others).await;
    // Nothing left to remove.
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::Unspecified, "42", "", "")
        )
        .await,
        0
    );
    // With a type, the id selects entries of that type: here the preference named "42".
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::UserPreference, "42", "", "")
        )
        .await,
        1
    );
    assert_gone_and_kept(
        &mut client,
        &others[5..6],
        &[&others[..5], &others[6..]].concat(),
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_project_and_type_selectors_remove_what_they_name() {
    in_each_mode(user_project_and_type_selectors_remove_what_they_name_in).await;
}

async fn user_project_and_type_selectors_remove_what_they_name_in(server: TestServer) {
    let mut client = server.client().await;
    let u1 = [
        scoped(pb::CacheType::Metadata, "1", "u1", ""),
        scoped(pb::CacheType::ObjectInfo, "2", "u1", "p1"),
        export_key("3", "json", json!({"a": 1}), "u1", ""),
        scoped(pb::CacheType::UserPreference, "theme", "u1", ""),
        scoped(pb::CacheType::UserPreference, "lang", "u1", "p2"),
        scoped(pb::CacheType::SystemConfig, "limits", "u1", ""),
    ];
    let rest = [
        scoped(pb::CacheType::Metadata, "1", "u2", ""),
        scoped(pb::CacheType::Metadata, "1", "", ""),
        scoped(pb::CacheType::UserPreference, "theme", "u2", ""),
        scoped(pb::CacheType::ObjectInfo, "u1", "", ""),
        export_key("3", "json", json!({"a": 1}), "u10", "p1"),
        scoped(pb::CacheType::SystemConfig, "limits", "", "p1"),
    ];
    put(&mut client, &u1).await;
    put(&mut client, &rest).await;

    // type + user: only u1's preferences.
    let prefs = [u1[3].clone(), u1[4].clone()];
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::UserPreference, "", "u1", "")
        )
        .await,
        2
    );
    assert_gone_and_kept(
        &mut client,
        &prefs,
        &[&u1[..3], &u1[5..], &rest[..]].concat(),
    )
    .await;

    // user: everything of u1, whatever the type.
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::Unspecified, "", "u1", "")
        )
        .await,
        4
    );
    assert_gone_and_kept(&mut client, &u1, &rest).await;

    // project: entries scoped to p1 only.
    put(&mut client, &u1).await;
    let p1 = [u1[1].clone(), rest[4].clone(), rest[5].clone()];
    let not_p1: Vec<pb::CacheKey> = u1
        .iter()
        .chain(&rest)
        .filter(|k| !p1.iter().any(|p| p == *k))
        .cloned()
        .collect();
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::Unspecified, "", "", "p1")
        )
        .await,
        3
    );
    assert_gone_and_kept(&mut client, &p1, &not_p1).await;

    // type: every metadata entry, whatever the scope.
    let metadata: Vec<pb::CacheKey> = not_p1
        .iter()
        .filter(|k| k.r#type == pb::CacheType::Metadata as i32)
        .cloned()
        .collect();
    let not_metadata: Vec<pb::CacheKey> = not_p1
        .iter()
        .filter(|k| k.r#type != pb::CacheType::Metadata as i32)
        .cloned()
        .collect();
    assert_eq!(metadata.len(), 3);
    assert_eq!(
        invalidate(&mut client, selector(pb::CacheType::Metadata, "", "", "")).await,
        3
    );
    assert_gone_and_kept(&mut client, &metadata, &not_metadata).await;

    // type + user + project: one entry.
    assert_eq!(
        invalidate(
            &mut client,
            selector(pb::CacheType::UserPreference, "lang", "u1", "p2")
        )
        .await,
        1
    );
    assert!(!present(&mut client, &u1[4]).await);
    assert!(present(&mut client, &u1[3]).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pattern_and_all_invalidation() {
    in_each_mode(key_pattern_and_all_invalidation_in).await;
}

async fn key_pattern_and_all_invalidation_in(server: TestServer) {
    let mut client = server.client().await;
    let metadata = [
        key(pb::CacheType::Metadata, "1"),
        scoped(pb::CacheType::Metadata, "2", "u1", ""),
        scoped(pb::CacheType::Metadata, "a:b", "", "p"),
    ];
    let others = [
        key(pb::CacheType::ObjectInfo, "1"),
        export_key("1", "json", json!(null), "", ""),
        export_key("1", "ifc", json!(null), "", ""),
        scoped(pb::CacheType::UserPreference, "metadata", "u1", ""),
        key(pb::CacheType::SystemConfig, "metadata:1"),
    ];
    put(&mut client, &metadata).await;
    put(&mut client, &others).await;

    // By key: exactly one, then nothing.
    assert_eq!(
        invalidate(&mut client, Target::Key(others[0].clone())).await,
        1
    );
    assert!(!present(&mut client, &others[0]).await);
    assert_eq!(
        invalidate(&mut client, Target::Key(others[0].clone())).await,
        0
    );
    put(&mut client, &others[..1]).await;

    // A pattern relative to the keyspace.
    assert_eq!(
        invalidate(&mut client, Target::Pattern("metadata:*".into())).await,
        3
    );
    assert_gone_and_kept(&mut client, &metadata, &others).await;

    // A pattern with the keyspace spelled out, and a character class.
    assert_eq!(
        invalidate(
            &mut client,
            Target::Pattern("cache:default:export_result:1:[i]fc:*".into())
        )
        .await,
        1
    );
    assert!(!present(&mut client, &others[2]).await);
    assert!(present(&mut client, &others[1]).await);
    // An escaped ':' in an id appears as %3A.
    assert_eq!(
        invalidate(&mut client, Target::Pattern("config:metadata%3A1".into())).await,
        1
    );
    assert!(!present(&mut client, &others[4]).await);
    // A pattern matching nothing.
    assert_eq!(
        invalidate(&mut client, Target::Pattern("nothing:*".into())).await,
        0
    );

    // All: the count is the number of live entries.
    put(&mut client, &metadata).await;
    let entries = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let metrics = client.metrics(pb::MetricsRequest {}).await.unwrap();
            metrics.into_inner().metrics.unwrap().total_entries
        }
    };
    // Redis' entry count is sampled in the background: the metric is checked in memory mode only.
    let memory_mode = server.config().backend == BackendMode::Memory;
    if memory_mode {
        assert_eq!(entries(&mut client).await, 6);
    }
    // 3 metadata + object info + json export + preference
    assert_eq!(invalidate(&mut client, Target::All(true)).await, 6);
    assert_gone_and_kept(&mut client, &[&metadata[..], &others[..]].concat(), &[]).await;
    if memory_mode {
        assert_eq!(entries(&mut client).await, 0);
    }
    assert_eq!(invalidate(&mut client, Target::All(true)).await, 0);
    server.shutdown().await;
}
