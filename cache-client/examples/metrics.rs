//! Metrics and health: generate a little traffic, then print the server's headline metrics, the per-type
//! rows and the errors by code.
//!
//! Run against a local server:
//!   cargo run -p cache-server -- --backend memory
//!   cargo run -p cache-client --example metrics
//! (`CACHE_ENDPOINT` overrides http://127.0.0.1:50051.)

use cache_client::pb::CacheType;
use cache_client::{CacheClient, Error};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("CACHE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = CacheClient::builder(endpoint).connect().await?;
    println!("health: {:?}", client.health().await?);

    let metadata = client.metadata::<Value>();
    metadata.set("metrics-demo", &json!({"n": 1})).await?;
    for _ in 0..3 {
        metadata.get("metrics-demo").await?;
    }
    metadata.get("metrics-demo-missing").await?;
    // An invalid key is rejected with the field it names, and counted by the server.
    match metadata.get("").await {
        Err(Error::InvalidArgument { field, message }) => println!("rejected: {field}: {message}"),
        other => println!("unexpected: {other:?}"),
    }

    let metrics = client.metrics().await?;
    if let Some(m) = &metrics.metrics {
        println!(
            "mode {} up {}s: {} entries, {} bytes, hits {} misses {} (hit rate {:.2}), avg {:.3} ms, \
             memory {:.1} MiB, redis connected {}",
            metrics.mode,
            metrics.uptime_seconds,
            m.total_entries,
            m.total_size_bytes,
            m.hit_count,
            m.miss_count,
            m.hit_rate,
            m.avg_response_time_ms,
            m.memory_usage_mb,
            m.redis_connected
        );
    }
    for row in &metrics.by_type {
        let name = CacheType::try_from(row.r#type)
            .map(|t| t.as_str_name())
            .unwrap_or("?");
        println!(
            "  {name}: hits {} misses {} sets {} invalidations {} bytes {}",
            row.hits, row.misses, row.sets, row.invalidations, row.bytes_set
        );
    }
    println!("errors by code: {:?}", metrics.errors_by_code);
    metadata.invalidate("metrics-demo").await?;
    Ok(())
}
