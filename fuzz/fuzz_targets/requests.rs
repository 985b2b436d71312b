//! Request validation: the first byte picks `SetRequest`, `GetRequest`, `GetManyRequest` or
//! `InvalidateRequest`; the rest is decoded as it with prost, as gRPC would, and run through the service's
//! validation.
#![no_main]

use cache_server::fuzzing::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, rest)) = data.split_first() {
        fuzzing::request(Message::ALL[usize::from(which) % Message::ALL.len()], rest);
    }
});
