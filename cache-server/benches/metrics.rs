//! What the metrics cost on the request path: everything one Get records (two clock reads, the hit/miss
//! counter, the latency histogram) measured alone, beside a whole in-process Get through the service handler
//! on the memory tier (key validation, backend, envelope decode, response). The ratio of the two is the
//! hot-path share of metrics; the end-to-end share over gRPC is smaller still.
//!
//! Run with: `cargo bench -p cache-server --bench metrics`

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use cache_proto::pb;
use cache_proto::pb::cache_service_server::CacheService as _;
use cache_server::config::{BackendMode, Config, Settings};
use cache_server::keys::CacheType;
use cache_server::metrics::{Metrics, Rpc};
use cache_server::service::CacheService;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::default();
    c.bench_function("metrics/record one get", |b| {
        b.iter(|| {
            let started = Instant::now();
            metrics.record_get(black_box(CacheType::Metadata), true);
            metrics.record_latency(Rpc::Get, started.elapsed());
        });
    });

    let config = Config::from_settings(Settings {
        backend: Some(BackendMode::Memory),
        max_size_mb: Some(256),
        ..Default::default()
    })
    .unwrap();
    let backend = cache_server::server::build_backend(&config).unwrap();
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
