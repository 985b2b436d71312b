//! The `cache.v1` gRPC cache server: Redis as the shared primary tier, an in-process memory tier that keeps
//! answering when Redis is down, and the standard health and reflection services.
//!
//! # Layout
//! - [`config`]: defaults < file < env < flags.
//! - `keys`: validation and the injective key rendering.
//! - `codec`: the versioned stored envelope and compression.
//! - `backend`: the storage trait and its tiers.
//! - `service`: the gRPC handlers.
//! - `error`: the error type and its one mapping to gRPC codes.
//! - `metrics`: hot-path counters; `prometheus`: their Prometheus encoding and the `/metrics` endpoint.
//! - `server`: wiring, background tasks and graceful shutdown ([`run`]).
//! - `connections`: connection limits, the idle timeout and accept back-off; `inflight`: the memory budget of
//!   calls in flight; [`tls`]: TLS on the gRPC port, reloaded when its files change.
//! - `telemetry`: logs and OpenTelemetry traces.
//! - `malloc`: glibc allocator settings that keep resident memory near the configured capacity.
//! - `properties`: what the proptests and the fuzz targets check on every parser of outside bytes (tests and
//!   the `fuzzing` feature only).
//!
//! # Public surface
//! The modules are private except [`config`], which the binary and the end-to-end tests use nearly all of.
//! Everything else public is a re-export below: what the binary, the benchmarks, the end-to-end tests and the
//! load generator use, plus [`Telemetry`] and [`envelope::CodecError`], which the documentation of
//! [`init_telemetry`] and [`envelope::decompress`] names. Anything else unused is then reported by rustc as dead
//! code. The `fuzzing` feature adds `fuzzing`, for the fuzz targets in `fuzz/` only.

pub mod auth;
mod backend;
mod codec;
pub mod config;
mod connections;
mod error;
mod inflight;
mod keys;
mod malloc;
mod metrics;
mod prometheus;
#[cfg(any(test, feature = "fuzzing"))]
mod properties;
mod server;
mod service;
mod telemetry;
pub mod tls;

// The binary: configuration, process setup, the server.
pub use config::Config;
pub use malloc::tune as tune_malloc;
pub use server::run;
pub use telemetry::{Telemetry, init as init_telemetry, otlp_endpoint, tracing_enabled};

// The end-to-end tests and the load generator: a service without a listener, the Redis tier's pruning period,
// the names of gRPC codes.
pub use backend::PRUNE_EVERY;
pub use error::{SetupError, code_name};
pub use metrics::Metrics;
pub use server::build_backend;
pub use service::CacheService;

// The benchmarks: keys, the memory tier, the metrics hot path, and the envelope codec (grouped below).
pub use backend::{Backend, Memory, MemoryOptions};
pub use keys::{CacheType, Key, Keyspace};
pub use metrics::{LATENCY_BOUNDS_SECONDS, Rpc};

/// The stored envelope and its compression (the `codec` module), for the codec and memory benchmarks.
pub mod envelope {
    pub use crate::codec::{
        Codec, CodecError, CompressionPolicy, CompressionRequest, Header, compress, decode,
        decompress, encode,
    };
}

/// What the fuzz targets in `fuzz/` call: the properties they check and the types their inputs are made of.
/// Behind the `fuzzing` feature; not an interface.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::codec::{Codec, CompressionRequest, Header};
    pub use crate::keys::{Keyspace, MAX_OPTIONS_DEPTH};
    pub use crate::properties::codec::{
        MAX_VALUE_BYTES, built_envelope, compression_round_trip, damaged_payload, decompression,
        envelope,
    };
    pub use crate::properties::keys::{glob, key, keys_are_injective, options, rendered};
    pub use crate::properties::requests::{Message, request};
}
