//! `get_or_compute` against a real server: concurrent callers share one computation, errors are returned to
//! every waiter and never cached, a cancelled leader does not poison the key, and the computation still
//! answers (within the deadline) when the cache is stopped or hung, with the cache error logged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_client::{CacheClient, ExportKey, SetOptions};
use cache_tests::{TestServer, free_port};
use serde_json::{Value, json};

const COMPUTE_TIME: Duration = Duration::from_millis(100);

fn client(endpoint: String) -> CacheClient {
    CacheClient::builder(endpoint)
        .build()
        .expect("valid client settings")
}

/// A computation that counts its runs and takes [`COMPUTE_TIME`].
async fn compute(runs: &AtomicUsize, value: Value) -> Result<Value, std::io::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(COMPUTE_TIME).await;
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_callers_run_the_computation_once() {
    let server = TestServer::memory().await;
    let info = client(server.endpoint()).object_info::<Value>();
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (info, runs) = (info.clone(), runs.clone());
        callers.spawn(async move {
            info.get_or_compute("hot", || compute(&runs, json!({"size": 42})))
                .await
        });
    }
    while let Some(result) = callers.join_next().await {
        assert_eq!(result.unwrap().unwrap(), json!({"size": 42}));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one computation for 100 callers"
    );
    assert!(
        started.elapsed() < COMPUTE_TIME * 10,
        "callers waited for one computation, not a queue of them: {:?}",
        started.elapsed()
    );

    // Stored once, with one read: later calls hit the cache.
    assert_eq!(info.get("hot").await.unwrap(), Some(json!({"size": 42})));
    let again = info
        .get_or_compute("hot", || compute(&runs, json!("recomputed")))
        .await
        .unwrap();
    assert_eq!(again, json!({"size": 42}));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let metrics = CacheClient::builder(server.endpoint())
        .build()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert_eq!(metrics.set_count, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_computation_reaches_every_waiter_and_the_next_caller_recomputes() {
    let server = TestServer::memory().await;
    let info = client(server.endpoint()).object_info::<Value>();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (info, runs) = (info.clone(), runs.clone());
        callers.spawn(async move {
            info.get_or_compute("flaky", || async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(COMPUTE_TIME).await;
                Err::<Value, _>(std::io::Error::other("origin failed"))
            })
            .await
        });
    }
    while let Some(result) = callers.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "origin failed");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "waiters share the failure");
    assert_eq!(
        info.get("flaky").await.unwrap(),
        None,
        "errors are not cached"
    );

    let value = info
        .get_or_compute("flaky", || compute(&runs, json!("fixed")))
        .await
        .unwrap();
    assert_eq!(value, json!("fixed"));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the next caller recomputed");
    assert_eq!(info.get("flaky").await.unwrap(), Some(json!("fixed")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_poison_the_key() {
    let server = TestServer::memory().await;
    let info = client(server.endpoint()).object_info::<Value>();
    let runs = Arc::new(AtomicUsize::new(0));

    // The leader never finishes on its own: it is cancelled by a short timeout while a follower waits.
    let leader = {
        let (info, runs) = (info.clone(), runs.clone());
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(200),
                info.get_or_compute("slow", || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, std::io::Error>(json!("never"))
                }),
            )
            .await
        })
    };
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let follower = info.get_or_compute("slow", || compute(&runs, json!("from the follower")));
    let started = Instant::now();
    assert_eq!(follower.await.unwrap(), json!("from the follower"));
    assert!(leader.await.unwrap().is_err(), "the leader timed out");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the follower waited for the leader before taking over"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        info.get("slow").await.unwrap(),
        Some(json!("from the follower"))
    );

    // An aborted leader task: the next call computes.
    let aborted = {
        let (info, runs) = (info.clone(), runs.clone());
        tokio::spawn(async move {
            info.get_or_compute("aborted", || async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, std::io::Error>(json!("never"))
            })
            .await
        })
    };
    while runs.load(Ordering::SeqCst) == 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    aborted.abort();
    assert!(aborted.await.unwrap_err().is_cancelled());
    let value = tokio::time::timeout(
        Duration::from_secs(2),
        info.get_or_compute("aborted", || compute(&runs, json!("after abort"))),
    )
    .await
    .expect("no wait for the aborted leader")
    .unwrap();
    assert_eq!(value, json!("after abort"));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_value_is_served_without_computing_and_model_hashes_fly_apart() {
    let server = TestServer::memory().await;
    let client = client(server.endpoint());
    let exports = client.export_results::<Value>();
    let runs = Arc::new(AtomicUsize::new(0));
    let v1 = ExportKey::new("model-1", "json").model_hash("v1");
    exports.set(&v1, &json!("cached v1")).await.unwrap();
    let hit = exports
        .get_or_compute(&v1, || compute(&runs, json!("computed")))
        .await
        .unwrap();
    assert_eq!(hit, json!("cached v1"));
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    // Two model versions at once: two computations, each caller gets its own version's value.
    let v2 = v1.clone().model_hash("v2");
    let v3 = v1.clone().model_hash("v3");
    let (a, b) = tokio::join!(
        exports.get_or_compute(&v2, || compute(&runs, json!("v2"))),
        exports.get_or_compute(&v3, || compute(&runs, json!("v3"))),
    );
    assert_eq!((a.unwrap(), b.unwrap()), (json!("v2"), json!("v3")));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The model hash is not part of the storage key: one entry, holding whichever version was written last.
    let stored = (
        exports.get(&v2).await.unwrap(),
        exports.get(&v3).await.unwrap(),
    );
    assert!(
        matches!(&stored, (Some(v), None) if *v == json!("v2"))
            || matches!(&stored, (None, Some(v)) if *v == json!("v3")),
        "{stored:?}"
    );

    // A stored value that does not decode as the requested type is recomputed and overwritten.
    let info = client.object_info::<Vec<u32>>();
    info.set_bytes("garbled", &b"not json"[..], SetOptions::new())
        .await
        .unwrap();
    let value = info
        .get_or_compute("garbled", || async {
            Ok::<_, std::io::Error>(vec![1, 2, 3])
        })
        .await
        .unwrap();
    assert_eq!(value, vec![1, 2, 3]);
    assert_eq!(info.get("garbled").await.unwrap(), Some(vec![1, 2, 3]));
    server.shutdown().await;
}

/// Captures every log line emitted on this thread (the test runs on a current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn with_the_server_stopped_the_computation_still_answers_and_the_error_is_logged() {
    let server = TestServer::memory().await;
    let client = CacheClient::builder(server.endpoint())
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let info = client.object_info::<Value>();
    assert_eq!(
        info.get_or_compute("o", || async { Ok::<_, std::io::Error>(json!("cached")) })
            .await
            .unwrap(),
        json!("cached")
    );
    server.shutdown().await;

    let logs = Captured::default();
    let _guard = logs.install();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let started = Instant::now();
        let value = info
            .get_or_compute("o", || compute(&runs, json!("computed")))
            .await
            .expect("the origin works, so the call works");
        assert_eq!(value, json!("computed"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("cache read failed; computing without the cache"),
        "the cache error is reported through tracing: {text}"
    );
    assert!(text.contains("object_info"), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_server_costs_at_most_the_request_deadline() {
    // Accepts TCP connections (the kernel does, from the backlog) but never answers a byte.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = CacheClient::builder(format!("http://{}", hung.local_addr().unwrap()))
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let info = client.object_info::<Value>();

    let started = Instant::now();
    let err = info.get("o").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, cache_client::Error::Timeout(_)), "{err:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(600),
        "the deadline bounds the call: {took:?}"
    );

    let logs = Captured::default();
    let _guard = logs.install();
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let value = info
        .get_or_compute("o", || compute(&runs, json!("computed")))
        .await
        .unwrap();
    assert_eq!(value, json!("computed"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "one deadline plus the computation: {:?}",
        started.elapsed()
    );
    assert!(logs.text().contains("timed out"), "{}", logs.text());
    drop(hung);
}

#[tokio::test(flavor = "current_thread")]
async fn with_nothing_listening_the_computation_answers_at_once() {
    let client = CacheClient::builder(format!("http://127.0.0.1:{}", free_port()))
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let value = client
        .metadata::<Value>()
        .get_or_compute("m", || compute(&runs, json!(7)))
        .await
        .unwrap();
    assert_eq!(value, json!(7));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
