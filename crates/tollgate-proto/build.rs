//! Generates the tonic/prost code from `proto/` with a vendored protoc (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc)
        };
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["raft.proto", "admin.proto", "quota.proto"].map(|f| root.join(f));
    tonic_prost_build::configure().compile_protos(&files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
