//! Fault and scale-out scenarios, linked as one test binary: several `cache-server` replicas (release
//! binaries) over real `redis-server` processes (single, Sentinel) that are killed, hung, partitioned,
//! evicted and failed over under load. Each module states the contract it tries to break; the histories
//! are judged by `cache_tests::history`.
//!
//! Run one scenario with a filter: `cargo test --release -p cache-tests --test faults failover::`.
//! `FAULT_TEST_SECONDS` sets the length of `redis_faults`' load test.

mod contract;
mod eviction;
mod failover;
mod redis_faults;
mod replicas;
