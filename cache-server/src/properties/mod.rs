//! The properties that the proptests (`cargo test`, stable) and the fuzz targets (`fuzz/`, nightly) check on
//! everything the server parses from outside or from Redis: each is a function of the input that panics when
//! the property is violated, so that both drivers report the same failures.
//!
//! - `codec`: envelopes and compressed payloads, whatever their bytes.
//! - `keys`: key validation, rendering and parsing; invalidation globs; export options.
//! - `requests`: request messages decoded from any bytes, through the service's validation.
//!
//! Compiled for the tests and with the `fuzzing` feature only.

pub mod codec;
pub mod keys;
pub mod requests;
