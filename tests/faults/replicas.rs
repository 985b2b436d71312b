//! Three `cache-server` replicas (release binaries, hybrid mode) over one Redis configured as the docs
//! recommend for production, each reaching Redis through its own proxy, under a mixed load from clients that
//! spread their calls over every replica, while faults strike: one replica partitioned from Redis (the others
//! still reach it), a replica SIGKILLed and another SIGTERMed during a Redis hang, Redis killed and
//! restarted. The history of every call is checked: after an acknowledged invalidation no replica serves
//! the old value; every call answers within its deadline.
//!
//! `REPLICA_TEST_SECONDS` sets the length of the run (default 36).

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_tests::history::{self, Event, Op, Rng};
use cache_tests::{FaultProxy, Mode, RedisServer, ServerProcess, get_req, key};

const DEADLINE: Duration = Duration::from_secs(1);
const REPLICAS: usize = 3;
const KEYS: usize = 48;
const WORKERS: usize = 12;

/// A replica and the proxy between it and Redis.
struct Replica {
    process: ServerProcess,
    proxy: FaultProxy,
}

/// When a replica was stopped: calls to it may fail then.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    replica: usize,
    from: Instant,
    to: Instant,
}

async fn start_replica(redis: &RedisServer) -> Replica {
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap()).await;
    let process = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "hybrid"),
            ("REDIS_URL", &proxy.url()),
            ("REDIS_COMMAND_TIMEOUT", "250ms"),
            ("CACHE_SHUTDOWN_GRACE", "2s"),
        ],
        &[],
    )
    .await;
    Replica { process, proxy }
}

async fn worker(addrs: Vec<std::net::SocketAddr>, worker: usize, until: Instant) -> Vec<Event> {
    let mut clients = Vec::new();
    for addr in addrs {
        clients.push(cache_tests::connect_client(addr).await);
    }
    let mut rng = Rng::new(worker as u64);
    let mut seq = 0;
    let mut events = Vec::new();
    while Instant::now() < until {
        let replica = rng.below(REPLICAS);
        let k = rng.below(KEYS);
        let roll = rng.below(100);
        events.push(
            history::call(
                &mut clients[replica],
                replica,
                worker,
                &mut seq,
                k,
                roll,
                DEADLINE,
            )
            .await,
        );
    }
    events
}

async fn wait_up(replica: &Replica, within: Duration) -> Duration {
    let started = Instant::now();
    let mut client = replica.process.client().await;
    loop {
        if let Ok(m) = client.metrics(pb::MetricsRequest {}).await
            && m.into_inner().redis_state == "up"
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "replica not using redis again within {within:?}: {}",
            replica.process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_the_invalidation_contract_through_partitions_kills_and_restarts() {
    let seconds: u64 = std::env::var("REPLICA_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(36);
    // The production settings the docs recommend (a smaller maxmemory).
    let mut redis = RedisServer::builder()
        .args([
            "--maxmemory",
            "64mb",
            "--maxmemory-policy",
            "allkeys-lfu",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .start()
        .await;
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(start_replica(&redis).await);
    }
    for r in &replicas {
        wait_up(r, Duration::from_secs(5)).await;
    }
    let addrs: Vec<_> = replicas.iter().map(|r| r.process.addr()).collect();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(addrs.clone(), w, until)))
        .collect();
    let at = |fraction: f64| started + Duration::from_secs_f64(seconds as f64 * fraction);
    let mut stopped = Vec::new();
    let mut log = Vec::new();

    // 1. Replica 0 cut off from Redis (the others still reach it) for a ninth of the run.
    tokio::time::sleep_until(at(1.0 / 12.0).into()).await;
    replicas[0].proxy.set_mode(Mode::Blackhole);
    tokio::time::sleep(Duration::from_secs(seconds) / 9).await;
    replicas[0].proxy.set_mode(Mode::Pass);
    log.push(format!(
        "partition of replica 0 healed: redis used again after {:?}",
        wait_up(&replicas[0], Duration::from_secs(5)).await
    ));

    // 2. Redis hangs; replica 1 is SIGKILLed during the hang, then restarted once Redis is back.
    tokio::time::sleep_until(at(3.0 / 12.0).into()).await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = Instant::now();
    replicas[1].process.signal("-KILL");
    let code = replicas[1].process.wait(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.resume();
    replicas[1].process.restart().await;
    stopped.push(Stopped {
        replica: 1,
        from,
        to: Instant::now(),
    });
    log.push(format!(
        "replica 1 SIGKILLed during a hang (exit {code:?}), restarted: redis used after {:?}",
        wait_up(&replicas[1], Duration::from_secs(5)).await
    ));

    // 3. Redis hangs; replica 2 is SIGTERMed during the hang: it drains and exits 0.
    tokio::time::sleep_until(at(5.0 / 12.0).into()).await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = Instant::now();
    replicas[2].process.signal("-TERM");
    let code = replicas[2].process.wait(Duration::from_secs(10)).await;
    let drained = from.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    replicas[2].process.restart().await;
    stopped.push(Stopped {
        replica: 2,
        from,
        to: Instant::now(),
    });
    assert_eq!(code, Some(0), "SIGTERM during a hang exits 0");
    log.push(format!(
        "replica 2 SIGTERMed during a hang: exit {code:?} after {drained:?}; restarted, redis used after {:?}",
        wait_up(&replicas[2], Duration::from_secs(5)).await
    ));

    // 4. Redis killed and restarted (it keeps nothing: the recommended settings).
    tokio::time::sleep_until(at(7.0 / 12.0).into()).await;
    redis.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().await;
    for (i, r) in replicas.iter().enumerate() {
        log.push(format!(
            "redis restarted: replica {i} used it again after {:?}",
            wait_up(r, Duration::from_secs(5)).await
        ));
    }

    // 5. Replica 2 cut off from Redis.
    tokio::time::sleep_until(at(9.0 / 12.0).into()).await;
    replicas[2].proxy.set_mode(Mode::Blackhole);
    tokio::time::sleep(Duration::from_secs(seconds) / 12).await;
    replicas[2].proxy.set_mode(Mode::Pass);
    wait_up(&replicas[2], Duration::from_secs(5)).await;

    let mut events = Vec::new();
    for w in workers {
        events.extend(w.await.unwrap());
    }
    let verdict = history::check(&events);
    let during_stop = |e: &Event| {
        stopped
            .iter()
            .any(|s| s.replica == e.replica && e.invoked < s.to && e.completed > s.from)
    };
    let refused = events
        .iter()
        .filter(|e| matches!(e.op, Op::Invalidate) && e.error == Some(tonic::Code::Unavailable))
        .count();
    let acknowledged = events
        .iter()
        .filter(|e| matches!(e.op, Op::Invalidate) && e.error.is_none())
        .count();
    let at_stopped = events
        .iter()
        .filter(|e| e.error.is_some() && during_stop(e))
        .count();
    let unexpected: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.error.is_some()
                && !during_stop(e)
                && !(matches!(e.op, Op::Invalidate) && e.error == Some(tonic::Code::Unavailable))
        })
        .collect();
    let late: Vec<&Event> = events
        .iter()
        .filter(|e| e.took() > DEADLINE + Duration::from_millis(100))
        .collect();
    let fallback_reads = events
        .iter()
        .filter(|e| matches!(e.op, Op::Get { fallback: true, .. }))
        .count();
    for line in &log {
        eprintln!("replicas: {line}");
    }
    eprintln!(
        "replicas: {} calls in {seconds}s by {WORKERS} clients over {REPLICAS} replicas; invalidations \
         acknowledged {acknowledged}, refused (redis unreachable) {refused}; errors at a stopped replica \
         {at_stopped}, other errors {}; calls past the deadline {}; stale reads {}; fallback reads {fallback_reads} \
         (of another replica's private write after an invalidation: {}); latency p50 {:?} p99 {:?} max {:?}",
        events.len(),
        unexpected.len(),
        late.len(),
        verdict.stale.len(),
        verdict.fallback_divergent,
        history::percentile(&events, 0.5),
        history::percentile(&events, 0.99),
        history::percentile(&events, 1.0),
    );
    assert!(
        verdict.stale.is_empty(),
        "stale reads: {:?}",
        &verdict.stale[..verdict.stale.len().min(5)]
    );
    assert!(
        late.is_empty(),
        "calls past their deadline: {:?}",
        &late[..late.len().min(5)]
    );
    assert!(
        unexpected.is_empty(),
        "errors other than refused invalidations and calls to a stopped replica: {:?}",
        &unexpected[..unexpected.len().min(5)]
    );
    assert!(refused > 0, "the partitions refused invalidations");
    assert!(acknowledged > 0);

    // Healed: every replica reads the same value of every key.
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(r.process.client().await);
    }
    for k in 0..KEYS {
        let mut seen = Vec::new();
        for c in &mut clients {
            let got = c
                .get(get_req(key(pb::CacheType::Metadata, &format!("k{k}"))))
                .await
                .unwrap()
                .into_inner();
            seen.push(got.found.then_some(got.value));
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "key {k}: replicas disagree after the faults healed: {seen:?}"
        );
    }
}
