//! The stored envelope: fixed prefix, header and payload; [`encode`], and [`decode`] with its checks.

use bytes::Bytes;

use super::header::{header_encoded_len, header_from_bytes, write_header};
use super::{Codec, CodecError};

/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;

/// The magic bytes that start every envelope.
const MAGIC: [u8; 4] = *b"\xCAcEv";

/// Length of the fixed prefix that precedes the header.
const PREFIX_LEN: usize = 26;

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
    /// The stored bytes, a slice of the envelope (pass them to [`decompress`](super::decompress)).
    pub payload: Bytes,
}

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

/// Where stored bytes have been since [`encode`] produced them: what decoding them must verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// They never left this process (the memory tier holds exactly what [`encode`] produced): the structure is
    /// checked, the two checksum passes are skipped.
    ThisProcess,
    /// They came back from outside (Redis): every checksum is verified.
    Outside,
}

/// Decodes an envelope with the checks `provenance` requires: the reader passes the provenance its tier
/// reported and never chooses the checks itself. Never panics.
pub fn decode_from(stored: Bytes, provenance: Provenance) -> Result<Envelope, CodecError> {
    decode_checked(stored, provenance == Provenance::Outside)
}

/// Decodes an envelope without copying the payload (a slice of `stored`).
///
/// Verifies the magic, version, codec, header checksum, payload length and payload
/// checksum, and for [`Codec::None`] that the payload is `size_bytes` long. Never panics.
pub fn decode(stored: Bytes) -> Result<Envelope, CodecError> {
    decode_checked(stored, true)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::test_support::{arb_codec, arb_header, json_like, sample_header};
    use crate::codec::{CompressionPolicy, CompressionRequest, compress, decompress};

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
        let trusted = decode_from(stored.clone(), Provenance::ThisProcess).expect("decodes");
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
        assert!(decode_from(Bytes::from(flipped), Provenance::ThisProcess).is_ok());
        // Structure is still checked: a truncated envelope is refused either way.
        let truncated = stored.slice(..stored.len() - 1);
        assert!(matches!(
            decode_from(truncated, Provenance::ThisProcess),
            Err(CodecError::Truncated)
        ));
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
    }
}
