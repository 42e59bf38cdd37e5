//! The keeper: a small process that makes the supervisor's death harmless.
//!
//! The monitored programs come first. With only the supervisor holding the listener, a
//! supervisor crash would close it and every later notified call would fail with
//! `ENOSYS` (programs break), and a call the supervisor had received but not answered
//! (one it was delaying) would wait forever. The keeper holds a duplicate of the
//! listener, so the filter never loses its listener while the keeper lives, and it
//! watches the supervisor (pidfd) and a command socket. When the supervisor dies or hands
//! over (normal shutdown), the keeper:
//!
//! * fail-open: answers CONTINUE to every in-flight id (the shared table plus a small
//!   window above the highest recorded id) and then to every new notification, so the
//!   programs run on, unmonitored, until the last of them exits;
//! * fail-closed: SIGKILLs the whole tree and every task that still makes a call.
//!
//! It is also the monitored child's parent and a child *subreaper*
//! (`PR_SET_CHILD_SUBREAPER`): every orphan of the tree is reparented to it and reaped by
//! it. That matters for two reasons: depending on the kernel version a task lets go of
//! the filter when it exits or only when it is reaped, and the listener reports `POLLHUP`
//! ("no task uses the filter any more", the keeper's signal to exit) only after the last
//! one has — so orphans must be reaped promptly even under an init that does not reap
//! them (containers, some VMs); and in fail-closed mode "every descendant of the keeper"
//! is exactly the tree, even for programs that daemonised or changed session.
//!
//! The keeper is created by a double fork (so it is not the supervisor's child and never
//! becomes its zombie), forks the monitored child *before* calling `setsid` (so the
//! program stays in the caller's session and foreground process group: Ctrl-C and job
//! control reach it as they would without homeostat), then leaves for its own session so
//! that a signal to the supervisor's process group does not reach it. It does not use
//! `PR_SET_PDEATHSIG`: outliving the supervisor is its whole point.
//!
//! Like the pre-exec child it runs in a forked copy of a possibly multi-threaded process:
//! raw system calls and stack buffers only, no allocation, no locks. It sleeps in
//! `poll` and is woken only by its own events (the listener is polled for `POLLHUP` only
//! while the supervisor lives, and the kernel's notification wake-ups carry `POLLIN`, so
//! they do not wake it).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use libc::{c_int, c_uint};

use crate::child::{child_main, ChildPlan, STAGE_KEEPER};
use crate::inflight::{Shared, ID_WINDOW, SLOTS};
use crate::sys::{
    close_range, last_errno, notif_id_valid, notif_recv, notif_send, poll, pollfd, recv_msg,
    send_msg, Msg, NotifBuf,
};
use crate::FailMode;

pub(crate) const K_READY: u32 = 10;
pub(crate) const K_FAIL: u32 = 11;
pub(crate) const K_EXIT: u32 = 12;
pub(crate) const S_LISTENER: u32 = 20;
pub(crate) const S_SHUTDOWN: u32 = 21;
pub(crate) const S_ABORT: u32 = 22;

/// Everything the keeper needs, prepared by `spawn` before the fork.
pub(crate) struct KeeperPlan {
    /// The keeper's end of the command socket.
    pub sock: RawFd,
    /// The supervisor's end (inherited by the fork; closed at once).
    pub sock_peer: RawFd,
    /// pidfd of the supervisor process: readable when it has died.
    pub sup_pidfd: RawFd,
    pub status_r: RawFd,
    pub shared: *const Shared,
    pub fail_mode: FailMode,
    pub notif_buf: NotifBuf,
    pub child: ChildPlan,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The supervisor asked (normal shutdown).
    Shutdown,
    /// Spawn failed: kill the child quietly.
    Abort,
    /// The supervisor died without saying goodbye.
    Died,
}

struct Keeper<'a> {
    plan: &'a KeeperPlan,
    sock: RawFd,
    sup_pidfd: RawFd,
    me: i32,
    child: i32,
    sfd: RawFd,
    listener: RawFd,
    sup_alive: bool,
    buf: NotifBuf,
}

fn exit(code: c_int) -> ! {
    // SAFETY: ends this forked process without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// The keeper's whole life.
///
/// # Safety
/// Must be called only in a freshly forked process; `plan`'s pointers (shared table,
/// child plan) must be valid in it.
pub(crate) unsafe fn keeper_main(plan: &KeeperPlan) -> ! {
    // SAFETY: (whole block) raw system calls on stack data, descriptors this process
    // inherited, and the plan's pointers, valid per the caller's contract.
    unsafe {
        let fail = |errno: c_int| -> ! {
            let _ = send_msg(plan.sock, Msg::new(K_FAIL, STAGE_KEEPER, errno), None, true);
            exit(1)
        };
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

        // SIGCHLD through a signalfd, so reaping fits in the poll loop. Blocked before
        // the child is forked; the child unblocks it.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        // SIG_SETMASK, not SIG_BLOCK: whatever the forking thread of the host had
        // blocked (SIGTERM, say) must not stay blocked here.
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if sfd < 0 {
            fail(last_errno());
        }

        let child = libc::fork();
        if child == 0 {
            child_main(&plan.child);
        }
        if child < 0 {
            fail(last_errno());
        }

        // The supervisor reads "status pipe at EOF" as "exec succeeded"; this copy of
        // the write end must be gone before it starts answering the child's execve
        // (the READY message below is sent after this).
        libc::close(plan.child.status_w);
        libc::close(plan.status_r);
        libc::close(plan.sock_peer);
        libc::setsid();
        // Handlers inherited from the host program must not run here; a write to a
        // closed socket must fail, not kill.
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGCHLD {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);

        let mut k = Keeper {
            plan,
            sock: plan.sock,
            sup_pidfd: plan.sup_pidfd,
            me: libc::getpid(),
            child,
            sfd,
            listener: -1,
            sup_alive: true,
            buf: plan.notif_buf,
        };
        k.await_listener();
        k.hygiene();
        if send_msg(k.sock, Msg::new(K_READY, k.me, child), None, false).is_err() {
            k.take_over(Why::Died);
        }
        k.standby();
    }
}

impl Keeper<'_> {
    /// Until the supervisor has the listener and sends us a copy.
    fn await_listener(&mut self) {
        loop {
            let mut fds = [
                pollfd(self.sock, libc::POLLIN),
                pollfd(self.sup_pidfd, libc::POLLIN),
                pollfd(self.sfd, libc::POLLIN),
            ];
            if poll(&mut fds, -1).is_err() {
                continue;
            }
            if fds[2].revents != 0 {
                self.reap();
            }
            if fds[0].revents != 0 {
                match recv_msg(self.sock) {
                    Ok(Some((m, Some(fd)))) if m.kind == S_LISTENER => {
                        self.listener = std::os::fd::IntoRawFd::into_raw_fd(fd);
                        return;
                    }
                    Ok(Some((m, _))) if m.kind == S_ABORT => self.abort_spawn(),
                    Ok(Some(_)) => {}
                    // The supervisor went away mid-spawn: nothing is monitored
                    // yet, so the child must not run unfiltered or hang. Kill it.
                    _ => self.abort_spawn(),
                }
                continue;
            }
            if fds[1].revents != 0 {
                self.abort_spawn();
            }
        }
    }

    fn abort_spawn(&mut self) -> ! {
        // SAFETY: signalling our own child by pid (it cannot have been reaped by anyone
        // else: we are its parent and have not reaped it, or reap() saw it).
        unsafe {
            libc::kill(self.child, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.child, &mut st, 0);
        }
        exit(0)
    }

    /// Drop every descriptor inherited from the host program except the ones we use, so
    /// the keeper never keeps a pipe, socket or terminal of the host open.
    fn hygiene(&mut self) {
        // SAFETY: fcntl/open/dup2/close on descriptors this process owns.
        unsafe {
            // A host with stdin/stdout/stderr closed may have put our descriptors at
            // 0..=2; move them up before /dev/null goes there.
            for fd in [
                &mut self.sock,
                &mut self.sup_pidfd,
                &mut self.sfd,
                &mut self.listener,
            ] {
                if (0..3).contains(fd) {
                    let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                    if moved >= 0 {
                        *fd = moved;
                    }
                }
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::close(null);
            }
        }
        // Keep 0..=2 (stderr carries the one-line takeover notice) and ours.
        let mut keep = [2, self.sock, self.sup_pidfd, self.sfd, self.listener];
        keep.sort_unstable();
        let mut next: c_uint = 0;
        for &fd in &keep {
            let fd = fd as c_uint;
            if fd > next {
                close_range(next.max(3), fd - 1);
            }
            next = next.max(fd + 1);
        }
        close_range(next.max(3), c_uint::MAX);
    }

    /// The supervisor is alive and serving; wait for it to hand over or die, for the
    /// tree to end, and reap our children meanwhile.
    fn standby(&mut self) -> ! {
        loop {
            let mut fds = [
                pollfd(self.sup_pidfd, libc::POLLIN),
                pollfd(self.sock, libc::POLLIN),
                pollfd(self.sfd, libc::POLLIN),
                // Events 0: only POLLHUP (every task using the filter is gone) wakes us.
                pollfd(self.listener, 0),
            ];
            if poll(&mut fds, -1).is_err() {
                continue;
            }
            if fds[2].revents != 0 {
                self.reap();
            }
            if fds[3].revents & libc::POLLHUP != 0 {
                self.finish();
            }
            if fds[1].revents != 0 {
                match recv_msg(self.sock) {
                    Ok(Some((m, _))) if m.kind == S_SHUTDOWN => self.take_over(Why::Shutdown),
                    Ok(Some((m, _))) if m.kind == S_ABORT => self.take_over(Why::Abort),
                    Ok(Some(_)) => {}
                    _ => self.take_over(Why::Died),
                }
            }
            if fds[0].revents != 0 {
                self.take_over(Why::Died);
            }
        }
    }

    fn take_over(&mut self, why: Why) -> ! {
        self.sup_alive = why != Why::Died;
        let mode = if why == Why::Abort {
            FailMode::Closed
        } else {
            self.plan.fail_mode
        };
        if why == Why::Died {
            let text: &[u8] = match mode {
                FailMode::Open => b"homeostat: supervisor died; the monitored programs continue unmonitored (fail-open)\n",
                FailMode::Closed => b"homeostat: supervisor died; killing the monitored programs (fail-closed)\n",
            };
            // SAFETY: writing a static buffer to stderr.
            unsafe {
                libc::write(2, text.as_ptr().cast(), text.len());
            }
        }
        match mode {
            FailMode::Open => {
                self.answer_in_flight();
                self.serve_open()
            }
            FailMode::Closed => {
                self.kill_in_flight();
                self.serve_closed()
            }
        }
    }

    fn shared(&self) -> &Shared {
        // SAFETY: the mapping was created before the fork and is never unmapped here.
        unsafe { &*self.plan.shared }
    }

    fn continue_id(&mut self, id: u64) {
        let _ = notif_send(
            self.listener,
            &mut self.buf,
            id,
            0,
            libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        );
    }

    /// CONTINUE every call the supervisor had received but not answered.
    fn answer_in_flight(&mut self) {
        let sh = self.shared();
        let hw = (sh.high_water.load(Ordering::Acquire) as usize).min(sh.slots.len());
        for i in 0..hw {
            let slot = &self.shared().slots[i];
            if slot.tid.load(Ordering::Acquire) != 0 {
                let id = slot.id.load(Ordering::Relaxed);
                self.continue_id(id);
            }
        }
        if self.shared().have_max.load(Ordering::Acquire) != 0 {
            let max = self.shared().max_id.load(Ordering::Acquire);
            // An id not yet received answers EINPROGRESS, one already answered ENOENT:
            // both harmless.
            for d in 0..=ID_WINDOW {
                self.continue_id(max.wrapping_add(d));
            }
        }
    }

    /// Fail-closed: kill the tasks behind the in-flight calls (they may be blocked
    /// somewhere the tree walk does not see, e.g. reparented elsewhere).
    fn kill_in_flight(&mut self) {
        let hw = (self.shared().high_water.load(Ordering::Acquire) as usize).min(SLOTS);
        for i in 0..hw {
            let slot = &self.shared().slots[i];
            let tid = slot.tid.load(Ordering::Acquire);
            if tid != 0 {
                let id = slot.id.load(Ordering::Relaxed);
                // Only while the id is valid is the tid known to be that task.
                if notif_id_valid(self.listener, id).unwrap_or(false) {
                    // SAFETY: signalling a task that is blocked in our notification.
                    unsafe { libc::kill(tid, libc::SIGKILL) };
                }
            }
        }
    }

    fn serve_open(&mut self) -> ! {
        loop {
            let mut fds = [
                pollfd(self.listener, libc::POLLIN),
                pollfd(self.sfd, libc::POLLIN),
            ];
            if poll(&mut fds, -1).is_err() {
                continue;
            }
            if fds[1].revents != 0 {
                self.reap();
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Ok(n) = notif_recv(self.listener, &mut self.buf) {
                    self.continue_id(n.id);
                }
            } else if fds[0].revents & libc::POLLHUP != 0 {
                self.finish();
            }
        }
    }

    fn serve_closed(&mut self) -> ! {
        loop {
            let remaining = self.kill_children();
            let mut fds = [
                pollfd(self.listener, libc::POLLIN),
                pollfd(self.sfd, libc::POLLIN),
            ];
            // While children remain, re-scan soon: a killed parent's children are
            // reparented to us only once it has actually exited.
            let timeout = if remaining > 0 { 5 } else { 200 };
            if poll(&mut fds, timeout).is_err() {
                continue;
            }
            if fds[1].revents != 0 {
                self.reap();
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Ok(n) = notif_recv(self.listener, &mut self.buf) {
                    // Never answered: the task dies in its wait.
                    // SAFETY: signalling a task blocked in a notification we hold.
                    unsafe { libc::kill(n.tid, libc::SIGKILL) };
                }
            } else if fds[0].revents & libc::POLLHUP != 0 {
                self.finish();
            }
        }
    }

    /// The listener reported POLLHUP: every task of the tree has passed the point of
    /// its exit where it lets go of the filter, but may not be a zombie yet (the kernel
    /// drops the filter before the task is reaped, so this does not depend on anybody
    /// reaping). Reap them all (bounded), report the child's status, and leave.
    fn finish(&mut self) -> ! {
        for _ in 0..400 {
            let mut st: c_int = 0;
            // SAFETY: waitpid on our own children with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid < 0 {
                break;
            }
            if pid == 0 {
                // SAFETY: plain sleep.
                unsafe { libc::usleep(5_000) };
                continue;
            }
            self.reaped(pid, st);
        }
        exit(0)
    }

    fn reaped(&mut self, pid: i32, status: c_int) {
        if pid == self.child && self.sup_alive {
            let _ = send_msg(self.sock, Msg::new(K_EXIT, pid, status), None, true);
        }
    }

    /// Reaps every exited child (the monitored child and the orphans given to us as
    /// subreaper); reports the monitored child's status to a living supervisor.
    fn reap(&mut self) {
        // SAFETY: draining our own non-blocking signalfd into a stack buffer.
        unsafe {
            let mut junk = [0u8; 512];
            while libc::read(self.sfd, junk.as_mut_ptr().cast(), junk.len()) > 0 {}
        }
        loop {
            let mut st: c_int = 0;
            // SAFETY: waitpid on our own children with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.reaped(pid, st);
        }
    }

    /// SIGKILLs every live child of ours (the tree's roots; their own children come to
    /// us as they die). Returns how many were signalled.
    fn kill_children(&mut self) -> usize {
        let me = self.me;
        let mut killed = 0;
        for_each_pid(|pid| {
            if let Some((state, ppid)) = stat_state_ppid(pid) {
                if ppid == me && state != b'Z' && state != b'X' {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed += 1;
                }
            }
        });
        killed
    }
}

/// Calls `f` for every numeric entry of /proc, with a stack buffer (no allocation).
fn for_each_pid(mut f: impl FnMut(i32)) {
    // SAFETY: open/getdents64/close with a stack buffer; entries are parsed within the
    // byte count the kernel returned, each record's length taken from its header.
    unsafe {
        let dir = libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return;
        }
        #[repr(C, align(8))]
        struct Buf([u8; 8192]);
        let mut buf = Buf([0; 8192]);
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.0.as_mut_ptr(),
                buf.0.len() as c_uint,
            );
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let mut off = 0;
            while off + 19 < n {
                let reclen = u16::from_ne_bytes([buf.0[off + 16], buf.0[off + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                // d_name starts at offset 19 and is NUL-terminated.
                let mut pid: i32 = 0;
                let mut ok = true;
                let mut i = off + 19;
                while i < off + reclen && buf.0[i] != 0 {
                    let c = buf.0[i];
                    if !c.is_ascii_digit() {
                        ok = false;
                        break;
                    }
                    pid = pid.saturating_mul(10).saturating_add((c - b'0') as i32);
                    i += 1;
                }
                if ok && i > off + 19 {
                    f(pid);
                }
                off += reclen;
            }
        }
        libc::close(dir);
    }
}

/// State letter and parent pid from /proc/PID/stat, without allocating.
fn stat_state_ppid(pid: i32) -> Option<(u8, i32)> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    let mut digits = [0u8; 12];
    let mut nd = 0;
    let mut v = pid;
    loop {
        digits[nd] = b'0' + (v % 10) as u8;
        nd += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while nd > 0 {
        nd -= 1;
        path[len] = digits[nd];
        len += 1;
    }
    path[len..len + 5].copy_from_slice(b"/stat");
    let mut buf = [0u8; 512];
    // SAFETY: path is NUL-terminated (zero-filled beyond len); read into a stack buffer.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    // "pid (comm) S ppid ..." — comm may contain ')' so take the last one.
    let close = text.iter().rposition(|&c| c == b')')?;
    let rest = text.get(close + 2..)?;
    let state = *rest.first()?;
    let mut ppid: i32 = 0;
    let mut seen = false;
    for &c in rest.get(2..)? {
        if c.is_ascii_digit() {
            ppid = ppid.saturating_mul(10).saturating_add((c - b'0') as i32);
            seen = true;
        } else {
            break;
        }
    }
    seen.then_some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parse_reads_own_process() {
        let me = std::process::id() as i32;
        let (state, ppid) = stat_state_ppid(me).expect("own stat");
        assert!(state == b'R' || state == b'S');
        assert_eq!(ppid, std::os::unix::process::parent_id() as i32);
    }

    #[test]
    fn proc_walk_finds_self() {
        let me = std::process::id() as i32;
        let mut found = false;
        for_each_pid(|p| found |= p == me);
        assert!(found);
    }
}
