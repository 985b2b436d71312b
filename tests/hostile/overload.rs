//! Twice the load the server can carry: calls slow down, none fails, and the server is at its idle latency
//! as soon as the load stops.

use std::process::Command;
use std::time::Duration;

use cache_proto::pb;
use cache_tests::{ServerProcess, key, server_binary, set_req};

use crate::small_gets;

/// Runs the load generator against `addr` with `args`, and returns its JSON report.
fn loadgen(addr: std::net::SocketAddr, args: &[&str]) -> serde_json::Value {
    let bin = server_binary().with_file_name("loadgen");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p cache-tests --bins` (scripts/test does)",
        bin.display()
    );
    let out = Command::new(bin)
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .arg("--json")
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("loadgen's JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_fails_nothing_and_recovers_at_once() {
    let _alone = crate::MEASURING.lock().await;
    let server = ServerProcess::start(&[("CACHE_BACKEND", "memory")], &[]).await;
    let mut client = server.client().await;
    let small = key(pb::CacheType::Metadata, "probe");
    client.set(set_req(small.clone(), &b"v"[..])).await.unwrap();
    let (_, idle_p99) = small_gets(server.addr(), &small, 200).await;
    let addr = server.addr();
    let closed = tokio::task::spawn_blocking(move || {
        loadgen(addr, &["--duration", "2s", "--prefill", "--keys", "1000"])
    })
    .await
    .unwrap();
    let capacity = closed["rps"].as_f64().expect("rps");
    let rate = (capacity * 2.0) as u64;
    let overload = tokio::task::spawn_blocking(move || {
        loadgen(
            addr,
            &[
                "--duration",
                "3s",
                "--keys",
                "1000",
                "--rate",
                &rate.to_string(),
            ],
        )
    })
    .await
    .unwrap();
    let (_, after_p99) = small_gets(server.addr(), &small, 200).await;
    eprintln!(
        "hostile overload: capacity {capacity:.0} calls/s; offered {rate}/s for 3 s: {} calls, {} errors, p99 {} us; small Gets p99 idle {idle_p99:?}, right after {after_p99:?}",
        overload["calls"], overload["error_count"], overload["latency_us"]["p99"]
    );
    assert_eq!(overload["error_count"].as_u64(), Some(0), "{overload}");
    assert!(
        after_p99 <= idle_p99 * 2 + Duration::from_millis(10),
        "small Gets p99 {after_p99:?} right after the overload (idle {idle_p99:?})"
    );
}
