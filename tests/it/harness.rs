//! The harness itself: `RedisServer` really starts, freezes, dies and comes back on the same port, and the
//! gated proxy holds and releases traffic. (The Redis-backed service tests build on these guarantees.)

use std::time::Duration;

use cache_tests::{GatedProxy, RedisServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends a raw RESP command line and returns the first reply, or `None` on timeout / refused connection.
async fn raw(port: u16, line: &str, timeout: Duration) -> Option<String> {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

#[tokio::test]
async fn redis_server_starts_pauses_dies_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    assert_ne!(port, 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.cli(["ping"]), "PONG");
    assert_eq!(redis.cli(["set", "k", "v"]), "OK");
    assert_eq!(redis.cli(["get", "k"]), "v");
    // No persistence configured.
    assert_eq!(redis.cli(["config", "get", "save"]).trim_end(), "save");
    assert_eq!(redis.cli(["config", "get", "appendonly"]), "appendonly\nno");

    redis.pause();
    assert_eq!(
        raw(port, "PING", Duration::from_millis(300)).await,
        None,
        "a paused server must not answer"
    );
    redis.resume();
    assert_eq!(
        raw(port, "PING", Duration::from_secs(2)).await.as_deref(),
        Some("+PONG\r\n")
    );

    redis.kill().await;
    assert!(redis.pid().is_none());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a killed server must refuse connections"
    );

    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(["ping"]), "PONG");
    assert_eq!(
        redis.cli(["exists", "k"]),
        "0",
        "nothing survives a restart"
    );
}

#[tokio::test]
async fn redis_server_builder_passes_arguments() {
    let redis = RedisServer::builder()
        .arg("--requirepass")
        .arg("s3cret")
        .start()
        .await;
    let reply = raw(redis.port(), "PING", Duration::from_secs(2)).await;
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("-NOAUTH")),
        "{reply:?}"
    );
    // cli() authenticates with the configured password.
    assert_eq!(redis.cli(["ping"]), "PONG");
}

#[tokio::test]
async fn gated_proxy_holds_and_releases_bytes() {
    // An echo server behind the proxy.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = GatedProxy::start(echo_addr).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.hold_upstream_after(4);
    s.write_all(b"abcdefgh").await.unwrap();
    proxy.wait_held(Duration::from_secs(2)).await;
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf[..4]).await.unwrap();
    assert_eq!(&buf[..4], b"abcd");
    let more = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf[4..])).await;
    assert!(more.is_err(), "held bytes must not pass");
    proxy.release();
    s.read_exact(&mut buf[4..]).await.unwrap();
    assert_eq!(&buf, b"abcdefgh");
    assert_eq!(proxy.upstream_bytes(), 8);
    assert_eq!(proxy.downstream_bytes(), 8);
}
