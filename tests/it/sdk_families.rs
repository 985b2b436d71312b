//! The typed SDK (`cache-client`) against a real server: every family round-trips (typed values, entry
//! metadata, raw bytes), export options in any field order address one entry, a model hash mismatch is a miss,
//! invalidation helpers remove what they name, bad input names its field, and calls spread over several
//! connections and endpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use cache_client::pb::{self, CacheType, Compression};
use cache_client::{CacheClient, Error, ExportKey, Health, SetOptions};
use cache_tests::{TestServer, free_port};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn client(server: &TestServer) -> CacheClient {
    CacheClient::builder(server.endpoint())
        .build()
        .expect("valid client settings")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelMetadata {
    name: String,
    elements: u64,
    storeys: Vec<String>,
}

fn tower() -> ModelMetadata {
    ModelMetadata {
        name: "Office tower".into(),
        elements: 18_250,
        storeys: vec!["B1".into(), "L0".into()],
    }
}

#[tokio::test]
async fn metadata_round_trips_with_its_entry_and_scopes() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let metadata = client.metadata::<ModelMetadata>();

    assert_eq!(
        metadata.get("m-1").await.unwrap(),
        None,
        "a miss is Ok(None)"
    );
    let stored = metadata.set("m-1", &tower()).await.unwrap();
    assert_eq!(stored.key, "cache:default:metadata:m-1");
    assert_eq!(stored.content_type, cache_client::JSON_CONTENT_TYPE);
    assert_eq!(metadata.get("m-1").await.unwrap(), Some(tower()));

    let cached = metadata.get_entry("m-1").await.unwrap().expect("a hit");
    assert_eq!(cached.value, tower());
    let entry = cached.entry;
    assert_eq!(entry.r#type, CacheType::Metadata as i32);
    assert_eq!(entry.id, "m-1");
    assert_eq!(entry.access_count, 2, "the second read");
    assert_eq!(
        entry.size_bytes,
        serde_json::to_vec(&tower()).unwrap().len() as u64
    );
    let (created, expires) = (entry.created_at.unwrap(), entry.expires_at.unwrap());
    assert_eq!(
        expires.seconds - created.seconds,
        3600,
        "metadata's default TTL"
    );

    // Scopes are part of the key.
    let alice = metadata.clone().user("alice");
    let alice_in_p1 = alice.clone().project("p-1");
    assert_eq!(alice.get("m-1").await.unwrap(), None);
    let renamed = ModelMetadata {
        name: "Alice's tower".into(),
        ..tower()
    };
    let entry = alice_in_p1.set("m-1", &renamed).await.unwrap();
    assert_eq!(
        entry.key,
        "cache:default:metadata:m-1:user:alice:project:p-1"
    );
    assert_eq!(
        (entry.user_id.as_str(), entry.project_id.as_str()),
        ("alice", "p-1")
    );
    assert_eq!(alice_in_p1.get("m-1").await.unwrap(), Some(renamed));
    assert_eq!(alice.get("m-1").await.unwrap(), None);
    assert_eq!(metadata.get("m-1").await.unwrap(), Some(tower()));

    assert!(metadata.invalidate("m-1").await.unwrap());
    assert!(!metadata.invalidate("m-1").await.unwrap(), "already gone");
    assert_eq!(metadata.get("m-1").await.unwrap(), None);
    assert!(
        alice_in_p1.get("m-1").await.unwrap().is_some(),
        "other scopes stay"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn object_info_system_config_and_preferences_round_trip() {
    let server = TestServer::memory().await;
    let client = client(&server);

    let info = client.object_info::<Value>().ttl(Duration::from_secs(90));
    let entry = info.set("o-1", &json!({"bytes": 1024})).await.unwrap();
    assert_eq!(entry.key, "cache:default:object:o-1");
    assert_eq!(
        entry.expires_at.unwrap().seconds - entry.created_at.unwrap().seconds,
        90,
        "the handle's TTL"
    );
    assert_eq!(info.get("o-1").await.unwrap(), Some(json!({"bytes": 1024})));
    assert!(info.invalidate("o-1").await.unwrap());
    assert_eq!(info.get("o-1").await.unwrap(), None);

    let config = client.system_config::<BTreeMap<String, bool>>();
    let flags = BTreeMap::from([("beta".to_owned(), true), ("dark".to_owned(), false)]);
    let entry = config
        .set_with(
            "feature-flags",
            &flags,
            SetOptions::new().ttl(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    assert_eq!(entry.key, "cache:default:config:feature-flags");
    assert_eq!(
        entry.expires_at.unwrap().seconds - entry.created_at.unwrap().seconds,
        2,
        "TTLs round up to whole seconds"
    );
    assert_eq!(config.get("feature-flags").await.unwrap(), Some(flags));
    assert!(config.invalidate("feature-flags").await.unwrap());

    let alice = client.user_preferences::<String>("alice");
    let bob = client.user_preferences::<String>("bob");
    let entry = alice.set("theme", &"dark".to_owned()).await.unwrap();
    assert_eq!(entry.key, "cache:default:user:alice:preference:theme");
    bob.set("theme", &"light".to_owned()).await.unwrap();
    assert_eq!(alice.get("theme").await.unwrap().as_deref(), Some("dark"));
    assert_eq!(bob.get("theme").await.unwrap().as_deref(), Some("light"));
    assert!(alice.invalidate("theme").await.unwrap());
    assert_eq!(alice.get("theme").await.unwrap(), None);
    assert_eq!(bob.get("theme").await.unwrap().as_deref(), Some("light"));
    server.shutdown().await;
}

#[derive(Debug, Serialize)]
struct IfcOptions {
    schema: &'static str,
    precision: u32,
    include: Vec<&'static str>,
    geometry: GeometryOptions,
}

#[derive(Debug, Serialize)]
struct GeometryOptions {
    tessellate: bool,
    tolerance: f64,
}

#[tokio::test]
async fn export_options_in_any_field_order_address_one_entry() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let exports = client.export_results::<Value>();
    let from_struct = ExportKey::new("model-42", "ifc")
        .options(&IfcOptions {
            schema: "IFC4",
            precision: 3,
            include: vec!["walls", "slabs"],
            geometry: GeometryOptions {
                tessellate: true,
                tolerance: 0.5,
            },
        })
        .unwrap()
        .user("alice")
        .project("p-1");
    // The same options as JSON, every object's fields in another order and an integral number as a float.
    let from_json = ExportKey::new("model-42", "ifc")
        .options(&json!({
            "geometry": {"tolerance": 0.5, "tessellate": true},
            "include": ["walls", "slabs"],
            "precision": 3.0,
            "schema": "IFC4",
        }))
        .unwrap()
        .project("p-1")
        .user("alice");

    let stored = exports
        .set(&from_struct, &json!({"elements": 3}))
        .await
        .unwrap();
    assert!(
        stored
            .key
            .starts_with("cache:default:export_result:model-42:ifc:")
    );
    assert!(stored.key.ends_with(":user:alice:project:p-1"));
    let cached = exports
        .get_entry(&from_json)
        .await
        .unwrap()
        .expect("same entry");
    assert_eq!(cached.value, json!({"elements": 3}));
    assert_eq!(cached.entry.key, stored.key);
    assert_eq!(cached.entry.format, "ifc");
    let options = cached.entry.export_options.expect("options come back");
    assert!(options.fields.contains_key("geometry"));

    // Different options, format or scope are different entries.
    for other in [
        ExportKey::new("model-42", "ifc")
            .options(&json!({"schema": "IFC2X3"}))
            .unwrap()
            .user("alice")
            .project("p-1"),
        ExportKey::new("model-42", "json")
            .user("alice")
            .project("p-1"),
        from_json.clone().project("p-2"),
    ] {
        assert_eq!(exports.get(&other).await.unwrap(), None, "{other:?}");
    }

    // Options that are not an object are refused before any call.
    assert!(matches!(
        ExportKey::new("model-42", "ifc").options(&["a", "b"]),
        Err(Error::InvalidOptions { .. })
    ));
    assert!(exports.invalidate(&from_json).await.unwrap());
    assert_eq!(exports.get(&from_struct).await.unwrap(), None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_model_hash_mismatch_is_a_miss() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let exports = client.export_results::<Value>();
    let v1 = ExportKey::new("model-7", "json").model_hash("v1");

    let stored = exports.set(&v1, &json!("v1 export")).await.unwrap();
    assert_eq!(stored.model_hash, "v1");
    assert_eq!(exports.get(&v1).await.unwrap(), Some(json!("v1 export")));
    let cached = exports.get_entry(&v1).await.unwrap().unwrap();
    assert_eq!(cached.entry.model_hash, "v1");
    assert_eq!(
        exports.get(&v1.clone().model_hash("v2")).await.unwrap(),
        None,
        "another model version never serves the old export"
    );
    assert_eq!(
        exports
            .get(&ExportKey::new("model-7", "json"))
            .await
            .unwrap(),
        Some(json!("v1 export")),
        "without a model hash, any version is served"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn raw_bytes_round_trip_with_their_options_even_above_4_mib() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let exports = client.export_results::<Value>();
    let svg = ExportKey::new("model-9", "svg");
    let body = &b"<svg xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>"[..];
    let entry = exports
        .set_bytes(
            &svg,
            body,
            SetOptions::new()
                .content_type("image/svg+xml")
                .metadata("exporter", "v2")
                .compression(Compression::Gzip),
        )
        .await
        .unwrap();
    assert_eq!(entry.content_type, "image/svg+xml");
    let cached = exports.get_bytes(&svg).await.unwrap().expect("a hit");
    assert_eq!(&cached.value[..], body);
    assert_eq!(cached.entry.content_type, "image/svg+xml");
    assert_eq!(
        cached.entry.metadata.get("exporter").map(String::as_str),
        Some("v2")
    );

    // Bytes that are not JSON cannot be read as a typed value: a Decode error naming the family.
    match exports.get(&svg).await {
        Err(Error::Decode { family, .. }) => assert_eq!(family, "export_result"),
        other => panic!("expected Decode, got {other:?}"),
    }

    // 6 MiB of incompressible bytes: above gRPC's 4 MiB default, within the SDK's 65 MiB default.
    let big = cache_tests::random_bytes(6 << 20);
    let info = client.object_info::<Value>();
    info.set_bytes("big", big.clone(), SetOptions::new())
        .await
        .unwrap();
    let cached = info.get_bytes("big").await.unwrap().expect("a hit");
    assert_eq!(cached.value.len(), big.len());
    assert!(cached.value == big);
    assert_eq!(cached.entry.size_bytes, 6 << 20);

    // A client whose limit is below the value refuses the response instead of buffering it.
    let small = CacheClient::builder(server.endpoint())
        .max_message_size(1 << 20)
        .build()
        .unwrap();
    let err = small
        .object_info::<Value>()
        .get_bytes("big")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(!err.is_retryable());
    server.shutdown().await;
}

#[tokio::test]
async fn invalidation_helpers_remove_what_they_name() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let metadata = client.metadata::<Value>();
    let info = client.object_info::<Value>();
    let exports = client.export_results::<Value>();
    let config = client.system_config::<Value>();
    let prefs = client.user_preferences::<Value>("alice");
    let v = json!(1);
    let populate = || async {
        client.invalidate_all().await.unwrap();
        metadata.set("m-1", &v).await.unwrap();
        metadata.clone().user("alice").set("m-1", &v).await.unwrap();
        info.set("m-1", &v).await.unwrap();
        exports
            .set(&ExportKey::new("m-1", "json").project("p-1"), &v)
            .await
            .unwrap();
        exports
            .set(&ExportKey::new("m-1", "ifc").user("alice"), &v)
            .await
            .unwrap();
        exports
            .set(&ExportKey::new("m-2", "json").project("p-1"), &v)
            .await
            .unwrap();
        config.set("flags", &v).await.unwrap();
        prefs.set("theme", &v).await.unwrap();
    };

    populate().await;
    // The object's metadata (both scopes), info and exports; not m-2, the config or the preference.
    assert_eq!(client.invalidate_object("m-1").await.unwrap(), 5);
    assert!(
        exports
            .get(&ExportKey::new("m-2", "json").project("p-1"))
            .await
            .unwrap()
            .is_some()
    );

    populate().await;
    assert_eq!(client.invalidate_user("alice").await.unwrap(), 3);
    assert_eq!(client.invalidate_project("p-1").await.unwrap(), 2);
    assert_eq!(metadata.get("m-1").await.unwrap(), Some(v.clone()));

    populate().await;
    assert_eq!(
        client
            .invalidate_type(CacheType::ExportResult)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        client
            .invalidate_type(CacheType::SystemConfig)
            .await
            .unwrap(),
        1
    );

    populate().await;
    assert_eq!(exports.invalidate_object("m-1").await.unwrap(), 2);
    assert_eq!(
        metadata.clear().await.unwrap(),
        2,
        "both scopes of metadata"
    );
    assert_eq!(
        client
            .invalidate_matching(pb::Selector {
                r#type: CacheType::UserPreference as i32,
                object_id: "theme".into(),
                user_id: "alice".into(),
                ..Default::default()
            })
            .await
            .unwrap(),
        1
    );

    populate().await;
    assert_eq!(
        client
            .invalidate_pattern("export_result:m-*")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        client
            .invalidate_pattern("cache:default:config:*")
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.invalidate_all().await.unwrap(), 4);
    assert_eq!(
        client
            .metrics()
            .await
            .unwrap()
            .metrics
            .unwrap()
            .total_entries,
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_input_names_its_field() {
    let server = TestServer::memory().await;
    let client = client(&server);
    let field_of = |result: Result<_, Error>| match result {
        Err(Error::InvalidArgument { field, message }) => {
            assert!(!message.is_empty());
            field
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert_eq!(
        field_of(client.metadata::<Value>().get("").await.map(|_| ())),
        "key.id"
    );
    assert_eq!(
        field_of(
            client
                .user_preferences::<Value>("")
                .get("theme")
                .await
                .map(|_| ())
        ),
        "key.user_id"
    );
    assert_eq!(
        field_of(
            client
                .export_results::<Value>()
                .get(&ExportKey::new("m", ""))
                .await
                .map(|_| ())
        ),
        "key.format"
    );
    assert_eq!(
        field_of(
            client
                .object_info::<Value>()
                .set_with(
                    "o",
                    &json!(1),
                    SetOptions::new().ttl(Duration::from_secs(365 * 86_400))
                )
                .await
                .map(|_| ())
        ),
        "ttl_seconds"
    );
    assert_eq!(
        field_of(
            client
                .invalidate_matching(pb::Selector::default())
                .await
                .map(|_| ())
        ),
        "selector"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_report_the_server() {
    let server = TestServer::memory().await;
    let client = client(&server);
    assert_eq!(client.health().await.unwrap(), Health::Serving);
    let metadata = client.metadata::<Value>();
    metadata.set("m", &json!(1)).await.unwrap();
    metadata.get("m").await.unwrap();
    metadata.get("missing").await.unwrap();
    let metrics = client.metrics().await.unwrap();
    assert_eq!(metrics.mode, "memory");
    assert_eq!(metrics.set_count, 1);
    let headline = metrics.metrics.unwrap();
    assert_eq!((headline.hit_count, headline.miss_count), (1, 1));
    assert_eq!(headline.total_entries, 1);
    let row = metrics
        .by_type
        .iter()
        .find(|r| r.r#type == CacheType::Metadata as i32)
        .expect("a metadata row");
    assert_eq!((row.hits, row.misses, row.sets), (1, 1, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_connection_of_every_endpoint() {
    let (a, b) = (TestServer::memory().await, TestServer::memory().await);
    let client = CacheClient::builder(a.endpoint())
        .endpoints([b.endpoint()])
        .connections(3)
        .connect()
        .await
        .unwrap();
    let info = client.object_info::<Value>();
    for i in 0..12 {
        info.set(&format!("o-{i}"), &json!(i)).await.unwrap();
    }
    // Round-robin over 3 connections to a, then 3 to b: each server got half of the writes.
    let set_count = |server: &TestServer| {
        let server_client = CacheClient::builder(server.endpoint()).build().unwrap();
        async move { server_client.metrics().await.unwrap().set_count }
    };
    assert_eq!(set_count(&a).await, 6);
    assert_eq!(set_count(&b).await, 6);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn connect_fails_fast_on_a_wrong_address_and_build_is_lazy() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let err = CacheClient::builder(&endpoint)
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connect { endpoint: e, .. } if *e == endpoint),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let lazy = CacheClient::builder(&endpoint)
        .build()
        .expect("no connection yet");
    let err = lazy.metadata::<Value>().get("m").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(matches!(
        CacheClient::builder("not a uri").build(),
        Err(Error::InvalidEndpoint { .. })
    ));
}
