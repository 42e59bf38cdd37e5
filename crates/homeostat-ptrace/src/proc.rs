//! /proc readers: a task's thread group, executable, state and tracer, and a process's
//! threads. Read once per task (and once per exec), never per call.

pub(crate) use homeostat_proc::exe;
use homeostat_proc::{stat_field, status_field};

/// `Tgid:` of /proc/TID/status, or `None` if the task is gone.
pub(crate) fn tgid(tid: i32) -> Option<i32> {
    status_field(tid, "Tgid:").and_then(|v| i32::try_from(v).ok())
}

/// `TracerPid:` of /proc/TID/status (0: not traced).
pub(crate) fn tracer(tid: i32) -> Option<i32> {
    status_field(tid, "TracerPid:").and_then(|v| i32::try_from(v).ok())
}

/// The state letter of /proc/TID/stat (`R`, `S`, `D`, `T`, `t`, `Z`, ...).
pub(crate) fn state(tid: i32) -> Option<char> {
    stat_field(tid, 3)?.chars().next()
}

/// Whether TID is a kernel thread: PF_KTHREAD in the flags of /proc/TID/stat, which
/// anyone may read (the executable link of another user's process is unreadable too,
/// so it cannot tell the two apart).
pub(crate) fn is_kernel_thread(tid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    stat_field(tid, 9)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

pub(crate) fn exists(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// The thread ids in /proc/PID/task, or `None` if the process is gone.
pub(crate) fn threads(pid: i32) -> Option<Vec<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Leader first: attach errors are reported for the pid the user named.
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    Some(tids)
}

/// Processes whose parent is one of `parents`, from a scan of /proc/*/stat (the kernel
/// here lacks /proc/PID/task/TID/children).
pub(crate) fn children_of(parents: &std::collections::HashSet<i32>) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| ppid(pid).is_some_and(|pp| parents.contains(&pp)))
        .collect();
    out.sort_unstable();
    out
}

/// Field 4 of /proc/PID/stat.
fn ppid(pid: i32) -> Option<i32> {
    stat_field(pid, 4)?.parse().ok()
}

/// `kernel.yama.ptrace_scope`, if Yama is present.
pub(crate) fn yama_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}
