#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`ClientBuilder`] (`builder.rs`): endpoints, connections, deadlines, retries, auth, TLS, message limits.
//! - [`CacheClient`] (`client.rs`): the call loop (deadline, retries, budget), invalidation, metrics, health.
//! - [`Family`], [`ExportResults`], [`ExportKey`] (`family/`): typed, serde-backed access per cache type,
//!   and `get_or_compute` with per-process single-flight (`single_flight.rs`).
//! - [`RetryPolicy`] (`retry.rs`): gRPC A6 retries and retry throttling.
//! - [`Error`] (`error.rs`): the one mapping from gRPC statuses.
//! - [`pb`]: the generated protocol, as an escape hatch.

mod builder;
mod client;
mod error;
mod family;
mod retry;
mod single_flight;

pub use builder::{
    ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_REQUEST_TIMEOUT, MAX_CONNECTIONS,
};
pub use client::{CacheClient, Health, SERVICE_NAME};
pub use error::Error;
pub use family::{Cached, ExportKey, ExportResults, Family, JSON_CONTENT_TYPE, SetOptions};
pub use retry::{MAX_ATTEMPTS_LIMIT, RetryPolicy, RetryThrottling};

/// The generated `cache.v1` protocol (messages and the raw `CacheServiceClient`), for what the typed API does
/// not cover.
pub mod pb {
    pub use cache_proto::pb::*;
}

/// TLS settings for [`ClientBuilder::tls`], re-exported from tonic.
pub mod tls {
    pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
}

pub use bytes::Bytes;
