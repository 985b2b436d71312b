//! Values, builders and strategies shared by the unit tests of the codec modules.

use bytes::Bytes;
use proptest::prelude::*;

use super::{
    Codec, CompressionPolicy, CompressionRequest, Header, compress, decode, decompress, encode,
};

pub(super) const REQUESTS: [CompressionRequest; 4] = [
    CompressionRequest::Auto,
    CompressionRequest::None,
    CompressionRequest::Gzip,
    CompressionRequest::Zstd,
];

/// Deterministic JSON-like text: compressible, but not trivially.
pub(crate) fn json_like(len: usize) -> Bytes {
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
pub(super) fn random_bytes(len: usize, mut seed: u64) -> Bytes {
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

pub(super) fn sample_header(size: u64) -> Header {
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
pub(super) fn round_trip(
    value: &Bytes,
    request: CompressionRequest,
    policy: &CompressionPolicy,
) -> Codec {
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

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,20}", "[a-z]{0,200}"]
}

fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), any::<u64>(), 0u64..300]
}

pub(crate) fn arb_header() -> impl Strategy<Value = Header> {
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

pub(crate) fn arb_codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::None), Just(Codec::Gzip), Just(Codec::Zstd)]
}
