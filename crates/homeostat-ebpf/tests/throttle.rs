//! Real-kernel tests of the connection throttle's kernel half (src/bpf/throttle.bpf.h):
//! a connect to a host outside its profile's working set is reported with its
//! address (and stops its process when asked); a host put in the set passes without a
//! report, and its last use is recorded. Root and BTF, else skipped with a message.
#![cfg(feature = "bpf")]

mod common;

use std::cell::RefCell;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kernel_with, private_copy};
use homeostat_core::symbols::Arg;
use homeostat_ebpf::{Event, EventKind, KernelState, Options, RateFlags, ThrottleFlags};
use homeostat_testsupport::spawn;

/// bash connecting to 127.0.0.N:port for each N, through /dev/tcp.
fn connects(bash: &Path, port: u16, hosts: &[u8]) -> std::process::Child {
    let script: String = hosts
        .iter()
        .map(|n| format!("exec 3<>/dev/tcp/127.0.0.{n}/{port}; exec 3>&-; "))
        .collect();
    spawn(
        Command::new(bash)
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn hosts_of(evs: &[Event], pid: u32) -> Vec<Vec<u8>> {
    evs.iter()
        .filter(|e| e.kind == EventKind::Throttle && e.pid == pid)
        .filter_map(|e| match &e.arg {
            Some(Arg::Inet { addr, .. }) => Some(addr.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn new_hosts_are_reported_known_hosts_pass_and_enforce_stops() {
    let Some(k) = kernel_with(&Options {
        throttle: Some(ThrottleFlags {
            report: false,
            stop: false,
        }),
        ..Options::default()
    }) else {
        return;
    };
    assert!(k.throttle().is_some());
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (bash, exe) = private_copy(dir.path(), "/bin/bash");
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();

    // The default flags (off): nothing reported.
    let c = connects(&bash, port, &[2]);
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    events.poll(Duration::from_millis(50)).unwrap();
    assert!(hosts_of(&got.borrow(), pid).is_empty());

    // Reported: each connect to a host outside the set, with its address.
    let report = ThrottleFlags {
        report: true,
        stop: false,
    };
    k.set_throttle(exe, report).unwrap();
    let c = connects(&bash, port, &[2, 3, 2]);
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    events.poll(Duration::from_millis(50)).unwrap();
    assert_eq!(
        hosts_of(&got.borrow(), pid),
        vec![vec![127, 0, 0, 2], vec![127, 0, 0, 3], vec![127, 0, 0, 2]]
    );
    assert!(got.borrow().iter().all(|e| !e.stopped));

    // A host of the working set passes, and its use is recorded.
    k.add_host(exe, &[127, 0, 0, 2]).unwrap();
    let added = k.host_used(exe, &[127, 0, 0, 2]).unwrap().unwrap();
    assert!(added > 0 && added <= homeostat_ebpf::ktime_ns());
    let c = connects(&bash, port, &[2, 3]);
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    events.poll(Duration::from_millis(50)).unwrap();
    assert_eq!(hosts_of(&got.borrow(), pid), vec![vec![127, 0, 0, 3]]);
    assert!(k.host_used(exe, &[127, 0, 0, 2]).unwrap().unwrap() > added);
    k.remove_host(exe, &[127, 0, 0, 2]).unwrap();
    assert_eq!(k.host_used(exe, &[127, 0, 0, 2]).unwrap(), None);

    // Enforce: the first connect to a new host stops the process.
    k.set_throttle(
        exe,
        ThrottleFlags {
            report: true,
            stop: true,
        },
    )
    .unwrap();
    let mut c = connects(&bash, port, &[4, 5]);
    let pid = c.id();
    let mut stop = None;
    for _ in 0..100 {
        events.poll(Duration::from_millis(20)).unwrap();
        stop = got
            .borrow()
            .iter()
            .find(|e| e.stopped && e.pid == pid)
            .cloned();
        if stop.is_some() {
            break;
        }
    }
    let stop = stop.expect("no stopping throttle event");
    assert_eq!(stop.kind, EventKind::Throttle);
    assert_eq!(k.stopped().len(), 1);
    let mut state = String::new();
    for _ in 0..200 {
        state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim().starts_with('T'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        state.rsplit(')').next().unwrap().trim().starts_with('T'),
        "not stopped: {state}"
    );
    // Resumed without a tracer, its next new host would stop it again.
    k.set_throttle(exe, report).unwrap();
    assert_eq!(k.resume_stopped(), vec![pid]);
    assert!(c.wait().unwrap().success());
    let s = k.throttle_stats().unwrap();
    assert_eq!((s.unread, s.lost_events), (0, 0));
    k.remove_profile(exe).unwrap();
}

/// The rate limits' kernel half: forks of a learning profile are reported with their
/// times; once checked, the call beyond the limit in the window is reported and stops
/// its process; the ring keeps the times. Loaded beside argument classes and the
/// throttle, so the largest program still passes the verifier.
#[test]
fn forks_are_counted_and_the_one_beyond_the_limit_stops() {
    let Some(k) = kernel_with(&Options {
        throttle: Some(ThrottleFlags::default()),
        rates: Some(RateFlags {
            learn: true,
            check: false,
            stop: false,
        }),
        symbols: Some(homeostat_core::symbols::SymbolConfig::default()),
        ..Options::default()
    }) else {
        return;
    };
    assert!(k.rates().is_some());
    let dir = tempfile::tempdir().unwrap();
    let (bash, exe) = private_copy(dir.path(), "/bin/bash");
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    let forks = |n: u32| {
        spawn(
            Command::new(&bash)
                .args(["-c", &format!("for i in $(seq {n}); do (exit 0); done")])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    // The default flags (learn): each fork reported, in order of time.
    let c = forks(4);
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    events.poll(Duration::from_millis(50)).unwrap();
    let calls: Vec<_> = got
        .borrow()
        .iter()
        .filter(|e| e.kind == EventKind::RateCall && e.pid == pid)
        .filter_map(|e| e.rate)
        .collect();
    // $(seq) forks once more than the loop's subshells.
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls
        .iter()
        .all(|c| c.kind == homeostat_core::rate::RateKind::Fork));
    assert!(calls.windows(2).all(|w| w[0].ktime_ns <= w[1].ktime_ns));
    assert!(calls[4].ktime_ns <= homeostat_ebpf::ktime_ns());
    let ring = k
        .rate_ring(exe, homeostat_core::rate::RateKind::Fork)
        .unwrap();
    assert_eq!(ring.len(), 5);
    // File creations: an open with O_CREAT counts, one without does not.
    let c = spawn(
        Command::new(&bash)
            .current_dir(dir.path())
            .args(["-c", ": > a; : > b; : < a"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = c.id();
    assert!(c.wait_with_output().unwrap().status.success());
    events.poll(Duration::from_millis(50)).unwrap();
    let creates = got
        .borrow()
        .iter()
        .filter(|e| e.kind == EventKind::RateCall && e.pid == pid)
        .filter_map(|e| e.rate)
        .filter(|r| r.kind == homeostat_core::rate::RateKind::Create)
        .count();
    assert_eq!(creates, 2);

    // Checked: at most 3 forks in 10 s, the fourth stops.
    k.set_rates(
        exe,
        RateFlags {
            learn: false,
            check: true,
            stop: true,
        },
        [3, 0],
        10_000_000_000,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let mut c = forks(6);
    let pid = c.id();
    let mut stop = None;
    for _ in 0..100 {
        events.poll(Duration::from_millis(20)).unwrap();
        stop = got
            .borrow()
            .iter()
            .find(|e| e.kind == EventKind::RateOver && e.pid == pid)
            .cloned();
        if stop.is_some() {
            break;
        }
    }
    let stop = stop.expect("no rate event");
    // The ring still held the 5 learning forks (in the window): the first fork stops.
    assert!(stop.stopped);
    assert_eq!(stop.rate.unwrap().limit, 3);
    assert_eq!(k.stopped().len(), 1);
    // Resumed without a tracer, its next fork would stop it again.
    k.set_rates(
        exe,
        RateFlags {
            learn: false,
            check: true,
            stop: false,
        },
        [3, 0],
        10_000_000_000,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(k.resume_stopped(), vec![pid]);
    assert!(c.wait().unwrap().success());
    k.remove_profile(exe).unwrap();
}
