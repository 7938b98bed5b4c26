//! `cargo run -p switchyard-protobuf-gen`: rewrite `crates/api/src/protobuf/schema.rs` from the
//! k8s-pb and k8s-openapi versions in Cargo.lock (see the library for how).

fn main() -> anyhow::Result<()> {
    let sources = switchyard_protobuf_gen::locate_sources()?;
    let text = switchyard_protobuf_gen::generate(&sources)?;
    let path = switchyard_protobuf_gen::output_path();
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}
