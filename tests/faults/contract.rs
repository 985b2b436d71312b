//! The invalidation contract against what Redis can do to the keys underneath: bookkeeping evicted or
//! deleted, keys of another application named in our indexes, keys of the wrong type under our prefix, an
//! outage during an invalidation, large values, and a Redis this service cannot use.

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::invalidate_request::Target;
use cache_server::config::{BackendMode, HumanDuration, RedisSettings};
use cache_tests::{
    RedisServer, ServerProcess, TestServer, get_req, key, metrics, put, redis_config, set_req,
};
use tonic::transport::Channel;

type Client = pb::cache_service_client::CacheServiceClient<Channel>;

/// The Redis key of a bookkeeping key (`~m:...`, `~g:...`, `~i:...`) under the default keyspace.
fn book(name: &str) -> String {
    format!("cache:default:{{0}}:{name}")
}

fn scoped(t: pb::CacheType, id: &str, user: &str, project: &str) -> pb::CacheKey {
    let mut k = key(t, id);
    k.user_id = user.into();
    k.project_id = project.into();
    k
}

async fn found(client: &mut Client, k: &pb::CacheKey) -> bool {
    client
        .get(get_req(k.clone()))
        .await
        .expect("get")
        .into_inner()
        .found
}

async fn invalidate(client: &mut Client, target: Target) -> Result<u64, tonic::Status> {
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(target),
        })
        .await
        .map(|r| r.into_inner().invalidated)
}

async fn redis_mode(redis: &RedisServer) -> (TestServer, Client) {
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let client = server.client().await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_bookkeeping_is_gone_is_a_miss_never_a_hit() {
    let redis = RedisServer::start().await;
    let (server, mut client) = redis_mode(&redis).await;
    let k = scoped(pb::CacheType::Metadata, "42", "7", "p");
    let rendered = "metadata:42:user:7:project:p";

    // Each generation the entry recorded, and its meta: evicted (deleted here), the entry is a miss.
    for gone in [
        book(&format!("~m:{rendered}")),
        book("~g:t:metadata"),
        book("~g:o:metadata:42"),
        book("~g:u:7"),
        book("~g:p:p"),
    ] {
        put(&mut client, &k).await;
        assert!(found(&mut client, &k).await);
        assert_eq!(redis.cli(["DEL", &gone]), "1", "{gone} exists");
        assert!(!found(&mut client, &k).await, "served with {gone} gone");
    }

    // An index evicted under a selector of two fields: the walk cannot find the entry, so the dimension's
    // generation ends instead.
    put(&mut client, &k).await;
    assert_eq!(redis.cli(["DEL", &book("~i:u:7")]), "1");
    invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::Metadata as i32,
            user_id: "7".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert!(
        !found(&mut client, &k).await,
        "served after its invalidation"
    );

    // An index evicted, then written again by another entry's Set: the entries it lost can no longer be
    // found through it, so they end with it (a miss), and the new one is found.
    let other = scoped(pb::CacheType::Metadata, "43", "7", "p");
    put(&mut client, &k).await;
    assert_eq!(redis.cli(["DEL", &book("~i:u:7")]), "1");
    put(&mut client, &other).await;
    assert!(
        !found(&mut client, &k).await,
        "an entry its index lost is a miss"
    );
    assert!(found(&mut client, &other).await);
    invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::Metadata as i32,
            user_id: "7".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert!(!found(&mut client, &other).await);
    assert!(
        metrics(&mut client).await.redis_invalidated_reads >= 6,
        "the misses are counted"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_keyspaces_entries_are_ever_deleted() {
    let redis = RedisServer::start().await;
    let (server, mut client) = redis_mode(&redis).await;
    let k = scoped(pb::CacheType::Metadata, "42", "7", "");
    put(&mut client, &k).await;
    // Another application's key, another keyspace's entry and our own bookkeeping, named in our indexes.
    let foreign = [
        "otherapp:precious".to_owned(),
        "cache:other:{0}:metadata:42:user:7".to_owned(),
        book("~g:t:metadata"),
    ];
    for name in &foreign {
        redis.cli(["SET", name, "keep me"]);
        for index in [
            book("~i:o:metadata:42"),
            book("~i:u:7"),
            book("~i:t:metadata"),
        ] {
            redis.cli(["ZADD", &index, "1", name]);
        }
    }
    let removed = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            object_id: "42".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(removed, 1);
    invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            user_id: "7".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    invalidate(&mut client, Target::All(true)).await.unwrap();
    for name in &foreign[..2] {
        assert_eq!(redis.cli(["GET", name]), "keep me", "{name} was deleted");
    }
    assert!(!found(&mut client, &k).await);
    assert!(metrics(&mut client).await.redis_foreign_members >= 6);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_wrong_type_are_repaired_and_fail_nothing_else() {
    let redis = RedisServer::start().await;
    // Bookkeeping keys another client overwrote with other types, before the server starts: the marker it
    // verifies Redis with, a type's generation, an index, a meta.
    redis.cli(["HSET", &book("~v"), "a", "b"]);
    redis.cli(["LPUSH", &book("~g:t:object"), "x"]);
    redis.cli(["LPUSH", &book("~i:t:metadata"), "x"]);
    redis.cli(["SADD", &book("~m:metadata:m-3"), "x"]);
    let (server, mut client) = redis_mode(&redis).await;
    // And once it serves: a user's generation and index.
    redis.cli(["LPUSH", &book("~g:u:9"), "x"]);
    redis.cli(["HSET", &book("~i:u:9"), "a", "b"]);
    let user_key = scoped(pb::CacheType::Metadata, "m-user", "9", "");
    put(&mut client, &user_key).await;
    assert!(found(&mut client, &user_key).await);
    // Concurrent Sets of both types share batches with the broken keys' Sets: none fails.
    let keys: Vec<_> = (0..40)
        .map(|i| {
            let t = if i % 2 == 0 {
                pb::CacheType::Metadata
            } else {
                pb::CacheType::ObjectInfo
            };
            key(t, &format!("m-{i}"))
        })
        .collect();
    let sets = keys.iter().map(|k| {
        let mut c = client.clone();
        let k = k.clone();
        async move { c.set(set_req(k, &b"v"[..])).await }
    });
    for answer in futures::future::join_all(sets).await {
        assert!(answer.expect("no Set fails").into_inner().stored);
    }
    for k in &keys {
        assert!(found(&mut client, k).await, "{k:?}");
    }
    let m = metrics(&mut client).await;
    assert!(m.redis_repaired_keys >= 3, "repairs counted: {m:?}");
    assert_eq!(m.redis_state, "up");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_cannot_reach_redis_is_not_acknowledged() {
    for mode in [BackendMode::Hybrid, BackendMode::Redis] {
        let redis = RedisServer::start().await;
        let settings = RedisSettings {
            command_timeout: Some(HumanDuration(Duration::from_millis(250))),
            ..redis.settings()
        };
        let server = TestServer::start(redis_config(mode, settings)).await;
        let mut client = server.client().await;
        let k = key(pb::CacheType::Metadata, "42");
        put(&mut client, &k).await;
        redis.pause();
        let started = Instant::now();
        let err = invalidate(&mut client, Target::Key(k.clone()))
            .await
            .expect_err("not acknowledged while Redis hangs");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{mode:?}: {err:?}");
        if mode == BackendMode::Hybrid {
            assert!(
                err.message().contains("did not reach the shared store"),
                "{err:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{mode:?}");
        redis.resume();
        // Retried once Redis is back, it is acknowledged and applied.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match invalidate(&mut client, Target::Key(k.clone())).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.code(), tonic::Code::Unavailable);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{mode:?}: not applied after Redis came back: {e:?}"),
            }
        }
        assert!(!found(&mut client, &k).await);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_say_when_redis_cannot_be_used() {
    // A replica (what a demoted primary becomes) and a Cluster node, each behind a plain redis:// URL.
    let primary = RedisServer::start().await;
    let replica = RedisServer::builder()
        .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
        .start()
        .await;
    let cluster_node = RedisServer::builder()
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .start()
        .await;
    for (redis, reason) in [(&replica, "not_primary"), (&cluster_node, "cluster_node")] {
        let mut config = redis_config(BackendMode::Hybrid, redis.settings());
        config.listen = "127.0.0.1:0".parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(cache_server::run(config, listener, std::future::pending()));
        let mut client = cache_tests::connect_client(addr).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            cache_tests::connect_channel(addr).await,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = metrics(&mut client).await;
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "cache.v1.CacheService".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if m.redis_state == "unusable"
                && status
                    == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
            {
                assert_eq!(m.redis_unusable_reason, reason);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{reason}: state {:?}, health {status}",
                m.redis_state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Writes never go to it: they are answered by the memory tier, and say so.
        let stored = client
            .set(set_req(key(pb::CacheType::Metadata, "x"), &b"v"[..]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stored.entry.unwrap().status,
            pb::EntryStatus::Fallback as i32
        );
        task.abort();
    }
    assert_eq!(
        replica.cli(["DBSIZE"]),
        "0",
        "nothing was written to the replica"
    );
}

/// A Set held by a partition and delivered after the writing replica answered it from memory must not land:
/// meanwhile another replica acknowledged an invalidation of its key. Batched, only-if-absent, large and
/// large only-if-absent Sets alike (each takes its own write path in the Redis tier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_delivered_after_its_deadline_never_lands() {
    use cache_tests::fault_proxy::{FaultProxy, Mode};
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap()).await;
    let cut = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "hybrid"),
            ("REDIS_URL", &proxy.url()),
            ("REDIS_COMMAND_TIMEOUT", "250ms"),
        ],
        &[],
    )
    .await;
    let other = TestServer::start(redis_config(BackendMode::Hybrid, redis.settings())).await;
    let (mut a, mut b) = (cut.client().await, other.client().await);
    let large = cache_tests::random_bytes(512 << 10);
    let kinds: Vec<(&str, pb::SetRequest)> = [
        ("batch", &b"late"[..], false),
        ("only-if-absent", &b"late"[..], true),
        ("large", &large[..], false),
        ("large only-if-absent", &large[..], true),
    ]
    .into_iter()
    .map(|(kind, value, only_if_absent)| {
        let mut req = set_req(key(pb::CacheType::Metadata, kind), value.to_vec());
        req.only_if_absent = only_if_absent;
        (kind, req)
    })
    .collect();
    // Redis is reachable through the proxy before the partition.
    put(&mut a, &key(pb::CacheType::Metadata, "warm")).await;
    assert!(found(&mut b, &key(pb::CacheType::Metadata, "warm")).await);

    proxy.set_mode(Mode::Blackhole);
    let sets = kinds.iter().map(|(kind, req)| {
        let mut a = a.clone();
        let req = req.clone();
        async move {
            let answer = a.set(req).await;
            (*kind, answer)
        }
    });
    for (kind, answer) in futures::future::join_all(sets).await {
        let answer = answer.unwrap_or_else(|e| panic!("{kind}: answered from memory, got {e}"));
        assert!(answer.into_inner().stored, "{kind}: stored in memory");
    }
    // Every write's deadline passes while the partition holds it; the other replica invalidates each key.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (kind, req) in &kinds {
        let k = req.key.clone().expect("key");
        invalidate(&mut b, Target::Key(k))
            .await
            .unwrap_or_else(|e| panic!("{kind}: the invalidation reaches Redis, got {e}"));
    }
    proxy.set_mode(Mode::Pass);
    // What the partition held arrives now. The cut-off replica deletes its uncertain keys only after it has
    // verified Redis and waited 200 ms: a late Set that landed would be read here first.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut reads = 0;
    while Instant::now() < until {
        for (kind, req) in &kinds {
            let k = req.key.clone().expect("key");
            assert!(
                !found(&mut b, &k).await,
                "{kind}: a Set delivered after its deadline landed after an acknowledged invalidation"
            );
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "late Sets: {reads} reads after the heal found nothing; voided Sets whose answer reached the cut-off replica: {}",
        metrics(&mut a).await.redis_late_sets
    );
}
