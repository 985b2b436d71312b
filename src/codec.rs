//! The gRPC codec the generated stubs use: prost's, except that a large message is encoded off the async
//! worker's turn.
//!
//! Encoding copies every byte of a message into the frame buffer in one go; for a 64 MiB value that is tens
//! of milliseconds of page faults and `memcpy` during which the worker runs nothing else, so small calls
//! queued on it wait (measured: p99 of a small client ~90 ms beside eight 64 MiB Gets). A message of at least
//! [`OFFLOAD_ENCODE_BYTES`] is encoded inside `tokio::task::block_in_place` on a multi-thread runtime: the
//! worker hands its other tasks to a fresh thread for the duration of the copy.
//!
//! Decoding is prost's, after one check prost cannot make: a request's export options (`CacheKey.options`, a
//! `google.protobuf.Struct`) are measured on the wire before anything is decoded, because a `Struct` costs
//! ~20-30 times its encoded size once decoded (8 million empty values in a 15 MiB request took 250 MiB).
//! Options over [`MAX_OPTIONS_WIRE_BYTES`] answer `INVALID_ARGUMENT` naming the field. Decode errors answer as
//! gRPC implementations do (`INTERNAL`, "the request is not a valid message"), except messages nested past
//! prost's recursion limit, which are a limit of what a request may carry: `INVALID_ARGUMENT`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, EncodeBuf};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Messages at least this large are encoded with the worker handed off.
pub const OFFLOAD_ENCODE_BYTES: usize = 1 << 20;

/// The most bytes one key's export options may take on the wire (the canonical JSON has its own, smaller,
/// limit, checked after decoding).
pub const MAX_OPTIONS_WIRE_BYTES: usize = 64 << 10;

/// Where a message carries `CacheKey`s, for the wire check of their options: the request messages say
/// where their keys are; responses and the rest carry none.
pub trait KeyPath {
    /// Field numbers from the message to its `CacheKey` (a repeated field is every element); empty: no key.
    const KEY_PATH: &'static [u32] = &[];
}

macro_rules! key_path {
    ($($ty:ident => [$($field:literal),*];)*) => {
        $(impl KeyPath for crate::pb::$ty {
            const KEY_PATH: &'static [u32] = &[$($field),*];
        })*
    };
}

key_path! {
    GetRequest => [1];
    SetRequest => [1];
    InvalidateRequest => [1];
    GetManyRequest => [1, 1];
    SetManyRequest => [1, 1];
    GetResponse => [];
    SetResponse => [];
    InvalidateResponse => [];
    MetricsRequest => [];
    MetricsResponse => [];
    GetManyResponse => [];
    SetManyResponse => [];
}

/// prost's codec with large messages encoded off the worker's turn (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + KeyPath + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(ProstEncoder::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstDecoder::default())
    }
}

/// Encodes `T`; see [`Codec`].
#[derive(Debug, Clone, Default)]
pub struct Encoder<T>(ProstEncoder<T>);

impl<T: Message> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if item.encoded_len() >= OFFLOAD_ENCODE_BYTES && on_multi_thread_runtime() {
            tokio::task::block_in_place(|| self.0.encode(item, buf))
        } else {
            self.0.encode(item, buf)
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Decodes `U` with prost.
#[derive(Debug, Clone, Default)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default + KeyPath> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf as _;
        if !U::KEY_PATH.is_empty() {
            check_options(buf.chunk(), U::KEY_PATH)?;
        }
        match U::decode(buf) {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.to_string().contains("recursion limit") => {
                Err(Status::invalid_argument(format!(
                    "the request nests messages deeper than protobuf's recursion limit (export options: a few levels at most): {e}"
                )))
            }
            Err(e) => Err(Status::internal(format!(
                "the request is not a valid {}: {e}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message")
            ))),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Walks the wire bytes of `message` along `path` to each `CacheKey` and refuses options over
/// [`MAX_OPTIONS_WIRE_BYTES`]. Bytes that are not valid protobuf are left for prost to refuse.
fn check_options(message: &[u8], path: &[u32]) -> Result<(), Status> {
    let mut index = 0usize;
    let mut found = Ok(());
    let _ = for_each_field(message, |field, bytes| {
        if field != path[0] || found.is_err() {
            return;
        }
        if path.len() > 1 {
            // A repeated sub-request: check its key under its index, for the error's field path.
            if let Err(status) = check_options(bytes, &path[1..]) {
                found = Err(Status::invalid_argument(format!(
                    "requests[{index}].{}",
                    status.message()
                )));
            }
            index += 1;
            return;
        }
        let _ = for_each_field(bytes, |key_field, options| {
            // CacheKey.options = 4.
            if key_field == 4 && options.len() > MAX_OPTIONS_WIRE_BYTES && found.is_ok() {
                found = Err(Status::invalid_argument(format!(
                    "key.options: is {} bytes encoded, more than {MAX_OPTIONS_WIRE_BYTES}",
                    options.len()
                )));
            }
        });
    });
    found
}

/// Calls `each(field, bytes)` for every length-delimited field of `message`, in order; skips the others.
/// Stops at the first malformed byte.
fn for_each_field(mut message: &[u8], mut each: impl FnMut(u32, &[u8])) -> Result<(), ()> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    while !message.is_empty() {
        let (field, wire_type) = decode_key(&mut message).map_err(|_| ())?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut message).map_err(|_| ())?;
            }
            WireType::SixtyFourBit => message = message.get(8..).ok_or(())?,
            WireType::ThirtyTwoBit => message = message.get(4..).ok_or(())?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut message).map_err(|_| ())?)
                    .map_err(|_| ())?;
                let bytes = message.get(..len).ok_or(())?;
                each(field, bytes);
                message = &message[len..];
            }
            WireType::StartGroup | WireType::EndGroup => return Err(()),
        }
    }
    Ok(())
}

/// `block_in_place` panics on a current-thread runtime (and outside any runtime): there the copy runs inline.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt as _;
    use http_body_util::BodyExt as _;
    use tonic::codec::{Codec as _, EncodeBody};

    use super::*;

    /// The framed bytes a client would send for `reply`: the 5-byte gRPC prefix, then prost's encoding.
    async fn framed(value_len: usize) -> (Bytes, Vec<u8>) {
        let reply = crate::pb::GetResponse {
            found: true,
            value: vec![7u8; value_len].into(),
            entry: None,
        };
        let expected = reply.encode_to_vec();
        let mut codec = Codec::<crate::pb::GetResponse, crate::pb::GetRequest>::default();
        let source = futures::stream::iter([Ok(reply)]).boxed();
        let body = EncodeBody::new_client(codec.encoder(), source, None, None);
        let bytes = body.collect().await.expect("encodes").to_bytes();
        (bytes, expected)
    }

    async fn encodes_like_prost(value_len: usize) {
        let (bytes, expected) = framed(value_len).await;
        assert_eq!(&bytes[5..], &expected[..]);
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize,
            expected.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_encode_like_prost_on_a_multi_thread_runtime() {
        encodes_like_prost(10).await;
        encodes_like_prost(OFFLOAD_ENCODE_BYTES + 1).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_messages_encode_inline_on_a_current_thread_runtime() {
        encodes_like_prost(OFFLOAD_ENCODE_BYTES + 1).await;
    }

    fn key_with_options(fields: usize) -> crate::pb::CacheKey {
        let options = prost_types::Struct {
            fields: (0..fields)
                .map(|i| (format!("f{i}"), prost_types::Value::default()))
                .collect(),
        };
        crate::pb::CacheKey {
            r#type: crate::pb::CacheType::ExportResult as i32,
            id: "o".into(),
            format: "ifc".into(),
            options: Some(options),
            ..Default::default()
        }
    }

    #[test]
    fn options_over_the_wire_limit_are_refused_before_decoding() {
        let small = crate::pb::GetRequest {
            key: Some(key_with_options(10)),
            ..Default::default()
        };
        assert!(check_options(&small.encode_to_vec(), crate::pb::GetRequest::KEY_PATH).is_ok());
        let large = crate::pb::GetRequest {
            key: Some(key_with_options(20_000)),
            ..Default::default()
        };
        let status =
            check_options(&large.encode_to_vec(), crate::pb::GetRequest::KEY_PATH).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("key.options: is "),
            "{}",
            status.message()
        );
        let many = crate::pb::GetManyRequest {
            requests: vec![small.clone(), small, large],
        };
        let status =
            check_options(&many.encode_to_vec(), crate::pb::GetManyRequest::KEY_PATH).unwrap_err();
        assert!(
            status.message().starts_with("requests[2].key.options: is "),
            "{}",
            status.message()
        );
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        assert!(check_options(&[0xff, 0xff, 0xff], crate::pb::GetRequest::KEY_PATH).is_ok());
        assert!(check_options(&[0x0a, 0x7f, 0x01], crate::pb::GetRequest::KEY_PATH).is_ok());
    }
}
