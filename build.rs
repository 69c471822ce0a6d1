//! Compiles proto/im.proto with protox (pure Rust), so no system `protoc` is needed, and writes the
//! encoded descriptor set for gRPC server reflection, and proto3 JSON (serde) impls with pbjson.
use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["im.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let encoded = fds.encode_to_vec();
    fs::write(out.join("im_descriptor.bin"), &encoded)?;
    // proto3 JSON (serde) for every message, for the WebSocket's `tim.v1.json` framing and the
    // JSON endpoints browsers call (src/web).
    pbjson_build::Builder::new().register_descriptors(&encoded)?.build(&[".im.v1"])?;
    tonic_prost_build::configure()
        // Undecodable frames become INVALID_ARGUMENT instead of prost's INTERNAL: see src/codec.rs.
        .codec_path("crate::codec::ImCodec")
        .compile_fds(fds)?;
    Ok(())
}
