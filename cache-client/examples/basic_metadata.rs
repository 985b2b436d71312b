//! Basic metadata caching: store an object's metadata, read it back (with the entry's metadata), scope it to
//! a user, and invalidate it.
//!
//! Run against a local server:
//!   cargo run -p cache-server -- --backend memory
//!   cargo run -p cache-client --example basic_metadata
//! (`CACHE_ENDPOINT` overrides http://127.0.0.1:50051.)

use std::time::Duration;

use cache_client::CacheClient;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelMetadata {
    name: String,
    elements: u64,
    storeys: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("CACHE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = CacheClient::builder(endpoint).connect().await?;

    let metadata = client
        .metadata::<ModelMetadata>()
        .ttl(Duration::from_secs(3600));
    let tower = ModelMetadata {
        name: "Office tower".into(),
        elements: 18_250,
        storeys: vec!["B1".into(), "L0".into(), "L1".into()],
    };
    metadata.set("model-42", &tower).await?;

    let found = metadata.get("model-42").await?;
    println!("get model-42: {found:?}");
    assert_eq!(found.as_ref(), Some(&tower));

    // The entry's metadata: storage key, expiry, access count, size, content type, tier.
    if let Some(cached) = metadata.get_entry("model-42").await? {
        let entry = cached.entry;
        println!(
            "entry {} ({} bytes, {}), read {} times, expires at {:?}",
            entry.key,
            entry.size_bytes,
            entry.content_type,
            entry.access_count,
            entry.expires_at.map(|t| t.seconds)
        );
    }

    // A user-scoped entry is distinct from the shared one.
    let for_alice = metadata.clone().user("alice");
    println!(
        "get model-42 for alice before set: {:?}",
        for_alice.get("model-42").await?
    );
    for_alice
        .set(
            "model-42",
            &ModelMetadata {
                name: "Office tower (Alice's view)".into(),
                ..tower.clone()
            },
        )
        .await?;
    println!(
        "get model-42 for alice: {:?}",
        for_alice.get("model-42").await?
    );

    // Invalidate the shared entry: a miss is Ok(None), not an error.
    let removed = metadata.invalidate("model-42").await?;
    println!("invalidated model-42: {removed}");
    println!(
        "get model-42 after invalidate: {:?}",
        metadata.get("model-42").await?
    );
    Ok(())
}
