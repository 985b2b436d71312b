//! Connections: idle ones are closed, and a process out of descriptors neither spins nor stays stuck.

use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_tests::{ServerProcess, get_req, key, set_req};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The HTTP/2 client preface and an empty SETTINGS frame: a client that connects and never calls.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let server = ServerProcess::start(
        &[("CACHE_BACKEND", "memory"), ("CACHE_IDLE_TIMEOUT", "1s")],
        &[],
    )
    .await;
    // Idle: the server ends it about a second after the preface.
    let mut idle = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let took = started.elapsed();
    eprintln!("hostile connections: an idle connection closed after {took:?} (timeout 1 s)");
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );

    // Busy: a call every 300 ms keeps one connection for 3 s.
    let mut client = server.client().await;
    let k = key(pb::CacheType::Metadata, "busy");
    client.set(set_req(k.clone(), &b"v"[..])).await.unwrap();
    for _ in 0..10 {
        client
            .get(get_req(k.clone()))
            .await
            .expect("a connection in use is never closed as idle");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_neither_spins_nor_stays_stuck() {
    let _alone = crate::MEASURING.lock().await;
    // This process holds 1,100 sockets of its own.
    let _ = rlimit::increase_nofile_limit(4096);
    let idle_timeout = Duration::from_secs(5);
    let server = ServerProcess::start_with_descriptor_limit(
        1024,
        &[("CACHE_BACKEND", "memory"), ("CACHE_IDLE_TIMEOUT", "5s")],
        &[],
    )
    .await;
    let connecting = Instant::now();
    let mut idle = Vec::with_capacity(1100);
    for _ in 0..1100 {
        idle.push(
            tokio::net::TcpStream::connect(server.addr())
                .await
                .expect("connect (the listen backlog takes what the server cannot accept)"),
        );
    }
    eprintln!(
        "hostile connections: 1,100 connections made in {:?}",
        connecting.elapsed()
    );
    // Out of descriptors now: measure what the server burns while nothing useful happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu_before, wall) = (server.cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    let share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    // A new client is served once idle connections have given their descriptors back.
    let started = Instant::now();
    let answered = tokio::time::timeout(idle_timeout * 2 + Duration::from_secs(1), async {
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                let mut client = cache_tests::connect_client(server.addr()).await;
                client.get(get_req(key(pb::CacheType::Metadata, "k"))).await
            })
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                return;
            }
        }
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "hostile connections: 1,100 idle sockets over a 1,024-descriptor limit: server CPU {:.1} % while stuck; a new client served after {took:?} (idle timeout {idle_timeout:?})",
        share * 100.0
    );
    assert!(
        share < 0.10,
        "the server burned {:.0} % of a core",
        share * 100.0
    );
    assert!(
        answered.is_ok(),
        "no new client was served within 2x the idle timeout"
    );
    let log = server.log();
    assert!(
        log.contains("cannot accept connections"),
        "the descriptor shortage is logged: {}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_and_stream_floods_leave_other_clients_served() {
    let _alone = crate::MEASURING.lock().await;
    let server = ServerProcess::start(&[("CACHE_BACKEND", "memory")], &[]).await;
    let mut client = server.client().await;
    let k = key(pb::CacheType::Metadata, "steady");
    client.set(set_req(k.clone(), &b"v"[..])).await.unwrap();
    let rss_before = server.status_kib("VmRSS");

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, as fast as the client can.
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let driver = tokio::spawn(connection);
    let started = Instant::now();
    let mut reset = 0u32;
    for _ in 0..10_000 {
        let Ok(ready) = send.clone().ready().await else {
            break;
        };
        send = ready;
        let request = crate::grpc_request(&server.addr(), "Get");
        let Ok((_, mut stream)) = send.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        reset += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    eprintln!(
        "hostile connections: rapid reset: {reset} streams reset in {:?}; the server ended the connection: {}",
        started.elapsed(),
        ended.is_ok()
    );
    assert!(
        ended.is_ok(),
        "the server kept a rapid-reset connection open"
    );

    // A flood of half-sent calls, each with a partial body that never completes.
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let _driver = tokio::spawn(connection);
    let mut open = Vec::new();
    for _ in 0..10_000 {
        let Ok(Ok(ready)) =
            tokio::time::timeout(Duration::from_millis(200), send.clone().ready()).await
        else {
            break;
        };
        send = ready;
        let request = crate::grpc_request(&server.addr(), "Get");
        let Ok((response, mut stream)) = send.send_request(request, false) else {
            break;
        };
        // A frame header announcing 1 KiB, and 3 bytes of it.
        let _ = stream.send_data(bytes::Bytes::from_static(&[0, 0, 0, 4, 0, 1, 2, 3]), false);
        open.push((response, stream));
    }
    let (_, p99) = crate::small_gets(server.addr(), &k, 200).await;
    let rss = server.status_kib("VmRSS");
    eprintln!(
        "hostile connections: {} half-sent calls on one connection (the server admits 1,024 at once, SETTINGS_MAX_CONCURRENT_STREAMS; the client queues the rest); small Gets p99 {p99:?}; RSS {} -> {} MiB",
        open.len(),
        rss_before >> 10,
        rss >> 10
    );
    assert!(
        rss < rss_before + (64 << 10),
        "RSS grew by {} KiB",
        rss - rss_before
    );
    assert!(p99 < Duration::from_millis(100), "small Gets p99 {p99:?}");
}
