//! Argument capture under the real seccomp launcher: what a consumer that asks for
//! arguments sees of real programs' opens (relative to their cwd), execs, connects
//! and signals (docs/arguments.md).

use homeostat_core::ph::Verdict;
use homeostat_core::symbols::{flags, Arg, Target};
use homeostat_monitor::monitor_loop::{run, CallEvent, Consumer};
use homeostat_seccomp::LaunchOptions;
use homeostat_syscalls::Arch;

#[derive(Default)]
struct Collect {
    args: Vec<(String, Arg)>,
    plain: usize,
}

impl Consumer for Collect {
    fn wants_args(&self) -> bool {
        true
    }
    fn call(&mut self, ev: &CallEvent) -> Verdict {
        match &ev.captured.arg {
            Some(a) => {
                let name = Arch::X86_64.name(ev.nr).unwrap_or("?").to_string();
                self.args.push((name, a.clone()));
            }
            None => self.plain += 1,
        }
        Verdict::Continue
    }
    fn exit(&mut self, _: i32, _: i32, _: bool) {}
}

#[test]
fn real_programs_arguments_are_read_resolved_and_classified() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cd {} && echo hi > made.txt && cat ../{}/made.txt >/dev/null; \
         {{ : 3<>/dev/tcp/127.0.0.1/9; }} 2>/dev/null; kill -0 $$; exit 0",
        dir.path().display(),
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let argv: Vec<std::ffi::OsString> = ["bash", "-c", &script].iter().map(Into::into).collect();
    let mut c = Collect::default();
    let st = run(&argv, &LaunchOptions::default(), &mut c).unwrap();
    assert!(st.success(), "{st:?}");
    let made = dir.path().join("made.txt");
    let made = made.as_os_str().as_encoded_bytes();
    let has = |call: &str, a: &Arg| c.args.iter().any(|(n, x)| n == call && x == a);
    // `echo hi > made.txt`: relative to the cwd, created and written.
    assert!(
        has(
            "openat",
            &Arg::Path {
                path: made.to_vec(),
                flags: flags::CREATE | flags::WRITE
            }
        ),
        "{:?}",
        c.args
    );
    // `cat ../DIR/made.txt`: resolved, read only.
    assert!(has(
        "openat",
        &Arg::Path {
            path: made.to_vec(),
            flags: 0
        }
    ));
    assert!(c
        .args
        .iter()
        .any(|(n, a)| n == "execve" && matches!(a, Arg::Exec { path } if path.ends_with(b"/cat"))));
    assert!(has(
        "connect",
        &Arg::Inet {
            addr: vec![127, 0, 0, 1],
            port: 9
        }
    ));
    assert!(
        has("kill", &Arg::Target(Target::SelfProcess)),
        "{:?}",
        c.args
    );
    assert!(c
        .args
        .iter()
        .any(|(n, a)| n == "mmap" && *a == Arg::Prot { exec: true }));
    assert!(c.plain > c.args.len(), "most calls carry no argument");
}
