//! A real strace recording, `strace -f -o tests/data/sh-ls.strace sh -c 'ls /; echo hi | cat'`
//! (strace 6.1, x86_64), read end to end through format detection.

use std::path::Path;

use homeostat_traces::{read_traces, Arch, ReadOptions};

#[test]
fn sh_ls_fixture_parses_into_plausible_traces() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sh-ls.strace");
    let traces = read_traces(&path, &ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let arch = Arch::X86_64;
    let nr = |n: &str| arch.number(n).unwrap();
    let show = |calls: &[u32]| {
        calls
            .iter()
            .map(|&c| arch.display(c))
            .collect::<Vec<_>>()
            .join(" ")
    };

    assert!(traces.len() >= 3, "only {} traces", traces.len());
    for t in &traces {
        assert!(t.id.starts_with("sh-ls.strace:"), "{}", t.id);
        assert!(t.calls.len() >= 5, "{}: {}", t.id, show(&t.calls));
        assert_eq!(
            t.calls.last(),
            Some(&nr("exit_group")),
            "{}: {}",
            t.id,
            show(&t.calls)
        );
        // Every name in a real strace run is in the table: no synthetic numbers.
        assert!(
            t.calls.iter().all(|&c| arch.name(c).is_some()),
            "{}",
            show(&t.calls)
        );
    }
    // The shell comes first and starts with its own execve; `ls` and `cat` exec too.
    assert_eq!(traces[0].calls[0], nr("execve"));
    let execs = traces
        .iter()
        .filter(|t| t.calls.contains(&nr("execve")))
        .count();
    assert!(execs >= 3, "{execs} traces exec");
    // Output reached stdout: ls wrote, and so did cat.
    assert!(
        traces
            .iter()
            .filter(|t| t.calls.contains(&nr("write")))
            .count()
            >= 2
    );
}
