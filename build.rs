//! Generates the protobuf types from proto/classifyd.proto with a vendored protoc, so building
//! needs no system protoc; and names this build's weight packing for the weights cache's key.

/// The sources that decide how weights are laid out in the cache file: the panels, their
/// quantization, what is recorded, and the file itself.
const PACKING: &[&str] = &[
    "src/model/kernels/gemm/mod.rs",
    "src/model/kernels/qgemm/mod.rs",
    "src/model/kernels/mapped.rs",
    "src/model/kernels/weights.rs",
    "src/engine/cache.rs",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/classifyd.proto");
    // FNV-1a over the packing sources: any change to them (a comment included, which only
    // costs a rebuild of the cache) gives a new key, so no build reads panels another packed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for path in PACKING {
        println!("cargo:rerun-if-changed={path}");
        for b in std::fs::read(path)? {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=CLASSIFYD_PACKING={h:016x}");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&["proto/classifyd.proto"], &["proto"])?;
    Ok(())
}
