//! The invalidation promise under Redis eviction: with a small `maxmemory` and every `maxmemory-policy`,
//! entries and their bookkeeping are evicted while objects, users and the whole keyspace are invalidated;
//! no entry invalidated by an acknowledged call is ever served again.

use std::time::Duration;

use cache_proto::pb;
use cache_proto::pb::invalidate_request::Target;
use cache_server::config::BackendMode;
use cache_tests::{RedisServer, TestServer, export_key, get_req, key, redis_config, set_req};
use tonic::transport::Channel;

type Client = pb::cache_service_client::CacheServiceClient<Channel>;

const OBJECTS: usize = 50;
const POLICIES: [&str; 8] = [
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

/// The entries of object `i`: two exports (one scoped to a user), its metadata with and without a user.
fn object_keys(i: usize) -> Vec<pb::CacheKey> {
    let id = format!("obj-{i}");
    let user = format!("u{}", i % 5);
    let mut scoped = key(pb::CacheType::Metadata, &id);
    scoped.user_id = user.clone();
    vec![
        export_key(&id, "json", serde_json::Value::Null, "", ""),
        export_key(&id, "svg", serde_json::Value::Null, &user, ""),
        key(pb::CacheType::Metadata, &id),
        scoped,
    ]
}

async fn found(client: &mut Client, k: &pb::CacheKey) -> bool {
    client
        .get(get_req(k.clone()))
        .await
        .map(|r| r.into_inner().found)
        .unwrap_or(false)
}

async fn invalidate(client: &mut Client, target: Target) {
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(target),
        })
        .await
        .expect("an invalidation is acknowledged whatever Redis evicted");
}

/// Stores the objects, reads them often, fills Redis past `maxmemory`, then invalidates; answers
/// (evicted keys, object entries readable before the invalidations, entries served after their acknowledged
/// invalidation).
async fn run(policy: &str) -> (u64, usize, usize) {
    let redis = RedisServer::builder()
        .args(["--maxmemory", "3mb", "--maxmemory-policy", policy])
        .start()
        .await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let value = vec![b'v'; 1024];
    for i in 0..OBJECTS {
        for k in object_keys(i) {
            // Under noeviction a full Redis refuses writes: that is its promise, not a failure here.
            let _ = client.set(set_req(k, value.clone())).await;
        }
    }
    for _ in 0..5 {
        for i in 0..OBJECTS {
            for k in object_keys(i) {
                found(&mut client, &k).await;
            }
        }
    }
    // Filler: far more than maxmemory, so Redis evicts (or refuses), while the objects keep being read (so
    // that the LRU and LFU policies keep them and evict around them, bookkeeping included).
    let filler = vec![b'f'; 2048];
    for i in 0..3000 {
        let mut k = key(pb::CacheType::SystemConfig, &format!("filler-{i}"));
        k.project_id = format!("p{}", i % 7);
        let _ = client.set(set_req(k, filler.clone())).await;
        if i % 100 == 99 {
            // Read-through, as callers use a cache: a miss is computed again and stored.
            let mut n = 0;
            for i in 0..OBJECTS {
                for k in object_keys(i) {
                    if found(&mut client, &k).await {
                        n += 1;
                    } else {
                        let _ = client.set(set_req(k, value.clone())).await;
                    }
                }
            }
            if std::env::var_os("EVICTION_DEBUG").is_some() {
                eprintln!("{policy}: after {} fillers {n} readable", i + 1);
            }
        }
    }
    if std::env::var_os("EVICTION_DEBUG").is_some() {
        eprintln!(
            "{policy}: {}",
            redis.cli(["--scan", "--pattern", "*obj-1*"])
        );
        eprintln!("{policy}: {}", redis.cli(["--scan", "--pattern", "*~g:t*"]));
        eprintln!(
            "{policy}: {}",
            redis
                .cli(["INFO", "memory"])
                .lines()
                .filter(|l| l.starts_with("used_memory:"))
                .collect::<String>()
        );
    }
    // Entries still readable before the invalidations: what the invalidations must remove.
    let mut readable = 0;
    for i in 0..OBJECTS {
        for k in object_keys(i) {
            if found(&mut client, &k).await {
                readable += 1;
            }
        }
    }
    // Invalidate every other object by its id, users u0 and u1, then check nothing invalidated is served.
    let mut gone = Vec::new();
    for i in (0..OBJECTS).step_by(2) {
        invalidate(
            &mut client,
            Target::Selector(pb::Selector {
                object_id: format!("obj-{i}"),
                ..Default::default()
            }),
        )
        .await;
        gone.extend(object_keys(i));
    }
    for user in ["u0", "u1"] {
        invalidate(
            &mut client,
            Target::Selector(pb::Selector {
                user_id: user.into(),
                ..Default::default()
            }),
        )
        .await;
        for i in 0..OBJECTS {
            gone.extend(object_keys(i).into_iter().filter(|k| k.user_id == user));
        }
    }
    // A selector of two fields walks an index: the metadata of user u2 in no project.
    invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::Metadata as i32,
            user_id: "u2".into(),
            ..Default::default()
        }),
    )
    .await;
    for i in 0..OBJECTS {
        gone.extend(
            object_keys(i)
                .into_iter()
                .filter(|k| k.user_id == "u2" && k.r#type == pb::CacheType::Metadata as i32),
        );
    }
    let mut stale = 0;
    for k in &gone {
        if found(&mut client, k).await {
            stale += 1;
        }
    }
    // Then everything.
    invalidate(&mut client, Target::All(true)).await;
    for i in 0..OBJECTS {
        for k in object_keys(i) {
            if found(&mut client, &k).await {
                stale += 1;
            }
        }
    }
    for i in (0..3000).step_by(97) {
        let mut k = key(pb::CacheType::SystemConfig, &format!("filler-{i}"));
        k.project_id = format!("p{}", i % 7);
        if found(&mut client, &k).await {
            stale += 1;
        }
    }
    let info = redis.cli(["INFO", "stats"]);
    let evicted = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    server.shutdown().await;
    (evicted, readable, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_brings_back_an_invalidated_entry_under_any_policy() {
    let mut report = Vec::new();
    for policy in POLICIES {
        let (evicted, readable, stale) =
            tokio::time::timeout(Duration::from_secs(120), run(policy))
                .await
                .unwrap_or_else(|_| panic!("{policy}: the run did not finish"));
        report.push(format!("{policy}: {evicted} keys evicted, {stale} stale"));
        eprintln!(
            "eviction: {policy}: {evicted} keys evicted, {readable} of {} object entries readable before the invalidations, {stale} invalidated entries served",
            OBJECTS * 4
        );
        assert!(
            readable > 0,
            "{policy}: nothing was left to invalidate, the test proves nothing"
        );
        if policy.starts_with("allkeys") {
            assert!(evicted > 0, "{policy}: the test must make Redis evict");
        }
    }
    assert!(
        report.iter().all(|r| r.ends_with(" 0 stale")),
        "invalidated entries were served: {report:?}"
    );
}
