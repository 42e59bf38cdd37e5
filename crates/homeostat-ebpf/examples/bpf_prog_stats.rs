//! Prints the run-time counters of every loaded BPF program whose id or name is given
//! (all if none), one line each: `id name run_cnt run_time_ns ns_per_run`. For
//! scripts/bench-daemon.sh, which reads the programs of any homeostat build this way
//! (the build under test need not report them itself). Needs root; the counters move
//! only while `kernel.bpf_stats_enabled` is 1.
//!
//! `cargo run --release -p homeostat-ebpf --example bpf_prog_stats [ID|NAME...]`

fn main() {
    let names: Vec<String> = std::env::args().skip(1).collect();
    if !homeostat_ebpf::bpf_stats_enabled() {
        eprintln!("bpf_prog_stats: kernel.bpf_stats_enabled is 0: counters do not move");
    }
    let wanted = |id: u32, name: &str| {
        names.is_empty() || names.iter().any(|x| x == name || x.parse() == Ok(id))
    };
    for p in homeostat_ebpf::prog_stats(wanted) {
        let per = p
            .ns_per_run()
            .map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        println!("{} {} {} {} {per}", p.id, p.name, p.run_cnt, p.run_time_ns);
    }
}
