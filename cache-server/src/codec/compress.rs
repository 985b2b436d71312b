//! Compression of stored payloads: [`compress`] with the 10 % rule, bounded [`decompress`], and the
//! per-thread zstd contexts.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use bytes::Bytes;
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe;

use super::{Codec, CodecError};

/// Values at least this long are worth compressing on the blocking pool.
const OFFLOAD_MIN_LEN: usize = 256 * 1024;

/// The most that gzip decompression preallocates, whatever the expected length.
const GZIP_PREALLOC_CAP: usize = 64 * 1024 * 1024;

/// The largest zstd window accepted when decompressing (128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// What the caller asked for (mirrors the proto enum `Compression`: AUTO=0, NONE=1, GZIP=2,
/// ZSTD=3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionRequest {
    /// zstd for values of at least [`CompressionPolicy::threshold_bytes`], else none.
    Auto,
    /// No compression.
    None,
    /// gzip, whatever the size.
    Gzip,
    /// zstd, whatever the size.
    Zstd,
}

/// Limits and policy for compression.
#[derive(Debug, Clone, Copy)]
pub struct CompressionPolicy {
    /// AUTO compresses (zstd) only values of at least this many bytes.
    pub threshold_bytes: u64,
    /// Maximum logical size of a value; decompression never produces more.
    pub max_value_bytes: u64,
    /// zstd compression level. Default 1: on JSON exports it keeps ~95 % of level 3's ratio at ~1.4x its
    /// speed (457 vs 337 MiB/s per core at 1 MiB, measured by `cargo bench --bench codec`), which keeps a
    /// loaded 2-core server above 200 MB/s of 1 MiB Sets.
    pub zstd_level: i32,
    /// gzip compression level (0 to 9; larger values are clamped to 9).
    pub gzip_level: u32,
}

impl Default for CompressionPolicy {
    fn default() -> Self {
        Self {
            threshold_bytes: 1024 * 1024,
            max_value_bytes: 64 * 1024 * 1024,
            zstd_level: 1,
            gzip_level: 6,
        }
    }
}

thread_local! {
    static ZSTD_COMPRESSOR: RefCell<Option<(i32, Compressor<'static>)>> =
        const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `value` per the request and policy. Returns the codec actually applied and the
/// stored bytes.
///
/// AUTO: zstd when `value.len() >= threshold_bytes`, else none. GZIP/ZSTD: applied whatever
/// the size. Compression is kept only if it saves at least 10 % (stored <= 0.9 * len);
/// otherwise the result is [`Codec::None`] with the original bytes (a zero-copy clone).
pub fn compress(
    value: &Bytes,
    request: CompressionRequest,
    policy: &CompressionPolicy,
) -> (Codec, Bytes) {
    let codec = match request {
        CompressionRequest::Auto if value.len() as u64 >= policy.threshold_bytes => Codec::Zstd,
        CompressionRequest::Auto | CompressionRequest::None => Codec::None,
        CompressionRequest::Gzip => Codec::Gzip,
        CompressionRequest::Zstd => Codec::Zstd,
    };
    // Largest stored size that still saves 10 %: floor(0.9 * len), without overflow.
    let limit = value.len() / 10 * 9 + value.len() % 10 * 9 / 10;
    let compressed = match codec {
        _ if limit == 0 => None,
        Codec::None => None,
        Codec::Gzip => gzip_compress(value, limit, policy.gzip_level),
        Codec::Zstd => zstd_compress(value, limit, policy.zstd_level),
    };
    match compressed {
        Some(mut stored) => {
            stored.shrink_to_fit();
            (codec, Bytes::from(stored))
        }
        None => (Codec::None, value.clone()),
    }
}

/// Compresses into a buffer of capacity `limit`; `None` if the output does not fit.
fn zstd_compress(src: &[u8], limit: usize, level: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.try_reserve_exact(limit).ok()?;
    let mut job = Some(|c: &mut Compressor<'static>| c.compress_to_buffer(src, &mut out));
    let cached = ZSTD_COMPRESSOR.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if let Some((current, c)) = slot.as_mut()
            && *current != level
        {
            if c.set_compression_level(level).is_ok() {
                *current = level;
            } else {
                *slot = None;
            }
        }
        if slot.is_none() {
            *slot = Some((level, Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        Some(job.take()?(c))
    });
    let written = match (cached, job.take()) {
        (Ok(Some(result)), _) => result,
        // No usable thread-local context (thread exiting, or allocation failed).
        (_, Some(mut job)) => job(&mut Compressor::new(level).ok()?),
        (_, None) => return None,
    };
    written.ok()?;
    Some(out)
}

/// gzip-compresses `src`; `None` if the output would exceed `limit` bytes.
fn gzip_compress(src: &[u8], limit: usize, level: u32) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(limit).ok()?;
    let sink = BoundedSink { buf, limit };
    let mut encoder = flate2::write::GzEncoder::new(sink, flate2::Compression::new(level.min(9)));
    encoder.write_all(src).ok()?;
    Some(encoder.finish().ok()?.buf)
}

/// A `Vec` writer that refuses to grow beyond `limit` bytes.
struct BoundedSink {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for BoundedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() > self.limit - self.buf.len() {
            return Err(io::Error::other("compressed output exceeds the limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses a stored payload, refusing to produce more than `expected_len` bytes and
/// checking that the output is exactly `expected_len` bytes long.
///
/// `expected_len` must itself be at most [`CompressionPolicy::max_value_bytes`], else
/// [`CodecError::TooLarge`] is returned without any work. [`Codec::None`] returns a
/// zero-copy clone of `payload`.
pub fn decompress(
    codec: Codec,
    payload: &Bytes,
    expected_len: u64,
    policy: &CompressionPolicy,
) -> Result<Bytes, CodecError> {
    if expected_len > policy.max_value_bytes {
        return Err(CodecError::TooLarge {
            limit: policy.max_value_bytes,
        });
    }
    let expected = usize::try_from(expected_len).map_err(|_| CodecError::TooLarge {
        limit: usize::MAX as u64,
    })?;
    let out = match codec {
        Codec::None => {
            check_len(expected, payload.len())?;
            return Ok(payload.clone());
        }
        Codec::Gzip => gzip_decompress(payload, expected)?,
        Codec::Zstd => zstd_decompress(payload, expected)?,
    };
    check_len(expected, out.len())?;
    Ok(Bytes::from(out))
}

fn check_len(expected: usize, actual: usize) -> Result<(), CodecError> {
    if expected == actual {
        Ok(())
    } else {
        Err(CodecError::LengthMismatch {
            expected: expected as u64,
            actual: actual as u64,
        })
    }
}

fn zstd_decompress(payload: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let too_large = CodecError::TooLarge {
        limit: expected as u64,
    };
    // Refuse a frame that declares more than expected before allocating anything.
    if let Ok(Some(declared)) = zstd_safe::get_frame_content_size(payload)
        && declared > expected as u64
    {
        return Err(too_large);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(expected)
        .map_err(|e| CodecError::Decompress(io::Error::new(io::ErrorKind::OutOfMemory, e)))?;
    // Single-pass decompression into `out`, whose capacity bounds the output: a frame that
    // would produce more fails with `dstSize_tooSmall`.
    let mut job = Some(|d: &mut Decompressor<'static>| d.decompress_to_buffer(payload, &mut out));
    let cached = ZSTD_DECOMPRESSOR.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(new_decompressor().ok()?);
        }
        Some(job.take()?(slot.as_mut()?))
    });
    let result = match (cached, job.take()) {
        (Ok(Some(result)), _) => result,
        (_, Some(mut job)) => new_decompressor().and_then(|mut d| job(&mut d)),
        (_, None) => Err(io::Error::other("zstd decompression context unavailable")),
    };
    match result {
        Ok(_) => Ok(out),
        Err(e)
            if is_zstd_error(
                &e,
                zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall,
            ) =>
        {
            Err(too_large)
        }
        Err(e) => Err(CodecError::Decompress(e)),
    }
}

fn new_decompressor() -> io::Result<Decompressor<'static>> {
    let mut d = Decompressor::new()?;
    d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(d)
}

fn is_zstd_error(e: &io::Error, kind: zstd_safe::zstd_sys::ZSTD_ErrorCode) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<zstd::Error>())
        .is_some_and(|z| z.is(kind))
}

fn gzip_decompress(payload: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    // One byte more than expected, so that detecting excess output never grows the buffer.
    out.try_reserve_exact(expected.saturating_add(1).min(GZIP_PREALLOC_CAP))
        .map_err(|e| CodecError::Decompress(io::Error::new(io::ErrorKind::OutOfMemory, e)))?;
    flate2::read::MultiGzDecoder::new(payload)
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(CodecError::Decompress)?;
    if out.len() > expected {
        return Err(CodecError::TooLarge {
            limit: expected as u64,
        });
    }
    Ok(out)
}

/// Returns whether [`compress`] would do enough CPU work that the caller should run it on
/// the blocking pool: the value is at least 256 KiB and compression may be applied.
pub fn should_offload(len: usize, request: CompressionRequest, policy: &CompressionPolicy) -> bool {
    len >= OFFLOAD_MIN_LEN
        && match request {
            CompressionRequest::Auto => len as u64 >= policy.threshold_bytes,
            CompressionRequest::None => false,
            CompressionRequest::Gzip | CompressionRequest::Zstd => true,
        }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::codec::test_support::{REQUESTS, arb_codec, json_like, random_bytes, round_trip};

    #[test]
    fn compression_choices() {
        let policy = CompressionPolicy::default();
        let big = json_like(2 * 1024 * 1024);
        let (codec, stored) = compress(&big, CompressionRequest::Auto, &policy);
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < big.len() / 3, "{} bytes", stored.len());
        // The frame records its size, so decompression can refuse early and size exactly.
        assert!(matches!(
            zstd_safe::get_frame_content_size(&stored),
            Ok(Some(n)) if n == big.len() as u64
        ));

        let noise = random_bytes(2 * 1024 * 1024, 42);
        for request in REQUESTS {
            let (codec, stored) = compress(&noise, request, &policy);
            assert_eq!(codec, Codec::None, "{request:?}");
            assert_eq!(stored.as_ptr(), noise.as_ptr(), "zero-copy");
        }

        let small = json_like(4096);
        assert_eq!(
            compress(&small, CompressionRequest::Auto, &policy).0,
            Codec::None
        );
        assert_eq!(
            compress(&small, CompressionRequest::None, &policy).0,
            Codec::None
        );
        assert_eq!(
            compress(&small, CompressionRequest::Zstd, &policy).0,
            Codec::Zstd
        );
        assert_eq!(
            compress(&small, CompressionRequest::Gzip, &policy).0,
            Codec::Gzip
        );
        assert_eq!(
            compress(&Bytes::new(), CompressionRequest::Zstd, &policy).0,
            Codec::None
        );
    }

    #[test]
    fn ten_percent_rule_is_exact() {
        let policy = CompressionPolicy::default();
        // Half compressible, half noise: whatever it compresses to, the rule must hold.
        for len in [64, 1000, 10_000, 100_000] {
            let mut v = json_like(len / 2).to_vec();
            v.extend_from_slice(&random_bytes(len - len / 2, 3));
            let v = Bytes::from(v);
            for request in [CompressionRequest::Gzip, CompressionRequest::Zstd] {
                let (codec, stored) = compress(&v, request, &policy);
                if codec == Codec::None {
                    assert_eq!(stored, v);
                } else {
                    assert!(stored.len() * 10 <= v.len() * 9);
                }
            }
        }
    }

    #[test]
    fn zstd_level_changes_reuse_the_thread_context() {
        let value = json_like(50_000);
        for level in [1, 3, 19, -5, 3] {
            let policy = CompressionPolicy {
                zstd_level: level,
                ..CompressionPolicy::default()
            };
            assert_eq!(
                round_trip(&value, CompressionRequest::Zstd, &policy),
                Codec::Zstd
            );
        }
        let policy = CompressionPolicy {
            gzip_level: 42,
            ..CompressionPolicy::default()
        };
        assert_eq!(
            round_trip(&value, CompressionRequest::Gzip, &policy),
            Codec::Gzip
        );
    }

    #[test]
    fn decompress_checks_length() {
        let policy = CompressionPolicy::default();
        let value = json_like(10_000);
        for request in REQUESTS {
            let (codec, stored) = compress(&value, request, &policy);
            for expected in [0, 9_999, 10_001] {
                assert!(
                    decompress(codec, &stored, expected, &policy).is_err(),
                    "{codec:?} {expected}"
                );
            }
        }
        // Garbage for each codec.
        let junk = Bytes::from_static(b"not compressed at all");
        assert!(decompress(Codec::Gzip, &junk, 100, &policy).is_err());
        assert!(decompress(Codec::Zstd, &junk, 100, &policy).is_err());
        assert!(decompress(Codec::Zstd, &Bytes::new(), 100, &policy).is_err());
        assert!(decompress(Codec::Gzip, &Bytes::new(), 100, &policy).is_err());
    }

    #[test]
    fn declared_sizes_over_the_limits_are_refused_early() {
        let policy = CompressionPolicy::default();
        let err = decompress(
            Codec::None,
            &Bytes::new(),
            policy.max_value_bytes + 1,
            &policy,
        );
        assert!(
            matches!(err, Err(CodecError::TooLarge { limit }) if limit == policy.max_value_bytes)
        );
        let err = decompress(Codec::Zstd, &Bytes::new(), u64::MAX, &policy);
        assert!(matches!(err, Err(CodecError::TooLarge { .. })));

        // A zstd frame that declares 1 MiB, for an expected 1 KiB.
        let (codec, stored) = compress(&json_like(1 << 20), CompressionRequest::Zstd, &policy);
        assert_eq!(codec, Codec::Zstd);
        let err = decompress(codec, &stored, 1024, &policy);
        assert!(matches!(err, Err(CodecError::TooLarge { limit: 1024 })));
    }

    /// A hand-built zstd frame of `blocks` RLE blocks of 128 KiB of zeros, with no content
    /// size: 4 bytes of input per 128 KiB of output.
    fn zstd_rle_bomb(blocks: usize) -> Bytes {
        let mut v = vec![0x28, 0xB5, 0x2F, 0xFD]; // magic
        v.push(0x00); // no content size, not single-segment, no checksum, no dictionary
        v.push(7 << 3); // window 2^17
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let block_header = (128 * 1024) << 3 | 1 << 1 | last; // RLE
            v.extend_from_slice(&block_header.to_le_bytes()[..3]);
            v.push(0);
        }
        Bytes::from(v)
    }

    /// Streams `total` zeros through a zstd encoder that records no content size.
    fn zstd_stream_bomb(total: usize) -> Bytes {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.include_contentsize(false).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..total / chunk.len() {
            enc.write_all(&chunk).unwrap();
        }
        Bytes::from(enc.finish().unwrap())
    }

    /// One gzip member of `total` zeros, streamed in 1 MiB writes.
    fn gzip_stream(total: usize) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..total / chunk.len() {
            enc.write_all(&chunk).unwrap();
        }
        Bytes::from(enc.finish().unwrap())
    }

    /// One gzip member of `mib` MiB of zeros (about 1 KiB per MiB), built without deflating
    /// it all (which takes seconds in a debug build): a fresh deflater's sync-flushed output
    /// for 1 MiB of zeros refers to nothing before it and ends byte-aligned, so repeating it
    /// and closing with an empty final stored block is a valid deflate stream.
    fn gzip_bomb(mib: u32) -> Bytes {
        let chunk = vec![0u8; 1 << 20];
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflater.write_all(&chunk).unwrap();
        deflater.flush().unwrap();
        let piece = deflater.get_ref().clone();
        let mut chunk_crc = flate2::Crc::new();
        chunk_crc.update(&chunk);
        let mut crc = flate2::Crc::new();
        let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        for _ in 0..mib {
            v.extend_from_slice(&piece);
            crc.combine(&chunk_crc);
        }
        v.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]); // final empty stored block
        v.extend_from_slice(&crc.sum().to_le_bytes());
        v.extend_from_slice(&crc.amount().to_le_bytes());
        Bytes::from(v)
    }

    /// Asserts that `bomb` is refused as too large, quickly and whatever its size.
    ///
    /// The timed checks use an 8 MiB limit: refusing at the limit means decompressing that
    /// much first, and a debug build of zlib-rs inflates 64 MiB in 0.6 s idle but over 2 s
    /// on a loaded 2-core machine. The default 64 MiB limit is checked untimed.
    fn assert_refused_quickly(codec: Codec, bomb: &Bytes) {
        let small = CompressionPolicy {
            max_value_bytes: 8 << 20,
            ..CompressionPolicy::default()
        };
        let default = CompressionPolicy::default();
        for (expected, policy, timed) in [
            (1024, &small, true),
            (small.max_value_bytes, &small, true),
            (default.max_value_bytes, &default, false),
        ] {
            let start = Instant::now();
            let result = decompress(codec, bomb, expected, policy);
            let took = start.elapsed();
            assert!(
                matches!(result, Err(CodecError::TooLarge { limit }) if limit == expected),
                "{codec:?} {expected}: {result:?}"
            );
            assert!(
                !timed || took < Duration::from_secs(2),
                "{codec:?} {expected}: {took:?}"
            );
        }
    }

    #[test]
    fn zstd_bombs_are_refused() {
        let policy = CompressionPolicy::default();
        let bomb = zstd_rle_bomb(8192); // 1 GiB
        assert!(bomb.len() < 34 * 1024, "{}", bomb.len());
        assert!(matches!(zstd_safe::get_frame_content_size(&bomb), Ok(None)));
        assert_refused_quickly(Codec::Zstd, &bomb);

        // Sanity: the hand-built frame is valid zstd.
        let small = zstd_rle_bomb(2);
        let out = decompress(Codec::Zstd, &small, 256 * 1024, &policy).unwrap();
        assert!(out.len() == 256 * 1024 && out.iter().all(|&b| b == 0));

        let bomb = zstd_stream_bomb(256 << 20);
        assert!(matches!(zstd_safe::get_frame_content_size(&bomb), Ok(None)));
        assert_refused_quickly(Codec::Zstd, &bomb);

        // Concatenated frames that together exceed the limit.
        let frame = zstd_rle_bomb(256); // 32 MiB
        let mut frames = Vec::new();
        for _ in 0..4 {
            frames.extend_from_slice(&frame);
        }
        assert_refused_quickly(Codec::Zstd, &Bytes::from(frames));
    }

    #[test]
    fn gzip_bombs_are_refused() {
        let policy = CompressionPolicy::default();
        // Sanity: the hand-built member is valid gzip.
        let out = decompress(Codec::Gzip, &gzip_bomb(3), 3 << 20, &policy).unwrap();
        assert!(out.len() == 3 << 20 && out.iter().all(|&b| b == 0));

        let bomb = gzip_bomb(256);
        assert!(bomb.len() < 512 * 1024, "{}", bomb.len());
        assert_refused_quickly(Codec::Gzip, &bomb);

        // Concatenated streamed members: 1 GiB of zeros.
        let member = gzip_stream(1 << 20);
        let mut members = Vec::with_capacity(member.len() * 1024);
        for _ in 0..1024 {
            members.extend_from_slice(&member);
        }
        assert_refused_quickly(Codec::Gzip, &Bytes::from(members));
    }

    #[test]
    fn offload_decisions() {
        let policy = CompressionPolicy::default();
        let small = OFFLOAD_MIN_LEN - 1;
        let mid = OFFLOAD_MIN_LEN;
        let big = policy.threshold_bytes as usize;
        for request in REQUESTS {
            assert!(!should_offload(small, request, &policy));
        }
        assert!(!should_offload(big, CompressionRequest::None, &policy));
        assert!(!should_offload(mid, CompressionRequest::Auto, &policy));
        assert!(should_offload(big, CompressionRequest::Auto, &policy));
        assert!(should_offload(mid, CompressionRequest::Gzip, &policy));
        assert!(should_offload(mid, CompressionRequest::Zstd, &policy));
    }

    proptest! {
        #[test]
        fn decompress_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            codec in arb_codec(),
            expected in 0u64..4096,
        ) {
            let _ = decompress(codec, &Bytes::from(data), expected, &CompressionPolicy::default());
        }

        #[test]
        fn compress_round_trip(
            value in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                proptest::collection::vec(0u8..4, 0..3000),
            ],
            request in prop_oneof![
                Just(CompressionRequest::Auto),
                Just(CompressionRequest::None),
                Just(CompressionRequest::Gzip),
                Just(CompressionRequest::Zstd),
            ],
        ) {
            let policy = CompressionPolicy {
                threshold_bytes: 1000,
                ..CompressionPolicy::default()
            };
            round_trip(&Bytes::from(value), request, &policy);
        }
    }
}
