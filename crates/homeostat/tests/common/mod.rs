//! Helpers shared by the `homeostat` binary's integration tests. Each test file is its
//! own crate and uses a subset of these, hence the allow.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
}

/// A file or folder of the embedded sample (data/sample).
pub fn sample(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(part)
}

/// Runs a command that must succeed; returns its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("homeostat runs");
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A perl storm for the rate-limit tests, `run` and daemon alike: `fork N MS` makes N
/// forks (each child exits at once, the parent waits for it), MS ms apart; `create N
/// MS DIR` creates N files in DIR, MS ms apart.
pub const STORM: &str = r#"
use POSIX ();
my ($kind, $n, $ms, $dir) = @ARGV;
for my $i (1..$n) {
    if ($kind eq "fork") { my $p = fork; if (!$p) { POSIX::_exit(0) } waitpid($p, 0); }
    else { open(my $f, ">", "$dir/f$i") or die "$dir/f$i: $!"; close $f; }
    select(undef, undef, undef, $ms / 1000) if $ms > 0;
}
"#;
