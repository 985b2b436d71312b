//! SDK authentication and TLS against the real `CacheService` served behind what a deployment puts in front
//! of it: a bearer-token interceptor, and mutual TLS with a private CA (certificates made with `openssl`).
//!
//! The TLS server uses tonic's `tls-ring` feature, which `cache-client` enables (cargo unifies features).

use std::net::SocketAddr;
use std::sync::Arc;

use cache_client::tls::{Certificate, ClientTlsConfig, Identity};
use cache_client::{CacheClient, Error, Health};
use cache_proto::pb::cache_service_server::CacheServiceServer;
use cache_server::config::Settings;
use cache_server::{CacheService, Metrics};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

fn service() -> CacheServiceServer<CacheService> {
    let config = cache_tests::memory_config(Settings::default());
    let backend = cache_server::build_backend(&config).expect("memory backend");
    CacheServiceServer::new(CacheService::new(
        config,
        backend,
        Arc::new(Metrics::default()),
    ))
}

/// Serves `router` on a loopback port until the returned task is aborted.
async fn serve(router: tonic::transport::server::Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("serve");
    });
    (addr, task)
}

#[tokio::test]
async fn the_bearer_token_is_sent_with_every_call() {
    cache_tests::trace_init();
    fn check_auth(request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get("authorization") {
            Some(token) if token == "Bearer s3cret" => Ok(request),
            _ => Err(Status::unauthenticated("missing or bad token")),
        }
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CacheServiceServer<CacheService>>()
        .await;
    let authenticated = tonic::service::interceptor::InterceptedService::new(service(), check_auth);
    let (addr, task) = serve(
        Server::builder()
            .add_service(health_service)
            .add_service(authenticated),
    )
    .await;
    let endpoint = format!("http://{addr}");

    let with_token = CacheClient::builder(&endpoint)
        .bearer_token("s3cret")
        .build()
        .unwrap();
    let metadata = with_token.metadata::<Value>();
    metadata.set("m", &json!("secret value")).await.unwrap();
    assert_eq!(
        metadata.get("m").await.unwrap(),
        Some(json!("secret value"))
    );
    with_token.metrics().await.unwrap();
    assert_eq!(with_token.health().await.unwrap(), Health::Serving);

    for client in [
        CacheClient::builder(&endpoint).build().unwrap(),
        CacheClient::builder(&endpoint)
            .bearer_token("wrong")
            .build()
            .unwrap(),
    ] {
        match client.metadata::<Value>().get("m").await {
            Err(Error::Other(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    task.abort();
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca() {
    cache_tests::trace_init();
    let dir = tempfile::tempdir().unwrap();
    let pki = cache_tests::Pki::make(dir.path(), "a");
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
        .client_ca_root(Certificate::from_pem(&pki.ca));
    let (addr, task) = serve(
        Server::builder()
            .tls_config(tls)
            .expect("server TLS")
            .add_service(service()),
    )
    .await;
    let endpoint = format!("https://{addr}");
    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost")
    };

    let mutual = CacheClient::builder(&endpoint)
        .tls(trust().identity(Identity::from_pem(&pki.client.0, &pki.client.1)))
        .connect()
        .await
        .expect("handshake with a client certificate");
    let info = mutual.object_info::<Value>();
    info.set("o", &json!({"over": "tls"})).await.unwrap();
    assert_eq!(info.get("o").await.unwrap(), Some(json!({"over": "tls"})));

    // Without a client certificate the server refuses the handshake.
    let anonymous = CacheClient::builder(&endpoint)
        .tls(trust())
        .build()
        .unwrap();
    let err = anonymous.object_info::<Value>().get("o").await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_) | Error::Other(_)),
        "{err:?}"
    );

    // Without trusting the private CA (system roots only) the client refuses the server.
    let untrusting = CacheClient::builder(&endpoint).connect().await.unwrap_err();
    assert!(
        matches!(untrusting, Error::Connect { .. }),
        "{untrusting:?}"
    );
    task.abort();
}
