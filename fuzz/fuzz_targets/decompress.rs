//! Decompression with its size bounds (`decompress`): the first byte picks the codec and the mode, the next
//! four the expected length; the rest is a payload as stored, or a value to compress, damage and decompress,
//! or (also) a value to round-trip through compression.
#![no_main]

use cache_server::fuzzing::{self, CompressionRequest, MAX_VALUE_BYTES};
use cache_server_fuzz::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (head, payload) = rest.split_at(rest.len().min(4));
    let mut word = [0u8; 4];
    word[..head.len()].copy_from_slice(head);
    let word = u32::from_le_bytes(word);
    let codec = codec(mode);
    if mode & 0x40 == 0 {
        // Mostly within the bound, one time in nine above it.
        let expected = u64::from(word) % (MAX_VALUE_BYTES + MAX_VALUE_BYTES / 8);
        fuzzing::decompression(codec, payload, expected);
    } else {
        let [a, b, c, d] = word.to_le_bytes();
        let flip = (usize::from(u16::from_le_bytes([a, b])), c);
        let cut = usize::from(d) << 4;
        fuzzing::damaged_payload(codec, payload, flip, cut, (mode << 2) as i8 >> 4);
    }
    if mode & 0x80 != 0 {
        let request = match mode >> 2 & 3 {
            0 => CompressionRequest::Auto,
            1 => CompressionRequest::None,
            2 => CompressionRequest::Gzip,
            _ => CompressionRequest::Zstd,
        };
        fuzzing::compression_round_trip(payload, request);
    }
});
