//! Embeds the labelled sample traces (`data/sample`) into the binary, so the quick
//! start's evaluation runs from anywhere with nothing else installed.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "unm") {
            out.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = vec![];
    walk(&root, &mut files);
    files.sort();
    let mut src = String::from("/// The sample's trace files: (path under data/sample, contents).\npub const FILES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&root).expect("walked under root");
        let abs = f.canonicalize().expect("sample file exists");
        let _ = writeln!(
            src,
            "    ({:?}, include_bytes!({:?})),",
            rel.to_string_lossy(),
            abs.to_string_lossy()
        );
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("sample_files.rs"), src).expect("write sample_files.rs");
}
