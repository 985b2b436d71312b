//! Redis faults against real `redis-server` processes: killed and restarted under load, hung with SIGSTOP,
//! absent at start, restarted from a snapshot. The contract: in hybrid mode every call answers within its
//! deadline, and after an acknowledged invalidation this server never serves the old value.
//!
//! `FAULT_TEST_SECONDS` sets the length of the load test (default 120, the two minutes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_server::config::{BackendMode, Config, HumanDuration, RedisSettings};
use cache_tests::history::{self, Event, Op, Rng};
use cache_tests::{RedisServer, TestServer, get_req, key, metrics, redis_config, set_req};
use pb::invalidate_request::Target;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(1);
const BUDGET: Duration = Duration::from_millis(250);

fn config(mode: BackendMode, redis: &RedisServer) -> Config {
    redis_config(
        mode,
        RedisSettings {
            command_timeout: Some(HumanDuration(BUDGET)),
            ..redis.settings()
        },
    )
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

async fn wait_redis_connected(
    client: &mut CacheServiceClient<Channel>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if metrics(client).await.metrics.unwrap().redis_connected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "redis not used again within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One client's calls until `until` (the mix and checker of [`history`]), all through one replica.
async fn worker(
    mut client: CacheServiceClient<Channel>,
    worker: usize,
    keys: usize,
    until: Instant,
) -> Vec<Event> {
    let mut rng = Rng::new(worker as u64);
    let mut seq = 0;
    let mut events = Vec::new();
    while Instant::now() < until {
        let (k, roll) = (rng.below(keys), rng.below(100));
        events.push(history::call(&mut client, 0, worker, &mut seq, k, roll, DEADLINE).await);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_under_load_keeps_deadlines_and_never_serves_invalidated_values() {
    let seconds: u64 = std::env::var("FAULT_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(config(BackendMode::Hybrid, &redis)).await;
    let mut observer = server.client().await;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.client().await);
    }
    let workers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(worker(channels[w % 4].clone(), w, 64, until)))
        .collect();

    // Three outages, evenly spread, each about a twelfth of the run (10 s in a 2-minute run).
    let down_for = Duration::from_secs(seconds / 12).max(Duration::from_secs(1));
    let mut reattach = Vec::new();
    for outage in 1..=3u32 {
        let kill_at = started + Duration::from_secs(seconds) * outage / 4 - down_for / 2;
        tokio::time::sleep_until(kill_at.into()).await;
        redis.kill().await;
        tokio::time::sleep(down_for).await;
        redis.restart().await;
        reattach.push(wait_redis_connected(&mut observer, Duration::from_secs(5)).await);
    }
    let mut events = Vec::new();
    for w in workers {
        events.extend(w.await.unwrap());
    }
    let history = events;
    let m = metrics(&mut observer).await;
    server.shutdown().await;

    let mut latencies: Vec<Duration> = history.iter().map(|e| e.completed - e.invoked).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let errors: Vec<_> = history.iter().filter(|e| e.error.is_some()).collect();
    // An invalidation that cannot reach Redis is refused (UNAVAILABLE, retryable), never acknowledged from
    // memory alone: those are the only errors hybrid mode may answer.
    let (refused, errors): (Vec<_>, Vec<_>) = errors
        .into_iter()
        .partition(|e| matches!(e.op, Op::Invalidate) && e.error == Some(tonic::Code::Unavailable));
    let late_failures = errors
        .iter()
        .filter(|e| e.completed - e.invoked > DEADLINE)
        .count();
    let stale = history::check(&history).stale;
    eprintln!(
        "fault test: {} calls in {seconds}s by 16 clients; 3 kill/restart cycles ({down_for:?} down each); \
         errors {} (after deadline {late_failures}); invalidations refused while redis was down {}; \
         stale reads {}; latency p50 {:?} p99 {:?} max {:?}; redis used again {reattach:?} after each restart; \
         served from memory {}",
        history.len(),
        errors.len(),
        refused.len(),
        stale.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        m.fallback_served,
    );
    assert_eq!(late_failures, 0, "calls failed after their deadline");
    assert!(
        errors.is_empty(),
        "hybrid mode answers every call: {:?}",
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        *latencies.last().unwrap() <= DEADLINE,
        "every call answers within its deadline"
    );
    assert!(
        stale.is_empty(),
        "stale reads after acknowledged invalidations: {:?}",
        &stale[..stale.len().min(5)]
    );
    assert!(m.fallback_served > 0, "the outages were served from memory");
    assert!(
        !refused.is_empty(),
        "invalidations during the outages were refused, not acknowledged from memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_falls_back_within_the_command_budget_and_late_writes_do_not_resurrect() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(config(BackendMode::Hybrid, &redis)).await;
    let mut client = server.client().await;
    let (a, b) = (
        key(pb::CacheType::Metadata, "a"),
        key(pb::CacheType::Metadata, "b"),
    );
    client
        .set(set_req(a.clone(), &b"a-before"[..]))
        .await
        .unwrap();

    redis.pause();
    let started = Instant::now();
    // A burst of Gets as the hang begins: they queue behind the batches already waiting on Redis, and
    // each must still fall back within its own budget (the wait in the queue counts against it).
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let mut client = client.clone();
            let a = a.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let got = client.get(with_deadline(get_req(a))).await;
                (started.elapsed(), got)
            })
        })
        .collect();
    let got = client
        .get(with_deadline(get_req(a.clone())))
        .await
        .expect("hybrid answers while redis hangs");
    let first_answer = started.elapsed();
    let mut slowest = Duration::ZERO;
    for call in futures::future::join_all(burst).await {
        let (took, got) = call.unwrap();
        assert!(!got.expect("answered while redis hangs").into_inner().found);
        slowest = slowest.max(took);
    }
    eprintln!("SIGSTOP: slowest of 100 concurrent Gets answered in {slowest:?}");
    assert!(
        slowest <= BUDGET + Duration::from_millis(150),
        "a queued Get took {slowest:?} to fall back"
    );
    assert!(
        !got.into_inner().found,
        "memory holds nothing Redis should hold"
    );
    eprintln!(
        "SIGSTOP: first Get answered from the fallback in {first_answer:?} (budget {BUDGET:?})"
    );
    assert!(
        first_answer <= BUDGET + Duration::from_millis(50),
        "fallback took {first_answer:?}"
    );

    // A write during the hang is answered from memory; the write may still land in Redis when it resumes.
    let stored = client
        .set(with_deadline(set_req(b.clone(), &b"b-during"[..])))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.stored);
    let got = client
        .get(with_deadline(get_req(b.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.value[..], b"b-during");
    assert_eq!(got.entry.unwrap().status, pb::EntryStatus::Fallback as i32);
    // Invalidate both while Redis hangs: refused within the budget (the shared store did not get it), but
    // this replica's memory is purged at once.
    for k in [&a, &b] {
        let started = Instant::now();
        let err = client
            .invalidate(with_deadline(pb::InvalidateRequest {
                target: Some(Target::Key(k.clone())),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(
            err.message().contains("did not reach the shared store"),
            "{err}"
        );
        assert!(
            started.elapsed() <= BUDGET + Duration::from_millis(50),
            "refused after {:?}",
            started.elapsed()
        );
    }
    assert!(
        !client
            .get(with_deadline(get_req(b.clone())))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    redis.resume();
    let back = wait_redis_connected(&mut client, Duration::from_secs(5)).await;
    eprintln!("SIGCONT: redis used again after {back:?}");
    // The write answered from memory during the hang may have landed in Redis late: recovery removed the
    // keys written while Redis was uncertain, so it is not served.
    let got = client
        .get(with_deadline(get_req(b.clone())))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !got.found,
        "a write made during the hang surfaced from Redis"
    );
    // The caller retries its refused invalidations once Redis answers; then they are acknowledged.
    for k in [&a, &b] {
        client
            .invalidate(with_deadline(pb::InvalidateRequest {
                target: Some(Target::Key(k.clone())),
            }))
            .await
            .unwrap();
        let got = client
            .get(with_deadline(get_req(k.clone())))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !got.found,
            "{} came back after an acknowledged invalidation",
            k.id
        );
    }
    assert_eq!(
        redis.cli([
            "EXISTS",
            "cache:default:{0}:metadata:a",
            "cache:default:{0}:metadata:b"
        ]),
        "0"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_redis_down_and_uses_it_within_a_second_of_its_start() {
    let mut redis = RedisServer::start().await;
    redis.kill().await;
    let server = TestServer::start(config(BackendMode::Hybrid, &redis)).await;
    let mut client = server.client().await;
    let stored = client
        .set(set_req(
            key(pb::CacheType::SystemConfig, "early"),
            &b"x"[..],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.stored);
    let got = client
        .get(get_req(key(pb::CacheType::SystemConfig, "early")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entry.unwrap().tier, pb::Tier::Memory as i32);
    assert!(!metrics(&mut client).await.metrics.unwrap().redis_connected);

    redis.restart().await;
    let attached = wait_redis_connected(&mut client, Duration::from_secs(1)).await;
    eprintln!("redis started after the server: used within {attached:?}");
    client
        .set(set_req(key(pb::CacheType::SystemConfig, "late"), &b"y"[..]))
        .await
        .unwrap();
    assert_eq!(redis.cli(["EXISTS", "cache:default:{0}:config:late"]), "1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_fails_fast_and_health_follows_redis() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(config(BackendMode::Redis, &redis)).await;
    let mut client = server.client().await;
    let mut health = server.health_client().await;
    let check = |s: &str| tonic_health::pb::HealthCheckRequest { service: s.into() };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    client
        .set(set_req(key(pb::CacheType::Metadata, "m"), &b"x"[..]))
        .await
        .unwrap();

    redis.kill().await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = client
            .get(with_deadline(get_req(key(pb::CacheType::Metadata, "m"))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(
            started.elapsed() <= BUDGET + Duration::from_millis(50),
            "took {:?}",
            started.elapsed()
        );
    }
    let invalidate = client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::All(true)),
        })
        .await
        .unwrap_err();
    assert_eq!(
        invalidate.code(),
        tonic::Code::Unavailable,
        "an invalidation that could not be applied is never acknowledged"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while health
        .check(check("cache.v1.CacheService"))
        .await
        .unwrap()
        .into_inner()
        .status
        == serving
    {
        assert!(
            Instant::now() < deadline,
            "health still SERVING with redis down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while health
        .check(check("cache.v1.CacheService"))
        .await
        .unwrap()
        .into_inner()
        .status
        != serving
    {
        assert!(
            Instant::now() < deadline,
            "health not SERVING again after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .set(set_req(key(pb::CacheType::Metadata, "m"), &b"y"[..]))
        .await
        .unwrap();
    assert!(
        client
            .get(get_req(key(pb::CacheType::Metadata, "m")))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_a_snapshot_never_resurrects_invalidated_entries() {
    let mut redis = RedisServer::start().await;
    let server = Arc::new(TestServer::start(config(BackendMode::Redis, &redis)).await);
    let mut client = server.client().await;
    let (gone, kept) = (
        key(pb::CacheType::Metadata, "gone"),
        key(pb::CacheType::Metadata, "kept"),
    );
    client
        .set(set_req(gone.clone(), &b"old"[..]))
        .await
        .unwrap();
    client
        .set(set_req(kept.clone(), &b"old"[..]))
        .await
        .unwrap();
    assert_eq!(
        redis.cli(["SAVE"]),
        "OK",
        "snapshot taken with both entries"
    );
    client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::Key(gone.clone())),
        })
        .await
        .unwrap();

    redis.kill().await;
    redis.restart().await;
    assert_eq!(
        redis.cli(["EXISTS", "cache:default:{0}:metadata:gone"]),
        "1",
        "the snapshot brought the invalidated entry back"
    );
    // Whenever the server answers from Redis again, the restored entry must not be served.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match client.get(with_deadline(get_req(gone.clone()))).await {
            Ok(r) => {
                assert!(
                    !r.into_inner().found,
                    "served an entry invalidated before the restart"
                );
                if metrics(&mut client).await.metrics.unwrap().redis_connected {
                    break;
                }
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable),
        }
        assert!(
            Instant::now() < deadline,
            "redis not used again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The restart was detected: every generation of this service ended, so the restored entry stays in
    // Redis (until its TTL or eviction) but is never served. Conservative: entries that were valid are
    // misses too (a miss, never a wrong answer).
    let m = metrics(&mut client).await;
    assert!(m.redis_history_flushes >= 1, "restart not detected: {m:?}");
    assert!(!client.get(get_req(gone)).await.unwrap().into_inner().found);
    assert!(!client.get(get_req(kept)).await.unwrap().into_inner().found);
    drop(client);
    Arc::try_unwrap(server)
        .expect("sole owner")
        .shutdown()
        .await;
}
