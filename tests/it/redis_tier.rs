//! The Redis tier against real `redis-server` processes on free ports: every RPC in redis and hybrid modes,
//! native expiry, database selection, password / ACL / TLS connections, and invalidation that costs what it
//! removes whatever else lives in Redis.

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_server::config::{BackendMode, RedisSettings, Secret};
use cache_tests::{RedisServer, TestServer, export_key, get_req, key, redis_config, set_req};
use pb::invalidate_request::Target;

async fn invalidate(
    client: &mut pb::cache_service_client::CacheServiceClient<tonic::transport::Channel>,
    target: Target,
) -> u64 {
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(target),
        })
        .await
        .expect("invalidate")
        .into_inner()
        .invalidated
}

async fn every_rpc_round_trips(mode: BackendMode) {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(mode, redis.settings())).await;
    let mut client = server.client().await;

    let k = key(pb::CacheType::Metadata, "42");
    let stored = client
        .set(set_req(k.clone(), &b"{\"a\":1}"[..]))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.stored);
    let rendered = stored.entry.unwrap().key;
    assert_eq!(rendered, "cache:default:metadata:42");
    // The envelope lives in Redis under the service prefix and its bucket, with native expiry (metadata
    // default: 1 h).
    let stored_at = redis_key(&rendered);
    assert_eq!(redis.cli(["EXISTS", &stored_at]), "1");
    let ttl: i64 = redis.cli(["TTL", &stored_at]).parse().unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");

    for expected_count in 1..=2 {
        let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
        assert!(got.found);
        assert_eq!(&got.value[..], b"{\"a\":1}");
        let entry = got.entry.unwrap();
        assert_eq!(entry.tier, pb::Tier::Redis as i32);
        assert_eq!(entry.status, pb::EntryStatus::Valid as i32);
        assert_eq!(entry.access_count, expected_count);
    }

    // only_if_absent
    let mut again = set_req(k.clone(), &b"other"[..]);
    again.only_if_absent = true;
    assert!(!client.set(again).await.unwrap().into_inner().stored);

    // GetMany / SetMany
    let keys: Vec<_> = (0..5)
        .map(|i| key(pb::CacheType::ObjectInfo, &format!("o{i}")))
        .collect();
    let sets = pb::SetManyRequest {
        requests: keys
            .iter()
            .map(|k| set_req(k.clone(), format!("v-{}", k.id).into_bytes()))
            .collect(),
    };
    let answers = client.set_many(sets).await.unwrap().into_inner().responses;
    assert!(answers.iter().all(|a| a.stored));
    let mut gets: Vec<_> = keys.iter().cloned().map(get_req).collect();
    gets.push(get_req(key(pb::CacheType::ObjectInfo, "missing")));
    let answers = client
        .get_many(pb::GetManyRequest { requests: gets })
        .await
        .unwrap()
        .into_inner()
        .responses;
    for (k, a) in keys.iter().zip(&answers) {
        assert_eq!(a.value, format!("v-{}", k.id).as_bytes());
    }
    assert!(!answers.last().unwrap().found);

    // Invalidate: key, selector, pattern, all.
    assert_eq!(
        invalidate(
            &mut client,
            Target::Key(key(pb::CacheType::ObjectInfo, "o0"))
        )
        .await,
        1
    );
    assert_eq!(redis.cli(["EXISTS", "cache:default:{0}:object:o0"]), "0");
    let by_object = pb::Selector {
        object_id: "o1".into(),
        ..Default::default()
    };
    assert_eq!(
        invalidate(&mut client, Target::Selector(by_object)).await,
        1
    );
    assert_eq!(
        invalidate(&mut client, Target::Pattern("object:o[23]".into())).await,
        2
    );
    redis.cli(["SET", "other-app:key", "keep me"]);
    assert_eq!(
        invalidate(&mut client, Target::All(true)).await,
        2,
        "metadata:42 and object:o4 remain"
    );
    assert_eq!(
        redis.cli(["GET", "other-app:key"]),
        "keep me",
        "another application's keys survive `all`"
    );
    assert!(
        !client
            .get(get_req(k.clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    let metrics = client
        .metrics(pb::MetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let m = metrics.metrics.unwrap();
    assert!(m.redis_connected);
    assert_eq!(metrics.mode, mode_name(mode));
    assert_eq!(m.hit_count, 7);
    assert_eq!(m.miss_count, 2);
    assert_eq!(metrics.set_count, 6);
    assert_eq!(metrics.invalidated_count, 6);
    assert!(!metrics.fallback_active);
    server.shutdown().await;
}

fn mode_name(mode: BackendMode) -> &'static str {
    mode.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_in_redis_mode() {
    every_rpc_round_trips(BackendMode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_in_hybrid_mode() {
    every_rpc_round_trips(BackendMode::Hybrid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_in_redis() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let mut req = set_req(key(pb::CacheType::SystemConfig, "flags"), &b"on"[..]);
    req.ttl_seconds = 1;
    client.set(req).await.unwrap();
    let pttl: i64 = redis
        .cli(["PTTL", "cache:default:{0}:config:flags"])
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&pttl), "pttl {pttl}");
    assert!(
        client
            .get(get_req(key(pb::CacheType::SystemConfig, "flags")))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        !client
            .get(get_req(key(pb::CacheType::SystemConfig, "flags")))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    assert_eq!(
        redis.cli(["EXISTS", "cache:default:{0}:config:flags"]),
        "0",
        "Redis expired it natively"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_the_configured_database() {
    let redis = RedisServer::start().await;
    let settings = RedisSettings {
        host: Some("127.0.0.1".into()),
        port: Some(redis.port()),
        db: Some(3),
        ..Default::default()
    };
    let server = TestServer::start(redis_config(BackendMode::Redis, settings)).await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "db"), &b"x"[..]))
        .await
        .unwrap();
    assert_eq!(
        redis.cli(["-n", "3", "EXISTS", "cache:default:{0}:metadata:db"]),
        "1"
    );
    assert_eq!(
        redis.cli(["-n", "0", "EXISTS", "cache:default:{0}:metadata:db"]),
        "0"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_password_or_an_acl_user() {
    let redis = RedisServer::builder()
        .args(["--requirepass", "pw_SENTINEL_default"])
        .args([
            "--user",
            "cacheapp",
            "on",
            ">pw_SENTINEL_acl",
            "~cache:*",
            "+@all",
            "-@dangerous",
            "+info",
        ])
        .start()
        .await;
    // The original design's variables: host / port / password.
    let by_password = RedisSettings {
        host: Some("127.0.0.1".into()),
        port: Some(redis.port()),
        password: Some(Secret::new("pw_SENTINEL_default")),
        ..Default::default()
    };
    let server = TestServer::start(redis_config(BackendMode::Redis, by_password)).await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "pw"), &b"x"[..]))
        .await
        .unwrap();
    assert!(
        client
            .get(get_req(key(pb::CacheType::Metadata, "pw")))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    server.shutdown().await;

    // An ACL user restricted to our prefix, in the URL.
    let acl_url = format!(
        "redis://cacheapp:pw_SENTINEL_acl@127.0.0.1:{}/0",
        redis.port()
    );
    let server = TestServer::start(redis_config(
        BackendMode::Redis,
        RedisSettings {
            url: Some(Secret::new(acl_url)),
            ..Default::default()
        },
    ))
    .await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "acl"), &b"y"[..]))
        .await
        .unwrap();
    let got = client
        .get(get_req(key(pb::CacheType::Metadata, "acl")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.value[..], b"y");
    assert_eq!(got.entry.unwrap().tier, pb::Tier::Redis as i32);
    // A large value (MULTI, SET, EVAL, EXEC) under the same ACL.
    let large = incompressible(100 << 10, 5);
    let k = key(pb::CacheType::Metadata, "acl-large");
    client.set(set_req(k.clone(), large.clone())).await.unwrap();
    let got = client.get(get_req(k)).await.unwrap().into_inner();
    assert!(got.value == large);
    server.shutdown().await;

    // A wrong password: hybrid mode keeps serving from memory and says Redis is not connected.
    let wrong = RedisSettings {
        url: Some(Secret::new(format!(
            "redis://cacheapp:wrong@127.0.0.1:{}/0",
            redis.port()
        ))),
        ..Default::default()
    };
    let server = TestServer::start(redis_config(BackendMode::Hybrid, wrong)).await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "fb"), &b"z"[..]))
        .await
        .unwrap();
    let got = client
        .get(get_req(key(pb::CacheType::Metadata, "fb")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entry.unwrap().tier, pb::Tier::Memory as i32);
    let metrics = client
        .metrics(pb::MetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!metrics.metrics.unwrap().redis_connected);
    assert!(metrics.fallback_active);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_to_a_self_signed_redis() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (ca, ca_key, cert, keyfile, csr, ext) = (
        path("ca.pem"),
        path("ca.key"),
        path("cert.pem"),
        path("key.pem"),
        path("server.csr"),
        path("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed for the TLS test: apt-get install openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    // A self-signed CA and a server certificate it signs, as a production Redis would have.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &keyfile,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let tls_port = cache_tests::free_port();
    let redis = RedisServer::builder()
        .args(["--tls-port".to_owned(), tls_port.to_string()])
        .args([
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &keyfile,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ])
        .start()
        .await;
    let settings = RedisSettings {
        url: Some(Secret::new(format!("rediss://localhost:{tls_port}/0"))),
        tls_ca_file: Some(ca.clone().into()),
        ..Default::default()
    };
    let server = TestServer::start(redis_config(BackendMode::Redis, settings)).await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "tls"), &b"secret"[..]))
        .await
        .unwrap();
    let got = client
        .get(get_req(key(pb::CacheType::Metadata, "tls")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.value[..], b"secret");
    assert_eq!(got.entry.unwrap().tier, pb::Tier::Redis as i32);
    // The entry really went through the TLS listener into the same Redis.
    assert_eq!(redis.cli(["EXISTS", "cache:default:{0}:metadata:tls"]), "1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_outlive_their_members_and_shed_expired_ones() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let index = &index_key("t:config");
    let set = |id: String, ttl_seconds: u32| {
        let mut req = set_req(key(pb::CacheType::SystemConfig, &id), &b"v"[..]);
        req.ttl_seconds = ttl_seconds;
        req
    };
    // A long-lived member first, then short-lived ones: the index must outlive the longest member.
    client.set(set("long".into(), 600)).await.unwrap();
    for i in 0..20 {
        client.set(set(format!("short-{i}"), 1)).await.unwrap();
    }
    let pttl: i64 = redis.cli(["PTTL", index]).parse().unwrap();
    assert!(
        pttl >= 600_000,
        "the index outlives its longest member: pttl {pttl}"
    );
    assert_eq!(redis.cli(["ZCARD", index]), "21");

    // Once the short-lived entries expired, later writes prune them (one write in PRUNE_EVERY prunes).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let prune_every = cache_server::PRUNE_EVERY as usize;
    for i in 0..prune_every {
        client.set(set(format!("later-{i}"), 600)).await.unwrap();
    }
    let members: u64 = redis.cli(["ZCARD", index]).parse().unwrap();
    assert_eq!(
        members,
        1 + prune_every as u64,
        "expired members pruned, live ones kept"
    );
    // Invalidation by type still finds every live entry through the pruned index.
    let removed = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::SystemConfig as i32,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(removed, 1 + prune_every as u64);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_batched_together_share_an_index_and_it_outlives_the_longest() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let client = server.client().await;
    let index = &index_key("t:object");
    // One batch writes each distinct index once (one ZADD of all its members, one TTL check): the shared
    // type index must still get every member, scored by its own expiry, and a TTL past the longest one,
    // wherever in the batch that Set sits. Some ids are written twice: the last write's score stays.
    let evalshas_before = command_calls(&redis, "evalsha");
    let sets = (0..120).map(|i| {
        let mut client = client.clone();
        // Scoped to a project, so that each is in its object index too.
        let mut k = key(pb::CacheType::ObjectInfo, &format!("o-{}", i % 100));
        k.project_id = "p1".into();
        let mut req = set_req(k, &b"v"[..]);
        req.ttl_seconds = if i == 57 { 900 } else { 60 + (i % 5) };
        tokio::spawn(async move { client.set(req).await })
    });
    for set in futures::future::join_all(sets).await {
        assert!(set.unwrap().expect("Set").into_inner().stored);
    }
    let script_calls = command_calls(&redis, "evalsha") - evalshas_before;
    assert!(
        script_calls < 120,
        "concurrent Sets share script calls: {script_calls} calls for 120 Sets"
    );
    // None is only-if-absent: each batch is one transaction (its values in plain SETs, never Lua strings).
    let (multis, execs) = (
        command_calls(&redis, "multi"),
        command_calls(&redis, "exec"),
    );
    assert!(
        execs > 0 && multis == execs && execs <= script_calls,
        "batches as transactions: {multis} MULTIs, {execs} EXECs, {script_calls} script calls"
    );
    assert_eq!(redis.cli(["ZCARD", index]), "100");
    let pttl: i64 = redis.cli(["PTTL", index]).parse().unwrap();
    assert!(
        pttl >= 900_000,
        "the index outlives its longest member: pttl {pttl}"
    );
    for id in 0..100 {
        let entry = redis_key(&format!("cache:default:object:o-{id}:project:p1"));
        let score = redis.cli(["ZSCORE", index, &entry]);
        let entry_pttl: i64 = redis.cli(["PTTL", &entry]).parse().unwrap();
        let expires = redis_now_ms(&redis) + entry_pttl;
        // Scores are expiries rounded up to 1/16 of the TTL (60-64 s here: a grain of ~4 s; the one of
        // 900 s: ~56 s), never below the expiry (a member pruned before its entry expired would hide it from
        // invalidation). 50 ms of slack for the clock ticking between the reads above.
        let grain = (entry_pttl.max(60_000) / 16 + 1).min(60_000);
        let lag = score.parse::<i64>().unwrap() - expires;
        assert!(
            (-50..=grain + 1_000).contains(&lag),
            "{entry}: index score {score} vs expiry {expires} (grain {grain} ms)"
        );
        // Its own object index got it too.
        let own = index_key(&format!("o:object:o-{id}"));
        assert_eq!(redis.cli(["ZSCORE", &own, &entry]), score);
        let own_pttl: i64 = redis.cli(["PTTL", &own]).parse().unwrap();
        assert!(own_pttl >= entry_pttl, "{own} outlives {entry}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_their_id_names_skip_the_id_index_and_are_still_invalidated_by_id() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let scoped = |t: pb::CacheType, id: &str, user: &str| {
        let mut k = key(t, id);
        k.user_id = user.into();
        k
    };
    let entries = [
        key(pb::CacheType::Metadata, "m1"),
        scoped(pb::CacheType::Metadata, "m1", "u1"),
        key(pb::CacheType::ObjectInfo, "m1"),
        key(pb::CacheType::SystemConfig, "c1"),
        scoped(pb::CacheType::SystemConfig, "c1", "u1"),
        key(pb::CacheType::ObjectInfo, "o1"),
    ];
    for k in &entries {
        let stored = client.set(set_req(k.clone(), &b"v"[..])).await.unwrap();
        assert!(stored.into_inner().stored);
    }
    // Only the scoped entries are in the id indexes; every entry is in its type index.
    assert_eq!(
        redis.cli(["ZRANGE", &index_key("o:metadata:m1"), "0", "-1"]),
        redis_key("cache:default:metadata:m1:user:u1")
    );
    assert_eq!(
        redis.cli(["ZRANGE", &index_key("o:config:c1"), "0", "-1"]),
        redis_key("cache:default:config:c1:user:u1")
    );
    assert_eq!(redis.cli(["EXISTS", &index_key("o:object:o1")]), "0");
    assert_eq!(redis.cli(["ZCARD", &index_key("t:metadata")]), "2");

    let by = |t: Option<pb::CacheType>, id: &str, user: &str| {
        Target::Selector(pb::Selector {
            r#type: t.map_or(0, |t| t as i32),
            object_id: id.into(),
            user_id: user.into(),
            ..Default::default()
        })
    };
    let config = Some(pb::CacheType::SystemConfig);
    // Scoped to a user: the unscoped entry of the same id stays.
    assert_eq!(invalidate(&mut client, by(config, "c1", "u1")).await, 1);
    let kept = client.get(get_req(entries[3].clone())).await.unwrap();
    assert!(kept.into_inner().found);
    // By type and id: the unscoped entry too.
    assert_eq!(invalidate(&mut client, by(config, "c1", "")).await, 1);
    // By id alone: every object type's entries of that id, scoped or not.
    assert_eq!(invalidate(&mut client, by(None, "m1", "")).await, 3);
    let object = Some(pb::CacheType::ObjectInfo);
    assert_eq!(invalidate(&mut client, by(object, "o1", "")).await, 1);
    for k in &entries {
        let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
        assert!(!got.found, "{k:?} was invalidated");
    }
    // Nothing left to remove.
    assert_eq!(invalidate(&mut client, by(None, "m1", "")).await, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_connection_that_redis_closed_is_replaced_without_failing_a_set() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let first = key(pb::CacheType::Metadata, "before-kill");
    assert!(
        client
            .set(set_req(first, &b"v"[..]))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    // The Set batches' own connection is the client whose last command was EXEC. Redis closes it (as a
    // restart or its idle `timeout` would); fred's pool is left alone, so the tier stays up.
    let clients = redis.cli(["CLIENT", "LIST"]);
    let id = clients
        .lines()
        .find(|l| l.contains(" cmd=exec "))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no client ran EXEC:\n{clients}"))
        .to_owned();
    assert_eq!(redis.cli(["CLIENT", "KILL", "ID", &id]), "1");
    for i in 0..3 {
        let k = key(pb::CacheType::Metadata, &format!("after-kill-{i}"));
        let stored = client
            .set(set_req(k, &b"w"[..]))
            .await
            .expect("a Set whose connection Redis had closed goes on a fresh one")
            .into_inner()
            .stored;
        assert!(stored);
        let entry = redis_key(&format!("cache:default:metadata:after-kill-{i}"));
        let pttl: i64 = redis.cli(["PTTL", &entry]).parse().unwrap();
        assert!(pttl > 0, "{entry}: pttl {pttl}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let client = server.client().await;
    // Scripts go out as pipelined EVALSHA: after SCRIPT FLUSH every call queued on a connection answers
    // NOSCRIPT, and each must load the script and run once more, not fail.
    for round in 0..2 {
        assert_eq!(redis.cli(["SCRIPT", "FLUSH"]), "OK");
        let sets = (0..40).map(|i| {
            let mut client = client.clone();
            let k = key(pb::CacheType::Metadata, &format!("flushed-{round}-{i}"));
            tokio::spawn(async move { client.set(set_req(k, &b"v"[..])).await })
        });
        for set in futures::future::join_all(sets).await {
            let stored = set.unwrap().expect("Set after SCRIPT FLUSH");
            assert!(stored.into_inner().stored);
        }
    }
    // Those Sets went as transactions whose script Redis no longer had: their MSET ran, and the
    // bookkeeping ran again through fred, so every entry has its TTL (and, below, its index membership).
    for round in 0..2 {
        for i in 0..40 {
            let entry = redis_key(&format!("cache:default:metadata:flushed-{round}-{i}"));
            let pttl: i64 = redis.cli(["PTTL", &entry]).parse().unwrap();
            assert!(pttl > 0, "{entry} has no TTL: {pttl}");
        }
    }
    let mut client = client;
    let k = key(pb::CacheType::Metadata, "flushed-1-7");
    let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
    assert!(got.found);
    // The read-counter flush and both removal scripts load again too.
    assert_eq!(redis.cli(["SCRIPT", "FLUSH"]), "OK");
    let meta = meta_key("cache:default:metadata:flushed-1-7");
    let deadline = Instant::now() + Duration::from_secs(5);
    wait_for_reads(&redis, &meta, 1, deadline, "read counter never flushed").await;
    assert_eq!(redis.cli(["SCRIPT", "FLUSH"]), "OK");
    let removed = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::Metadata as i32,
            object_id: "flushed-0-3".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(removed, 1, "one entry by type and object");
    assert_eq!(redis.cli(["SCRIPT", "FLUSH"]), "OK");
    let removed = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            r#type: pb::CacheType::Metadata as i32,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(removed, 79, "the rest by type");
    assert!(!client.get(get_req(k)).await.unwrap().into_inner().found);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_share_mgets_and_each_gets_its_own_answer() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Hybrid, redis.settings())).await;
    let mut client = server.client().await;
    let keys = 100;
    for i in 0..keys {
        let k = key(pb::CacheType::ObjectInfo, &format!("batched-{i}"));
        let value = format!("value of {i}").into_bytes();
        client.set(set_req(k, value)).await.unwrap();
    }
    let mgets_before = command_calls(&redis, "mget");
    // Four reads of each key, all at once: batches mix first reads (entry + stored count) with later ones.
    let reads = (0..keys * 4).map(|n| {
        let mut client = client.clone();
        let i = n % keys;
        tokio::spawn(async move {
            let k = key(pb::CacheType::ObjectInfo, &format!("batched-{i}"));
            (i, client.get(get_req(k)).await)
        })
    });
    let mut counts = vec![Vec::new(); keys];
    for read in futures::future::join_all(reads).await {
        let (i, got) = read.unwrap();
        let got = got.expect("get").into_inner();
        assert!(got.found, "key {i} found");
        assert_eq!(got.value, format!("value of {i}").as_bytes(), "key {i}");
        counts[i].push(got.entry.unwrap().access_count);
    }
    for (i, mut seen) in counts.into_iter().enumerate() {
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 3, 4], "read counts of key {i}");
    }
    let mgets = command_calls(&redis, "mget") - mgets_before;
    // Measured: 16 to 19 MGETs; the bound leaves room for a slow machine.
    assert!(
        mgets <= keys as u64,
        "{} concurrent Gets went out as {mgets} MGETs",
        keys * 4
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_share_script_calls_and_each_gets_its_own_outcome() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Hybrid, redis.settings())).await;
    let mut client = server.client().await;
    // Keys that exist already: an only-if-absent Set of them must not store.
    for i in 0..20 {
        let k = key(pb::CacheType::Metadata, &format!("taken-{i}"));
        client.set(set_req(k, &b"first"[..])).await.unwrap();
    }
    let evalshas_before = command_calls(&redis, "evalsha");
    let execs_before = command_calls(&redis, "exec");
    // 200 Sets at once: exports with user and project (four indexes), metadata (two), only-if-absent on
    // taken and on free keys, and large values (written alone, beside the batches).
    let sets = (0..200usize).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let (req, expect_stored) = match i % 5 {
                0 | 1 => {
                    let user = if i % 2 == 0 { "even" } else { "odd" };
                    let k = export_key(&format!("o{i}"), "json", serde_json::json!({}), user, "p");
                    (set_req(k, format!("export {i}").into_bytes()), true)
                }
                2 => {
                    let k = key(pb::CacheType::Metadata, &format!("taken-{}", i % 20));
                    let mut req = set_req(k, &b"second"[..]);
                    req.only_if_absent = true;
                    (req, false)
                }
                3 => {
                    let k = key(pb::CacheType::Metadata, &format!("free-{i}"));
                    let mut req = set_req(k, format!("free {i}").into_bytes());
                    req.only_if_absent = true;
                    (req, true)
                }
                _ => {
                    let k = key(pb::CacheType::ObjectInfo, &format!("large-{i}"));
                    (set_req(k, vec![i as u8; 200 << 10]), true)
                }
            };
            let k = req.key.clone().unwrap();
            let stored = client.set(req).await.expect("set").into_inner().stored;
            (i, k, stored, expect_stored)
        })
    });
    for set in futures::future::join_all(sets).await {
        let (i, k, stored, expect_stored) = set.unwrap();
        assert_eq!(stored, expect_stored, "Set {i}");
        let got = client.get(get_req(k)).await.unwrap().into_inner();
        let expected = match i % 5 {
            0 | 1 => format!("export {i}").into_bytes(),
            2 => b"first".to_vec(),
            3 => format!("free {i}").into_bytes(),
            _ => vec![i as u8; 200 << 10],
        };
        assert!(got.value == expected, "value of Set {i}");
    }
    let evalshas = command_calls(&redis, "evalsha") - evalshas_before;
    let execs = command_calls(&redis, "exec") - execs_before;
    // The 80 only-if-absent Sets answer each on its own (one `set_nx.lua` call each: SET NX must answer per
    // Set, and an invalidated entry counts as absent); the other 120 share batches, each batch one
    // transaction with one `set.lua` call (measured: about 9).
    let batches = evalshas - 80;
    assert!(
        batches <= 40,
        "120 concurrent Sets went out as {batches} batches"
    );
    assert_eq!(execs, batches, "one transaction per batch");
    // Every batched Set was indexed under its own user.
    let even = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            user_id: "even".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(even, 40, "exports of user even");
    let rest = invalidate(&mut client, Target::All(true)).await;
    assert_eq!(
        rest,
        40 + 20 + 40 + 40,
        "odd exports, taken, free and large entries"
    );
    server.shutdown().await;
}

/// `len` bytes no compressor shrinks (so the stored envelope is as large as the value).
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_written_atomically_without_entering_lua() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Hybrid, redis.settings())).await;
    let mut client = server.client().await;
    let k = export_key("big", "ifc", serde_json::json!({}), "u1", "p1");
    let calls = |redis: &RedisServer| {
        ["exec", "eval", "evalsha"].map(|command| command_calls(redis, command))
    };
    // Redis' Lua hashes every byte it is handed: a large value goes in a plain SET, inside MULTI/EXEC
    // beside the keys-only index script (EVAL), never through the batch script (EVALSHA).
    let before = calls(&redis);
    let mut req = set_req(k.clone(), incompressible(300 << 10, 1));
    req.ttl_seconds = 600;
    let set = client.set(req).await.unwrap().into_inner();
    assert!(set.stored);
    let [exec, eval, evalsha] = calls(&redis);
    assert_eq!(
        [exec - before[0], eval - before[1], evalsha - before[2]],
        [1, 1, 0],
        "EXEC, EVAL and EVALSHA calls for one large Set"
    );
    let rendered = set.entry.unwrap().key;
    let entry = redis_key(&rendered);
    let pttl: i64 = redis.cli(["PTTL", &entry]).parse().unwrap();
    assert!((590_000..=600_000).contains(&pttl), "entry pttl {pttl}");
    // In each of its indexes (type, object, user, project), scored at its expiry rounded up to the grain
    // (600 s / 16 = 37.5 s), each index outliving it.
    let indexes = ["t:export_result", "o:export_result:big", "u:u1", "p:p1"].map(index_key);
    let indexes = indexes.each_ref().map(String::as_str);
    let now_ms = redis_now_ms(&redis);
    let score = |index: &str| redis.cli(["ZSCORE", index, &entry]);
    let first_score = score(indexes[0]);
    let lag = first_score.parse::<i64>().unwrap() - (now_ms + pttl);
    assert!(
        (-50..=38_500).contains(&lag),
        "score {first_score}, lag {lag} ms"
    );
    for index in indexes {
        assert_eq!(score(index), first_score, "{index}");
        let index_pttl: i64 = redis.cli(["PTTL", index]).parse().unwrap();
        assert!(index_pttl >= pttl, "{index} outlives the entry");
    }
    // Only-if-absent with a shorter TTL: not stored, the value kept, and no index score lowered (the
    // kept entry lives longer than this Set would have).
    let mut req = set_req(k.clone(), incompressible(200 << 10, 2));
    req.ttl_seconds = 60;
    req.only_if_absent = true;
    assert!(!client.set(req).await.unwrap().into_inner().stored);
    for index in indexes {
        assert_eq!(score(index), first_score, "{index} after only-if-absent");
    }
    let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
    assert!(
        got.value == incompressible(300 << 10, 1),
        "the first value stays"
    );
    // Read counts reach Redis; an overwrite starts them over, as with small values.
    let meta = meta_key(&rendered);
    let deadline = Instant::now() + Duration::from_secs(5);
    wait_for_reads(&redis, &meta, 1, deadline, "the read never reached Redis").await;
    let mut req = set_req(k.clone(), incompressible(100 << 10, 3));
    req.ttl_seconds = 600;
    assert!(client.set(req).await.unwrap().into_inner().stored);
    assert_eq!(meta_reads(&redis, &meta), Some(0));
    // And invalidation finds it through any of its indexes.
    let removed = invalidate(
        &mut client,
        Target::Selector(pb::Selector {
            user_id: "u1".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(removed, 1);
    assert_eq!(redis.cli(["EXISTS", &entry]), "0");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_refuses_each_set_clearly_and_recovers() {
    let redis = RedisServer::builder()
        .args(["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
        .start()
        .await;
    let server = TestServer::start(redis_config(BackendMode::Hybrid, redis.settings())).await;
    let mut client = server.client().await;
    let k = |i: usize| key(pb::CacheType::Metadata, &format!("oom-{i}"));
    client.set(set_req(k(0), &b"before"[..])).await.unwrap();
    // Another application fills the database past maxmemory.
    assert_eq!(redis.cli(["SETRANGE", "junk", "6000000", "x"]), "6000001");
    // Concurrent Sets share script calls; each is refused on its own, with Redis' reason, and nothing
    // is written to the memory tier instead (Redis is up: this is not an outage).
    let sets = (1..=10).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move { client.set(set_req(k(i), &b"v"[..])).await })
    });
    for set in futures::future::join_all(sets).await {
        let status = set
            .unwrap()
            .expect_err("refused while Redis is out of memory");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("OOM"), "{status:?}");
    }
    assert_eq!(
        redis.cli(["EXISTS", "cache:default:{0}:metadata:oom-1"]),
        "0"
    );
    // A large value (its own transaction) is refused the same way, and leaves nothing behind.
    let status = client
        .set(set_req(k(11), incompressible(100 << 10, 4)))
        .await
        .expect_err("a large Set refused while Redis is out of memory");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("OOM"), "{status:?}");
    assert_eq!(
        redis.cli(["EXISTS", "cache:default:{0}:metadata:oom-11"]),
        "0"
    );
    // Reads still work, and writes do again once memory is freed.
    let got = client.get(get_req(k(0))).await.unwrap().into_inner();
    assert_eq!(&got.value[..], b"before");
    assert_eq!(redis.cli(["DEL", "junk"]), "1");
    assert!(
        client
            .set(set_req(k(1), &b"v"[..]))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    server.shutdown().await;
}

/// The Redis key of the entry `rendered` names (one bucket: the default).
fn redis_key(rendered: &str) -> String {
    let rest = rendered
        .strip_prefix("cache:default:")
        .expect("the default keyspace");
    format!("cache:default:{{0}}:{rest}")
}

/// The Redis key of the meta (generation snapshot, read count, last read) of the entry `rendered` names.
fn meta_key(rendered: &str) -> String {
    let rest = rendered
        .strip_prefix("cache:default:")
        .expect("the default keyspace");
    format!("cache:default:{{0}}:~m:{rest}")
}

/// The Redis key of a dimension's index (`t:<type>`, `o:<type>:<id>`, `u:<user>`, `p:<project>`).
fn index_key(dimension: &str) -> String {
    format!("cache:default:{{0}}:~i:{dimension}")
}

/// The read count a meta records (`<tokens>|<count>|<last read ms>`), if the meta exists.
fn meta_reads(redis: &RedisServer, meta: &str) -> Option<u64> {
    let value = redis.cli(["GET", meta]);
    let count = value.split('|').nth(1)?;
    Some(count.parse().expect("a meta's read count"))
}

/// Waits until the meta `meta` records `expected` reads, failing with `what` after `deadline`.
async fn wait_for_reads(
    redis: &RedisServer,
    meta: &str,
    expected: u64,
    deadline: Instant,
    what: &str,
) {
    while meta_reads(redis, meta) != Some(expected) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_counts_reach_redis_and_reset_on_overwrite() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::ObjectInfo, "counted");
    client.set(set_req(k.clone(), &b"v"[..])).await.unwrap();
    for expected in 1..=3u64 {
        let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
        assert_eq!(got.entry.unwrap().access_count, expected);
    }
    // The server adds counted reads to Redis about once a second, with the entry's TTL.
    let meta = &meta_key("cache:default:object:counted");
    let deadline = Instant::now() + Duration::from_secs(5);
    wait_for_reads(&redis, meta, 3, deadline, "reads never reached Redis").await;
    let ttl: i64 = redis.cli(["TTL", meta]).parse().unwrap();
    assert!(ttl > 0, "the counter expires with its entry: ttl {ttl}");
    // A second server sees the flushed count.
    let other = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let mut other_client = other.client().await;
    let got = other_client
        .get(get_req(k.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entry.unwrap().access_count, 4);
    wait_for_reads(
        &redis,
        meta,
        4,
        deadline,
        "the second server's read never reached Redis",
    )
    .await;
    // Overwriting starts a new entry: its count starts over, at once on the server that wrote it...
    client.set(set_req(k.clone(), &b"w"[..])).await.unwrap();
    assert_eq!(meta_reads(&redis, meta), Some(0));
    let got = client.get(get_req(k.clone())).await.unwrap().into_inner();
    assert_eq!(got.entry.unwrap().access_count, 1);
    // ...and within about a flush interval on the other one (it counted the old value's reads until then).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = other_client
            .get(get_req(k.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.value[..], b"w");
        let count = got.entry.unwrap().access_count;
        let flushed = meta_reads(&redis, meta).unwrap_or(0);
        if count <= flushed + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other server kept the old count: {count}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    other.shutdown().await;
    server.shutdown().await;
}

/// Stores 10 entries of one object (metadata, object info, 8 export results over formats, options, scopes).
async fn store_object(
    client: &mut pb::cache_service_client::CacheServiceClient<tonic::transport::Channel>,
    id: &str,
) {
    client
        .set(set_req(key(pb::CacheType::Metadata, id), &b"m"[..]))
        .await
        .unwrap();
    client
        .set(set_req(key(pb::CacheType::ObjectInfo, id), &b"i"[..]))
        .await
        .unwrap();
    for (n, format) in ["json", "ifc", "svg", "json"].iter().enumerate() {
        for user in ["u1", "u2"] {
            let k = export_key(id, format, serde_json::json!({ "n": n }), user, "p1");
            client.set(set_req(k, &b"e"[..])).await.unwrap();
        }
    }
}

/// Redis' own clock (`TIME`), in unix ms: what index scores are computed from.
fn redis_now_ms(redis: &RedisServer) -> i64 {
    let time = redis.cli(["TIME"]);
    let mut parts = time.lines();
    let secs: i64 = parts.next().unwrap().trim().parse().unwrap();
    let micros: i64 = parts.next().unwrap().trim().parse().unwrap();
    secs * 1000 + micros / 1000
}

fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Median time to invalidate one object with 10 entries, over `rounds` rounds.
async fn median_object_invalidation(
    redis: &RedisServer,
    server: &TestServer,
    rounds: usize,
) -> Duration {
    let mut client = server.client().await;
    let mut times = Vec::new();
    for round in 0..rounds {
        let id = format!("obj-{round}");
        store_object(&mut client, &id).await;
        let started = Instant::now();
        let removed = invalidate(
            &mut client,
            Target::Selector(pb::Selector {
                object_id: id.clone(),
                ..Default::default()
            }),
        )
        .await;
        times.push(started.elapsed());
        assert_eq!(removed, 10);
        assert_eq!(
            redis.cli([
                "EXISTS",
                &redis_key(&format!("cache:default:metadata:{id}"))
            ]),
            "0"
        );
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_invalidation_cost_does_not_grow_with_unrelated_keys() {
    let redis = RedisServer::builder()
        .args(["--enable-debug-command", "yes"])
        .start()
        .await;
    let mut server = TestServer::start(redis_config(BackendMode::Redis, redis.settings())).await;
    let rounds = 15;

    // DEBUG POPULATE blocks Redis; a server command caught behind it times out and marks Redis down
    // (correctly), so wait for the server to verify Redis again before measuring.
    redis.cli(["DEBUG", "POPULATE", "1000", "unrelated"]);
    server.wait_ready().await;
    let small = median_object_invalidation(&redis, &server, rounds).await;

    redis.cli(["DEBUG", "POPULATE", "1000000", "unrelated"]);
    server.wait_ready().await;
    let sample_before = redis.cli(["GET", "unrelated:123456"]);
    let scans_before = command_calls(&redis, "scan") + command_calls(&redis, "keys");
    let large = median_object_invalidation(&redis, &server, rounds).await;
    let scans_after = command_calls(&redis, "scan") + command_calls(&redis, "keys");

    eprintln!(
        "object invalidation (10 entries), median of {rounds}: {small:?} with 1,000 unrelated keys, {large:?} with 1,000,000"
    );
    assert_eq!(
        scans_after, scans_before,
        "no SCAN/KEYS on the invalidation path"
    );
    let unrelated = redis.cli(["EVAL", "return #redis.call('KEYS', 'unrelated:*')", "0"]);
    assert_eq!(unrelated, "1000000", "every unrelated key survives");
    assert_eq!(redis.cli(["GET", "unrelated:123456"]), sample_before);
    // Same order of magnitude: generous bound because the machine is shared and noisy.
    assert!(
        large <= small * 4 + Duration::from_millis(5),
        "invalidation slowed from {small:?} to {large:?} with 1M unrelated keys"
    );
    server.shutdown().await;
}
