//! The `cache.v1` gRPC cache server: Redis as the shared primary tier, an in-process memory tier that keeps
//! answering when Redis is down, and the standard health and reflection services.
//!
//! # Layout
//! - [`config`]: defaults < file < env < flags.
//! - [`keys`]: validation and the injective key rendering.
//! - [`codec`]: the versioned stored envelope and compression.
//! - [`backend`]: the storage trait and its tiers.
//! - [`service`]: the gRPC handlers.
//! - [`error`]: the error type and its one mapping to gRPC codes.
//! - [`metrics`]: hot-path counters; [`prometheus`]: their Prometheus encoding and the `/metrics` endpoint.
//! - [`server`]: wiring, background tasks and graceful shutdown ([`run`]).
//! - [`telemetry`]: logs and OpenTelemetry traces.
//! - [`malloc`]: glibc allocator settings that keep resident memory near the configured capacity.

pub mod backend;
pub mod codec;
pub mod config;
pub mod error;
pub mod keys;
pub mod malloc;
pub mod metrics;
pub mod prometheus;
pub mod server;
pub mod service;
pub mod telemetry;

pub use config::Config;
pub use server::run;
