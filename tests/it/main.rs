//! End-to-end tests of the service's behaviour, linked as one test binary: real `cache-server` instances (in
//! process or as the release binary), real `redis-server` processes on free ports, real clients (tonic stubs,
//! the SDK, Python, grpcurl). Each module is one area; its first lines say what it promises.
//!
//! Run one area with a filter: `cargo test --release -p cache-tests --test it redis_tier::`.

mod auth;
mod harness;
mod invalidation;
mod lifecycle;
mod metrics;
mod prometheus;
mod redis_acl;
mod redis_tier;
mod roundtrip;
mod sdk_families;
mod sdk_get_or_compute;
mod sdk_retries;
mod sdk_security;
mod tenants;
mod tls;
mod validation;
