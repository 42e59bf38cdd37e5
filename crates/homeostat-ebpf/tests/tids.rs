//! Real-kernel tests of where the programs keep tasks' states: the array `hs_tids` (a
//! slot per task, found by the address of its user registers, claimed and freed by
//! the programs; userspace finds it by the tid it records), and task storage for a
//! task both of whose slots other tasks hold. Root and BTF, as tests/kernel.rs.
#![cfg(feature = "bpf")]

mod common;

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kernel_with, private_copy};
use homeostat_ebpf::{Event, EventKind, Hook, Kernel, KernelState, Options, TaskState};
use homeostat_testsupport::spawn;

/// The calls a fork can be made with (x86_64 numbers).
const FORKS: [u32; 4] = [56, 57, 58, 435];

/// Waits (5 s at most) until `f` says yes.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether thread `tid` is blocked in read(2) (the calls before it have all entered).
fn in_read(tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/syscall")).is_ok_and(|s| s.starts_with("0 "))
}

/// The first child of process `pid`.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Ends a child blocked in `read x`.
fn release(mut child: Child) {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait().unwrap();
}

/// A private dash under a normal profile without a pair: every call after the first
/// is anomalous and adds one to the LFC. It forks a subshell that blocks in read;
/// returns the parent's and the child's states read meanwhile, and checks from the
/// events that the child's first call started from the parent's LFC at the fork (a
/// child made afresh would start at 1; dash makes more calls than the frame's 128
/// before it forks, so the parent's is at most).
fn fork_and_read_states(k: &Kernel) -> (TaskState, TaskState) {
    let dir = tempfile::tempdir().unwrap();
    let (sh, exe) = private_copy(dir.path(), "/bin/dash");
    k.set_state(exe, KernelState::Normal).unwrap();
    let got = RefCell::new(Vec::<Event>::new());
    let events = k.events(|e| got.borrow_mut().push(e)).unwrap();
    let child = spawn(
        Command::new(&sh)
            .args(["-c", "(read x; exit 3); exit 0"])
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = child.id();
    let mut sub = None;
    wait_for("the subshell's read", || {
        sub = first_child(pid);
        sub.is_some_and(in_read)
    });
    let sub = sub.unwrap();
    let parent = k.task(pid).unwrap().expect("the parent is followed");
    let state = k.task(sub).unwrap().expect("the subshell is followed");
    release(child);
    // Freed at exit: no slot (nor storage) answers for the dead tids.
    assert_eq!(
        k.task(sub).unwrap(),
        None,
        "the subshell's slot after its exit"
    );
    events.poll(Duration::from_millis(50)).unwrap();
    let evs = got.borrow();
    let ours: Vec<_> = evs
        .iter()
        .filter(|e| e.exe == exe && e.kind == EventKind::Anomaly)
        .collect();
    let at_fork = ours
        .iter()
        .filter(|e| e.tid == pid && FORKS.contains(&e.nr))
        .map(|e| e.lfc)
        .max()
        .unwrap_or_else(|| panic!("no anomalous fork of {pid}: {ours:?}"));
    let child_first = ours
        .iter()
        .filter(|e| e.tid == sub)
        .map(|e| e.lfc)
        .min()
        .unwrap_or_else(|| panic!("no anomaly of the subshell {sub}: {ours:?}"));
    eprintln!(
        "parent {pid} LFC {at_fork} at its fork (state in {}), subshell {sub} from LFC \
         {child_first} (state in {})",
        if parent.tid_slot {
            "its slot"
        } else {
            "storage"
        },
        if state.tid_slot {
            "its slot"
        } else {
            "storage"
        },
    );
    assert!(at_fork > 2, "too few calls before the fork: {at_fork}");
    // The frame holds 128 calls: full of misses, a new one replaces the oldest.
    let locality = homeostat_ebpf::LOCALITY;
    assert_eq!(
        child_first,
        (at_fork + 1).min(locality),
        "the subshell's first call"
    );
    assert_eq!((parent.exe, state.exe), (exe, exe));
    assert!(state.lfc >= child_first, "{state:?}");
    k.remove_profile(exe).unwrap();
    (parent, state)
}

#[test]
fn a_forked_child_inherits_its_parents_state_in_its_slot() {
    let Some(k) = kernel_with(&Options::default()) else {
        return;
    };
    let before = k.stats().unwrap().tids_taken;
    let (parent, child) = fork_and_read_states(&k);
    // The parent filled the child's slot at the fork, unless the child's key hashed
    // to two slots live tasks hold (some tasks in 32768 slots: rare), which is counted.
    let outside = u64::from(!parent.tid_slot) + u64::from(!child.tid_slot);
    let taken = k.stats().unwrap().tids_taken - before;
    assert!(
        taken >= outside,
        "{outside} of parent and child in storage, {taken} counted: {parent:?} {child:?}"
    );
}

/// The raw-tracepoint fallback computes a task's key from its untyped `regs`, the
/// fork hook from the task's stack: were the two apart, the child's calls would find
/// no state under their key, and it would start afresh from its executable (LFC 1, not
/// its parent's: `fork_and_read_states` checks), leaving the fork's slot held.
#[test]
fn the_raw_tracepoint_finds_the_slot_the_fork_filled() {
    let opts = Options {
        hook: Some(Hook::RawTp),
        ..Options::default()
    };
    let Some(k) = kernel_with(&opts) else {
        return;
    };
    assert_eq!(k.hook(), Hook::RawTp);
    let before = k.stats().unwrap().tids_taken;
    let (parent, child) = fork_and_read_states(&k);
    let outside = u64::from(!parent.tid_slot) + u64::from(!child.tid_slot);
    assert!(k.stats().unwrap().tids_taken - before >= outside);
}

/// The programs loaded with `slots` slots in the task array (None: no BPF here).
fn kernel_with_slots(slots: u32) -> Option<Kernel> {
    let opts = Options {
        tid_slots: slots,
        ..Options::default()
    };
    let k = kernel_with(&opts)?;
    assert_eq!(k.tid_slots(), slots);
    Some(k)
}

#[test]
fn a_task_whose_slot_is_taken_keeps_its_state_in_task_storage() {
    // One slot for every tid: of the parent and the child alive at once, one at
    // least finds it taken, and is followed through task storage (the child through
    // hs_forks until its first call) with the same result.
    let Some(k) = kernel_with_slots(1) else {
        return;
    };
    let (parent, child) = fork_and_read_states(&k);
    assert!(
        !(parent.tid_slot && child.tid_slot),
        "two tasks in one slot"
    );
    assert!(k.stats().unwrap().tids_taken > 0);
}

/// Each key has two slots (its hash and the neighbour): a task lands in task storage,
/// where each of its calls takes the general path, only when both are held.
///
/// The bound comes from the slots other tasks hold (m: every task of the machine that
/// made a call since the load; the larger of the counts before and after the
/// threads). Were keys placed at random, the k-th of n new threads would find its one
/// slot held with probability r = (m + k) / N, and both of a pair with about
/// 1 - e^-l (1 + l), l = 2r (a bucket of two at that load); the test asks for fewer
/// than halfway between the two sums.
///
/// Fresh kernel stacks lie at regular strides, which the hash spreads better than
/// random, so measured counts are lower: with N = 4096 and n = 1000 (m was 3 on an
/// idle machine: a task takes a slot at its first call after the load), 9, 31, 4, 9,
/// 49 and 22 threads in storage with two slots, 133, 133 and 27 with one
/// (2026-12-03), against a bound of about 82, so a return to one slot fails this test
/// in most runs, not all. Whether the common call itself finds a task in its second
/// slot (rather than the slow path) is not seen here: `Kernel::task` looks in both.
#[test]
fn two_slots_a_key_keep_all_but_a_few_threads_out_of_task_storage() {
    let Some(k) = kernel_with_slots(4096) else {
        return;
    };
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "python3 is needed (scripts/lib/ensure-deps.sh installs it)"
    );
    let m = f64::from(k.slots_held());
    // Another process (the loading one is not followed): n threads alive at once,
    // blocked until the test writes a line; their tids on one line.
    let n = 1000;
    let script = format!(
        "import sys, threading\n\
         tids, lock, go, done = [], threading.Lock(), threading.Event(), threading.Event()\n\
         def run():\n    \
             with lock:\n        \
                 tids.append(threading.get_native_id())\n        \
                 if len(tids) == {n}: go.set()\n    \
             done.wait()\n\
         threading.stack_size(65536)\n\
         ts = [threading.Thread(target=run) for _ in range({n})]\n\
         for t in ts: t.start()\n\
         go.wait()\n\
         print(' '.join(map(str, tids)), flush=True)\n\
         sys.stdin.readline()\n\
         done.set()\n"
    );
    let mut child = spawn(
        Command::new(python)
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let states: Vec<Option<TaskState>> = line
        .split_whitespace()
        .map(|t| k.task(t.parse().unwrap()).unwrap())
        .collect();
    let held_after = f64::from(k.slots_held());
    release(child);
    assert_eq!(states.len(), n, "{line}");
    // Every thread is followed, in a slot or in storage.
    assert!(
        states.iter().all(Option::is_some),
        "a thread without a state"
    );
    let stored = states.iter().flatten().filter(|s| !s.tid_slot).count();
    // Other tasks that took slots while the threads started count as held before.
    let m = m.max(held_after - (n - stored) as f64);
    let slots = f64::from(k.tid_slots());
    let (mut one, mut two) = (0.0, 0.0);
    for j in 0..n {
        let r = ((m + j as f64) / slots).min(1.0);
        one += r;
        two += 1.0 - (-2.0 * r).exp() * (1.0 + 2.0 * r);
    }
    assert!(
        (stored as f64) < (one + two) / 2.0,
        "{stored} of {n} threads in task storage, {m} slots held before them; \
         at random about {two:.0} with two slots a key, {one:.0} with one"
    );
}

#[test]
fn a_multithreaded_exec_gives_the_new_leader_its_slot_under_the_leaders_tid() {
    let Some(k) = kernel_with(&Options::default()) else {
        return;
    };
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "python3 is needed (scripts/lib/ensure-deps.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (sh, exe) = private_copy(dir.path(), "/bin/dash");
    k.set_state(exe, KernelState::Training).unwrap();
    // A thread other than the leader execs: the kernel gives it the leader's tid
    // (de_thread), after the leader has exited.
    let script = "import os, sys, threading\n\
                  def go():\n    \
                      print(threading.get_native_id(), flush=True)\n    \
                      os.execv(sys.argv[1], [sys.argv[1], '-c', 'read x'])\n\
                  t = threading.Thread(target=go)\nt.start()\nt.join()\n";
    let mut child = spawn(
        Command::new(python)
            .args(["-c", script, sh.to_str().unwrap()])
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let thread: u32 = line.trim().parse().unwrap();
    assert_ne!(thread, pid);
    wait_for("the exec'd shell's read", || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == sh) && in_read(pid)
    });
    let state = k.task(pid).unwrap().expect("the new leader is followed");
    let old = k.task(thread).unwrap();
    release(child);
    assert_eq!(state.exe, exe, "{state:?}");
    assert!(state.nseq > 0, "{state:?}");
    // The exec'ing thread kept its slot (its key, its stack, is the same) unless
    // another task held it, which is counted.
    assert!(
        state.tid_slot || k.stats().unwrap().tids_taken > 0,
        "{state:?}"
    );
    // Its slot answers for the new tid only (a slot left with the old tid would
    // still answer for it).
    assert_eq!(old, None, "the old tid's slot after the exec");
    let p = k.profile(exe).unwrap().unwrap();
    assert!(p.calls > 5 && p.new_pairs > 0, "{p:?}");
    k.remove_profile(exe).unwrap();
}
