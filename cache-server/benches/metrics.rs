//! What the metrics cost on the request path: everything one Get records (two clock reads, the hit/miss
//! counter, the latency histogram) measured alone, beside a whole in-process Get through the service handler
//! on the memory tier (key validation, backend, envelope decode, response). The ratio of the two is the
//! hot-path share of metrics; the end-to-end share over gRPC is smaller still.
//!
//! The same record is measured with the two crates' own types, pre-created label handles in both: the
//! `prometheus_client` counter and histogram, and `metrics` handles on a `metrics-exporter-prometheus`
//! recorder. The server keeps its atomic arrays (encoded by `prometheus_client` at scrape time).
//!
//! Run with: `cargo bench -p cache-server --bench metrics`

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::cache_service_server::CacheService as _;
use cache_server::config::{BackendMode, Config, Settings};
use cache_server::{CacheService, CacheType, LATENCY_BOUNDS_SECONDS, Metrics, Rpc};
use criterion::{Criterion, criterion_group, criterion_main};

/// Wall time of `iters` records while two threads record into the same handles at once, as the server's
/// workers do (each thread records `iters` times: the total is halved).
fn on_two_threads(iters: u64, record: &(impl Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    record();
                }
            });
        }
    });
    start.elapsed() / 2
}

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::default();
    let record = || {
        let started = Instant::now();
        metrics.record_get(black_box(CacheType::Metadata), true);
        metrics.record_latency(Rpc::Get, started.elapsed());
    };
    c.bench_function("metrics/record one get", |b| b.iter(record));
    c.bench_function("metrics/record one get, 2 threads", |b| {
        b.iter_custom(|iters| on_two_threads(iters, &record))
    });

    let hits = prometheus_client::metrics::family::Family::<
        [(&str, &str); 1],
        prometheus_client::metrics::counter::Counter,
    >::default();
    let hit = hits.get_or_create(&[("type", "metadata")]).clone();
    let latency = prometheus_client::metrics::histogram::Histogram::new(LATENCY_BOUNDS_SECONDS);
    let record = || {
        let started = Instant::now();
        black_box(&hit).inc();
        latency.observe(started.elapsed().as_secs_f64());
    };
    c.bench_function(
        "metrics/record one get (prometheus-client Counter + Histogram)",
        |b| b.iter(record),
    );
    c.bench_function(
        "metrics/record one get, 2 threads (prometheus-client Counter + Histogram)",
        |b| b.iter_custom(|iters| on_two_threads(iters, &record)),
    );

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&LATENCY_BOUNDS_SECONDS)
        .unwrap()
        .build_recorder();
    let (hit, latency) = metrics::with_local_recorder(&recorder, || {
        (
            metrics::counter!("cache_hits_total", "type" => "metadata"),
            metrics::histogram!("cache_request_duration_seconds", "rpc" => "Get"),
        )
    });
    let handle = recorder.handle();
    let record = || {
        let started = Instant::now();
        black_box(&hit).increment(1);
        latency.record(started.elapsed().as_secs_f64());
    };
    // The exporter keeps every sample until a scrape or its upkeep drains it: drain after each batch, outside
    // the timing, as a server's upkeep would.
    c.bench_function(
        "metrics/record one get (metrics + metrics-exporter-prometheus)",
        |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    record();
                }
                let elapsed = start.elapsed();
                handle.run_upkeep();
                elapsed
            })
        },
    );
    c.bench_function(
        "metrics/record one get, 2 threads (metrics + metrics-exporter-prometheus)",
        |b| {
            b.iter_custom(|iters| {
                let elapsed = on_two_threads(iters, &record);
                handle.run_upkeep();
                elapsed
            })
        },
    );

    let config = Config::from_settings(Settings {
        backend: Some(BackendMode::Memory),
        max_size_mb: Some(256),
        ..Default::default()
    })
    .unwrap();
    let backend = cache_server::build_backend(&config).unwrap();
    let service = CacheService::new(config, backend, Arc::new(Metrics::default()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = pb::CacheKey {
        r#type: pb::CacheType::Metadata as i32,
        id: "42".into(),
        ..Default::default()
    };
    let set = pb::SetRequest {
        key: Some(key.clone()),
        value: vec![7u8; 1024].into(),
        ..Default::default()
    };
    runtime
        .block_on(service.set(tonic::Request::new(set)))
        .unwrap();
    let get = pb::GetRequest {
        key: Some(key),
        ..Default::default()
    };
    c.bench_function("service/get 1 KiB hit (memory tier, in-process)", |b| {
        b.iter(|| {
            runtime
                .block_on(service.get(tonic::Request::new(black_box(get.clone()))))
                .unwrap()
        });
    });
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
