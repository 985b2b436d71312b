//! Tokens (`CACHE_AUTH_TOKENS_FILE`) against the release binary: every cache.v1 call needs a token of the file,
//! each call needs its scope, health stays open and reflection follows `CACHE_REFLECTION`; a token removed
//! from the file is refused after the reload (file change or SIGHUP); a file that does not load keeps the
//! tokens in use (at start: exit 64); client certificates stand for tokens; the SDK's token works; secrets
//! never reach the log, even at `trace`.

use std::path::Path;
use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_tests::{
    ServerProcess, Token, bearer, get_req, key, set_req, sha256_hex, tokens_toml, write_atomically,
};
use tonic::Code;
use tonic::transport::Channel;

const READER: &str = "rd-7f3a9c0e5b1d4e2a";
const WRITER: &str = "wr-2b8e6d1f0a9c3b7e";
const INVALIDATOR: &str = "iv-5c1d9e3a7f2b6d0c";
const ADMIN: &str = "ad-9e0f4b2c8d6a1e3f";
const EVERYTHING: &str = "ev-3a6c0e9d2f5b8a1c";

fn tokens() -> Vec<Token<'static>> {
    vec![
        Token::bearer("reader", READER, "t", &["read"]),
        Token::bearer("writer", WRITER, "t", &["write"]),
        Token::bearer("invalidator", INVALIDATOR, "t", &["invalidate"]),
        Token::bearer("admin", ADMIN, "t", &["admin"]),
        Token::bearer(
            "everything",
            EVERYTHING,
            "t",
            &["read", "write", "invalidate", "admin"],
        ),
    ]
}

async fn start(dir: &Path, extra: &[(&str, &str)]) -> ServerProcess {
    let file = dir.join("tokens.toml");
    if !file.exists() {
        write_atomically(&file, &tokens_toml(&tokens()));
    }
    let file = file.display().to_string();
    let mut env = vec![
        ("CACHE_BACKEND", "memory"),
        ("CACHE_AUTH_TOKENS_FILE", &*file),
    ];
    env.extend_from_slice(extra);
    ServerProcess::start(&env, &[]).await
}

/// What each call answers for `token`: Ok, or the status code.
async fn outcome<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> Result<(), (Code, String)> {
    result
        .map(|_| ())
        .map_err(|s| (s.code(), s.message().to_owned()))
}

async fn calls(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
) -> Vec<(&'static str, Result<(), (Code, String)>)> {
    use pb::invalidate_request::Target;
    let k = key(pb::CacheType::Metadata, "scoped");
    let invalidate = |target| pb::InvalidateRequest {
        target: Some(target),
    };
    vec![
        (
            "Get",
            outcome(client.get(bearer(get_req(k.clone()), token)).await).await,
        ),
        (
            "GetMany",
            outcome(
                client
                    .get_many(bearer(
                        pb::GetManyRequest {
                            requests: vec![get_req(k.clone())],
                        },
                        token,
                    ))
                    .await,
            )
            .await,
        ),
        (
            "Set",
            outcome(
                client
                    .set(bearer(set_req(k.clone(), &b"v"[..]), token))
                    .await,
            )
            .await,
        ),
        (
            "SetMany",
            outcome(
                client
                    .set_many(bearer(
                        pb::SetManyRequest {
                            requests: vec![set_req(k.clone(), &b"v"[..])],
                        },
                        token,
                    ))
                    .await,
            )
            .await,
        ),
        (
            "Invalidate key",
            outcome(
                client
                    .invalidate(bearer(invalidate(Target::Key(k.clone())), token))
                    .await,
            )
            .await,
        ),
        (
            "Invalidate selector",
            outcome(
                client
                    .invalidate(bearer(
                        invalidate(Target::Selector(pb::Selector {
                            object_id: "scoped".into(),
                            ..Default::default()
                        })),
                        token,
                    ))
                    .await,
            )
            .await,
        ),
        (
            "Invalidate pattern",
            outcome(
                client
                    .invalidate(bearer(invalidate(Target::Pattern("*".into())), token))
                    .await,
            )
            .await,
        ),
        (
            "Invalidate all",
            outcome(
                client
                    .invalidate(bearer(invalidate(Target::All(true)), token))
                    .await,
            )
            .await,
        ),
        (
            "Metrics",
            outcome(client.metrics(bearer(pb::MetricsRequest {}, token)).await).await,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_token_and_each_scope_bounds_its_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut client = server.client().await;

    // No token, a wrong one, the wrong scheme, the digest itself instead of the token: UNAUTHENTICATED.
    let digest = sha256_hex(EVERYTHING);
    for token in ["", "nope", &digest] {
        for (call, result) in calls(&mut client, token).await {
            let (code, message) = result.expect_err(call);
            assert_eq!(
                code,
                Code::Unauthenticated,
                "{call} with {token:?}: {message}"
            );
        }
    }
    let mut basic = tonic::Request::new(get_req(key(pb::CacheType::Metadata, "x")));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {EVERYTHING}").parse().unwrap(),
    );
    assert_eq!(
        client.get(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Each scope: exactly its calls.
    let allowed: [(&str, &[&str]); 5] = [
        (READER, &["Get", "GetMany"]),
        (WRITER, &["Set", "SetMany"]),
        (INVALIDATOR, &["Invalidate key", "Invalidate selector"]),
        (ADMIN, &["Invalidate pattern", "Invalidate all", "Metrics"]),
        (
            EVERYTHING,
            &[
                "Get",
                "GetMany",
                "Set",
                "SetMany",
                "Invalidate key",
                "Invalidate selector",
                "Invalidate pattern",
                "Invalidate all",
                "Metrics",
            ],
        ),
    ];
    let mut boundaries = 0;
    for (token, ok) in allowed {
        for (call, result) in calls(&mut client, token).await {
            boundaries += 1;
            if ok.contains(&call) {
                assert!(result.is_ok(), "{call} with {token}: {result:?}");
            } else {
                let (code, message) = result.expect_err(call);
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{call} with {token}: {message}"
                );
                assert!(message.contains("lacks the scope"), "{message}");
                assert!(!message.contains(token), "the token leaked: {message}");
            }
        }
    }
    assert_eq!(boundaries, 45);

    // Health stays open; reflection too by default.
    let channel = cache_tests::connect_channel(server.addr()).await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cache.v1.CacheService".into(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status, 1);
    assert!(list_services(channel, None).await.is_ok());
}

/// Lists services by reflection (v1), with `token` if given.
async fn list_services(channel: Channel, token: Option<&str>) -> Result<usize, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request};
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let stream = tokio_stream::iter([request]);
    let mut req = tonic::Request::new(stream);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(req)
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(answer) = answers.message().await? {
        n += 1;
        let _ = answer;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_require_a_token_or_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("CACHE_REFLECTION", "auth")]).await;
    let channel = cache_tests::connect_channel(server.addr()).await;
    let refused = list_services(channel.clone(), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        list_services(channel.clone(), Some(READER)).await.unwrap(),
        1
    );

    let off_dir = tempfile::tempdir().unwrap();
    let off = start(off_dir.path(), &[("CACHE_REFLECTION", "off")]).await;
    let channel = cache_tests::connect_channel(off.addr()).await;
    let unimplemented = list_services(channel, Some(READER)).await.unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
}

/// Waits until `token`'s Get answers `code` (Ok as `None`), within 5 s; returns how long it took.
async fn until(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
    code: Option<Code>,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = client
            .get(bearer(get_req(key(pb::CacheType::Metadata, "r")), token))
            .await
            .err()
            .map(|s| s.code());
        if got == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{token}: still {got:?}, waiting for {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_tokens_are_refused_after_a_reload_and_bad_files_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let server = start(dir.path(), &[]).await;
    let mut client = server.client().await;
    until(&mut client, READER, None).await;

    // Revoked: the reader is removed from the file.
    let without_reader: Vec<Token<'_>> = tokens()
        .into_iter()
        .filter(|t| t.name != "reader")
        .collect();
    write_atomically(&file, &tokens_toml(&without_reader));
    let took = until(&mut client, READER, Some(Code::Unauthenticated)).await;
    eprintln!("revoked token refused {took:?} after the file changed");
    until(&mut client, EVERYTHING, None).await;

    // A file that does not parse: logged, the tokens in use stay (the reader stays revoked, the others work).
    write_atomically(
        &file,
        "[[token]]\nname = \"broken\"\nsha256 = \"s3cr3t-pasted-token\"\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    until(&mut client, EVERYTHING, None).await;
    until(&mut client, READER, Some(Code::Unauthenticated)).await;
    assert!(
        server.log().contains("tokens file not loaded"),
        "{}",
        server.log()
    );
    assert!(
        !server.log().contains("s3cr3t-pasted-token"),
        "a pasted secret was logged"
    );

    // SIGHUP reads the file again although its modification time is the one seen: the reader is back.
    let text = tokens_toml(&tokens());
    std::fs::write(&file, &text).unwrap();
    until(&mut client, READER, None).await;
    // Set the old time back on a changed file: only SIGHUP notices.
    let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
    write_atomically(&file, &tokens_toml(&without_reader));
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-HUP");
    until(&mut client, READER, Some(Code::Unauthenticated)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tokens_file_at_start_exits_64_and_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let cases = [
        ("missing", None),
        (
            "[[token]]\nname = \"exporter\"\nsha256 = \"not-hex\"\ntenant = \"t\"\nscopes = [\"read\"]\n",
            Some("64 hexadecimal"),
        ),
        (
            "[[token]]\nname = \"exporter\"\nsha256 = \"00\"\ntenant = \"t\"\nscopes = [\"root\"]\n",
            Some("token[0]"),
        ),
    ];
    for (text, expected) in cases {
        if expected.is_some() {
            std::fs::write(&file, text).unwrap();
        }
        let path = if expected.is_some() {
            file.display().to_string()
        } else {
            dir.path().join("absent.toml").display().to_string()
        };
        let out = std::process::Command::new(cache_tests::server_binary())
            .env_clear()
            .env("CACHE_BACKEND", "memory")
            .env("CACHE_LISTEN_ADDR", "127.0.0.1:0")
            .env("CACHE_METRICS_LISTEN", "off")
            .env("CACHE_AUTH_TOKENS_FILE", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {stderr}");
        assert!(stderr.contains("tokens file"), "{stderr}");
        if let Some(e) = expected {
            assert!(stderr.contains(e), "{stderr}");
        }
    }
    // reflection = auth without a tokens file is a configuration error too.
    let out = std::process::Command::new(cache_tests::server_binary())
        .env_clear()
        .env("CACHE_BACKEND", "memory")
        .env("CACHE_LISTEN_ADDR", "127.0.0.1:0")
        .env("CACHE_REFLECTION", "auth")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log_even_at_trace_and_open_files_are_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, tokens_toml(&tokens())).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = start(dir.path(), &[("RUST_LOG", "trace")]).await;
    let mut client = server.client().await;
    for (_, _) in calls(&mut client, EVERYTHING).await {}
    for (_, _) in calls(&mut client, READER).await {}
    for (_, _) in calls(&mut client, "wrong-token-f00d").await {}
    // SDK with a token, too.
    let sdk = cache_client::CacheClient::builder(format!("http://{}", server.addr()))
        .bearer_token(WRITER)
        .build()
        .unwrap();
    sdk.metadata::<serde_json::Value>()
        .set("sdk", &serde_json::json!({"a": 1}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    for secret in [EVERYTHING, READER, WRITER, "wrong-token-f00d"] {
        assert!(!log.contains(secret), "the token {secret} is in the log");
        assert!(
            !log.contains(&sha256_hex(secret)),
            "a token's digest is in the log"
        );
    }
    assert!(
        log.contains("readable by others"),
        "no warning about mode 644"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_token_works_against_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let endpoint = format!("http://{}", server.addr());
    let with = cache_client::CacheClient::builder(&endpoint)
        .bearer_token(EVERYTHING)
        .build()
        .unwrap();
    let family = with.metadata::<serde_json::Value>();
    family
        .set("o1", &serde_json::json!({"v": 1}))
        .await
        .unwrap();
    assert_eq!(
        family.get("o1").await.unwrap(),
        Some(serde_json::json!({"v": 1}))
    );
    let without = cache_client::CacheClient::builder(&endpoint)
        .build()
        .unwrap();
    let err = without
        .metadata::<serde_json::Value>()
        .get("o1")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("Unauthenticated"), "{err:?}");
    let reader = cache_client::CacheClient::builder(&endpoint)
        .bearer_token(READER)
        .build()
        .unwrap();
    let denied = reader
        .metadata::<serde_json::Value>()
        .set("o2", &serde_json::json!(2))
        .await
        .unwrap_err();
    assert!(
        format!("{denied:?}").contains("PermissionDenied"),
        "{denied:?}"
    );
}
