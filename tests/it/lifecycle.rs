//! The server's lifecycle and standard services: grpc.health.v1 (SERVING, then NOT_SERVING as soon as a
//! shutdown begins), graceful shutdown (in-flight calls with large values complete; new connections are
//! refused afterwards), and server reflection (v1alpha and v1).

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_server::config::{HumanDuration, Settings};
use cache_tests::{
    GatedProxy, TestServer, connect_channel, connect_client, get_req, key, memory_config,
    random_bytes, set_req,
};
use futures::StreamExt as _;
use prost::Message as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVICE: &str = "cache.v1.CacheService";

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_cache_service() {
    let server = TestServer::memory().await;
    let mut health = server.health_client().await;
    for service in ["", SERVICE] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    server.shutdown().await;
}

/// Shutdown order: health turns NOT_SERVING, the server stops accepting, and calls already in flight (here a
/// Set whose 8 MiB request is half uploaded and a Get whose 8 MiB answer is half downloaded, both held by a
/// proxy while the shutdown starts) complete successfully before the server exits.
#[tokio::test]
async fn shutdown_turns_health_not_serving_and_drains_in_flight_calls() {
    let mut server = TestServer::start(memory_config(Settings {
        shutdown_grace: Some(HumanDuration(Duration::from_secs(20))),
        ..Default::default()
    }))
    .await;
    let big = random_bytes(8 << 20);
    let stored_key = key(pb::CacheType::ObjectInfo, "stored");
    let mut direct = server.client().await;
    direct
        .set(set_req(stored_key.clone(), big.clone()))
        .await
        .unwrap();

    // Health watchers, on their own connection, see SERVING first.
    let mut health = server.health_client().await;
    let mut watchers = Vec::new();
    for service in ["", SERVICE] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap().status;
        assert_eq!(first, ServingStatus::Serving as i32);
        watchers.push(stream);
    }

    // An in-flight Get: its answer is held after 1 MiB.
    let get_proxy = GatedProxy::start(server.addr()).await;
    let mut get_client = connect_client(get_proxy.addr()).await;
    get_proxy.hold_downstream_after(1 << 20);
    let get_call = tokio::spawn(async move { get_client.get(get_req(stored_key)).await });
    get_proxy.wait_held(Duration::from_secs(5)).await;

    // An in-flight Set: its request is held after 1 MiB.
    let set_proxy = GatedProxy::start(server.addr()).await;
    let mut set_client = connect_client(set_proxy.addr()).await;
    set_proxy.hold_upstream_after(1 << 20);
    let uploaded = big.clone();
    let set_call = tokio::spawn(async move {
        set_client
            .set(set_req(
                key(pb::CacheType::ObjectInfo, "uploaded"),
                uploaded,
            ))
            .await
    });
    set_proxy.wait_held(Duration::from_secs(5)).await;
    assert!(!get_call.is_finished() && !set_call.is_finished());

    server.begin_shutdown();
    for (service, stream) in ["", SERVICE].iter().zip(&mut watchers) {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no health update for {service:?} after shutdown began"))
            .expect("watch stream ended without an update")
            .expect("watch update");
        assert_eq!(
            next.status,
            ServingStatus::NotServing as i32,
            "health of {service:?} once shutdown began"
        );
    }
    // The watch streams are calls in flight too: end them so the drain can finish.
    drop(watchers);
    drop(health);
    assert!(
        !server.is_finished(),
        "the held calls must keep the server draining"
    );

    let released = Instant::now();
    get_proxy.release();
    set_proxy.release();
    let got = tokio::time::timeout(Duration::from_secs(10), get_call)
        .await
        .expect("the in-flight Get finishes")
        .unwrap()
        .expect("the in-flight Get succeeds during shutdown")
        .into_inner();
    assert!(got.found);
    assert!(
        got.value == big,
        "the in-flight Get returns the whole value"
    );
    let set = tokio::time::timeout(Duration::from_secs(10), set_call)
        .await
        .expect("the in-flight Set finishes")
        .unwrap()
        .expect("the in-flight Set succeeds during shutdown")
        .into_inner();
    assert!(set.stored);
    assert_eq!(set.entry.unwrap().size_bytes, 8 << 20);

    let addr = server.addr();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("the server finishes draining well within its grace period");
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "drain took {:?}: it waited for the grace period instead of the calls",
        released.elapsed()
    );
    // Stopped accepting: a new connection is refused.
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "the listener must be closed after shutdown"
    );
}

async fn list_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match answers.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn reflect_v1(
    channel: tonic::transport::Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .expect("a reflection answer")
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::memory().await;
    let channel = connect_channel(server.addr()).await;

    let alpha = list_services_v1alpha(channel.clone()).await;
    for expected in [SERVICE, "grpc.health.v1.Health"] {
        assert!(
            alpha.iter().any(|s| s == expected),
            "v1alpha lists {alpha:?}"
        );
    }

    let v1 = match reflect_v1(channel.clone(), MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for expected in [SERVICE, "grpc.health.v1.Health"] {
        assert!(v1.iter().any(|s| s == expected), "v1 lists {v1:?}");
    }

    // The descriptor of the cache service is served, with its six methods.
    let files = match reflect_v1(
        channel,
        MessageRequest::FileContainingSymbol(SERVICE.into()),
    )
    .await
    {
        MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
        other => panic!("unexpected reflection answer {other:?}"),
    };
    let methods: Vec<String> = files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).unwrap())
        .filter(|f| f.package() == "cache.v1")
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "CacheService")
        .flat_map(|s| s.method)
        .map(|m| m.name().to_owned())
        .collect();
    assert_eq!(
        methods,
        ["Get", "Set", "Invalidate", "Metrics", "GetMany", "SetMany"]
    );
    server.shutdown().await;
}

/// After shutdown the listener is closed: a call on an old connection fails UNAVAILABLE and a new connection
/// is refused.
#[tokio::test]
async fn a_stopped_server_refuses_calls() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    client
        .set(set_req(key(pb::CacheType::Metadata, "x"), &b"v"[..]))
        .await
        .unwrap();
    let endpoint = server.endpoint();
    server.shutdown().await;
    let err = client
        .get(get_req(key(pb::CacheType::Metadata, "x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let connect = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await;
    assert!(connect.is_err());
}
