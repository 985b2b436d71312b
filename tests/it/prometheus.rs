//! The Prometheus endpoint: after a scripted sequence of calls, the scrape (parsed by Python's
//! `prometheus_client`, a real Prometheus text parser) agrees with the Metrics RPC and with the calls made.

use std::collections::HashMap;
use std::time::Duration;

use cache_proto::pb;
use cache_server::config::{MetricsListen, Settings};
use cache_tests::{TestServer, free_port, get_req, key, memory_config, set_req};
use pb::invalidate_request::Target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// Parses the exposition with prometheus_client and returns `name{sorted labels}` → value for every sample.
fn parse_with_prometheus_client(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed: apt-get install python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client failed to parse the scrape (install it with `pip install prometheus_client`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_agrees_with_the_metrics_rpc_and_the_calls_made() {
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = memory_config(Settings {
        metrics_listen: Some(MetricsListen(Some(metrics_addr))),
        ..Default::default()
    });
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // 4 sets (3 metadata, 1 export), 5 hits, 2 misses, 1 invalidation removing 1 entry, 2 invalid requests.
    for id in ["a", "b", "c"] {
        client
            .set(set_req(key(pb::CacheType::Metadata, id), vec![b'x'; 2000]))
            .await
            .unwrap();
    }
    let export = cache_tests::export_key("o1", "json", serde_json::json!({"v": 1}), "", "");
    client
        .set(set_req(export.clone(), vec![b'y'; 300]))
        .await
        .unwrap();
    for id in ["a", "b", "c", "a"] {
        assert!(
            client
                .get(get_req(key(pb::CacheType::Metadata, id)))
                .await
                .unwrap()
                .into_inner()
                .found
        );
    }
    assert!(
        client
            .get(get_req(export))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    for id in ["zz", "yy"] {
        assert!(
            !client
                .get(get_req(key(pb::CacheType::Metadata, id)))
                .await
                .unwrap()
                .into_inner()
                .found
        );
    }
    let removed = client
        .invalidate(pb::InvalidateRequest {
            target: Some(Target::Key(key(pb::CacheType::Metadata, "c"))),
        })
        .await
        .unwrap();
    assert_eq!(removed.into_inner().invalidated, 1);
    for _ in 0..2 {
        client
            .get(get_req(key(pb::CacheType::Metadata, "")))
            .await
            .unwrap_err();
    }

    let rpc = client
        .metrics(pb::MetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let samples = parse_with_prometheus_client(&scrape(metrics_addr).await);
    let sample = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the scrape"))
    };

    // With the calls made.
    assert_eq!(sample(r#"cache_sets_total{type="metadata"}"#), 3.0);
    assert_eq!(sample(r#"cache_sets_total{type="export_result"}"#), 1.0);
    assert_eq!(sample(r#"cache_hits_total{type="metadata"}"#), 4.0);
    assert_eq!(sample(r#"cache_hits_total{type="export_result"}"#), 1.0);
    assert_eq!(sample(r#"cache_misses_total{type="metadata"}"#), 2.0);
    assert_eq!(sample(r#"cache_invalidations_total{type="metadata"}"#), 1.0);
    assert_eq!(sample(r#"cache_set_bytes_total{type="metadata"}"#), 6000.0);
    assert_eq!(
        sample(r#"cache_errors_total{code="INVALID_ARGUMENT",rpc="Get"}"#),
        2.0
    );
    assert_eq!(
        sample(r#"cache_request_duration_seconds_count{rpc="Get"}"#),
        9.0
    );
    assert_eq!(
        sample(r#"cache_request_duration_seconds_count{rpc="Set"}"#),
        4.0
    );
    assert_eq!(
        sample(r#"cache_request_duration_seconds_bucket{le="+Inf",rpc="Set"}"#),
        4.0
    );
    assert_eq!(
        sample(r#"cache_value_size_bytes_bucket{le="4096",type="metadata"}"#),
        3.0
    );
    assert_eq!(
        sample(r#"cache_value_size_bytes_bucket{le="256",type="metadata"}"#),
        0.0
    );
    assert_eq!(sample(r#"cache_info{mode="memory"}"#), 1.0);

    // With the Metrics RPC (taken just before the scrape; only the Metrics RPC itself ran in between).
    let m = rpc.metrics.unwrap();
    assert_eq!(
        m.hit_count as f64,
        samples
            .iter()
            .filter(|(k, _)| k.starts_with("cache_hits_total"))
            .map(|(_, v)| v)
            .sum::<f64>()
    );
    assert_eq!(
        m.miss_count as f64,
        samples
            .iter()
            .filter(|(k, _)| k.starts_with("cache_misses_total"))
            .map(|(_, v)| v)
            .sum::<f64>()
    );
    assert_eq!(
        rpc.set_count as f64,
        samples
            .iter()
            .filter(|(k, _)| k.starts_with("cache_sets_total"))
            .map(|(_, v)| v)
            .sum::<f64>()
    );
    assert_eq!(
        m.memory_cache_entries as f64,
        sample("cache_memory_entries{}")
    );
    assert_eq!(m.memory_cache_size as f64, sample("cache_memory_bytes{}"));
    assert_eq!(
        rpc.errors_by_code["INVALID_ARGUMENT"] as f64,
        sample(r#"cache_errors_total{code="INVALID_ARGUMENT",rpc="Get"}"#)
    );
    let get = rpc.rpcs.iter().find(|r| r.rpc == "Get").expect("Get row");
    assert_eq!(
        get.count as f64,
        sample(r#"cache_request_duration_seconds_count{rpc="Get"}"#)
    );
    assert!(get.p50_ms > 0.0 && get.p50_ms <= get.p99_ms);
    assert_eq!(
        rpc.invalidated_count as f64,
        sample("cache_invalidated_entries_total{}")
    );

    // Labels are bounded: no key, id, user or project ever appears in the scrape.
    let text = scrape(metrics_addr).await;
    for leaked in ["cache:default:", "o1", "\"a\""] {
        assert!(
            !text.contains(leaked),
            "the scrape must not contain {leaked}"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
}

/// `CACHE_METRICS_TLS=on`: the endpoint speaks TLS with the gRPC certificate (an HTTPS client trusting the CA
/// scrapes it, Python's `urllib` here), and plaintext scrapes get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_can_serve_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = cache_tests::Pki::make(dir.path(), "m");
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("server.pem"), &pki.server.0).unwrap();
    std::fs::write(path("server.key"), &pki.server.1).unwrap();
    std::fs::write(path("ca.pem"), &pki.ca).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = cache_tests::ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_TLS_CERT_FILE", &path("server.pem")),
            ("CACHE_TLS_KEY_FILE", &path("server.key")),
            ("CACHE_METRICS_TLS", "on"),
            ("CACHE_METRICS_LISTEN", &metrics_addr),
        ],
        &[],
    )
    .await;
    let script = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
print(urllib.request.urlopen(f"https://localhost:{sys.argv[2]}/metrics", context=ctx, timeout=5).read().decode())
"#;
    let port = metrics_addr.rsplit(':').next().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        let out = std::process::Command::new("python3")
            .args(["-c", script, &path("ca.pem"), port])
            .output()
            .expect("python3 is needed: apt-get install python3");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("cache_auth_unauthenticated_total"), "{body}");
    // Plaintext HTTP on the TLS endpoint: no metrics.
    let plain = tokio::time::timeout(Duration::from_secs(3), async {
        let mut stream = tokio::net::TcpStream::connect(&metrics_addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap_or_default();
    assert!(!plain.contains("cache_uptime_seconds"), "{plain}");
}
