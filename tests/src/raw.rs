//! Raw protobuf on the wire: a codec for already-encoded messages ([`RawCodec`], [`raw_unary`]) and encoders
//! for what generated types cannot express (map entries in a chosen order).

use cache_proto::pb;
use tonic::transport::Channel;

use crate::CLIENT_MAX_MESSAGE_BYTES;

/// A gRPC codec that sends and receives already-encoded protobuf bytes, to put on the wire what generated
/// types cannot express (e.g. map entries in a chosen order).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0u8; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut out);
        Ok(Some(out))
    }
}

/// Calls a unary method (`path` like `/cache.v1.CacheService/Set`) with an already-encoded request and
/// returns the encoded response.
///
/// # Errors
/// The call's status.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    request: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(request), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Encodes a `google.protobuf.Struct` whose map entries appear on the wire in exactly the given order
/// (generated types always write them sorted).
pub fn struct_bytes_in_order(fields: &[(&str, serde_json::Value)]) -> Vec<u8> {
    use prost::Message as _;
    let mut out = Vec::new();
    for (name, value) in fields {
        // A one-entry Struct encodes as exactly that entry; concatenated entries form one map.
        let one = prost_types::Struct {
            fields: [(
                (*name).to_owned(),
                cache_proto::json::value_from_json(value.clone()),
            )]
            .into_iter()
            .collect(),
        };
        out.extend_from_slice(&one.encode_to_vec());
    }
    out
}

/// Appends a length-delimited field `tag` holding `payload` to `buf` (protobuf merges it into the message).
pub fn append_message_field(buf: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(payload.len() as u64, buf);
    buf.extend_from_slice(payload);
}

/// Encodes `key` (its own `options` must be `None`) with `options_struct` (encoded Struct bytes, see
/// [`struct_bytes_in_order`]) as its `options` field.
///
/// # Panics
/// If `key.options` is set.
pub fn key_bytes_with_options(key: &pb::CacheKey, options_struct: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    assert!(key.options.is_none(), "pass the options as bytes only");
    let mut out = key.encode_to_vec();
    append_message_field(&mut out, 4, options_struct);
    out
}

/// Encodes `request` (its own `key` must be `None`) with `key_bytes` as its `key` field. Works for
/// `SetRequest` and `GetRequest`, whose key is field 1.
///
/// # Panics
/// If the request's key is set.
pub fn request_bytes_with_key<M: prost::Message>(request: &M, key_bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_message_field(&mut out, 1, key_bytes);
    let rest = request.encode_to_vec();
    assert!(
        rest.first() != Some(&0x0a),
        "the request's key must be None: pass it as bytes"
    );
    out.extend_from_slice(&rest);
    out
}
