//! The envelope header message: decoded with the prost-derived messages below, encoded by hand so that it
//! goes straight from `&Header` into the envelope buffer, without cloning the strings into a message first.
//! The tests check the hand encoding is byte for byte what prost produces; the envelope tests pin it with
//! fixed vectors.

use super::{CodecError, Header};

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

pub(super) fn header_from_bytes(bytes: &[u8]) -> Result<Header, CodecError> {
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

pub(super) fn header_encoded_len(h: &Header) -> usize {
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

// Kept hand-written: a prost-derived encoder needs an owned message (a clone of every header string per Set).
pub(super) fn write_header(h: &Header, buf: &mut Vec<u8>) {
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
    use proptest::prelude::*;

    use super::*;
    use crate::codec::test_support::arb_header;

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

    proptest! {
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
    }
}
