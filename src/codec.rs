//! The gRPC codec the generated stubs use: prost's, except that a large message is encoded off the async
//! worker's turn.
//!
//! Encoding copies every byte of a message into the frame buffer in one go; for a 64 MiB value that is tens
//! of milliseconds of page faults and `memcpy` during which the worker runs nothing else, so small calls
//! queued on it wait (measured: p99 of a small client ~90 ms beside eight 64 MiB Gets). A message of at least
//! [`OFFLOAD_ENCODE_BYTES`] is encoded inside `tokio::task::block_in_place` on a multi-thread runtime: the
//! worker hands its other tasks to a fresh thread for the duration of the copy. Decoding is prost's own.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, EncodeBuf};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Messages at least this large are encoded with the worker handed off.
pub const OFFLOAD_ENCODE_BYTES: usize = 1 << 20;

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
    U: Message + Default + Send + 'static,
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

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
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
}
