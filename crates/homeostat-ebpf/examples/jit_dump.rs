//! Writes the JIT image of every loaded BPF program named ARG to /tmp/jit-<id>.bin and
//! prints its id and kernel address (for `objdump -D -b binary -m i386:x86-64
//! --adjust-vma=ADDR`), to match `perf` samples to instructions. Root.
use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let opts = ProgInfoQueryOptions::default()
        .include_jited_prog_insns(true)
        .include_jited_ksyms(true);
    for p in ProgInfoIter::with_query_opts(opts) {
        if p.name.to_string_lossy() == name {
            let f = format!("/tmp/jit-{}.bin", p.id);
            std::fs::write(&f, &p.jited_prog_insns).unwrap();
            println!("{} {:?} {f}", p.id, p.jited_ksyms.first());
        }
    }
}
