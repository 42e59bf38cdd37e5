//! Calls held by the monitor (pH delays, rate-limit queues) when the monitored
//! program dies: the monitor must not outlive its program by the length of the
//! delays it had scheduled (a rate-limit queue can hold a call for hours).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use homeostat_core::ph::Verdict;
use homeostat_monitor::monitor_loop::{run_with, CallEvent, Consumer};
use homeostat_seccomp::LaunchOptions;
use homeostat_syscalls::Arch;

/// Holds every sleep for an hour, as a long rate-limit queue would; records the
/// pid of the first task it held.
struct HoldSleeps {
    held: Arc<AtomicI32>,
}

impl Consumer for HoldSleeps {
    fn call(&mut self, ev: &CallEvent) -> Verdict {
        match Arch::X86_64.name(ev.nr) {
            Some("clock_nanosleep" | "nanosleep") if ev.arch == Arch::X86_64 => {
                let _ = self
                    .held
                    .compare_exchange(0, ev.pid, Ordering::SeqCst, Ordering::SeqCst);
                Verdict::Delay(3600 * 1_000_000_000)
            }
            _ => Verdict::Continue,
        }
    }
    fn exit(&mut self, _: i32, _: i32, _: bool) {}
}

#[test]
fn a_killed_program_with_held_calls_ends_the_run_at_once() {
    let held = Arc::new(AtomicI32::new(0));
    let h = held.clone();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let argv: Vec<std::ffi::OsString> = ["sleep", "30"].iter().map(Into::into).collect();
        let mut c = HoldSleeps { held: h };
        let st = run_with(&argv, &LaunchOptions::default(), &mut c, &mut |_| {});
        let _ = tx.send(st.map_err(|e| e.to_string()));
    });
    // Wait until the sleep is held, then kill the program.
    let pid = loop {
        let p = held.load(Ordering::SeqCst);
        if p != 0 {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sleep was never held"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: kill(2) on the pid of the program this test launched.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let st = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the run did not end within 20 s of its program's death: it waits out held calls");
    let st = st.unwrap();
    assert_eq!(
        homeostat_monitor::monitor_loop::exit_code(st),
        128 + 9,
        "{st:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?} after the kill",
        killed.elapsed()
    );
}
