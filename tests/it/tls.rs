//! TLS on the server's gRPC port (the release binary): TLS and mutual TLS with a private CA, and certificate
//! rotation without dropping the connections already open.

use std::path::Path;
use std::time::Duration;

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_tests::{Pki, ServerProcess, get_req, key, set_req};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A client over TLS trusting `ca`, presenting `identity` if given.
async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<CacheServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(CacheServiceClient::new(channel))
}

/// Writes the server's certificate and key where the server reads them.
fn install(dir: &Path, pki: &Pki) {
    std::fs::write(dir.join("server.pem"), &pki.server.0).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server.1).unwrap();
}

async fn works(client: &mut CacheServiceClient<Channel>, id: &str) -> Result<(), tonic::Status> {
    let k = key(pb::CacheType::Metadata, id);
    client.set(set_req(k.clone(), &b"over tls"[..])).await?;
    let found = client.get(get_req(k)).await?.into_inner().found;
    assert!(found);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "a");
    install(dir.path(), &pki);
    std::fs::write(dir.path().join("clients-ca.pem"), &pki.ca).unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_TLS_CERT_FILE", &path("server.pem")),
            ("CACHE_TLS_KEY_FILE", &path("server.key")),
            ("CACHE_TLS_CLIENT_CA_FILE", &path("clients-ca.pem")),
        ],
        &[],
    )
    .await;
    let mut mutual = tls_client(server.addr(), &pki.ca, Some((&pki.client.0, &pki.client.1)))
        .await
        .expect("a client with a certificate of the CA connects");
    works(&mut mutual, "m")
        .await
        .expect("calls over mutual TLS");

    // Without a client certificate: the handshake (or the first call) fails.
    let anonymous = match tls_client(server.addr(), &pki.ca, None).await {
        Ok(mut c) => works(&mut c, "x").await.is_ok(),
        Err(_) => false,
    };
    assert!(!anonymous, "a client without a certificate was served");
    // In plaintext: refused.
    let plain = tokio::time::timeout(Duration::from_secs(3), async {
        let mut c = cache_tests::connect_client(server.addr()).await;
        works(&mut c, "p").await.is_ok()
    })
    .await
    .unwrap_or(false);
    assert!(!plain, "a plaintext client was served on a TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_without_dropping_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::make(dir.path(), "old"), Pki::make(dir.path(), "new"));
    install(dir.path(), &old);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_TLS_CERT_FILE", &path("server.pem")),
            ("CACHE_TLS_KEY_FILE", &path("server.key")),
        ],
        &[],
    )
    .await;
    let mut before = tls_client(server.addr(), &old.ca, None)
        .await
        .expect("TLS with the first certificate");
    works(&mut before, "before").await.unwrap();

    // Rotate: a certificate of another CA in the same files.
    install(dir.path(), &new);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut rotated = loop {
        if let Ok(mut c) = tls_client(server.addr(), &new.ca, None).await
            && works(&mut c, "after").await.is_ok()
        {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    works(&mut rotated, "after-2").await.unwrap();
    // The connection made before the rotation still works; a new client trusting only the old CA does not.
    works(&mut before, "still")
        .await
        .expect("the open connection survived the rotation");
    let stale = match tls_client(server.addr(), &old.ca, None).await {
        Ok(mut c) => works(&mut c, "stale").await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !stale,
        "a new connection was still served the old certificate"
    );
    assert!(
        server.log().contains("TLS files changed"),
        "the reload is logged"
    );
}
