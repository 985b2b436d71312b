//! SDK retries (gRPC A6) against a real server that answers `UNAVAILABLE`: a server in redis mode whose Redis
//! is not running. Attempts are counted by that server (`errors_by_code["UNAVAILABLE"]`): a call makes exactly
//! `max_attempts` attempts, the retry budget stops retries while calls keep failing, the deadline bounds
//! retries, and `INVALID_ARGUMENT` is never retried.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cache_client::pb::MetricsRequest;
use cache_client::{CacheClient, Error, Health, RetryPolicy, RetryThrottling};
use cache_server::config::{BackendMode, Config, HumanDuration, RedisSettings, Secret, Settings};
use cache_tests::{TestServer, connect_client, free_port};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A cache server in redis mode pointed at a port where no Redis listens: every Get/Set/Invalidate answers
/// `UNAVAILABLE` at once; Metrics still answers.
struct UnavailableServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl UnavailableServer {
    async fn start() -> Self {
        cache_tests::trace_init();
        let config = Config::from_settings(Settings {
            backend: Some(BackendMode::Redis),
            max_size_mb: Some(128),
            shutdown_grace: Some(HumanDuration(Duration::from_secs(1))),
            redis: RedisSettings {
                url: Some(Secret::new(format!("redis://127.0.0.1:{}", free_port()))),
                connect_timeout: Some(HumanDuration(Duration::from_millis(100))),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // Not TestServer::start: that waits for SERVING, which a redis-mode server without Redis never reports.
        let task = tokio::spawn(cache_server::run(config, listener, async move {
            let _ = stop_rx.await;
        }));
        let server = Self {
            addr,
            stop: Some(stop_tx),
            task,
        };
        // The server serves once its Redis warm-up gives up (connect timeout): wait until Metrics answers.
        let deadline = Instant::now() + cache_tests::READY_TIMEOUT;
        while tokio::time::timeout(Duration::from_millis(500), server.unavailable_count())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "server never answered Metrics");
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls this server answered with UNAVAILABLE so far.
    async fn unavailable_count(&self) -> u64 {
        let metrics = connect_client(self.addr)
            .await
            .metrics(MetricsRequest {})
            .await
            .expect("metrics answer without redis")
            .into_inner();
        metrics
            .errors_by_code
            .get("UNAVAILABLE")
            .copied()
            .unwrap_or(0)
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

fn fast_retries(max_attempts: u32, throttling: Option<RetryThrottling>) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        backoff_multiplier: 2.0,
        throttling,
    }
}

fn client(endpoint: String, policy: RetryPolicy) -> CacheClient {
    CacheClient::builder(endpoint)
        .request_timeout(Duration::from_secs(5))
        .retry(policy)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_makes_exactly_max_attempts_attempts() {
    let server = UnavailableServer::start().await;
    let probe = CacheClient::builder(server.endpoint()).build().unwrap();
    assert_eq!(probe.health().await.unwrap(), Health::NotServing);
    for max_attempts in [1, 3, 5] {
        // A fresh client: a full retry budget.
        let client = client(
            server.endpoint(),
            fast_retries(max_attempts, Some(RetryThrottling::default())),
        );
        let before = server.unavailable_count().await;
        let err = client.metadata::<Value>().get("m").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(
            server.unavailable_count().await - before,
            u64::from(max_attempts),
            "attempts with max_attempts = {max_attempts}"
        );
    }
    // Sets and invalidations are retried the same way (every RPC of the service is idempotent).
    let client = client(server.endpoint(), fast_retries(2, None));
    let before = server.unavailable_count().await;
    let metadata = client.metadata::<Value>();
    assert!(metadata.set("m", &Value::Null).await.is_err());
    assert!(metadata.invalidate("m").await.is_err());
    assert_eq!(server.unavailable_count().await - before, 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retries_while_calls_keep_failing() {
    let server = UnavailableServer::start().await;
    let calls = 30;

    // Default throttling (10 tokens, ratio 0.1): retries stop once failures leave half the tokens or less.
    let throttled = client(
        server.endpoint(),
        fast_retries(5, Some(RetryThrottling::default())),
    );
    let before = server.unavailable_count().await;
    for _ in 0..calls {
        assert!(throttled.metadata::<Value>().get("m").await.is_err());
    }
    let attempts = server.unavailable_count().await - before;
    let retries = attempts - calls;
    assert!(
        retries <= 5,
        "retries stay within the budget (max_tokens / 2): {retries} retries for {calls} calls"
    );
    assert_eq!(
        retries, 4,
        "10 tokens: failures leaving 9, 8, 7, 6 allow a retry"
    );

    // Clones share the budget: a clone of the exhausted client does not retry either.
    let clone = throttled.clone();
    let before = server.unavailable_count().await;
    assert!(clone.object_info::<Value>().get("o").await.is_err());
    assert_eq!(server.unavailable_count().await - before, 1);

    // Without throttling every call retries up to max_attempts.
    let unthrottled = client(server.endpoint(), fast_retries(3, None));
    let before = server.unavailable_count().await;
    for _ in 0..10 {
        assert!(unthrottled.metadata::<Value>().get("m").await.is_err());
    }
    assert_eq!(server.unavailable_count().await - before, 30);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_spans_every_attempt_and_backoff() {
    let server = UnavailableServer::start().await;
    // Backoffs are random(0, 1 s): the four between five attempts would take 2 s on average (under 700 ms
    // once in a hundred calls, so five calls in a row practically never) if each attempt had a deadline of
    // its own; with one 200 ms deadline for the whole call it ends after ~200 ms. The 700 ms bound leaves
    // a loaded CI machine half a second of slack.
    let slow_backoff = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        backoff_multiplier: 1.0,
        throttling: None,
    };
    let client = CacheClient::builder(server.endpoint())
        .request_timeout(Duration::from_millis(200))
        .retry(slow_backoff)
        .build()
        .unwrap();
    for _ in 0..5 {
        let before = server.unavailable_count().await;
        let started = Instant::now();
        let err = client.metadata::<Value>().get("m").await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(took < Duration::from_millis(700), "took {took:?}");
        let attempts = server.unavailable_count().await - before;
        assert!((1..=5).contains(&attempts), "{attempts} attempts");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_argument_is_never_retried() {
    let server = TestServer::memory().await;
    let client = client(server.endpoint(), fast_retries(5, None));
    let err = client.metadata::<Value>().get("").await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { field, .. } if field == "key.id"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let metrics = client.metrics().await.unwrap();
    assert_eq!(metrics.errors_by_code.get("INVALID_ARGUMENT"), Some(&1));
    server.shutdown().await;
}

#[tokio::test]
async fn connection_failures_are_unavailable_and_retried_within_the_deadline() {
    let client = CacheClient::builder(format!("http://127.0.0.1:{}", free_port()))
        .request_timeout(Duration::from_millis(500))
        .retry(fast_retries(5, None))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.system_config::<Value>().get("c").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(600));
}
