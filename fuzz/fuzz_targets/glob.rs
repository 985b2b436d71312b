//! Invalidation globs (`glob_match`): the first two bytes give the pattern's length, the rest splits into a
//! pattern and a text; the match must agree with the reference dynamic program, and never hang.
#![no_main]

use cache_server::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (head, rest) = data.split_at(2);
    let split = usize::from(u16::from_le_bytes([head[0], head[1]])) % (rest.len() + 1);
    let (pattern, text) = rest.split_at(split);
    fuzzing::glob(pattern, text);
});
