//! Compiles the BPF object and generates its skeleton (feature `bpf` only), with the
//! hand-written CO-RE header in src/bpf, so the build does not depend on the build
//! machine's kernel. Needs clang (Debian: clang, llvm, libelf-dev, zlib1g-dev,
//! pkg-config).

fn main() {
    #[cfg(feature = "bpf")]
    bpf::build();
}

#[cfg(feature = "bpf")]
mod bpf {
    use std::env;
    use std::path::PathBuf;

    use libbpf_cargo::SkeletonBuilder;

    const SRC: &str = "src/bpf/homeostat.bpf.c";

    pub fn build() {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
            .join("homeostat.skel.rs");
        // v3: 32-bit atomics (the row index is set with compare-and-swap).
        let mut args = vec!["-Isrc/bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function"];
        // Feature `floor`: adds sys_enter programs that return at once (the hook's own
        // price), attached at start in place of the real one (src/floor.rs).
        if env::var_os("CARGO_FEATURE_FLOOR").is_some() {
            args.push("-DHS_FLOOR");
        }
        if let Err(e) = SkeletonBuilder::new()
            .source(SRC)
            .clang_args(args)
            .build_and_generate(&out)
        {
            // A build script reports failure by panicking; say what is missing.
            panic!("building {SRC} failed (needs clang; see docs/ebpf.md): {e:#}");
        }
        for f in [
            "homeostat.bpf.c",
            "homeostat.h",
            "args.bpf.h",
            "throttle.bpf.h",
            "vmlinux.h",
        ] {
            println!("cargo:rerun-if-changed=src/bpf/{f}");
        }
    }
}
