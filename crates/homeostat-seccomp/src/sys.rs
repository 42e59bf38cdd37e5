//! The system calls the launcher needs: pidfds, pipes, sockets and descriptor passing
//! through rustix; the seccomp-notify ioctls, which no crate wraps, by hand.
//!
//! This is where the crate's `unsafe` lives. Every wrapper here is also safe to call in a
//! child between `fork` and `execve` of a multi-threaded parent (the keeper and the
//! pre-exec child run there): none allocates, takes a lock, or touches Rust's std I/O
//! (rustix's Linux backend makes the system calls directly, on the caller's buffers).
//! Errors are returned as [`Errno`] values, never panics.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libc::{c_int, c_long, c_uint};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, Signal};

pub use homeostat_proc::Errno;

/// The calling thread's `errno` (async-signal-safe: reads the TLS slot).
pub(crate) fn last_errno() -> i32 {
    // SAFETY: __errno_location always returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn cvt(r: c_long) -> Result<c_long, Errno> {
    if r < 0 {
        Err(Errno(last_errno()))
    } else {
        Ok(r)
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

/// A descriptor the caller owns and keeps open for the duration of a call. The keeper
/// and the child hold theirs as plain numbers (inherited across fork, prepared before
/// it), hence this one conversion.
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every caller passes a descriptor of this process that stays open until
    // the wrapper returns; the borrow does not outlive the wrapper's call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    let pid = Pid::from_raw(pid).ok_or(Errno(libc::EINVAL))?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(errno)
}

/// Duplicates descriptor `target` of the process behind `pidfd` into this process
/// (close-on-exec set by the kernel).
pub(crate) fn pidfd_getfd(pidfd: impl AsFd, target: RawFd) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_getfd(pidfd, target, PidfdGetfdFlags::empty()).map_err(errno)
}

pub(crate) fn pidfd_kill(pidfd: impl AsFd) -> Result<(), Errno> {
    rustix::process::pidfd_send_signal(pidfd, Signal::KILL).map_err(errno)
}

/// Waits for child `pid` to end (retrying `EINTR`); its exit code, `None` if it was
/// killed or cannot be waited for.
pub(crate) fn wait_exit_code(pid: i32) -> Option<i32> {
    let pid = Pid::from_raw(pid)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => return st.exit_status(),
            Ok(None) => return None,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
}

/// `poll(2)`; `EINTR` comes back as an error for the caller to retry.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> Result<usize, Errno> {
    // SAFETY: the pointer and length describe a valid, writable pollfd slice.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    cvt(r as c_long).map(|n| n as usize)
}

pub(crate) fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

pub(crate) fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(errno)
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(errno)
}

// ---------------------------------------------------------------------------------------
// Messages between the supervisor, the keeper and the pre-exec child.

/// A fixed 16-byte record: small enough that a pipe write of one is atomic and a
/// SOCK_SEQPACKET message carries exactly one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Msg {
    pub kind: u32,
    pub a: i32,
    pub b: i32,
    pub c: i32,
}

pub(crate) const MSG_LEN: usize = std::mem::size_of::<Msg>();

impl Msg {
    pub(crate) fn new(kind: u32, a: i32, b: i32) -> Msg {
        Msg { kind, a, b, c: 0 }
    }
    fn to_bytes(self) -> [u8; MSG_LEN] {
        let mut out = [0u8; MSG_LEN];
        out[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        out[4..8].copy_from_slice(&self.a.to_ne_bytes());
        out[8..12].copy_from_slice(&self.b.to_ne_bytes());
        out[12..16].copy_from_slice(&self.c.to_ne_bytes());
        out
    }
    fn from_bytes(b: &[u8; MSG_LEN]) -> Msg {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Msg {
            kind: u32::from_ne_bytes(word(0)),
            a: i32::from_ne_bytes(word(4)),
            b: i32::from_ne_bytes(word(8)),
            c: i32::from_ne_bytes(word(12)),
        }
    }
}

/// Writes one record to a pipe (retrying `EINTR`).
pub(crate) fn write_msg(fd: RawFd, msg: Msg) -> Result<(), Errno> {
    let bytes = msg.to_bytes();
    loop {
        match rustix::io::write(borrow(fd), &bytes) {
            Ok(MSG_LEN) => return Ok(()),
            Ok(_) => return Err(Errno(libc::EIO)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Reads one record from a pipe. `Ok(None)` is end of file (every writer closed).
pub(crate) fn read_msg(fd: RawFd) -> Result<Option<Msg>, Errno> {
    let mut bytes = [0u8; MSG_LEN];
    loop {
        match rustix::io::read(borrow(fd), &mut bytes) {
            Ok(0) => return Ok(None),
            Ok(MSG_LEN) => return Ok(Some(Msg::from_bytes(&bytes))),
            Ok(_) => return Err(Errno(libc::EIO)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Room for the control message of one passed descriptor.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(1));

/// Sends one record on a SOCK_SEQPACKET socket, optionally passing a descriptor
/// (SCM_RIGHTS). Never raises SIGPIPE; `nonblocking` adds MSG_DONTWAIT.
pub(crate) fn send_msg(
    sock: RawFd,
    msg: Msg,
    pass: Option<RawFd>,
    nonblocking: bool,
) -> Result<(), Errno> {
    let bytes = msg.to_bytes();
    let iov = [std::io::IoSlice::new(&bytes)];
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let passed = pass.map(|fd| [borrow(fd)]);
    if let Some(fds) = &passed {
        // The buffer is sized for exactly this message.
        let fits = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(fits);
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match rustix::net::sendmsg(borrow(sock), &iov, &mut control, flags) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Receives one record (and a passed descriptor, close-on-exec) from a SOCK_SEQPACKET
/// socket. `Ok(None)` is end of file: the peer closed its end.
pub(crate) fn recv_msg(sock: RawFd) -> Result<Option<(Msg, Option<OwnedFd>)>, Errno> {
    let mut bytes = [0u8; MSG_LEN];
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
        match rustix::net::recvmsg(
            borrow(sock),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    };
    if r == 0 {
        return Ok(None);
    }
    // The first descriptor passed is kept; any other is closed as it drops.
    let mut passed = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                if passed.is_none() {
                    passed = Some(fd);
                }
            }
        }
    }
    if r != MSG_LEN {
        return Err(Errno(libc::EPROTO));
    }
    Ok(Some((Msg::from_bytes(&bytes), passed)))
}

// ---------------------------------------------------------------------------------------
// seccomp user notification.

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6): wake the supervisor on the CPU of the
/// notifying task and back, which avoids a cross-CPU wake-up per system call.
pub(crate) const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux 5.19).
pub(crate) const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

/// Room for the kernel's `struct seccomp_notif` / `struct seccomp_notif_resp`, whatever
/// their size on the running kernel (checked at spawn against
/// `SECCOMP_GET_NOTIF_SIZES`). The kernel copies *its* struct size, which may be larger
/// than the `libc` definition, so a buffer of exactly the libc size could overflow.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct NotifBuf(pub [u8; NOTIF_BUF_LEN]);

pub(crate) const NOTIF_BUF_LEN: usize = 256;

impl NotifBuf {
    pub(crate) const fn new() -> NotifBuf {
        NotifBuf([0; NOTIF_BUF_LEN])
    }
}

/// The kernel's notification structure sizes; errors mean no SECCOMP_USER_NOTIF.
pub(crate) fn notif_sizes() -> Result<libc::seccomp_notif_sizes, Errno> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes exactly one seccomp_notif_sizes.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0 as c_uint,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    })?;
    Ok(sizes)
}

/// A received notification, copied out of the kernel's structure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notif {
    pub id: u64,
    pub tid: i32,
    pub nr: u32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// `SECCOMP_IOCTL_NOTIF_RECV`: blocks until a notification is pending (callers poll first).
pub(crate) fn notif_recv(listener: RawFd, buf: &mut NotifBuf) -> Result<Notif, Errno> {
    // The kernel refuses a buffer that is not zeroed.
    buf.0 = [0; NOTIF_BUF_LEN];
    // SAFETY: buf is at least as large as the kernel's seccomp_notif (checked at spawn)
    // and 8-byte aligned, so both the ioctl write and the read as libc::seccomp_notif
    // (a prefix of the kernel's struct) stay in bounds.
    let n = unsafe {
        cvt(libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            buf.0.as_mut_ptr(),
        ) as c_long)?;
        std::ptr::read(buf.0.as_ptr().cast::<libc::seccomp_notif>())
    };
    let mut args = [0u64; 6];
    args.copy_from_slice(&n.data.args);
    Ok(Notif {
        id: n.id,
        tid: n.pid as i32,
        nr: n.data.nr as u32,
        arch: n.data.arch,
        args,
    })
}

/// `SECCOMP_IOCTL_NOTIF_SEND`. `error` is 0 or a negative errno; `flags` may hold
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`.
pub(crate) fn notif_send(
    listener: RawFd,
    buf: &mut NotifBuf,
    id: u64,
    error: i32,
    flags: u32,
) -> Result<(), Errno> {
    buf.0 = [0; NOTIF_BUF_LEN];
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error,
        flags,
    };
    // SAFETY: buf is larger than and aligned for seccomp_notif_resp; the kernel reads
    // its own struct size from it (checked at spawn to fit), the tail being zeroes.
    unsafe {
        std::ptr::write(buf.0.as_mut_ptr().cast::<libc::seccomp_notif_resp>(), resp);
        cvt(libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            buf.0.as_mut_ptr(),
        ) as c_long)?;
    }
    Ok(())
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: is the notification still pending (its task alive and
/// still waiting)? Used after reading /proc so the data read is known to be the task's.
pub(crate) fn notif_id_valid(listener: RawFd, id: u64) -> Result<bool, Errno> {
    let mut id = id;
    // SAFETY: the ioctl reads one u64 through the pointer.
    let r = unsafe {
        libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &mut id as *mut u64,
        )
    };
    if r == 0 {
        Ok(true)
    } else if last_errno() == libc::ENOENT {
        Ok(false)
    } else {
        Err(Errno(last_errno()))
    }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` (the flags travel by value, not through a pointer).
pub(crate) fn notif_set_flags(listener: RawFd, flags: u64) -> Result<(), Errno> {
    // SAFETY: this ioctl takes its argument by value.
    cvt(unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _, flags) } as c_long)
        .map(drop)
}

/// What `readlink /proc/self/fd/N` says of a seccomp listener.
pub(crate) fn is_seccomp_listener(fd: &OwnedFd) -> bool {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(link)
        .map(|t| t.as_os_str() == "anon_inode:seccomp notify")
        .unwrap_or(false)
}

/// `close_range(first, last)` (Linux 5.9); falls back to closing one by one.
pub(crate) fn close_range(first: c_uint, last: c_uint) {
    if first > last {
        return;
    }
    // SAFETY: closing descriptors this process owns; callers pass only ranges they
    // intend to drop.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) == 0 {
            return;
        }
        let stop = last.min(65_535);
        let mut fd = first;
        while fd <= stop {
            libc::close(fd as c_int);
            fd += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kernel's process-events connector (netlink `NETLINK_CONNECTOR`, `CN_IDX_PROC`): how
// the supervisor learns of the forks its filter lets through without a notification (see
// `supervisor/forks.rs` for why). Subscribing needs CAP_NET_ADMIN in the initial user
// and pid namespaces.

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct cn_msg` without its payload.
const CN_MSG_LEN: usize = 20;
/// Where `struct proc_event` starts in a received datagram.
const EVENT_AT: usize = NLMSG_HDRLEN + CN_MSG_LEN;

/// One `PROC_EVENT_FORK`: `parent_tid` is the creating thread (the kernel reports the
/// child's `real_parent`, which is the caller for a clone without `CLONE_PARENT` or
/// `CLONE_THREAD`, the only clones the filter lets through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ForkEvent {
    pub parent_tid: i32,
    pub parent_tgid: i32,
    pub child_tid: i32,
    pub child_tgid: i32,
}

/// Opens a non-blocking, close-on-exec socket subscribed to fork events.
pub(crate) fn proc_events_open() -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_CONNECTOR,
        );
        if fd < 0 {
            return Err(Errno(last_errno()));
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a zeroed sockaddr_nl is valid; bind reads exactly its size.
    unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(Errno(last_errno()));
        }
        // Room for a burst of forks elsewhere on the machine (the events are
        // system-wide); an overflow is reported by recv as ENOBUFS. Best effort.
        let size: c_int = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        );
    }
    // nlmsghdr + cn_msg + struct proc_input { mcast_op, event_type }: listen to forks
    // only (kernels before 6.6 ignore the event type and send every event).
    let mut msg = [0u8; EVENT_AT + 8];
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg[32..34].copy_from_slice(&8u16.to_ne_bytes());
    msg[36..40].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg[40..44].copy_from_slice(&PROC_EVENT_FORK.to_ne_bytes());
    // SAFETY: sending a stack buffer of the given length to the kernel (port 0).
    let r = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if r < 0 {
        return Err(Errno(last_errno()));
    }
    Ok(fd)
}

/// What one non-blocking read of the connector gave.
pub(crate) enum ProcEvent {
    /// Nothing queued.
    Empty,
    Fork(ForkEvent),
    /// Some other message (an acknowledgement, another event type).
    Other,
}

/// Reads one datagram without blocking. `Err(ENOBUFS)`: events were dropped because the
/// socket's buffer was full.
pub(crate) fn proc_events_recv(fd: RawFd) -> Result<ProcEvent, Errno> {
    let mut buf = [0u8; 256];
    // SAFETY: receiving into a stack buffer of the given length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return match last_errno() {
            libc::EAGAIN => Ok(ProcEvent::Empty),
            e => Err(Errno(e)),
        };
    }
    let n = n as usize;
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    if n < EVENT_AT + 32
        || word(16) != CN_IDX_PROC
        || word(20) != CN_VAL_PROC
        || word(EVENT_AT) != PROC_EVENT_FORK
    {
        return Ok(ProcEvent::Other);
    }
    let data = EVENT_AT + 16;
    Ok(ProcEvent::Fork(ForkEvent {
        parent_tid: word(data) as i32,
        parent_tgid: word(data + 4) as i32,
        child_tid: word(data + 8) as i32,
        child_tgid: word(data + 12) as i32,
    }))
}

/// Checks that fork events really arrive (the subscription can be refused silently, or
/// report pids of another namespace): forks a child that exits at once and looks for
/// its event, which the kernel queues before `fork` returns.
pub(crate) fn proc_events_probe(fd: RawFd) -> bool {
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) }
    }
    if child < 0 {
        return false;
    }
    let me = std::process::id() as i32;
    let mut seen = false;
    for _ in 0..4096 {
        match proc_events_recv(fd) {
            Ok(ProcEvent::Fork(ev)) if ev.child_tid == child && ev.parent_tgid == me => {
                seen = true;
                break;
            }
            Ok(ProcEvent::Empty) | Err(_) => break,
            Ok(_) => {}
        }
    }
    wait_exit_code(child);
    seen
}

/// The call a task blocked in the kernel is making, from `/proc/TID/syscall`
/// (`nr arg1 .. arg6 sp pc`): `None` if it runs in user space, is gone, or is not in a
/// call.
pub(crate) fn current_syscall(tid: i32) -> Option<(u32, [u64; 6])> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    let mut it = text.split_ascii_whitespace();
    let nr: u32 = it.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        let t = it.next()?;
        *a = u64::from_str_radix(t.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}
