//! The `cache.v1` protocol: generated messages, the `CacheService` client and server stubs, and the
//! encoded descriptor set that server reflection serves; and [`json`], the one conversion from JSON to the
//! `google.protobuf.Struct` the protocol carries export options in; and [`codec`], the gRPC codec of the stubs
//! (prost's, with large messages encoded off the async worker's turn). No other hand-written logic lives here.

pub mod codec;
pub mod json;

/// Generated code for the `cache.v1` package (see `proto/cache/v1/cache.proto`).
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("cache.v1");

    /// Encoded `FileDescriptorSet` of `cache/v1/cache.proto` and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cache_descriptor");
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn file_descriptor_set_is_valid() {
        let fds = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        assert!(fds.file.iter().any(|f| f.package() == "cache.v1"));
    }
}
