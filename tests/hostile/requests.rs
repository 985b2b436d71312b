//! Requests over every limit, and bytes that are not a message: each gets the code gRPC's table gives and a
//! message naming what is wrong, quickly, and the server keeps serving.

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_tests::{ServerProcess, export_key, get_req, raw_unary};
use prost::Message as _;

async fn server() -> ServerProcess {
    ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_MAX_VALUE_BYTES", "1048576"),
            ("CACHE_MAX_SIZE_MB", "64"),
        ],
        &[],
    )
    .await
}

fn options_with(fields: usize) -> prost_types::Struct {
    prost_types::Struct {
        fields: (0..fields)
            .map(|i| (format!("f{i}"), prost_types::Value::default()))
            .collect(),
    }
}

fn nested(depth: usize) -> prost_types::Struct {
    let mut s = prost_types::Struct::default();
    for _ in 1..depth {
        let mut outer = prost_types::Struct::default();
        outer.fields.insert(
            "a".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(s)),
            },
        );
        s = outer;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_options_over_the_limits_are_invalid_argument_and_cheap() {
    let server = server().await;
    let mut client = server.client().await;
    let cases: [(&str, prost_types::Struct, &str); 3] = [
        ("200,000 fields", options_with(200_000), "key.options: is "),
        (
            "1,025 fields",
            options_with(1025),
            "key.options: hold more than",
        ),
        ("40 levels", nested(40), "nest"),
    ];
    for (what, options, message) in cases {
        let mut k = export_key("model", "ifc", serde_json::json!({}), "", "");
        k.options = Some(options);
        let started = Instant::now();
        let err = client.get(get_req(k)).await.unwrap_err();
        let took = started.elapsed();
        eprintln!(
            "hostile requests: options of {what}: {:?} in {took:?}",
            err.code()
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(message), "{what}: {}", err.message());
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    }
    let before = server.status_kib("VmHWM");
    // 8 million empty values in one request (about 15 MiB... over the message limit here, so 1 MiB's worth).
    let mut k = export_key("model", "ifc", serde_json::json!({}), "", "");
    k.options = Some(options_with(100_000));
    let err = client.get(get_req(k)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let after = server.status_kib("VmHWM");
    eprintln!(
        "hostile requests: 100,000 option fields refused; peak RSS {} -> {} KiB",
        before, after
    );
    assert!(
        after - before < 16 << 10,
        "decoding the options cost {} KiB",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_messages_get_grpc_codes() {
    let server = server().await;
    let channel = cache_tests::connect_channel(server.addr()).await;
    // Garbage: a field of wire type 7.
    let err = raw_unary(
        channel.clone(),
        "/cache.v1.CacheService/Get",
        vec![0x0f, 0xff, 0xff],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains("not a valid GetRequest"),
        "{}",
        err.message()
    );
    // Invalid UTF-8 in a string field (CacheKey.id).
    let key = vec![0x08, 0x02, 0x12, 0x02, 0xff, 0xfe];
    let mut request = vec![0x0a, key.len() as u8];
    request.extend_from_slice(&key);
    let err = raw_unary(channel.clone(), "/cache.v1.CacheService/Get", request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains("not a valid GetRequest"),
        "{}",
        err.message()
    );
    // Over the message limit (1 MiB value + 1 MiB).
    let request = pb::SetRequest {
        key: Some(cache_tests::key(pb::CacheType::Metadata, "big")),
        value: vec![1u8; 3 << 20].into(),
        ..Default::default()
    };
    let err = raw_unary(
        channel.clone(),
        "/cache.v1.CacheService/Set",
        request.encode_to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // And it keeps serving.
    let mut client = server.client().await;
    client
        .metrics(pb::MetricsRequest {})
        .await
        .expect("still serving");
}
