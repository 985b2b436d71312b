//! Hostile and buggy clients against the release binary, over real HTTP/2 connections: a request built to
//! amplify memory, clients that never read their replies, idle connections past the descriptor limit, requests
//! over every limit, bytes that are not a message. Each test tries to break one promise of
//! docs/operations.md ("Memory and connections under hostile or buggy clients", "Limits on what a request
//! carries", "Error codes") and prints its figures.
//!
//! Run: `cargo test --release -p cache-tests --test hostile -- --nocapture`.

mod budget;
mod connections;
mod overload;
mod requests;
mod stored;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_proto::pb;

/// Held by the tests that measure latency or CPU: cargo runs a binary's tests two at a time, and one test's
/// flood is another's noise.
pub static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A raw HTTP/2 connection whose streams never open their receive window: the server can answer headers,
/// never data. The connection itself is driven (PINGs answered) by a task that lives as long as the value.
pub struct NeverReads {
    send: h2::client::SendRequest<Bytes>,
    responses: Vec<h2::client::ResponseFuture>,
    driver: tokio::task::JoinHandle<()>,
    authority: String,
}

impl NeverReads {
    /// Connects and completes the HTTP/2 handshake with a receive window of 0 for every stream.
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake(tcp)
            .await
            .expect("HTTP/2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self {
            send,
            responses: Vec::new(),
            driver,
            authority: addr.to_string(),
        }
    }

    /// Sends one unary call (`method` of `cache.v1.CacheService`) and does not read its answer.
    pub async fn call(&mut self, method: &str, message: &impl prost::Message) {
        let send = self.send.clone().ready().await.expect("stream slot");
        self.send = send;
        let request = grpc_request(&self.authority, method);
        let (response, mut stream) = self.send.send_request(request, false).expect("send");
        stream
            .send_data(grpc_frame(message), true)
            .expect("send body");
        self.responses.push(response);
    }
}

impl Drop for NeverReads {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The head of a unary call to `method` of `cache.v1.CacheService` on `authority`, for raw HTTP/2 clients.
pub fn grpc_request(authority: &impl std::fmt::Display, method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/cache.v1.CacheService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// A gRPC length-prefixed frame of `message`.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

/// Latencies of `n` small Gets of `key` from a fresh client: (p50, p99).
pub async fn small_gets(
    addr: std::net::SocketAddr,
    key: &pb::CacheKey,
    n: usize,
) -> (Duration, Duration) {
    let mut client = cache_tests::connect_client(addr).await;
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let found = client
            .get(cache_tests::get_req(key.clone()))
            .await
            .expect("a small Get")
            .into_inner()
            .found;
        assert!(found, "the small entry is there");
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    (latencies[n / 2], latencies[(n * 99 / 100).min(n - 1)])
}

/// MiB, for figures.
pub fn mib(kib: u64) -> u64 {
    kib >> 10
}
