//! Export result caching: options from any `Serialize`, user / project scopes, model hashes, raw bytes, and
//! invalidating every export of an object.
//!
//! Run against a local server:
//!   cargo run -p cache-server -- --backend memory
//!   cargo run -p cache-client --example export_results
//! (`CACHE_ENDPOINT` overrides http://127.0.0.1:50051.)

use cache_client::{CacheClient, ExportKey, SetOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Options of a JSON export, as the exporter defines them.
#[derive(Debug, Serialize)]
struct JsonExportOptions {
    precision: u8,
    units: &'static str,
    include_properties: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JsonExport {
    elements: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("CACHE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = CacheClient::builder(endpoint).connect().await?;
    let exports = client.export_results::<JsonExport>();

    // Options from a struct, scoped to a project, computed from model version "v17".
    let options = JsonExportOptions {
        precision: 3,
        units: "mm",
        include_properties: true,
    };
    let key = ExportKey::new("model-42", "json")
        .options(&options)?
        .project("p-1")
        .model_hash("v17");
    let export = JsonExport {
        elements: vec!["wall-1".into(), "slab-2".into()],
    };
    let entry = exports.set(&key, &export).await?;
    println!("stored {} (options {:?})", entry.key, entry.export_options);

    // The same options written another way (a JSON value, fields in another order) address the same entry.
    let same = ExportKey::new("model-42", "json")
        .options(&json!({"units": "mm", "include_properties": true, "precision": 3}))?
        .project("p-1")
        .model_hash("v17");
    println!(
        "same entry, other field order: {:?}",
        exports.get(&same).await?
    );

    // Another model version is a miss: an old export is never served as current.
    let newer = key.clone().model_hash("v18");
    println!("model v18: {:?}", exports.get(&newer).await?);

    // Scopes are part of the key: the same export for another project is another entry.
    let other_project = ExportKey::new("model-42", "json")
        .options(&options)?
        .project("p-2");
    println!("project p-2: {:?}", exports.get(&other_project).await?);

    // Non-JSON exports go in as bytes, with their content type.
    let svg = ExportKey::new("model-42", "svg").user("alice");
    exports
        .set_bytes(
            &svg,
            &b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"[..],
            SetOptions::new().content_type("image/svg+xml"),
        )
        .await?;
    if let Some(cached) = exports.get_bytes(&svg).await? {
        println!(
            "svg for alice: {} bytes of {}",
            cached.value.len(),
            cached.entry.content_type
        );
    }

    // Options must be an object.
    let rejected = ExportKey::new("model-42", "json").options(&[1, 2, 3]);
    println!("array options: {}", rejected.unwrap_err());

    // Every export of the object, all formats, options and scopes.
    let removed = exports.invalidate_object("model-42").await?;
    println!("invalidated {removed} exports of model-42");
    Ok(())
}
