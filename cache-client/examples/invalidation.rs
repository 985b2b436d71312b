//! Invalidation: one key, an object's entries, a user's, a project's, a type, a glob pattern, everything.
//!
//! Run against a local server:
//!   cargo run -p cache-server -- --backend memory
//!   cargo run -p cache-client --example invalidation
//! (`CACHE_ENDPOINT` overrides http://127.0.0.1:50051.) Note: the last step empties the whole namespace.

use cache_client::pb::CacheType;
use cache_client::{CacheClient, ExportKey};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("CACHE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = CacheClient::builder(endpoint).connect().await?;
    let metadata = client.metadata::<Value>();
    let object_info = client.object_info::<Value>();
    let exports = client.export_results::<Value>();
    let config = client.system_config::<Value>();

    let populate = || async {
        metadata.set("model-1", &json!({"name": "one"})).await?;
        metadata
            .clone()
            .user("alice")
            .set("model-1", &json!({"name": "one, for alice"}))
            .await?;
        object_info.set("model-1", &json!({"bytes": 1024})).await?;
        for format in ["json", "ifc"] {
            exports
                .set(
                    &ExportKey::new("model-1", format).project("p-1"),
                    &json!({"format": format}),
                )
                .await?;
        }
        exports
            .set(&ExportKey::new("model-2", "json").user("alice"), &json!({}))
            .await?;
        config.set("feature-flags", &json!({"beta": true})).await?;
        client
            .user_preferences::<Value>("alice")
            .set("theme", &json!("dark"))
            .await?;
        anyhow::Ok(())
    };

    populate().await?;
    println!(
        "one key:          {}",
        metadata.invalidate("model-1").await?
    );
    println!(
        "object model-1:   {}",
        client.invalidate_object("model-1").await?
    );
    populate().await?;
    println!(
        "user alice:       {}",
        client.invalidate_user("alice").await?
    );
    println!(
        "project p-1:      {}",
        client.invalidate_project("p-1").await?
    );
    println!(
        "type config:      {}",
        client.invalidate_type(CacheType::SystemConfig).await?
    );
    populate().await?;
    println!(
        "pattern export*:  {}",
        client.invalidate_pattern("export_result:*").await?
    );
    println!(
        "exports of 2:     {}",
        exports.invalidate_object("model-2").await?
    );
    println!("everything:       {}", client.invalidate_all().await?);
    Ok(())
}
