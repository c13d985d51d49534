//! Writes the CRD manifests generated from podnet's Rust types.
//!
//! `cargo run -p podnet-crds --bin crdgen` writes them into `charts/podnet/crds/`;
//! `crdgen DIR` into DIR; `crdgen -` prints them to stdout.

use std::io::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let target = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/podnet/crds").to_string()
    });
    let files = podnet_crds::crd_files()?;
    if target == "-" {
        let mut out = std::io::stdout().lock();
        for f in &files {
            writeln!(out, "---\n{}", f.yaml)?;
        }
        return Ok(());
    }
    let dir = PathBuf::from(target);
    std::fs::create_dir_all(&dir)?;
    for f in &files {
        std::fs::write(dir.join(&f.file_name), &f.yaml)?;
        eprintln!("wrote {}", dir.join(&f.file_name).display());
    }
    Ok(())
}
