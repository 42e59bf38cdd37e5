//! Real-kernel tests of the BPF programs and their loader: root, BTF, no mocks.
//! Each skips with a message when not root or the kernel has no BTF / refuses BPF
//! for lack of privilege; any other load failure is a failure.
#![cfg(feature = "bpf")]

mod common;

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kernel_with, private_copy};
use homeostat_core::ph::ExeKey;
use homeostat_ebpf::{Error, Event, EventKind, ExecLsm, Hook, Kernel, KernelState, Options};
use homeostat_testsupport::spawn;

fn kernel() -> Option<Kernel> {
    kernel_with(&Options::default())
}

fn run(bin: &Path, args: &[&str]) -> u32 {
    let child = spawn(
        Command::new(bin)
            .args(args)
            .env("LC_ALL", "C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let pid = child.id();
    child.wait_with_output().unwrap();
    pid
}

#[test]
fn load_attach_and_read_counters() {
    let Some(k) = kernel() else { return };
    eprintln!("sys_enter hook: {:?}", k.hook());
    let s = k.stats().unwrap();
    assert_eq!(s.lost_events, 0);
}

/// Takes every one of the kernel's 4096 profile slots (a free kernel: no other
/// profile) with training profiles under device `dev`, a key no file has; the
/// caller removes them.
fn every_slot_taken(k: &Kernel, dev: u64) -> Vec<ExeKey> {
    let keys: Vec<ExeKey> = (0..4096).map(|ino| ExeKey { dev, ino }).collect();
    for &key in &keys {
        k.set_state(key, KernelState::Training).unwrap();
    }
    keys
}

#[test]
fn pairs_round_trip_through_the_kernel() {
    let Some(k) = kernel() else { return };
    // A key no file has: nothing in the kernel touches it but us.
    let exe = ExeKey {
        dev: u64::MAX,
        ino: 0x5eed,
    };
    k.set_state(exe, KernelState::Normal).unwrap();
    let p = k.profile(exe).unwrap().unwrap();
    assert_eq!(p.state, KernelState::Normal);
    assert!(k.profiles().contains(&exe));
    k.add_pairs(exe, &[(1, 0, 0b1), (2, 1, 0b10), (2, 1, 0b1), (3, 3, 0)])
        .unwrap();
    assert_eq!(k.pairs(exe).unwrap(), vec![(1, 0, 0b1), (2, 1, 0b11)]);
    assert!(matches!(
        k.add_pairs(exe, &[(1, 512, 1)]),
        Err(Error::OutOfRange(512))
    ));
    // i386 rows (512 + the i386 number) are rows of their own.
    k.add_pairs(exe, &[(512 + 1, 0, 0b100)]).unwrap();
    assert_eq!(
        k.pairs(exe).unwrap(),
        vec![(1, 0, 0b1), (2, 1, 0b11), (513, 0, 0b100)]
    );
    assert!(matches!(
        k.add_pairs(exe, &[(1024, 0, 1)]),
        Err(Error::OutOfRange(1024))
    ));
    k.remove_profile(exe).unwrap();
    assert_eq!(k.profile(exe).unwrap(), None);
    assert!(k.pairs(exe).unwrap().is_empty());
    // Its slot and rows were freed cleared: a new profile starts empty, and every
    // slot can be taken and given back.
    let others = every_slot_taken(&k, u64::MAX - 1);
    assert!(k.pairs(others[4095]).unwrap().is_empty());
    assert!(
        k.set_state(exe, KernelState::Training).is_err(),
        "4097th profile"
    );
    for &o in &others {
        k.remove_profile(o).unwrap();
    }
    k.add_pairs(exe, &[(7, 7, 1)]).unwrap();
    assert_eq!(k.pairs(exe).unwrap(), vec![(7, 7, 1)]);
    k.remove_profile(exe).unwrap();
}

#[test]
fn learns_in_training_then_detects_when_normal() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ls, exe) = private_copy(dir.path(), "/bin/ls");
    // A directory nobody else changes, so the trained runs are identical.
    let listed = dir.path().to_str().unwrap().to_string();
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    let drain = || {
        // The programs wake the reader only every N events; poll drains anyway.
        events.poll(Duration::from_millis(50)).unwrap();
        std::mem::take(&mut *got.borrow_mut())
    };

    k.set_state(exe, KernelState::Training).unwrap();
    let mut trained_pids = vec![];
    for _ in 0..5 {
        trained_pids.push(run(&ls, &[&listed]));
    }
    let evs = drain();
    let ours: Vec<_> = evs.iter().filter(|e| e.exe == exe).collect();
    let exec = ours
        .iter()
        .find(|e| e.kind == EventKind::Exec && e.pid == trained_pids[0])
        .unwrap_or_else(|| panic!("no exec event for {}", trained_pids[0]));
    assert_eq!(exec.path.as_deref(), ls.to_str());
    assert!(
        ours.iter()
            .any(|e| e.kind == EventKind::NewPairs && e.pid == trained_pids[0]),
        "no new-pairs event"
    );
    // Later runs of the same command learn (almost) nothing new.
    let learnt_last: u32 = ours
        .iter()
        .filter(|e| e.kind == EventKind::NewPairs && e.pid == trained_pids[4])
        .map(|e| e.misses)
        .sum();
    let pairs = k.pairs(exe).unwrap();
    assert!(pairs.len() > 50, "only {} pairs learnt", pairs.len());
    let p = k.profile(exe).unwrap().unwrap();
    assert!(p.calls > 0 && p.new_pairs > 0, "{p:?}");
    eprintln!(
        "learnt {} (cur, prev) entries, {} pairs; last run learnt {learnt_last}",
        pairs.len(),
        p.new_pairs
    );

    k.set_state(exe, KernelState::Normal).unwrap();
    let same = run(&ls, &[&listed]);
    let evs = drain();
    let anomalies: Vec<_> = evs
        .iter()
        .filter(|e| e.exe == exe && e.kind == EventKind::Anomaly)
        .collect();
    assert!(anomalies.is_empty(), "run {same} as trained: {anomalies:?}");

    let other = run(&ls, &["-laR", "/nonexistent", "/proc/self/"]);
    let evs = drain();
    let anomalies: Vec<_> = evs
        .iter()
        .filter(|e| e.exe == exe && e.kind == EventKind::Anomaly)
        .collect();
    assert!(!anomalies.is_empty(), "no anomaly for a new behaviour");
    assert!(anomalies.iter().all(|e| e.pid == other && e.tid == other));
    assert!(anomalies.iter().all(|e| e.misses > 0 && e.lfc > 0));
    let max_lfc = anomalies.iter().map(|e| e.lfc).max().unwrap();
    eprintln!("{} anomalous calls, max LFC {max_lfc}", anomalies.len());
    assert_eq!(
        k.profile(exe).unwrap().unwrap().anomalies,
        anomalies.len() as u64
    );
    // Nothing was learnt while normal.
    assert_eq!(k.pairs(exe).unwrap(), pairs);
    assert_eq!(k.stats().unwrap().lost_events, 0);
    k.remove_profile(exe).unwrap();
}

#[test]
fn forked_child_inherits_the_locality_frame() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (sh, exe) = private_copy(dir.path(), "/bin/dash");
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    for _ in 0..3 {
        run(&sh, &["-c", "exit 0"]);
    }
    k.set_state(exe, KernelState::Normal).unwrap();
    // New behaviour, then a fork: the subshell's anomalies start from the parent's
    // LFC instead of 0.
    let pid = run(&sh, &["-c", "cd /proc; (cd /; exit 3); echo x"]);
    events.poll(Duration::from_millis(50)).unwrap();
    let evs = got.borrow();
    let anomalies: Vec<_> = evs
        .iter()
        .filter(|e| e.exe == exe && e.kind == EventKind::Anomaly)
        .collect();
    let parent_max = anomalies
        .iter()
        .filter(|e| e.pid == pid)
        .map(|e| e.lfc)
        .max();
    let child_min = anomalies
        .iter()
        .filter(|e| e.pid != pid)
        .map(|e| e.lfc)
        .min();
    eprintln!("parent max LFC {parent_max:?}, child min LFC {child_min:?}");
    let (Some(pm), Some(cm)) = (parent_max, child_min) else {
        panic!("expected anomalies in parent and child: {anomalies:?}");
    };
    assert!(cm > 1 && pm > 0, "child started at LFC {cm}");
    k.remove_profile(exe).unwrap();
}

#[test]
fn raw_tp_fallback_learns_too() {
    let opts = Options {
        hook: Some(Hook::RawTp),
        ..Options::default()
    };
    let Some(k) = kernel_with(&opts) else { return };
    assert_eq!(k.hook(), Hook::RawTp);
    let dir = tempfile::tempdir().unwrap();
    let (bin, exe) = private_copy(dir.path(), "/bin/true");
    k.set_state(exe, KernelState::Training).unwrap();
    run(&bin, &[]);
    let p = k.profile(exe).unwrap().unwrap();
    assert!(p.calls > 10 && p.new_pairs > 10, "{p:?}");
    assert!(!k.pairs(exe).unwrap().is_empty());
    k.remove_profile(exe).unwrap();
}

#[test]
fn auto_create_profiles_new_executables() {
    let opts = Options {
        auto_create: true,
        ..Options::default()
    };
    let Some(k) = kernel_with(&opts) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (bin, exe) = private_copy(dir.path(), "/bin/true");
    run(&bin, &[]);
    let p = k.profile(exe).unwrap().expect("profile created at exec");
    assert_eq!(p.state, KernelState::Training);
    assert!(p.new_pairs > 10, "{p:?}");
    k.remove_profile(exe).unwrap();
}

#[test]
fn a_full_ring_buffer_counts_lost_events() {
    let opts = Options {
        ring_bytes: 4096,
        wakeup_every: 1_000_000,
        ..Options::default()
    };
    let Some(k) = kernel_with(&opts) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ls, exe) = private_copy(dir.path(), "/bin/ls");
    k.set_state(exe, KernelState::Training).unwrap();
    // Hundreds of new-pairs events of 48 bytes with nobody reading: a 4 KiB ring
    // overflows.
    run(&ls, &["-laR", "/proc/self/"]);
    let s = k.stats().unwrap();
    eprintln!("{s:?}");
    assert!(s.lost_events > 0, "{s:?}");
    k.remove_profile(exe).unwrap();
}

/// The response's kernel half: a normal profile with `respond` stops its process at
/// the first anomalous call (one stop however many calls follow), reports it, shows
/// the task's state to userspace, and the process runs to its end once resumed.
#[test]
fn responding_profile_stops_the_process_at_its_first_anomaly() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ls, exe) = private_copy(dir.path(), "/bin/ls");
    let listed = dir.path().to_str().unwrap().to_string();
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    for _ in 0..5 {
        run(&ls, &[&listed]);
    }
    k.set_state(exe, KernelState::Normal).unwrap();
    k.set_respond(exe, true).unwrap();
    assert!(k.profile(exe).unwrap().unwrap().respond);
    // The trained behaviour is not stopped.
    run(&ls, &[&listed]);
    events.poll(Duration::from_millis(50)).unwrap();
    assert!(got.borrow().iter().all(|e| !e.stopped));

    let mut child = spawn(
        Command::new(&ls)
            .args(["-laR", "/nonexistent", "/proc/self/"])
            .env("LC_ALL", "C")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = child.id();
    let mut stop = None;
    for _ in 0..100 {
        events.poll(Duration::from_millis(20)).unwrap();
        stop = got.borrow().iter().find(|e| e.stopped).cloned();
        if stop.is_some() {
            break;
        }
    }
    let stop = stop.expect("no stopping anomaly event");
    assert_eq!(
        (stop.pid, stop.kind, stop.exe),
        (pid, EventKind::Anomaly, exe)
    );
    // Only the first anomaly stops.
    assert_eq!(got.borrow().iter().filter(|e| e.stopped).count(), 1);
    let mut state = None;
    for _ in 0..200 {
        state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()));
        if state.as_deref().is_some_and(|s| s.starts_with('T')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(state.unwrap().starts_with('T'), "not stopped");
    assert_eq!(k.stopped(), vec![(pid, stop.tid, stop.nr)]);
    let t = k.task(stop.tid).unwrap().expect("task state");
    assert_eq!(t.exe, exe);
    assert_eq!(t.lfc, stop.lfc);
    assert!(t.lfc > 0 && t.nseq == 8);
    // A probe from another thread sees the same task.
    let probe = k.probe().unwrap();
    let tid = stop.tid;
    let seen = std::thread::spawn(move || probe.task(tid).unwrap())
        .join()
        .unwrap();
    assert_eq!(seen, Some(t));

    // Resumed without a tracer, its next anomaly would stop it again.
    k.set_respond(exe, false).unwrap();
    assert_eq!(k.resume_stopped(), vec![pid]);
    assert!(k.stopped().is_empty());
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "ls of /nonexistent fails, but it ran to its end"
    );
    assert_eq!(k.stats().unwrap().stops_failed, 0);
    k.remove_profile(exe).unwrap();
}

/// Calls are counted per task and added to the profile in batches; what a task has
/// pending is added at its exit, so a short program's calls are not lost.
#[test]
fn calls_of_a_short_program_are_counted_at_exit() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (t, exe) = private_copy(dir.path(), "/bin/true");
    k.set_state(exe, KernelState::Training).unwrap();
    run(&t, &[]);
    // Both runs' calls arrive in batches of 64 (the slot's per-CPU count) plus what
    // is pending at exit (the profile's own count): the second run doubles the total
    // only if that last part is counted.
    let calls = k.profile(exe).unwrap().unwrap().calls;
    assert!(calls > 5, "{calls} calls counted");
    run(&t, &[]);
    assert_eq!(k.profile(exe).unwrap().unwrap().calls, 2 * calls);
    k.remove_profile(exe).unwrap();
}

/// `dd` copying 20,000 bytes one at a time: two calls a byte.
const DD_20000: [&str; 5] = [
    "if=/dev/zero",
    "of=/dev/null",
    "bs=1",
    "count=20000",
    "status=none",
];

/// A private copy of dd in `dir`, its profile training.
fn dd_in_training(k: &Kernel, dir: &Path) -> (PathBuf, ExeKey) {
    let (dd, exe) = private_copy(dir, "/bin/dd");
    k.set_state(exe, KernelState::Training).unwrap();
    (dd, exe)
}

/// The common call finishes a steady loop's calls: of a known program's calls, only
/// the first calls of the run take the general path (the count's flush, one call in
/// 64, is the common call's too), and the counter says so (it counts calls of
/// followed tasks only: no other task has a profile in this load).
#[test]
fn a_steady_loop_takes_the_general_path_only_at_its_start() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (dd, exe) = dd_in_training(&k, dir.path());
    let args = DD_20000;
    run(&dd, &args);
    let calls0 = k.profile(exe).unwrap().unwrap().calls;
    let general0 = k.stats().unwrap().general_calls;
    run(&dd, &args);
    let calls = k.profile(exe).unwrap().unwrap().calls - calls0;
    let general = k.stats().unwrap().general_calls - general0;
    assert!(calls > 40_000, "{calls} calls counted");
    // dd's start-up (each window of it first seen by this task): a few hundred calls
    // at most, however long the loop.
    assert!(general <= 300, "{general} general-path calls of {calls}");
    k.remove_profile(exe).unwrap();
}

/// A profile's calls counted on its slot's per-CPU counter go with the profile: when
/// its slot is freed and taken by another profile, that one counts from 0.
#[test]
fn a_freed_slot_counts_from_zero() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (dd, exe) = dd_in_training(&k, dir.path());
    run(&dd, &DD_20000);
    let calls = k.profile(exe).unwrap().unwrap().calls;
    assert!(calls > 40_000, "{calls} calls counted");
    k.remove_profile(exe).unwrap();
    // Every slot taken, dd's among them (the free slots are a queue: its comes last).
    let others = every_slot_taken(&k, u64::MAX - 2);
    let counted: Vec<(u64, u64)> = others
        .iter()
        .map(|&o| (o.ino, k.profile(o).unwrap().unwrap().calls))
        .filter(|&(_, c)| c != 0)
        .collect();
    for &o in &others {
        k.remove_profile(o).unwrap();
    }
    assert!(counted.is_empty(), "new profiles with calls: {counted:?}");
}

/// Each task's calls count in its own profile when tasks share the CPUs: the common
/// call finds the running task's slot by the address of the call's registers alone,
/// and a slot found for another task would count one program's calls in another's
/// profile.
/// Four private copies of dd (four profiles) run at once on the machine's CPUs with
/// different counts, so that their context switches interleave; each profile must
/// count its own dd's calls, two a byte plus start-up.
#[test]
fn concurrent_tasks_count_their_own_calls() {
    let Some(k) = kernel() else { return };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let copies: Vec<_> = dirs.iter().map(|d| dd_in_training(&k, d.path())).collect();
    let counts = [20_000u64, 30_000, 40_000, 50_000];
    let children: Vec<_> = copies
        .iter()
        .zip(counts)
        .map(|((dd, _), n)| {
            spawn(
                Command::new(dd)
                    .args(["if=/dev/zero", "of=/dev/null", "bs=1", "status=none"])
                    .arg(format!("count={n}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for ((_, exe), n) in copies.iter().zip(counts) {
        let calls = k.profile(*exe).unwrap().unwrap().calls;
        assert!(
            calls >= 2 * n && calls <= 2 * n + 300,
            "{calls} calls counted for a dd of {n} bytes"
        );
    }
    for (_, exe) in &copies {
        k.remove_profile(*exe).unwrap();
    }
}

/// A floor build (feature `floor`; scripts/test.sh runs this file with it too) swaps
/// its sys_enter hook: at the floor a program's calls go uncounted, with the real
/// program swapped back in they count again. Any other build refuses the swap.
#[test]
fn the_floor_switch_swaps_the_real_program_out_and_back_in() {
    let Some(k) = kernel() else { return };
    match k.at_floor() {
        None => {
            let e = k.set_floor(true).unwrap_err();
            assert!(e.to_string().contains("no floor switch"), "{e}");
            return;
        }
        // `kernel()` swapped the real program in.
        Some(at) => assert!(!at),
    }
    let dir = tempfile::tempdir().unwrap();
    let (dd, exe) = dd_in_training(&k, dir.path());
    let args = DD_20000;
    let calls = |k: &Kernel| k.profile(exe).unwrap().map_or(0, |p| p.calls);
    run(&dd, &args);
    let real = calls(&k);
    assert!(real > 40_000, "{real} calls counted under the real program");
    k.set_floor(true).unwrap();
    assert_eq!(k.at_floor(), Some(true));
    run(&dd, &args);
    assert_eq!(calls(&k), real, "calls counted at the floor");
    k.set_floor(false).unwrap();
    run(&dd, &args);
    let again = calls(&k) - real;
    assert!(again > 40_000, "{again} calls counted after swapping back");
    k.remove_profile(exe).unwrap();
}

/// Asking for the in-kernel execve refusal never makes loading fail: where BPF LSM is
/// refused (as on the machines this was written on) the programs load without it and
/// say why; where it loads, it is reported active or unconfirmed.
#[test]
fn exec_lsm_is_optional_and_explained() {
    let Some(k) = kernel_with(&Options {
        exec_lsm_at: 10,
        ..Options::default()
    }) else {
        return;
    };
    match k.exec_lsm() {
        ExecLsm::Unavailable(why) => {
            eprintln!("BPF LSM unavailable: {why}");
            assert!(!why.is_empty());
        }
        other => eprintln!("BPF LSM: {other:?}"),
    }
    assert_ne!(k.exec_lsm(), &ExecLsm::NotRequested);
    // The rest works as usual.
    assert_eq!(k.stats().unwrap().lost_events, 0);
}

/// A static i386 program made byte by byte (no 32-bit toolchain needed): getpid,
/// getpid, exit(0), through int 0x80.
/// A static program made of `code` alone: an ELF header, one loadable segment of the
/// whole file (read and execute) and the code, entered at its first byte; 32-bit
/// (i386) or 64-bit (x86_64).
fn tiny_program(dir: &Path, name: &str, bits64: bool, code: &[u8]) -> (PathBuf, ExeKey) {
    let (ehsize, phentsize) = if bits64 { (64u16, 56u16) } else { (52, 32) };
    let base: u64 = if bits64 { 0x40_0000 } else { 0x0804_8000 };
    let entry = base + u64::from(ehsize + phentsize);
    let total = u64::from(ehsize + phentsize) + code.len() as u64;
    // An address or offset: 4 bytes in a 32-bit file, 8 in a 64-bit one.
    let word = |w: u64| {
        if bits64 {
            w.to_le_bytes().to_vec()
        } else {
            (w as u32).to_le_bytes().to_vec()
        }
    };
    let class = if bits64 { 2 } else { 1 };
    let mut elf = vec![
        0x7f, b'E', b'L', b'F', class, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let machine: u16 = if bits64 { 0x3e } else { 3 };
    for h in [2u16, machine] {
        elf.extend(h.to_le_bytes()); // ET_EXEC, EM_X86_64 or EM_386
    }
    elf.extend(1u32.to_le_bytes()); // version
    for w in [entry, u64::from(ehsize), 0] {
        elf.extend(word(w)); // entry, phoff, shoff
    }
    elf.extend(0u32.to_le_bytes()); // flags
    for h in [ehsize, phentsize, 1, 0, 0, 0] {
        elf.extend(h.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    // PT_LOAD of the whole file, R+X; the flags word comes second in 64-bit files.
    elf.extend(1u32.to_le_bytes());
    if bits64 {
        elf.extend(5u32.to_le_bytes());
    }
    for w in [0, base, base, total, total] {
        elf.extend(word(w)); // offset, vaddr, paddr, filesz, memsz
    }
    if !bits64 {
        elf.extend(5u32.to_le_bytes());
    }
    elf.extend(word(0x1000)); // align
    elf.extend(code);
    let path = dir.join(name);
    std::fs::write(&path, &elf).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    (
        path,
        ExeKey {
            dev: m.dev(),
            ino: m.ino(),
        },
    )
}

/// A static i386 program: getpid, getpid, exit, through `int 0x80`.
fn i386_program(dir: &Path) -> (PathBuf, ExeKey) {
    let code: &[u8] = &[
        0xb8, 20, 0, 0, 0, 0xcd, 0x80, // mov eax, 20 (getpid); int 0x80
        0xb8, 20, 0, 0, 0, 0xcd, 0x80, // getpid again
        0xb8, 1, 0, 0, 0, 0x31, 0xdb, 0xcd, 0x80, // exit(0)
    ];
    tiny_program(dir, "i386-getpid", false, code)
}

#[test]
fn i386_calls_have_rows_of_their_own() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (bin, exe) = i386_program(dir.path());
    k.set_state(exe, KernelState::Training).unwrap();
    let status = Command::new(&bin).status();
    let Ok(status) = status else {
        eprintln!("skipped: this kernel runs no i386 programs ({status:?})");
        return;
    };
    assert!(status.success());
    // getpid (i386 20) after getpid at distance 1; exit (i386 1) after both getpids
    // at distances 1 and 2: rows 512 + n, columns the 9-bit numbers.
    assert_eq!(
        k.pairs(exe).unwrap(),
        vec![(512 + 1, 20, 0b11), (512 + 20, 20, 0b1)]
    );
    k.remove_profile(exe).unwrap();
}

/// A static x86_64 program: getpid by `syscall`, getpid by `int 0x80` (the i386
/// entry, from 64-bit code), exit.
fn int80_program(dir: &Path) -> (PathBuf, ExeKey) {
    let code: &[u8] = &[
        0xb8, 39, 0, 0, 0, 0x0f, 0x05, // mov eax, 39 (x86_64 getpid); syscall
        0xb8, 20, 0, 0, 0, 0xcd, 0x80, // mov eax, 20 (i386 getpid); int 0x80
        0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05, // exit(0)
    ];
    tiny_program(dir, "int80-getpid", true, code)
}

#[test]
fn a_64_bit_programs_int_0x80_is_an_i386_call() {
    let Some(k) = kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (bin, exe) = int80_program(dir.path());
    k.set_state(exe, KernelState::Training).unwrap();
    let status = Command::new(&bin).status().unwrap();
    if status.code().is_none() {
        // Without IA32 emulation the kernel answers int 0x80 with SIGSEGV.
        eprintln!("skipped: this kernel refuses int 0x80 from 64-bit code ({status})");
        k.remove_profile(exe).unwrap();
        return;
    }
    assert!(status.success(), "{status}");
    // i386 getpid (row 512 + 20) after x86_64 getpid (39); exit (60) after both, the
    // i386 one in column 20 (columns keep 9 bits). Read as x86_64 call 20 (writev),
    // the int 0x80 call would have made row 20 instead.
    assert_eq!(
        k.pairs(exe).unwrap(),
        vec![(60, 20, 0b1), (60, 39, 0b10), (512 + 20, 39, 0b1)]
    );
    k.remove_profile(exe).unwrap();
}

/// The file's inode generation as `lsattr -v` prints it.
fn generation(path: &Path) -> u32 {
    let out = Command::new("lsattr").arg("-v").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("lsattr -v {}: {out:?}", path.display()))
}

#[test]
fn an_inode_number_reused_by_another_file_gets_a_new_profile() {
    let opts = Options {
        auto_create: true,
        ..Options::default()
    };
    let Some(k) = kernel_with(&opts) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ls, exe) = private_copy(dir.path(), "/bin/ls");
    let listed = dir.path().to_str().unwrap().to_string();
    let old_gen = generation(&ls);
    if old_gen == 0 {
        eprintln!("skipped: the file system of {listed} keeps no inode generation");
        return;
    }
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    let drain = || {
        events.poll(Duration::from_millis(50)).unwrap();
        std::mem::take(&mut *got.borrow_mut())
    };

    // Made at exec for this file: its generation is the profile's.
    for _ in 0..3 {
        run(&ls, &[&listed]);
    }
    let evs = drain();
    let exec = evs
        .iter()
        .find(|e| e.exe == exe && e.kind == EventKind::Exec)
        .expect("exec event");
    assert_eq!(exec.igen, old_gen);
    assert!(!exec.replaced);
    assert_eq!(k.profile(exe).unwrap().unwrap().igen, old_gen);
    k.set_state(exe, KernelState::Normal).unwrap();

    // Another file with the same (dev, ino): what a deleted binary's reused inode
    // number looks like, made here by giving the same inode a new generation (ext4's
    // FS_IOC_SETVERSION) so that the test does not depend on the allocator.
    let new_gen = old_gen.wrapping_add(1).max(1);
    let st = Command::new("chattr")
        .args(["-v", &new_gen.to_string()])
        .arg(&ls)
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("skipped: chattr -v cannot set the inode generation on {listed}'s file system");
        return;
    }
    let other = run(&ls, &["-laR", "/nonexistent", "/proc/self/"]);
    let evs = drain();
    let ours: Vec<_> = evs.iter().filter(|e| e.exe == exe).collect();
    let exec = ours
        .iter()
        .find(|e| e.kind == EventKind::Exec && e.pid == other)
        .expect("exec event of the new file");
    assert!(exec.replaced, "{exec:?}");
    assert_eq!(exec.igen, new_gen);
    // The old file's normal profile judged none of the new file's calls.
    assert!(
        !ours.iter().any(|e| e.kind == EventKind::Anomaly),
        "{ours:?}"
    );

    // Replaced by an empty training profile for the new file, which then learns.
    k.remove_profile(exe).unwrap();
    k.set_igen(exe, new_gen).unwrap();
    let p = k.profile(exe).unwrap().unwrap();
    assert_eq!(
        (p.state, p.igen, p.calls),
        (KernelState::Training, new_gen, 0)
    );
    assert!(k.pairs(exe).unwrap().is_empty());
    let again = run(&ls, &[&listed]);
    let evs = drain();
    assert!(evs
        .iter()
        .any(|e| e.exe == exe && e.kind == EventKind::NewPairs && e.pid == again));
    assert!(!evs.iter().any(|e| e.exe == exe && e.replaced));

    // A profile that does not know its file's generation (loaded from an older
    // file) adopts the next exec's.
    k.remove_profile(exe).unwrap();
    k.set_state(exe, KernelState::Training).unwrap();
    assert_eq!(k.profile(exe).unwrap().unwrap().igen, 0);
    run(&ls, &[&listed]);
    let evs = drain();
    assert!(!evs.iter().any(|e| e.exe == exe && e.replaced));
    assert_eq!(k.profile(exe).unwrap().unwrap().igen, new_gen);
    k.remove_profile(exe).unwrap();
}
