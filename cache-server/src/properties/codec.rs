//! Properties of the envelope decoder and of decompression, for any bytes: what Redis hands back may be
//! anything.

use bytes::Bytes;

use crate::codec::{
    Codec, CodecError, CompressionPolicy, CompressionRequest, Header, Provenance, compress, decode,
    decode_from, decompress, encode,
};

/// The largest value the properties let decompression produce: small enough that a bomb costs little memory,
/// large enough to span several zstd blocks and gzip windows.
pub const MAX_VALUE_BYTES: u64 = 1 << 20;

fn policy() -> CompressionPolicy {
    CompressionPolicy {
        max_value_bytes: MAX_VALUE_BYTES,
        ..CompressionPolicy::default()
    }
}

/// Whatever `stored` holds, decoding never panics. A checked decode that succeeds agrees with the trusted one
/// (which skips only the checksums, so it can only fail where the checked one does, and the checked one can
/// only fail beyond it on a checksum). A decoded envelope re-encodes to one that decodes to the same parts,
/// and its payload decompresses within the bounds of [`decompression`].
pub fn envelope(stored: &[u8]) {
    let stored = Bytes::copy_from_slice(stored);
    let checked = decode(stored.clone());
    let trusted = decode_from(stored, Provenance::ThisProcess);
    match (&checked, &trusted) {
        (Ok(c), Ok(t)) => {
            assert_eq!(c.header, t.header);
            assert_eq!(c.codec, t.codec);
            assert_eq!(c.payload, t.payload);
        }
        (Ok(_), Err(e)) => panic!("the trusted decode failed where the checked one did not: {e:?}"),
        (Err(CodecError::HeaderChecksum | CodecError::PayloadChecksum), Ok(_)) => {}
        (Err(e), Ok(_)) => panic!("the checked decode failed on more than a checksum: {e:?}"),
        (Err(_), Err(_)) => {}
    }
    let Ok(env) = trusted else { return };
    if env.codec == Codec::None {
        assert_eq!(env.header.size_bytes, env.payload.len() as u64);
    }
    let again = decode(encode(&env.header, env.codec, &env.payload)).expect("re-encoded envelope");
    assert_eq!(again.header, env.header);
    assert_eq!(again.codec, env.codec);
    assert_eq!(again.payload, env.payload);
    decompression(env.codec, &env.payload, env.header.size_bytes);
}

/// An envelope built from these parts decodes to them, and its payload decompresses to the value; one byte
/// changed (`flip`: at an index taken modulo the length, XORed with a non-zero mask) or any truncation (`cut`)
/// is refused by the checked decode. Then the bytes as stored satisfy [`envelope`].
///
/// With `compressed`, the payload is `value` compressed as `codec` asks (kept only if it saves 10 %, as a Set
/// stores it); otherwise it is `value` itself, labelled `codec` whatever it holds.
pub fn built_envelope(
    header: &Header,
    codec: Codec,
    value: &[u8],
    compressed: bool,
    flip: Option<(usize, u8)>,
    cut: Option<usize>,
) {
    let mut header = header.clone();
    let value = Bytes::copy_from_slice(value);
    let (codec, payload) = if compressed {
        header.size_bytes = value.len() as u64;
        compress(&value, request_for(codec), &policy())
    } else {
        if codec == Codec::None {
            header.size_bytes = value.len() as u64;
        }
        (codec, value.clone())
    };
    let stored = encode(&header, codec, &payload);
    let env = decode(stored.clone()).expect("a fresh envelope decodes");
    assert_eq!(env.header, header);
    assert_eq!(env.codec, codec);
    assert_eq!(env.payload, payload);
    if compressed {
        let out = decompress(codec, &env.payload, header.size_bytes, &policy());
        assert_eq!(out.expect("decompresses"), value);
    }
    let mut bytes = stored.to_vec();
    if let Some((at, mask)) = flip.filter(|&(_, mask)| mask != 0) {
        let at = at % bytes.len();
        bytes[at] ^= mask;
        assert!(
            decode(Bytes::from(bytes.clone())).is_err(),
            "byte {at} ^ {mask:#x}"
        );
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % bytes.len());
        assert!(
            decode(Bytes::from(bytes.clone())).is_err(),
            "cut at {}",
            bytes.len()
        );
    }
    envelope(&bytes);
}

/// `value` compressed as `codec` asks, then damaged (`flip`: one byte XORed, at an index taken modulo the
/// length; `cut`: truncated to at most that length), decompressed to its length plus `delta`: holds
/// [`decompression`]'s bounds.
pub fn damaged_payload(codec: Codec, value: &[u8], flip: (usize, u8), cut: usize, delta: i8) {
    let value = Bytes::copy_from_slice(value);
    let (codec, stored) = compress(&value, request_for(codec), &policy());
    let mut payload = stored.to_vec();
    if !payload.is_empty() {
        let at = flip.0 % payload.len();
        payload[at] ^= flip.1;
        payload.truncate(cut);
    }
    let expected = (value.len() as u64).saturating_add_signed(i64::from(delta));
    decompression(codec, &payload, expected);
}

fn request_for(codec: Codec) -> CompressionRequest {
    match codec {
        Codec::None => CompressionRequest::None,
        Codec::Gzip => CompressionRequest::Gzip,
        Codec::Zstd => CompressionRequest::Zstd,
    }
}

/// Decompressing `payload` as `codec` to `expected_len` bytes never panics, and never produces anything but
/// exactly `expected_len` bytes (the payload itself for [`Codec::None`]); an `expected_len` over the policy's
/// maximum is refused as too large.
pub fn decompression(codec: Codec, payload: &[u8], expected_len: u64) {
    let payload = Bytes::copy_from_slice(payload);
    let result = decompress(codec, &payload, expected_len, &policy());
    if expected_len > MAX_VALUE_BYTES {
        assert!(
            matches!(result, Err(CodecError::TooLarge { limit }) if limit == MAX_VALUE_BYTES),
            "{codec:?} {expected_len}: {result:?}"
        );
        return;
    }
    if let Ok(out) = result {
        assert_eq!(out.len() as u64, expected_len, "{codec:?}");
        if codec == Codec::None {
            assert_eq!(out, payload);
        }
    }
}

/// Compressing `value` as asked keeps the result only if it saves at least 10 %, and decompressing the stored
/// bytes gives `value` back.
pub fn compression_round_trip(value: &[u8], request: CompressionRequest) {
    let policy = CompressionPolicy {
        threshold_bytes: 1024,
        ..policy()
    };
    let value = Bytes::copy_from_slice(value);
    let (codec, stored) = compress(&value, request, &policy);
    if codec == Codec::None {
        assert_eq!(stored, value);
    } else {
        assert!(stored.len() * 10 <= value.len() * 9, "{codec:?}");
    }
    let out = decompress(codec, &stored, value.len() as u64, &policy).expect("decompresses");
    assert_eq!(out, value);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::test_support::{arb_codec, arb_header, json_like};

    /// Values that compress, and some that do not.
    fn values() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0usize..5000).prop_map(|len| json_like(len).to_vec()),
            proptest::collection::vec(any::<u8>(), 0..600),
        ]
    }

    proptest! {
        #[test]
        fn envelope_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            envelope(&data);
        }

        #[test]
        fn envelope_holds_for_built_and_damaged_envelopes(
            header in arb_header(),
            codec in arb_codec(),
            value in values(),
            compressed in any::<bool>(),
            flip in proptest::option::of((any::<usize>(), any::<u8>())),
            cut in proptest::option::of(any::<usize>()),
        ) {
            built_envelope(&header, codec, &value, compressed, flip, cut);
        }

        #[test]
        fn decompression_holds_for_any_bytes(
            codec in arb_codec(),
            payload in proptest::collection::vec(any::<u8>(), 0..600),
            expected_len in prop_oneof![0u64..5000, Just(MAX_VALUE_BYTES), Just(MAX_VALUE_BYTES + 1), any::<u64>()],
        ) {
            decompression(codec, &payload, expected_len);
        }

        #[test]
        fn decompression_holds_for_damaged_payloads(
            codec in arb_codec(),
            value in values(),
            flip in (any::<usize>(), any::<u8>()),
            cut in 0usize..6000,
            delta in any::<i8>(),
        ) {
            damaged_payload(codec, &value, flip, cut, delta);
        }

        #[test]
        fn compression_round_trips(
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
            compression_round_trip(&value, request);
        }
    }
}
