//! The versioned envelope in which cache values are stored, and their compression.
//!
//! A stored value (a Redis string, or an entry of the in-process memory tier) is an
//! envelope: a fixed 26-byte prefix, a protobuf-encoded [`Header`], then the payload,
//! which is the value after compression (see [`Codec`]).
//!
//! # Format (version 1)
//!
//! All integers are little-endian.
//!
//! | bytes          | field         | meaning                                                  |
//! |----------------|---------------|----------------------------------------------------------|
//! | `0..4`         | magic         | `CA 63 45 76` (`b"\xCAcEv"`; never valid UTF-8)         |
//! | `4`            | version       | [`ENVELOPE_VERSION`] (1)                                 |
//! | `5`            | codec         | 0 none, 1 gzip, 2 zstd                                   |
//! | `6..10`        | `header_len`  | `u32`, length of the header bytes                        |
//! | `10..14`       | `header_crc`  | `u32`, CRC-32C, see below                                |
//! | `14..18`       | `payload_crc` | `u32`, CRC-32C of the payload bytes                      |
//! | `18..26`       | `payload_len` | `u64`, length of the payload bytes                       |
//! | `26..26+h`     | header        | protobuf message (fields below), `h = header_len`        |
//! | `26+h..`       | payload       | exactly `payload_len` bytes; trailing bytes are an error |
//!
//! `header_crc` is the CRC-32C of prefix bytes `4..10` (version, codec, `header_len`),
//! then prefix bytes `14..26` (`payload_crc`, `payload_len`), then the header bytes. It
//! therefore also protects the codec byte and the lengths: every single-bit corruption of
//! an envelope is detected by [`decode`].
//!
//! The header is a protobuf message (proto3 encoding, default values omitted):
//!
//! ```text
//! message Header {
//!   uint64 created_at_ms = 1;
//!   uint64 expires_at_ms = 2;
//!   uint64 size_bytes = 3;            // logical (uncompressed) length
//!   string content_type = 4;
//!   string model_hash = 5;
//!   repeated Pair metadata = 6;       // in the given order
//!   string export_options_json = 7;
//! }
//! message Pair { string key = 1; string value = 2; }
//! ```
//!
//! Unknown header fields are skipped, so later versions may add fields without
//! changing [`ENVELOPE_VERSION`]. An unknown version or codec is an error, which callers
//! treat as a miss.
//!
//! # Compression
//!
//! [`compress`] applies the requested codec and keeps the result only when it saves at
//! least 10 %. [`decompress`] never produces more than the expected length, so a
//! decompression bomb costs at most [`CompressionPolicy::max_value_bytes`] of memory.
//! zstd contexts are reused per thread.
//!
//! The parts live in private submodules and are re-exported here: `envelope` (the format, [`encode`] and
//! [`decode`]), `header` (the header message and its encoder) and `compress` ([`compress`], [`decompress`]
//! and their policy).

use std::io;

mod compress;
mod envelope;
mod header;
#[cfg(test)]
pub(crate) mod test_support;

pub use compress::{CompressionPolicy, CompressionRequest, compress, decompress, should_offload};
pub use envelope::{ENVELOPE_VERSION, Envelope, Header, Provenance, decode, decode_from, encode};

/// The compression applied to a stored payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Stored as is.
    None,
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Zstd => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// Why an envelope could not be decoded or a payload decompressed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input ends before the envelope does.
    #[error("envelope is truncated")]
    Truncated,
    /// The input does not start with the envelope magic.
    #[error("envelope has a bad magic number")]
    BadMagic,
    /// The envelope has a format version this build does not know.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The envelope names a codec this build does not know.
    #[error("unknown envelope codec {0}")]
    UnknownCodec(u8),
    /// The header (or the prefix it protects) is corrupt.
    #[error("envelope header checksum mismatch")]
    HeaderChecksum,
    /// The payload is corrupt.
    #[error("envelope payload checksum mismatch")]
    PayloadChecksum,
    /// The header bytes are not a valid header message.
    #[error("envelope header is malformed")]
    BadHeader(#[source] prost::DecodeError),
    /// A length differs from the one recorded or expected.
    #[error("length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The recorded or expected length.
        expected: u64,
        /// The length found.
        actual: u64,
    },
    /// The value would be larger than allowed.
    #[error("value exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The payload could not be decompressed.
    #[error("decompression failed")]
    Decompress(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::test_support::{REQUESTS, json_like, random_bytes, round_trip, sample_header};
    use super::*;

    fn full_decode(stored: Bytes, policy: &CompressionPolicy) -> Result<Bytes, CodecError> {
        let env = decode(stored)?;
        decompress(env.codec, &env.payload, env.header.size_bytes, policy)
    }

    #[test]
    fn round_trips_every_size_and_request() {
        let policy = CompressionPolicy::default();
        for size in [0, 1, 100, 4096, 1024 * 1024 + 1, 3 * 1024 * 1024] {
            for value in [json_like(size), random_bytes(size, 7)] {
                for request in REQUESTS {
                    round_trip(&value, request, &policy);
                }
            }
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let policy = CompressionPolicy::default();
        let value = json_like(300);
        for request in [
            CompressionRequest::None,
            CompressionRequest::Gzip,
            CompressionRequest::Zstd,
        ] {
            let (codec, stored) = compress(&value, request, &policy);
            let envelope = encode(&sample_header(value.len() as u64), codec, &stored);
            assert_eq!(full_decode(envelope.clone(), &policy).unwrap(), value);
            for bit in 0..envelope.len() * 8 {
                let mut corrupt = envelope.to_vec();
                corrupt[bit / 8] ^= 1 << (bit % 8);
                let corrupt = Bytes::from(corrupt);
                assert!(decode(corrupt.clone()).is_err(), "{codec:?} bit {bit}");
                assert!(
                    full_decode(corrupt, &policy).is_err(),
                    "{codec:?} bit {bit}"
                );
            }
        }
    }
}
