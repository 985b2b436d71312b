//! `baseline`: the bare servers `scripts/bench-compare` measures `cache-server` against. They implement
//! `cache.v1.CacheService/Get` and `Set` and nothing else, on the same tonic transport settings as
//! `cache-server`, so that a ratio against them isolates what the cache adds on top of the stack:
//!
//! - `--mode constant`: Get answers `found = true` with a constant value (`--value-size`, 1 KiB by default),
//!   Set answers `stored = true`; no storage at all. The ceiling for `cache-server --backend memory`.
//! - `--mode fred`: Get is one fred `GET`, Set one fred `SET` of the request's value, on the key
//!   `baseline:<CacheKey.id>`, over a fred pool of `--redis-pool-size` connections (the server's default, 4).
//!   The ceiling for `cache-server --backend hybrid`.
//! - `--mode plain`: the plainest tonic server there is — `Server::builder()` with its defaults (none of
//!   cache-server's transport settings), no layers — answering every Get with one prebuilt `GetResponse` of
//!   `--reply-bytes` encoded bytes (by default 1,137, what cache-server answers for a 1 KiB hit with its entry
//!   metadata), so the bytes on the wire match; Set answers `stored = true`. What a user would write as the
//!   fastest possible gRPC answer: the reference of per-call overhead.
//!
//! All also serve `grpc.health.v1` (cache.v1.CacheService SERVING), so the same readiness poll works.
//!
//! ```text
//! cargo run --release -p cache-tests --bin baseline -- --mode fred --listen 127.0.0.1:50061 \
//!     --redis-url redis://127.0.0.1:6380
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use cache_proto::pb;
use cache_proto::pb::cache_service_server::{CacheService, CacheServiceServer};
use clap::Parser;
use fred::prelude::*;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Largest gRPC message accepted or sent, as in cache-server (64 MiB values plus 1 MiB of overhead).
const MAX_MESSAGE_BYTES: usize = (64 << 20) + (1 << 20);

/// Bare tonic servers of cache.v1.CacheService Get/Set, the baselines of scripts/bench-compare.
#[derive(Debug, Parser)]
#[command(name = "baseline", version, about, long_about = None)]
struct Args {
    /// constant: answer from a constant; fred: pass straight to Redis with fred GET/SET.
    #[arg(long, value_enum)]
    mode: Mode,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Redis URL (fred mode).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// fred pool size (fred mode); cache-server's default is 4.
    #[arg(long, default_value_t = 4)]
    redis_pool_size: usize,
    /// Size of the constant value Get answers with (constant mode).
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Encoded size of the prebuilt GetResponse (plain mode).
    #[arg(long, default_value_t = 1137)]
    reply_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Constant,
    Fred,
    Plain,
}

/// A `GetResponse { found: true, value }` whose encoding is `bytes` long (at least 5).
fn reply_of(bytes: usize) -> pb::GetResponse {
    use prost::Message as _;
    let mut len = bytes.saturating_sub(5);
    loop {
        let reply = pb::GetResponse {
            found: true,
            value: Bytes::from(vec![b'x'; len]),
            entry: None,
        };
        match reply.encoded_len().cmp(&bytes) {
            std::cmp::Ordering::Greater if len > 0 => len -= 1,
            std::cmp::Ordering::Less => len += 1,
            _ => return reply,
        }
    }
}

/// What a baseline does behind Get and Set.
#[derive(Clone)]
enum Baseline {
    Constant(Bytes),
    Fred(Pool),
    Plain(Box<pb::GetResponse>),
}

fn storage_key(key: Option<&pb::CacheKey>) -> Result<String, Status> {
    match key {
        Some(k) if !k.id.is_empty() => Ok(format!("baseline:{}", k.id)),
        _ => Err(Status::invalid_argument("key.id: must not be empty")),
    }
}

fn redis_status(e: &fred::error::Error) -> Status {
    Status::unavailable(format!("redis: {e}"))
}

#[tonic::async_trait]
impl CacheService for Baseline {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let value = match self {
            Baseline::Plain(reply) => return Ok(Response::new((**reply).clone())),
            Baseline::Constant(value) => Some(value.clone()),
            Baseline::Fred(pool) => {
                let key = storage_key(request.get_ref().key.as_ref())?;
                pool.get::<Option<Bytes>, _>(key)
                    .await
                    .map_err(|e| redis_status(&e))?
            }
        };
        Ok(Response::new(pb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            entry: None,
        }))
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        if let Baseline::Fred(pool) = self {
            let request = request.into_inner();
            let key = storage_key(request.key.as_ref())?;
            pool.set::<(), _, _>(key, request.value, None, None, false)
                .await
                .map_err(|e| redis_status(&e))?;
        }
        Ok(Response::new(pb::SetResponse {
            stored: true,
            entry: None,
        }))
    }

    async fn invalidate(
        &self,
        _request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline serves Get and Set only",
        ))
    }

    async fn metrics(
        &self,
        _request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline serves Get and Set only",
        ))
    }

    async fn get_many(
        &self,
        _request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline serves Get and Set only",
        ))
    }

    async fn set_many(
        &self,
        _request: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline serves Get and Set only",
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let baseline = match args.mode {
        Mode::Plain => Baseline::Plain(Box::new(reply_of(args.reply_bytes))),
        Mode::Constant => Baseline::Constant(Bytes::from(vec![b'x'; args.value_size])),
        Mode::Fred => {
            let config = Config::from_url(&args.redis_url).context("invalid --redis-url")?;
            let pool = Builder::from_config(config)
                .with_connection_config(|c| c.tcp.nodelay = Some(true))
                .build_pool(args.redis_pool_size)
                .context("failed to build the fred pool")?;
            pool.init().await.context("failed to connect to Redis")?;
            Baseline::Fred(pool)
        }
    };
    if args.mode == Mode::Plain {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<CacheServiceServer<Baseline>>().await;
        // Every builder setting at its default, no message limits, no layers.
        Server::builder()
            .add_service(health_service)
            .add_service(CacheServiceServer::new(baseline))
            .serve_with_shutdown(args.listen, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        return Ok(());
    }
    let service = CacheServiceServer::new(baseline)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<Baseline>>().await;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // The transport settings of cache-server (src/server.rs), so that only the service differs.
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
