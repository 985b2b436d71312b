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

use std::cell::RefCell;
use std::io::{self, Read, Write};

use bytes::Bytes;
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe;

/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;

/// The magic bytes that start every envelope.
const MAGIC: [u8; 4] = *b"\xCAcEv";

/// Length of the fixed prefix that precedes the header.
const PREFIX_LEN: usize = 26;

/// Values at least this long are worth compressing on the blocking pool.
const OFFLOAD_MIN_LEN: usize = 256 * 1024;

/// The most that gzip decompression preallocates, whatever the expected length.
const GZIP_PREALLOC_CAP: usize = 64 * 1024 * 1024;

/// The largest zstd window accepted when decompressing (128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

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
    /// Returns a short lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

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

impl CompressionRequest {
    /// Maps the proto enum value (AUTO=0, NONE=1, GZIP=2, ZSTD=3); `None` for any other value.
    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            0 => Some(CompressionRequest::Auto),
            1 => Some(CompressionRequest::None),
            2 => Some(CompressionRequest::Gzip),
            3 => Some(CompressionRequest::Zstd),
            _ => None,
        }
    }
}

/// Entry metadata carried in the envelope header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
    /// Expiry time, unix milliseconds.
    pub expires_at_ms: u64,
    /// Logical (uncompressed) length of the value.
    pub size_bytes: u64,
    /// MIME type of the value.
    pub content_type: String,
    /// Hash of the model the value was produced from.
    pub model_hash: String,
    /// Free-form metadata, in the given order.
    pub metadata: Vec<(String, String)>,
    /// Canonical JSON of the export options, `""` if none.
    pub export_options_json: String,
}

/// A decoded envelope: header, codec and the stored (possibly compressed) payload, zero-copy.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The entry metadata.
    pub header: Header,
    /// The compression applied to `payload`.
    pub codec: Codec,
    /// The stored bytes, a slice of the envelope (pass them to [`decompress`]).
    pub payload: Bytes,
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

// ---------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------------------

/// Encodes an envelope: fixed prefix, header, payload. `payload` is the stored (already
/// compressed) bytes. Allocates one buffer of exactly the envelope's size.
///
/// # Panics
///
/// If the encoded header exceeds `u32::MAX` bytes.
pub fn encode(header: &Header, codec: Codec, payload: &[u8]) -> Bytes {
    let header_len = header_encoded_len(header);
    let header_len_u32 = u32::try_from(header_len).expect("envelope header exceeds 4 GiB");
    let mut buf = Vec::with_capacity(PREFIX_LEN + header_len + payload.len());
    buf.extend_from_slice(&MAGIC);
    buf.push(ENVELOPE_VERSION);
    buf.push(codec.to_byte());
    buf.extend_from_slice(&header_len_u32.to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // header_crc, filled in below
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    write_header(header, &mut buf);
    debug_assert_eq!(buf.len(), PREFIX_LEN + header_len);
    let header_crc = header_crc(&buf[..PREFIX_LEN], &buf[PREFIX_LEN..]);
    buf[10..14].copy_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(payload);
    debug_assert_eq!(buf.len(), buf.capacity());
    Bytes::from(buf)
}

/// Decodes an envelope without copying the payload (a slice of `stored`).
///
/// Verifies the magic, version, codec, header checksum, payload length and payload
/// checksum, and for [`Codec::None`] that the payload is `size_bytes` long. Never panics.
pub fn decode(stored: Bytes) -> Result<Envelope, CodecError> {
    decode_checked(stored, true)
}

/// [`decode`] without the two checksum passes, for an envelope that never left this process (the memory
/// tier holds exactly the bytes [`encode`] produced). The structure is still checked; never panics.
pub fn decode_trusted(stored: Bytes) -> Result<Envelope, CodecError> {
    decode_checked(stored, false)
}

fn decode_checked(stored: Bytes, verify_checksums: bool) -> Result<Envelope, CodecError> {
    let magic_len = stored.len().min(MAGIC.len());
    if stored[..magic_len] != MAGIC[..magic_len] {
        return Err(CodecError::BadMagic);
    }
    let Some(prefix) = stored.get(..PREFIX_LEN) else {
        return Err(CodecError::Truncated);
    };
    if prefix[4] != ENVELOPE_VERSION {
        return Err(CodecError::UnsupportedVersion(prefix[4]));
    }
    let codec = Codec::from_byte(prefix[5]).ok_or(CodecError::UnknownCodec(prefix[5]))?;
    let header_len = u32_at(prefix, 6) as usize;
    let stored_header_crc = u32_at(prefix, 10);
    let payload_crc = u32_at(prefix, 14);
    let payload_len = u64_at(prefix, 18);

    let Some(header_end) = PREFIX_LEN.checked_add(header_len) else {
        return Err(CodecError::Truncated);
    };
    let Some(available) = stored.len().checked_sub(header_end) else {
        return Err(CodecError::Truncated);
    };
    if (available as u64) < payload_len {
        return Err(CodecError::Truncated);
    }
    if available as u64 > payload_len {
        return Err(CodecError::LengthMismatch {
            expected: payload_len,
            actual: available as u64,
        });
    }
    let header_bytes = &stored[PREFIX_LEN..header_end];
    if verify_checksums {
        if header_crc(prefix, header_bytes) != stored_header_crc {
            return Err(CodecError::HeaderChecksum);
        }
        if crc32c::crc32c(&stored[header_end..]) != payload_crc {
            return Err(CodecError::PayloadChecksum);
        }
    }
    let header = header_from_bytes(header_bytes)?;
    if codec == Codec::None && header.size_bytes != payload_len {
        return Err(CodecError::LengthMismatch {
            expected: header.size_bytes,
            actual: payload_len,
        });
    }
    let payload = stored.slice(header_end..);
    Ok(Envelope {
        header,
        codec,
        payload,
    })
}

/// The header CRC: prefix bytes `4..10` and `14..26`, then the header bytes.
fn header_crc(prefix: &[u8], header: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&prefix[4..10]);
    let crc = crc32c::crc32c_append(crc, &prefix[14..PREFIX_LEN]);
    crc32c::crc32c_append(crc, header)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

// ---------------------------------------------------------------------------------------
// Header message
// ---------------------------------------------------------------------------------------
//
// Decoding uses the prost-derived messages below. Encoding is written out by hand so that
// it goes straight from `&Header` into the envelope buffer, without cloning the strings
// into a message first; the tests check it is byte-for-byte what prost produces.
// Kept hand-written: a prost-derived encoder would need an owned message (cloning every header string per Set).

/// The header message, as decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderProto {
    #[prost(uint64, tag = "1")]
    created_at_ms: u64,
    #[prost(uint64, tag = "2")]
    expires_at_ms: u64,
    #[prost(uint64, tag = "3")]
    size_bytes: u64,
    #[prost(string, tag = "4")]
    content_type: String,
    #[prost(string, tag = "5")]
    model_hash: String,
    #[prost(message, repeated, tag = "6")]
    metadata: Vec<PairProto>,
    #[prost(string, tag = "7")]
    export_options_json: String,
}

/// One metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
struct PairProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

fn header_from_bytes(bytes: &[u8]) -> Result<Header, CodecError> {
    let proto = <HeaderProto as prost::Message>::decode(bytes).map_err(CodecError::BadHeader)?;
    Ok(Header {
        created_at_ms: proto.created_at_ms,
        expires_at_ms: proto.expires_at_ms,
        size_bytes: proto.size_bytes,
        content_type: proto.content_type,
        model_hash: proto.model_hash,
        metadata: proto
            .metadata
            .into_iter()
            .map(|pair| (pair.key, pair.value))
            .collect(),
        export_options_json: proto.export_options_json,
    })
}

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Length of a `uint64` field (tags here are all below 16, so keys take one byte).
fn u64_field_len(value: u64) -> usize {
    if value == 0 { 0 } else { 1 + varint_len(value) }
}

fn str_field_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + varint_len(value.len() as u64) + value.len()
    }
}

fn pair_len(key: &str, value: &str) -> usize {
    str_field_len(key) + str_field_len(value)
}

fn header_encoded_len(h: &Header) -> usize {
    let metadata: usize = h
        .metadata
        .iter()
        .map(|(k, v)| {
            let len = pair_len(k, v);
            1 + varint_len(len as u64) + len
        })
        .sum();
    u64_field_len(h.created_at_ms)
        + u64_field_len(h.expires_at_ms)
        + u64_field_len(h.size_bytes)
        + str_field_len(&h.content_type)
        + str_field_len(&h.model_hash)
        + metadata
        + str_field_len(&h.export_options_json)
}

fn put_u64_field(buf: &mut Vec<u8>, tag: u8, value: u64) {
    if value != 0 {
        buf.push(tag << 3 | WIRE_VARINT);
        put_varint(buf, value);
    }
}

fn put_str_field(buf: &mut Vec<u8>, tag: u8, value: &str) {
    if !value.is_empty() {
        buf.push(tag << 3 | WIRE_LEN);
        put_varint(buf, value.len() as u64);
        buf.extend_from_slice(value.as_bytes());
    }
}

fn write_header(h: &Header, buf: &mut Vec<u8>) {
    put_u64_field(buf, 1, h.created_at_ms);
    put_u64_field(buf, 2, h.expires_at_ms);
    put_u64_field(buf, 3, h.size_bytes);
    put_str_field(buf, 4, &h.content_type);
    put_str_field(buf, 5, &h.model_hash);
    for (key, value) in &h.metadata {
        buf.push(6 << 3 | WIRE_LEN);
        put_varint(buf, pair_len(key, value) as u64);
        put_str_field(buf, 1, key);
        put_str_field(buf, 2, value);
    }
    put_str_field(buf, 7, &h.export_options_json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const REQUESTS: [CompressionRequest; 4] = [
        CompressionRequest::Auto,
        CompressionRequest::None,
        CompressionRequest::Gzip,
        CompressionRequest::Zstd,
    ];

    /// Deterministic JSON-like text: compressible, but not trivially.
    fn json_like(len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 128);
        let mut i = 0u64;
        while out.len() < len {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            out.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"item-{x}\",\"score\":{}.{},\"tags\":[\"b{}\"]}},",
                    x % 1000,
                    x % 97,
                    x % 13
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        Bytes::from(out)
    }

    /// Deterministic incompressible bytes (xorshift).
    fn random_bytes(len: usize, mut seed: u64) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }

    fn sample_header(size: u64) -> Header {
        Header {
            created_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_000_600_123,
            size_bytes: size,
            content_type: "application/json".into(),
            model_hash: "sha256:abcdef0123456789".into(),
            metadata: vec![
                ("zeta".into(), "1".into()),
                ("alpha".into(), String::new()),
                (String::new(), "ü".into()),
            ],
            export_options_json: r#"{"format":"onnx","opset":17}"#.into(),
        }
    }

    /// compress → encode → decode → decompress.
    fn round_trip(value: &Bytes, request: CompressionRequest, policy: &CompressionPolicy) -> Codec {
        let (codec, stored) = compress(value, request, policy);
        let header = sample_header(value.len() as u64);
        let envelope = decode(encode(&header, codec, &stored)).expect("decode");
        assert_eq!(envelope.header, header);
        assert_eq!(envelope.codec, codec);
        assert_eq!(envelope.payload, stored);
        let out = decompress(codec, &envelope.payload, envelope.header.size_bytes, policy)
            .expect("decompress");
        assert_eq!(&out, value);
        codec
    }

    fn full_decode(stored: Bytes, policy: &CompressionPolicy) -> Result<Bytes, CodecError> {
        let env = decode(stored)?;
        decompress(env.codec, &env.payload, env.header.size_bytes, policy)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Headers with every field at a default, at a varint boundary, with one- and two-byte lengths, empty
    /// and non-ASCII strings and empty metadata pairs, each with a codec and a payload.
    fn representative_envelopes() -> Vec<(&'static str, Header, Codec, Vec<u8>)> {
        let long = "x".repeat(130);
        vec![
            ("empty", Header::default(), Codec::None, Vec::new()),
            ("typical", sample_header(5), Codec::None, b"hello".to_vec()),
            (
                "extremes",
                Header {
                    created_at_ms: u64::MAX,
                    expires_at_ms: 127,
                    size_bytes: 128,
                    content_type: long.clone(),
                    model_hash: String::new(),
                    metadata: vec![(long, "é".into()), (String::new(), String::new())],
                    export_options_json: String::new(),
                },
                Codec::Zstd,
                vec![0x28, 0xb5, 0x2f, 0xfd],
            ),
            (
                "gzip",
                Header {
                    size_bytes: 3,
                    content_type: "text/plain".into(),
                    ..Header::default()
                },
                Codec::Gzip,
                vec![0x1f, 0x8b, 8],
            ),
        ]
    }

    /// The bytes the envelope encoder has always produced for [`representative_envelopes`] (stored values
    /// must stay readable across releases), as `(name, header, envelope)` in hex.
    fn fixed_vectors() -> Vec<(&'static str, String, String)> {
        let x130 = "78".repeat(130);
        vec![
            (
                "empty",
                "".to_owned(),
                "ca6345760100000000000fcf4cc6000000000000000000000000".to_owned(),
            ),
            (
                "typical",
                "08fbd095ffbc3110bba0baffbc31180522106170706c69636174696f6e2f6a736f6e2a177368613235363a6162636465663031323334353637383932090a047a65746112013132070a05616c70686132041202c3bc3a1c7b22666f726d6174223a226f6e6e78222c226f70736574223a31377d".to_owned(),
                "ca634576010073000000b173e1f84cbb719a050000000000000008fbd095ffbc3110bba0baffbc31180522106170706c69636174696f6e2f6a736f6e2a177368613235363a6162636465663031323334353637383932090a047a65746112013132070a05616c70686132041202c3bc3a1c7b22666f726d6174223a226f6e6e78222c226f70736574223a31377d68656c6c6f".to_owned(),
            ),
            (
                "extremes",
                ["08ffffffffffffffffff01107f188001228201", &x130, "3289010a8201", &x130, "1202c3a93200"].concat(),
                ["ca6345760102230100004f55ca444a31ec9c040000000000000008ffffffffffffffffff01107f188001228201", &x130, "3289010a8201", &x130, "1202c3a9320028b52ffd"].concat(),
            ),
            (
                "gzip",
                "1803220a746578742f706c61696e".to_owned(),
                "ca63457601010e000000fcfc6f494b4d8e8403000000000000001803220a746578742f706c61696e1f8b08".to_owned(),
            ),
        ]
    }

    #[test]
    fn envelope_bytes_are_fixed() {
        let vectors = fixed_vectors();
        for ((name, header, codec, payload), (vname, header_hex, envelope_hex)) in
            representative_envelopes().into_iter().zip(vectors)
        {
            assert_eq!(name, vname);
            let mut header_bytes = Vec::new();
            write_header(&header, &mut header_bytes);
            assert_eq!(hex(&header_bytes), header_hex, "{name} header");
            let envelope = encode(&header, codec, &payload);
            assert_eq!(hex(&envelope), envelope_hex, "{name} envelope");
            let decoded = decode(envelope).expect(name);
            assert_eq!(decoded.header, header, "{name}");
            assert_eq!(decoded.codec, codec, "{name}");
            assert_eq!(&decoded.payload[..], &payload[..], "{name}");
        }
    }

    #[test]
    fn trusted_decode_skips_only_the_checksums() {
        let value = json_like(4096);
        let stored = encode(&sample_header(value.len() as u64), Codec::None, &value);
        let trusted = decode_trusted(stored.clone()).expect("decodes");
        let checked = decode(stored.clone()).expect("decodes");
        assert_eq!(trusted.header, checked.header);
        assert_eq!(trusted.payload, checked.payload);
        // A flipped payload byte: only the checked decode notices.
        let mut flipped = stored.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(Bytes::from(flipped.clone())),
            Err(CodecError::PayloadChecksum)
        ));
        assert!(decode_trusted(Bytes::from(flipped)).is_ok());
        // Structure is still checked: a truncated envelope is refused either way.
        let truncated = stored.slice(..stored.len() - 1);
        assert!(matches!(
            decode_trusted(truncated),
            Err(CodecError::Truncated)
        ));
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

    #[test]
    fn every_truncation_is_detected() {
        let policy = CompressionPolicy::default();
        let value = json_like(300);
        let (codec, stored) = compress(&value, CompressionRequest::Zstd, &policy);
        let envelope = encode(&sample_header(value.len() as u64), codec, &stored);
        for len in 0..envelope.len() {
            let err = decode(envelope.slice(..len)).unwrap_err();
            assert!(matches!(err, CodecError::Truncated), "len {len}: {err:?}");
        }
        let mut longer = envelope.to_vec();
        longer.push(0);
        assert!(matches!(
            decode(Bytes::from(longer)),
            Err(CodecError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn bad_prefix_fields() {
        let envelope = encode(&sample_header(3), Codec::None, b"abc");
        let with = |at: usize, byte: u8| {
            let mut v = envelope.to_vec();
            v[at] = byte;
            decode(Bytes::from(v)).unwrap_err()
        };
        for version in [0, 2, 255] {
            assert!(matches!(with(4, version), CodecError::UnsupportedVersion(v) if v == version));
        }
        for codec in [3, 4, 255] {
            assert!(matches!(with(5, codec), CodecError::UnknownCodec(c) if c == codec));
        }
        assert!(matches!(with(0, b'{'), CodecError::BadMagic));
        assert!(matches!(
            decode(Bytes::from_static(b"{\"a\":1}")),
            Err(CodecError::BadMagic)
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"\xCA")),
            Err(CodecError::Truncated)
        ));
        // Codec::None must carry exactly size_bytes.
        assert!(matches!(
            decode(encode(&sample_header(4), Codec::None, b"abc")),
            Err(CodecError::LengthMismatch {
                expected: 4,
                actual: 3
            })
        ));
        // A header that is not a valid message, with correct checksums.
        let mut v = encode(&Header::default(), Codec::Gzip, b"").to_vec();
        v.truncate(PREFIX_LEN);
        v[6..10].copy_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(&[0x22, 0x05]); // field 4, length 5, but no bytes
        let crc = header_crc(&v[..PREFIX_LEN], &v[PREFIX_LEN..]);
        v[10..14].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(Bytes::from(v)),
            Err(CodecError::BadHeader(_))
        ));
    }

    #[test]
    fn decode_is_zero_copy() {
        let envelope = encode(&sample_header(5), Codec::None, b"hello");
        let env = decode(envelope.clone()).unwrap();
        assert_eq!(
            env.payload.as_ptr(),
            envelope[envelope.len() - 5..].as_ptr()
        );
        let out = decompress(Codec::None, &env.payload, 5, &CompressionPolicy::default()).unwrap();
        assert_eq!(out.as_ptr(), env.payload.as_ptr());
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

    #[test]
    fn request_from_proto_values() {
        assert_eq!(
            CompressionRequest::from_i32(0),
            Some(CompressionRequest::Auto)
        );
        assert_eq!(
            CompressionRequest::from_i32(1),
            Some(CompressionRequest::None)
        );
        assert_eq!(
            CompressionRequest::from_i32(2),
            Some(CompressionRequest::Gzip)
        );
        assert_eq!(
            CompressionRequest::from_i32(3),
            Some(CompressionRequest::Zstd)
        );
        assert_eq!(CompressionRequest::from_i32(4), None);
        assert_eq!(CompressionRequest::from_i32(-1), None);
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), ".{0,20}", "[a-z]{0,200}"]
    }

    fn arb_u64() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), any::<u64>(), 0u64..300]
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            arb_u64(),
            arb_u64(),
            arb_u64(),
            arb_string(),
            arb_string(),
            proptest::collection::vec((arb_string(), arb_string()), 0..5),
            arb_string(),
        )
            .prop_map(|(c, e, s, ct, mh, metadata, eo)| Header {
                created_at_ms: c,
                expires_at_ms: e,
                size_bytes: s,
                content_type: ct,
                model_hash: mh,
                metadata,
                export_options_json: eo,
            })
    }

    fn arb_codec() -> impl Strategy<Value = Codec> {
        prop_oneof![Just(Codec::None), Just(Codec::Gzip), Just(Codec::Zstd)]
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn decode_never_panics_past_the_prefix(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            codec in 0u8..4,
        ) {
            let mut v = MAGIC.to_vec();
            v.push(ENVELOPE_VERSION);
            v.push(codec);
            v.extend_from_slice(&data);
            let _ = decode(Bytes::from(v));
        }

        #[test]
        fn decompress_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            codec in arb_codec(),
            expected in 0u64..4096,
        ) {
            let _ = decompress(codec, &Bytes::from(data), expected, &CompressionPolicy::default());
        }

        #[test]
        fn mutated_envelopes_never_decode(
            header in arb_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let envelope = encode(&header, Codec::Gzip, &payload);
            let mut v = envelope.to_vec();
            let i = at.index(v.len());
            prop_assume!(v[i] != byte);
            v[i] = byte;
            prop_assert!(decode(Bytes::from(v)).is_err());
        }

        #[test]
        fn envelope_round_trip(
            header in arb_header(),
            codec in arb_codec(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut header = header;
            if codec == Codec::None {
                header.size_bytes = payload.len() as u64;
            }
            let envelope = encode(&header, codec, &payload);
            let env = decode(envelope).unwrap();
            prop_assert_eq!(env.header, header);
            prop_assert_eq!(env.codec, codec);
            prop_assert_eq!(&env.payload[..], &payload[..]);
        }

        #[test]
        fn hand_encoding_matches_prost(header in arb_header()) {
            let proto = HeaderProto {
                created_at_ms: header.created_at_ms,
                expires_at_ms: header.expires_at_ms,
                size_bytes: header.size_bytes,
                content_type: header.content_type.clone(),
                model_hash: header.model_hash.clone(),
                metadata: header
                    .metadata
                    .iter()
                    .map(|(key, value)| PairProto { key: key.clone(), value: value.clone() })
                    .collect(),
                export_options_json: header.export_options_json.clone(),
            };
            let mut ours = Vec::new();
            write_header(&header, &mut ours);
            prop_assert_eq!(ours.len(), header_encoded_len(&header));
            prop_assert_eq!(ours, prost::Message::encode_to_vec(&proto));
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
