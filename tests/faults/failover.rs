//! Failover: a Sentinel-managed primary and its replicas (real `redis-server` processes), `cache-server`
//! replicas as release binaries. The server follows a promotion within 2 s of Sentinel's switch, through a
//! `redis-sentinel://` URL or through one failover address that moves; the promoted replica continues the
//! old primary's history, so the cache keeps its entries; with `REDIS_WAIT_REPLICAS=1` no acknowledged
//! invalidation is lost; a demoted primary is never used.

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_tests::history::{self, Event, Op, Rng};
use cache_tests::{FaultProxy, Sentinel, ServerProcess, get_req, key, set_req};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(1);
const SEEDED: usize = 1000;

type Client = CacheServiceClient<Channel>;

fn seeded(i: usize) -> pb::CacheKey {
    key(pb::CacheType::ObjectInfo, &format!("seed-{i}"))
}

async fn seed(client: &mut Client) {
    for chunk in (0..SEEDED).collect::<Vec<_>>().chunks(100) {
        let requests = chunk
            .iter()
            .map(|&i| set_req(seeded(i), format!("v{i}").into_bytes()))
            .collect();
        let answer = client
            .set_many(pb::SetManyRequest { requests })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.responses.iter().all(|r| r.stored));
    }
}

/// How many seeded entries `client` still reads from Redis (a batch read while the server was not using
/// Redis, as right after a failover under load, is read again).
async fn surviving(client: &mut Client) -> usize {
    let mut found = 0;
    for chunk in (0..SEEDED).collect::<Vec<_>>().chunks(100) {
        for attempt in 0.. {
            let requests = chunk.iter().map(|&i| get_req(seeded(i))).collect();
            let answer = client
                .get_many(pb::GetManyRequest { requests })
                .await
                .unwrap()
                .into_inner();
            let state = client
                .metrics(pb::MetricsRequest {})
                .await
                .unwrap()
                .into_inner()
                .redis_state;
            if state == "up" || attempt == 50 {
                found += answer.responses.iter().filter(|r| r.found).count();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    found
}

/// Waits until a Set through `server` lands on the node at `port` (not answered from memory, and there in
/// Redis); returns when.
async fn wait_writes_reach(server: &ServerProcess, sentinel: &Sentinel, port: u16) -> Instant {
    let node = sentinel
        .nodes
        .iter()
        .find(|n| n.port() == port)
        .expect("a node of the topology");
    let mut client = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0u32;
    let mut last: String;
    loop {
        n += 1;
        let probe = key(pb::CacheType::SystemConfig, &format!("probe-{port}-{n}"));
        let mut request = tonic::Request::new(set_req(probe, &b"p"[..]));
        request.set_timeout(DEADLINE);
        match client.set(request).await {
            Ok(answer) => {
                let entry = answer.into_inner().entry.unwrap();
                let redis_key = entry
                    .key
                    .replacen("cache:default:", "cache:default:{0}:", 1);
                if entry.status != pb::EntryStatus::Fallback as i32
                    && node.cli(["EXISTS", &redis_key]) == "1"
                {
                    return Instant::now();
                }
                last = format!("stored with status {}", entry.status);
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "writes never reached the new primary on port {port} (last: {last}); server log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tests here measure how fast a server follows a promotion: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn worker(addrs: Vec<std::net::SocketAddr>, worker: usize, until: Instant) -> Vec<Event> {
    let mut clients = Vec::new();
    for addr in addrs {
        clients.push(cache_tests::connect_client(addr).await);
    }
    let mut rng = Rng::new(worker as u64 + 100);
    let mut seq = 0;
    let mut events = Vec::new();
    while Instant::now() < until {
        let replica = rng.below(clients.len());
        let (k, roll) = (rng.below(32), rng.below(100));
        let client = &mut clients[replica];
        events.push(history::call(client, replica, worker, &mut seq, k, roll, DEADLINE).await);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_follows_promotions_keeps_the_cache_and_loses_no_invalidation() {
    let _serial = SERIAL.lock().await;
    let sentinel = Sentinel::start(2).await;
    let env = [
        ("CACHE_BACKEND", "hybrid"),
        ("REDIS_URL", &*sentinel.url()),
        ("REDIS_COMMAND_TIMEOUT", "250ms"),
        ("REDIS_WAIT_REPLICAS", "1"),
    ];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ServerProcess::start(&env, &[]).await);
    }
    let mut client = servers[0].client().await;
    let first = sentinel.primary_port().unwrap();
    wait_writes_reach(&servers[0], &sentinel, first).await;
    seed(&mut client).await;
    sentinel.wait_synced().await;

    let addrs: Vec<_> = servers.iter().map(ServerProcess::addr).collect();
    let until = Instant::now() + Duration::from_secs(16);
    let workers: Vec<_> = (0..9)
        .map(|w| tokio::spawn(worker(addrs.clone(), w, until)))
        .collect();
    let mut followed = Vec::new();
    let mut survived = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let old = sentinel.primary_port().unwrap();
        sentinel.failover();
        let (new, switched) = sentinel.wait_promoted(old, Duration::from_secs(10)).await;
        let mut slowest = Duration::ZERO;
        for s in &servers {
            let reached = wait_writes_reach(s, &sentinel, new).await;
            slowest = slowest.max(reached.saturating_duration_since(switched));
        }
        followed.push(slowest);
        survived.push(surviving(&mut client).await);
        sentinel.wait_online_replicas(1).await;
    }
    let mut events = Vec::new();
    for w in workers {
        events.extend(w.await.unwrap());
    }
    let verdict = history::check(&events);
    let errors: Vec<_> = events.iter().filter(|e| e.error.is_some()).collect();
    let refused = errors
        .iter()
        .filter(|e| matches!(e.op, Op::Invalidate) && e.error == Some(tonic::Code::Unavailable))
        .count();
    let late = events
        .iter()
        .filter(|e| e.took() > DEADLINE + Duration::from_millis(100))
        .count();
    eprintln!(
        "sentinel failover: 2 promotions; every server wrote to the new primary {followed:?} after \
         Sentinel's switch; seeded entries readable after each: {survived:?} of {SEEDED}; {} calls, \
         invalidations refused {refused}, other errors {}, past the deadline {late}, stale reads {}, \
         p99 {:?}",
        events.len(),
        errors.len() - refused,
        verdict.stale.len(),
        history::percentile(&events, 0.99),
    );
    if std::env::var_os("FAILOVER_DEBUG").is_some() {
        for line in servers[0]
            .log()
            .lines()
            .filter(|l| !l.contains("shared store"))
        {
            eprintln!("server 0: {line}");
        }
    }
    for took in &followed {
        assert!(
            *took <= Duration::from_secs(2),
            "followed the promotion after {took:?}"
        );
    }
    for n in &survived {
        assert!(
            *n * 10 >= SEEDED * 9,
            "only {n} of {SEEDED} entries survived"
        );
    }
    assert!(
        verdict.stale.is_empty(),
        "stale reads: {:?}",
        &verdict.stale[..verdict.stale.len().min(5)]
    );
    assert_eq!(late, 0, "calls past their deadline");
    assert_eq!(
        errors.len(),
        refused,
        "only invalidations may be refused: {:?}",
        errors.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failover_address_follows_a_promotion_and_never_uses_the_demoted_primary() {
    let _serial = SERIAL.lock().await;
    let sentinel = Sentinel::start(1).await;
    let old = sentinel.primary_port().unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{old}").parse().unwrap()).await;
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "hybrid"),
            ("REDIS_URL", &proxy.url()),
            ("REDIS_COMMAND_TIMEOUT", "250ms"),
        ],
        &[],
    )
    .await;
    let mut client = server.client().await;
    wait_writes_reach(&server, &sentinel, old).await;
    seed(&mut client).await;
    sentinel.wait_synced().await;

    // Sentinel demotes the primary; the address still points at it (the address moves a moment later).
    sentinel.failover();
    let (new, switched) = sentinel.wait_promoted(old, Duration::from_secs(10)).await;
    let demoted = sentinel.nodes.iter().find(|n| n.port() == old).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !demoted.cli(["ROLE"]).starts_with("slave") {
        assert!(Instant::now() < deadline, "the old primary was not demoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server finds it is no longer the primary: not serving in rotation, and says why.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = client
            .metrics(pb::MetricsRequest {})
            .await
            .unwrap()
            .into_inner();
        if m.redis_state == "unusable" {
            assert_eq!(m.redis_unusable_reason, "not_primary", "{m:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a demoted primary still in use: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes meanwhile never reach the demoted node (it is a replica now) and are answered from memory.
    let answer = client
        .set(set_req(
            key(pb::CacheType::SystemConfig, "during"),
            &b"d"[..],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.entry.unwrap().status,
        pb::EntryStatus::Fallback as i32
    );

    // The address moves to the new primary.
    proxy.retarget(format!("127.0.0.1:{new}").parse().unwrap());
    let moved = Instant::now();
    let reached = wait_writes_reach(&server, &sentinel, new).await;
    let survived = surviving(&mut client).await;
    eprintln!(
        "failover address: demoted primary reported unusable/not_primary; writes reached the new primary \
         {:?} after the address moved ({:?} after Sentinel's switch); {survived} of {SEEDED} entries readable",
        reached - moved,
        reached - switched,
    );
    assert!(reached - moved <= Duration::from_secs(2));
    assert!(
        survived * 10 >= SEEDED * 9,
        "only {survived} of {SEEDED} entries survived"
    );
    // The write answered from memory while no primary could be used lived there only: recovery emptied the
    // memory tier and removed the key from Redis (which may hold an older value), so it is a miss.
    let got = client
        .get(get_req(key(pb::CacheType::SystemConfig, "during")))
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found, "{got:?}");
}
