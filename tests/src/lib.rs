//! Test harness for the end-to-end tests: a real `cache-server` on a loopback port ([`TestServer`]), real
//! `redis-server` processes ([`RedisServer`]), a TCP proxy that can hold traffic mid-call ([`GatedProxy`]),
//! and small builders for requests.
//!
//! Tests never skip: a missing `redis-server` is a failure with instructions, not a silent pass.
//!
//! Everything is re-exported at the crate root (`cache_tests::TestServer`, `cache_tests::set_req`, ...); the
//! modules only sort it by concept.

use std::time::Duration;

pub mod fault_proxy;
mod gated_proxy;
pub mod history;
mod pki;
mod ports;
pub mod process;
mod raw;
mod redis;
mod requests;
pub mod sentinel;
mod server;
mod tokens;
mod trace;

pub use fault_proxy::{FaultProxy, Mode};
pub use gated_proxy::GatedProxy;
pub use pki::Pki;
pub use ports::free_port;
pub use process::{ServerProcess, server_binary};
pub use raw::{
    RawCodec, append_message_field, key_bytes_with_options, raw_unary, request_bytes_with_key,
    struct_bytes_in_order,
};
pub use redis::{RedisServer, RedisServerBuilder};
pub use requests::{
    assert_invalid, compressible_json, export_key, get_req, key, metrics, put, random_bytes,
    set_req,
};
pub use sentinel::Sentinel;
pub use server::{TestServer, connect_channel, connect_client, memory_config, redis_config};
pub use tokens::{Token, bearer, sha256_hex, tokens_toml, write_atomically};
pub use trace::trace_init;

/// Largest gRPC message the test clients send or accept (above the server's 64 MiB default value limit).
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 128 << 20;

/// How long the harness waits for a server or a redis-server to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
