//! Thin wrappers over the raw system calls the launcher needs.
//!
//! This is where the crate's `unsafe` lives. Every wrapper here is also safe to call in a
//! child between `fork` and `execve` of a multi-threaded parent (the keeper and the
//! pre-exec child run there): none allocates, takes a lock, or touches Rust's std I/O.
//! Errors are returned as [`Errno`] values, never panics.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_long, c_uint};

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

fn cvt_fd(r: c_long) -> Result<OwnedFd, Errno> {
    let fd = cvt(r)? as RawFd;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain system call with integer arguments.
    cvt_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as c_uint) })
}

/// Duplicates descriptor `target` of the process behind `pidfd` into this process
/// (close-on-exec set by the kernel).
pub(crate) fn pidfd_getfd(pidfd: RawFd, target: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: plain system call with integer arguments.
    cvt_fd(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0 as c_uint) })
}

pub(crate) fn pidfd_send_signal(pidfd: RawFd, sig: c_int) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer is allowed and means "as kill(2) would".
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as c_uint,
        )
    })
    .map(drop)
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
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as c_long)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } as c_long)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
        // SAFETY: bytes is a valid buffer of MSG_LEN bytes.
        let r = unsafe { libc::write(fd, bytes.as_ptr().cast(), MSG_LEN) };
        if r == MSG_LEN as isize {
            return Ok(());
        }
        if r < 0 && last_errno() == libc::EINTR {
            continue;
        }
        return Err(Errno(if r < 0 { last_errno() } else { libc::EIO }));
    }
}

/// Reads one record from a pipe. `Ok(None)` is end of file (every writer closed).
pub(crate) fn read_msg(fd: RawFd) -> Result<Option<Msg>, Errno> {
    let mut bytes = [0u8; MSG_LEN];
    loop {
        // SAFETY: bytes is a valid writable buffer of MSG_LEN bytes.
        let r = unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), MSG_LEN) };
        if r == 0 {
            return Ok(None);
        }
        if r == MSG_LEN as isize {
            return Ok(Some(Msg::from_bytes(&bytes)));
        }
        if r < 0 && last_errno() == libc::EINTR {
            continue;
        }
        return Err(Errno(if r < 0 { last_errno() } else { libc::EIO }));
    }
}

/// Room for one `cmsghdr` carrying one descriptor, suitably aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends one record on a SOCK_SEQPACKET socket, optionally passing a descriptor
/// (SCM_RIGHTS). Never raises SIGPIPE; `nonblocking` adds MSG_DONTWAIT.
pub(crate) fn send_msg(
    sock: RawFd,
    msg: Msg,
    pass: Option<RawFd>,
    nonblocking: bool,
) -> Result<(), Errno> {
    let mut bytes = msg.to_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: MSG_LEN,
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; zero is a valid "no name, no control" value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = pass {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the control buffer (64 bytes)
        // is larger than CMSG_SPACE(4) (24 bytes), so CMSG_FIRSTHDR is non-null and the
        // header plus one int fit inside it.
        unsafe {
            hdr.msg_control = cbuf.0.as_mut_ptr().cast();
            hdr.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        }
    }
    let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: hdr points at live iovec and control buffers on this stack frame.
        let r = unsafe { libc::sendmsg(sock, &hdr, flags) };
        if r >= 0 {
            return Ok(());
        }
        if last_errno() == libc::EINTR {
            continue;
        }
        return Err(Errno(last_errno()));
    }
}

/// Receives one record (and a passed descriptor, close-on-exec) from a SOCK_SEQPACKET
/// socket. `Ok(None)` is end of file: the peer closed its end.
pub(crate) fn recv_msg(sock: RawFd) -> Result<Option<(Msg, Option<OwnedFd>)>, Errno> {
    let mut bytes = [0u8; MSG_LEN];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: MSG_LEN,
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.0.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.0.len();
    let r = loop {
        // SAFETY: hdr points at live, writable iovec and control buffers.
        let r = unsafe { libc::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 && last_errno() == libc::EINTR {
            continue;
        }
        break r;
    };
    if r < 0 {
        return Err(Errno(last_errno()));
    }
    if r == 0 {
        return Ok(None);
    }
    let mut passed = None;
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* helpers walk only
    // within that length, and an SCM_RIGHTS payload holds at least one int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                if passed.is_none() {
                    passed = Some(OwnedFd::from_raw_fd(fd));
                } else {
                    libc::close(fd);
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if r as usize != MSG_LEN {
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
