//! Compiles `proto/weft/v1/*.proto` with protox (pure Rust, no `protoc`) and generates the
//! tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "proto";
    let mut files: Vec<_> = std::fs::read_dir("proto/weft/v1")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    let fds = protox::compile(&files, [dir])?;
    // The encoded descriptors, for gRPC server reflection (grpcurl).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("weft_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={dir}");
    Ok(())
}
