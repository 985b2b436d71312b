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
    // With a certificate of another CA: refused too.
    let stranger = Pki::make(dir.path(), "stranger");
    let wrong = match tls_client(
        server.addr(),
        &pki.ca,
        Some((&stranger.client.0, &stranger.client.1)),
    )
    .await
    {
        Ok(mut c) => works(&mut c, "w").await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !wrong,
        "a client with a certificate of another CA was served"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_stands_for_a_token_of_the_tokens_file() {
    use cache_tests::{Token, bearer, tokens_toml, write_atomically};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "id");
    install(dir.path(), &pki);
    std::fs::write(dir.path().join("clients-ca.pem"), &pki.ca).unwrap();
    let tokens = tokens_toml(&[
        Token {
            name: "exporter",
            token: None,
            subject: Some("CN = client"),
            tenant: "c",
            scopes: &["read", "write"],
        },
        Token::bearer("c-reader", "c-reader-token-1", "c", &["read"]),
        Token::bearer("d-reader", "d-reader-token-2", "d", &["read"]),
    ]);
    write_atomically(&dir.path().join("tokens.toml"), &tokens);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_TLS_CERT_FILE", &path("server.pem")),
            ("CACHE_TLS_KEY_FILE", &path("server.key")),
            ("CACHE_TLS_CLIENT_CA_FILE", &path("clients-ca.pem")),
            ("CACHE_AUTH_TOKENS_FILE", &path("tokens.toml")),
        ],
        &[],
    )
    .await;
    let mut client = tls_client(server.addr(), &pki.ca, Some((&pki.client.0, &pki.client.1)))
        .await
        .unwrap();
    // The certificate alone: tenant c, read and write.
    works(&mut client, "by-cert")
        .await
        .expect("the certificate stands for a token");
    let denied = client.metrics(pb::MetricsRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let k = key(pb::CacheType::Metadata, "by-cert");
    let seen = |token: &'static str| {
        let mut client = client.clone();
        let k = k.clone();
        async move {
            client
                .get(bearer(get_req(k), token))
                .await
                .unwrap()
                .into_inner()
                .found
        }
    };
    assert!(
        seen("c-reader-token-1").await,
        "tenant c sees the certificate's entry"
    );
    assert!(!seen("d-reader-token-2").await, "tenant d does not");
    // A token that is not valid is refused even over the known certificate.
    let refused = client
        .get(bearer(get_req(k.clone()), "unknown"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// Rotation of the certificate and of the tokens under load: clients trusting both CAs make a new connection
/// every 20 calls while the server's certificate is replaced and the tokens file rewritten; 0 calls fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_token_rotation_under_load_fail_no_call() {
    use cache_tests::{Token, bearer, tokens_toml, write_atomically};
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::make(dir.path(), "old"), Pki::make(dir.path(), "new"));
    install(dir.path(), &old);
    let tokens_file = dir.path().join("tokens.toml");
    let generation = |n: usize| {
        let extra = format!("extra-token-{n}");
        let name = format!("extra-{n}");
        let all: &[&str] = &["read", "write"];
        tokens_toml(&[
            Token::bearer("load", "load-token-5e1", "t", all),
            Token::bearer(&name, &extra, "t", all),
        ])
    };
    write_atomically(&tokens_file, &generation(0));
    let path = |name: &str| dir.path().join(name).display().to_string();
    let server = ServerProcess::start(
        &[
            ("CACHE_BACKEND", "memory"),
            ("CACHE_TLS_CERT_FILE", &path("server.pem")),
            ("CACHE_TLS_KEY_FILE", &path("server.key")),
            ("CACHE_AUTH_TOKENS_FILE", &path("tokens.toml")),
        ],
        &[],
    )
    .await;
    let mut both = old.ca.clone();
    both.extend_from_slice(&new.ca);
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (both, stop) = (both.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut calls, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut client = match tls_client(addr, &both, None).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(format!("connect: {e}"));
                        continue;
                    }
                };
                for i in 0..20 {
                    let k = key(pb::CacheType::Metadata, &format!("w{w}-{i}"));
                    calls += 2;
                    if let Err(s) = client
                        .set(bearer(set_req(k.clone(), &b"v"[..]), "load-token-5e1"))
                        .await
                    {
                        failures.push(format!("set: {s:?}"));
                    }
                    if let Err(s) = client.get(bearer(get_req(k), "load-token-5e1")).await {
                        failures.push(format!("get: {s:?}"));
                    }
                }
            }
            (calls, failures)
        }));
    }
    for n in 1..=6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        install(dir.path(), if n % 2 == 1 { &new } else { &old });
        write_atomically(&tokens_file, &generation(n));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut failures) = (0, Vec::new());
    for w in workers {
        let (c, f) = w.await.unwrap();
        calls += c;
        failures.extend(f);
    }
    eprintln!(
        "rotation under load: {calls} calls, {} failed",
        failures.len()
    );
    assert!(calls > 500, "too little load: {calls}");
    assert!(failures.is_empty(), "{failures:?}");
    // Both rotations happened.
    let log = server.log();
    assert!(log.contains("TLS files changed"), "{log}");
    assert!(log.contains("tokens file loaded again"), "{log}");
    // The last generation's extra token works, an older one does not.
    let mut client = tls_client(addr, &both, None).await.unwrap();
    let k = key(pb::CacheType::Metadata, "w0-0");
    client
        .get(bearer(get_req(k.clone()), "extra-token-6"))
        .await
        .unwrap();
    let old_token = client
        .get(bearer(get_req(k), "extra-token-1"))
        .await
        .unwrap_err();
    assert_eq!(old_token.code(), tonic::Code::Unauthenticated);
}
