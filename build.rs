//! Generates the protobuf types from proto/classifyd.proto with a vendored protoc, so building
//! needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/classifyd.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&["proto/classifyd.proto"], &["proto"])?;
    Ok(())
}
