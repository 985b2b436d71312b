//! The decorator equivalent: `get_or_compute` returns the cached value or runs the computation once for every
//! concurrent caller, stores it and returns it. Errors are returned, not cached.
//!
//! Run against a local server:
//!   cargo run -p cache-server -- --backend memory
//!   cargo run -p cache-client --example get_or_compute
//! (`CACHE_ENDPOINT` overrides http://127.0.0.1:50051.) Stop the server and run it again: the computation
//! still answers, and the cache errors are logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_client::CacheClient;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ObjectInfo {
    id: String,
    bytes: u64,
}

/// The expensive origin call being cached.
async fn load_object_info(id: &str, calls: &AtomicUsize) -> Result<ObjectInfo, std::io::Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(ObjectInfo {
        id: id.to_owned(),
        bytes: 1 << 20,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let endpoint =
        std::env::var("CACHE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = CacheClient::builder(endpoint)
        .request_timeout(Duration::from_millis(300))
        .build()?;
    let info = client
        .object_info::<ObjectInfo>()
        .ttl(Duration::from_secs(60));
    let id = format!("object-{}", std::process::id());
    let calls = Arc::new(AtomicUsize::new(0));

    // Ten concurrent callers, one computation.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (info, id, calls) = (info.clone(), id.clone(), calls.clone());
        tasks.spawn(async move {
            info.get_or_compute(&id, || load_object_info(&id, &calls))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    println!(
        "10 concurrent callers: {} computation(s) in {:?}",
        calls.load(Ordering::SeqCst),
        started.elapsed()
    );

    // The next call is a cache hit (unless the cache is down).
    let started = Instant::now();
    let value = info
        .get_or_compute(&id, || load_object_info(&id, &calls))
        .await?;
    println!(
        "next call: {value:?} in {:?}; computations so far: {}",
        started.elapsed(),
        calls.load(Ordering::SeqCst)
    );

    // A failing computation is returned to the caller and not cached.
    let failing = "failing-object";
    let err = info
        .get_or_compute(failing, || async {
            Err::<ObjectInfo, _>(std::io::Error::other("origin is down"))
        })
        .await
        .unwrap_err();
    println!("failing computation: {err}");
    let recovered = info
        .get_or_compute(failing, || load_object_info(failing, &calls))
        .await?;
    println!("next caller recomputed: {recovered:?}");
    info.invalidate(&id).await.ok();
    info.invalidate(failing).await.ok();
    Ok(())
}
