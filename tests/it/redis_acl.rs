//! Least privilege in Redis: the server works with the ACL user docs/security.md gives — its key prefix only,
//! the commands it uses only. The test reads the `ACL SETUSER` line from the docs, creates the user, and runs
//! every RPC (small and large values, GetMany, SetMany, every invalidation, Metrics) and a Redis restart through
//! it: every call succeeds, and Redis' `ACL LOG` records no denied command or key.

use std::time::Duration;

use cache_proto::pb;
use cache_proto::pb::invalidate_request::Target;
use cache_tests::{RedisServer, ServerProcess, get_req, key, set_req};

/// The `ACL SETUSER` line of docs/security.md, split into arguments, for `password` and the prefix `cache`.
fn documented_acl(password: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .expect("docs/security.md");
    let line = doc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ACL SETUSER"))
        .expect("docs/security.md gives an ACL SETUSER line");
    line.replace("<password>", password)
        .replace("<prefix>", "cache")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_enough() {
    let mut redis = RedisServer::start().await;
    let acl = documented_acl("least-privilege-pw");
    assert_eq!(redis.cli(&acl), "OK", "{acl:?}");
    redis.cli(["SET", "other:secret", "not the cache's"]);
    let url = format!(
        "redis://cache:least-privilege-pw@127.0.0.1:{}/0",
        redis.port()
    );
    let server =
        ServerProcess::start(&[("CACHE_BACKEND", "redis"), ("REDIS_URL", &url)], &[]).await;
    let mut client = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client
        .set(set_req(key(pb::CacheType::Metadata, "first"), &b"v"[..]))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let base = client.clone();
    let scenario = |round: usize| {
        let mut client = base.clone();
        async move {
            let small = key(pb::CacheType::Metadata, &format!("small-{round}"));
            let large = key(pb::CacheType::Metadata, &format!("large-{round}"));
            let mut scoped = key(pb::CacheType::ObjectInfo, "o");
            scoped.user_id = "u".into();
            let big = vec![7u8; 3 << 20];
            client
                .set(set_req(small.clone(), &b"hello"[..]))
                .await
                .unwrap();
            let mut req = set_req(large.clone(), big.clone());
            req.compression = pb::Compression::None as i32;
            client.set(req).await.unwrap();
            let mut nx = set_req(scoped.clone(), &b"x"[..]);
            nx.only_if_absent = true;
            client.set(nx).await.unwrap();
            assert_eq!(
                client
                    .get(get_req(large.clone()))
                    .await
                    .unwrap()
                    .into_inner()
                    .value,
                big
            );
            assert!(
                client
                    .get(get_req(small.clone()))
                    .await
                    .unwrap()
                    .into_inner()
                    .found
            );
            client
                .get_many(pb::GetManyRequest {
                    requests: vec![get_req(small.clone()), get_req(scoped.clone())],
                })
                .await
                .unwrap();
            client
                .set_many(pb::SetManyRequest {
                    requests: vec![set_req(key(pb::CacheType::SystemConfig, "c"), &b"c"[..])],
                })
                .await
                .unwrap();
            for target in [
                Target::Key(small),
                Target::Selector(pb::Selector {
                    object_id: "o".into(),
                    ..Default::default()
                }),
                Target::Selector(pb::Selector {
                    user_id: "u".into(),
                    r#type: pb::CacheType::ObjectInfo as i32,
                    ..Default::default()
                }),
                Target::Pattern("*large*".into()),
                Target::All(true),
            ] {
                client
                    .invalidate(pb::InvalidateRequest {
                        target: Some(target),
                    })
                    .await
                    .unwrap();
            }
            client.metrics(pb::MetricsRequest {}).await.unwrap();
        }
    };
    scenario(0).await;
    // A restart without persistence: the server verifies the new history (markers, generations) as the user.
    redis.restart().await;
    assert_eq!(redis.cli(&acl), "OK");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while client
        .set(set_req(key(pb::CacheType::Metadata, "again"), &b"v"[..]))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scenario(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let denied = redis.cli(["ACL", "LOG"]);
    assert!(
        denied.is_empty(),
        "Redis denied the server something:\n{denied}"
    );
    assert!(!server.log().contains("NOPERM"), "{}", server.log());
    // The user is really confined: another prefix's key is out of reach.
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--user",
            "cache",
            "--pass",
            "least-privilege-pw",
        ])
        .args(["--no-auth-warning", "GET", "other:secret"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("NOPERM"), "{answer}");
}
