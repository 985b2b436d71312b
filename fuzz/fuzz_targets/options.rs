//! Export options (`canonical_options_json`): options of any shape and depth, with any numbers, must
//! canonicalise without overflowing the stack, to JSON that is its own canonical form, or be refused for a
//! non-finite number or too deep a nesting.
#![no_main]

use arbitrary::Unstructured;
use cache_server::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(options) = cache_server_fuzz::options(&mut Unstructured::new(data)) {
        fuzzing::options(&options);
    }
});
