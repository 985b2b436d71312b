//! Latency under large values, in a test binary of its own: cargo runs test binaries one after another, so
//! this one measures the server with nothing else of the test suite running beside it, and asserts the
//! issue's figure itself (the small client's p99 while eight 64 MiB values are read).
//!
//! Run: `cargo test --release -p cache-tests --test latency -- --nocapture` (the figures are printed).

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_tests::{RedisServer, ServerProcess, get_req, key, metrics, put, set_req};
use tonic::transport::Channel;

type Client = pb::cache_service_client::CacheServiceClient<Channel>;

/// Waits until the Metrics RPC reports `state` as the Redis state.
async fn wait_state(client: &mut Client, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics(client).await.redis_state != state {
        assert!(Instant::now() < deadline, "redis state never {state}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_never_make_a_healthy_redis_look_down() {
    let redis = RedisServer::builder()
        .args(["--latency-monitor-threshold", "5"])
        .start()
        .await;
    // The release binary in a process of its own, as deployed: the test's clients do not share its threads.
    let server = ServerProcess::start(
        &[("REDIS_URL", &redis.url()), ("CACHE_BACKEND", "redis")],
        &[],
    )
    .await;
    let mut client = server.client().await;
    wait_state(&mut client, "up").await;
    let mut big = key(pb::CacheType::ExportResult, "big");
    big.format = "ifc".into();
    let value: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut req = set_req(big.clone(), value);
    req.compression = pb::Compression::None as i32;
    client.set(req).await.expect("a 64 MiB Set");
    let small = key(pb::CacheType::Metadata, "small");
    put(&mut client, &small).await;

    // A client of small values keeps measuring while eight 64 MiB Gets run: on a thread and runtime of its
    // own, so that what it measures is the server, not this process' busy workers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let small = small.clone();
        let addr = server.addr();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("prober runtime");
            rt.block_on(async move {
                let mut c = cache_tests::connect_client(addr).await;
                let _ = ready_tx.send(());
                let (mut latencies, mut failures) = (Vec::new(), 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = c
                        .get(get_req(small.clone()))
                        .await
                        .map(|r| r.into_inner().found);
                    if !matches!(ok, Ok(true)) {
                        eprintln!("large values: the small client failed: {ok:?}");
                        failures += 1;
                    }
                    latencies.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (latencies, failures)
            })
        });
        ready_rx.await.expect("prober connected");
        thread
    };
    let gets = (0..8).map(|_| {
        let big = big.clone();
        let addr = server.addr();
        async move {
            let mut c = cache_tests::connect_client(addr).await;
            c.get(get_req(big))
                .await
                .map(|r| r.into_inner().value.len())
        }
    });
    let started = Instant::now();
    let answers = futures::future::join_all(gets).await;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut latencies, failures) = prober.join().expect("prober");
    assert_eq!(failures, 0, "the small client's Gets failed");
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "large values: 8 concurrent 64 MiB Gets in {took:?}; small client {} Gets, p50 {:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    eprintln!(
        "large values: redis latency events: {}",
        redis.cli(["LATENCY", "LATEST"]).replace('\n', " ")
    );
    for answer in answers {
        assert_eq!(answer.expect("every large Get succeeds"), 64 << 20);
    }
    // The goal: p99 <= 50 ms. Measured alone on the 2-core machine: p99 14-21 ms, max 49-57 ms. Before the
    // bulk pool capped the ranges in flight (4 of 512 KiB over all reads), the 32 ranges of 1 MiB that eight
    // reads queued held Redis' event loop 20-50 ms per turn: p99 70-110 ms. The one 64 MiB GET before the
    // ranges held Redis ~40 ms per reply, made the tier look down and failed the small client's calls.
    assert!(p99 <= Duration::from_millis(50), "small client p99 {p99:?}");
    let held = redis.cli(["LATENCY", "LATEST"]);
    let worst_ms = held
        .lines()
        .collect::<Vec<_>>()
        .chunks(4)
        .filter_map(|event| event.get(3).and_then(|ms| ms.trim().parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    assert!(
        worst_ms < 25,
        "redis held its event loop {worst_ms} ms (a large value read in one command?): {held}"
    );
    assert_eq!(metrics(&mut client).await.redis_state, "up");

    // A Redis that hangs during a large transfer is still detected within the budget (and the watchdog's
    // interval).
    let get = {
        let mut c = server.client().await;
        let big = big.clone();
        tokio::spawn(async move { c.get(get_req(big)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    redis.pause();
    let paused = Instant::now();
    let outcome = get.await.unwrap();
    let detected = paused.elapsed();
    redis.resume();
    eprintln!(
        "large values: a Redis hung mid-transfer: the Get answered {outcome:?} after {detected:?}"
    );
    if outcome.is_err() {
        assert!(
            detected <= Duration::from_millis(250 + 50 + 150),
            "detected after {detected:?}"
        );
    }
}
