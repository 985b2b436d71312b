//! `loadgen`: an end-to-end load generator for `cache.v1.CacheService`, modelled on fred's `bin/benchmark`.
//!
//! It opens `--connections` HTTP/2 connections (one tonic `Channel` each: a channel is one connection, and
//! one connection caps throughput, see docs/benchmarks.md) and keeps `--concurrency` calls in flight on each. Every
//! call picks an operation from `--mix`, a key from a key space of `--keys` keys (uniform, or zipf with
//! `--zipf S`), and for Set a value whose size is fixed or drawn from a distribution (`--value-size 1k..8m`).
//! Values are slices of one pre-generated buffer (random bytes, or JSON-like text with `--compressible`), so
//! generating them costs nothing per call.
//!
//! Closed loop by default (a worker sends its next call when the previous one answers); with `--rate` the
//! load is open loop: every worker has a fixed schedule and latency is measured from the *intended* start, so
//! a stalled server shows up in the percentiles instead of silently lowering the offered load (coordinated
//! omission).
//!
//! It reports throughput (calls/s, and MB/s of logical payload: value bytes sent by Set plus value bytes
//! received by Get hits, 1 MB = 10^6 bytes), latency percentiles from an HDR histogram (p50/p90/p99/p999),
//! errors by gRPC code, and the Get hit ratio; `--json` prints one JSON object instead.
//!
//! ```text
//! cargo run --release -p cache-tests --bin loadgen -- --addr 127.0.0.1:50051 \
//!     --connections 50 --concurrency 1 --duration 10s --value-size 1k --keys 1000 --prefill --mix get=100
//! ```
//!
//! Tuning caveats: the generator needs CPU too. On a small machine it competes with the server it measures,
//! so compare figures only against a baseline measured in the same run with the same flags (this is what

mod args;
mod conn;
mod keys;
mod mix;
mod plan;
mod report;
mod sizes;
mod stats;
mod values;
mod work;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use serde_json::json;
use tonic::transport::Endpoint;

use crate::args::Args;
use crate::conn::SERVICE_NAME;
use crate::keys::KeyChooser;
use crate::plan::Plan;
use crate::values::ValuePool;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = conn::endpoint(&args.addr, args.timeout)?;
    if let Some(within) = args.wait_serving {
        return report_serving(&endpoint, within, args.json).await;
    }
    args.check()?;
    let keys = KeyChooser::new(args.keys, args.zipf)?;
    let interval = args.interval()?;

    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(conn::connect(&endpoint).await?);
    }
    let values = ValuePool::new(args.value_size.max(), args.compressible, args.seed);
    let mut plan = Plan::new(&args, keys, values, interval);

    let mut extra = json!({ "prefill": null, "server": null });
    if args.prefill {
        let started = Instant::now();
        let (stored, errors) = work::prefill(
            &clients,
            Arc::new(plan.for_prefill()),
            args.concurrency,
            args.seed,
        )
        .await;
        extra["prefill"] = json!({
            "keys": stored,
            "errors": errors,
            "seconds": started.elapsed().as_secs_f64(),
        });
    }

    let start = Instant::now();
    plan.begin(&args, start);
    let plan = Arc::new(plan);
    let stats = work::measure(&clients, &plan, args.concurrency, args.seed, start).await?;
    let elapsed = Instant::now()
        .saturating_duration_since(plan.measure_from)
        .as_secs_f64()
        .max(1e-9);

    if args.server_metrics {
        extra["server"] = conn::server_metrics(&mut clients[0]).await;
    }
    report::print(&args, &stats, elapsed, &extra);
    Ok(())
}

/// `--wait-serving`: waits until the server is SERVING and prints when that happened.
async fn report_serving(endpoint: &Endpoint, within: Duration, json: bool) -> anyhow::Result<()> {
    let waited_from = SystemTime::now();
    let at = conn::wait_serving(endpoint, within).await?;
    let at_ns = at.duration_since(UNIX_EPOCH)?.as_nanos();
    let waited_ms = at
        .duration_since(waited_from)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3;
    if json {
        println!(
            "{}",
            json!({ "serving_unix_ns": at_ns as u64, "waited_ms": waited_ms })
        );
    } else {
        println!("{SERVICE_NAME} SERVING after {waited_ms:.1} ms of polling");
    }
    Ok(())
}
