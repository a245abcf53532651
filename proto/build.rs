//! Compiles the `.proto` contract with protox (pure Rust, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/capstan/common/v1/error.proto",
        "proto/capstan/blob/v1/blob.proto",
        "proto/capstan/meta/v1/meta.proto",
        "proto/capstan/auth/v1/auth.proto",
        "proto/capstan/sync/v1/sync.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".capstan.blob.v1.ReadChunk.data")
        .bytes(".capstan.blob.v1.PutChunk.data")
        .bytes(".capstan.blob.v1.WriteChunk.data")
        .bytes(".capstan.meta.v1.PutManifestRequest.content")
        .bytes(".capstan.meta.v1.PutManifestRequest.config")
        .bytes(".capstan.meta.v1.GetManifestResponse.content")
        .compile_fds(fds)?;
    Ok(())
}
