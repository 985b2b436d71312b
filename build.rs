//! Generates the `cache.v1` protocol code and the descriptor set used by server reflection.
//! Pure Rust (protox): no system `protoc` is needed.
use prost::Message as _;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["cache/v1/cache.proto"], ["proto"])?;
    std::fs::write(out_dir.join("cache_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        // prost's codec, with large messages encoded off the async worker's turn (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
