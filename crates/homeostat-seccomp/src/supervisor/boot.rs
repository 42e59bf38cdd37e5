//! Spawn: build everything the forked processes need (they may not allocate), fork the
//! keeper (which forks the child), then take the listener and serve the child's calls
//! up to its exec. `Boot` holds the state between fork and exec and cleans up a
//! failed start.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libc::c_char;

use super::{remaining_ms, sys_err, Supervisor};
use crate::child::{self, ChildPlan};
use crate::inflight::{InFlight, SharedMap};
use crate::keeper::{self, KeeperPlan};
use crate::sys::{self, Errno, Msg, NotifBuf};
use crate::{ChildStatus, LaunchError, LaunchOptions};

/// How long spawn waits for the child and keeper to get through their set-up steps.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

fn cstring(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// `argv[0]` as `execvp` would find it: as given if it contains a slash, else the first
/// executable regular file of that name in `$PATH`.
fn resolve(cmd: &OsStr) -> Result<PathBuf, Errno> {
    let bytes = cmd.as_bytes();
    if bytes.is_empty() {
        return Err(Errno(libc::ENOENT));
    }
    if bytes.contains(&b'/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let mut err = libc::ENOENT;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() { b".".as_slice() } else { dir };
        let cand = Path::new(OsStr::from_bytes(dir)).join(cmd);
        let Ok(md) = std::fs::metadata(&cand) else {
            continue;
        };
        if !md.is_file() {
            continue;
        }
        let Some(c) = cstring(cand.as_os_str()) else {
            continue;
        };
        // SAFETY: access(2) on a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cand);
        }
        err = libc::EACCES;
    }
    Err(Errno(err))
}

impl Supervisor {
    /// Starts `argv` (`argv[0]` searched in `$PATH`) under the filter. Returns once the
    /// program has been exec'd: its first call is the first event.
    ///
    /// The sequence (details in `docs/seccomp-supervisor.md`): a double fork creates the
    /// keeper, which forks the child; the child announces the descriptor number its listener will
    /// get, installs the filter, and execs; this process copies the listener out of the
    /// child with `pidfd_getfd`, gives the keeper a copy, and answers the child's calls
    /// up to the exec (unreported) until the close-on-exec status pipe says how the exec
    /// went.
    pub fn spawn(argv: &[OsString], opts: &LaunchOptions) -> Result<Supervisor, LaunchError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(LaunchError::UnsupportedArch);
        }
        let first = argv.first().ok_or(LaunchError::EmptyCommand)?;
        let cmd = first.to_string_lossy().into_owned();
        let exec_err = |errno: i32| LaunchError::Exec {
            cmd: cmd.clone(),
            errno: Errno(errno),
        };
        let path = resolve(first).map_err(|e| exec_err(e.0))?;

        // Everything the forked processes use is built here, before forking: they may
        // not allocate.
        let c_path = cstring(path.as_os_str()).ok_or_else(|| exec_err(libc::EINVAL))?;
        let c_args = argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| exec_err(libc::EINVAL))?;
        let c_env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let ptrs = |v: &[CString]| -> Vec<*const c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let arg_ptrs = ptrs(&c_args);
        let env_ptrs = ptrs(&c_env);

        let sizes = sys::notif_sizes().map_err(|errno| LaunchError::Seccomp {
            what: "kernel lacks SECCOMP_USER_NOTIF (needs Linux 5.0)",
            errno,
        })?;
        if sizes.seccomp_notif as usize > sys::NOTIF_BUF_LEN
            || sizes.seccomp_notif_resp as usize > sys::NOTIF_BUF_LEN
        {
            return Err(LaunchError::Launch {
                cmd,
                what: format!(
                    "kernel's seccomp_notif ({} bytes) is larger than this build supports",
                    sizes.seccomp_notif
                ),
            });
        }
        let map = SharedMap::new().map_err(sys_err("mmap (in-flight table)"))?;
        let me = std::process::id() as i32;
        let sup_pidfd = sys::pidfd_open(me).map_err(sys_err("pidfd_open (needs Linux 5.3)"))?;
        let (status_r, status_w) = sys::pipe_cloexec().map_err(sys_err("pipe2"))?;
        let (sock, sock_k) = sys::seqpacket_pair().map_err(sys_err("socketpair"))?;
        // Forks run unnotified only where the supervisor can learn of them in order
        // (the process-events connector; see `forks`).
        let proc_events = sys::proc_events_open()
            .ok()
            .filter(|fd| sys::proc_events_probe(fd.as_raw_fd()));
        let filter = child::filter(proc_events.is_some());
        let plan = KeeperPlan {
            sock: sock_k.as_raw_fd(),
            sock_peer: sock.as_raw_fd(),
            sup_pidfd: sup_pidfd.as_raw_fd(),
            status_r: status_r.as_raw_fd(),
            shared: map.as_ptr(),
            fail_mode: opts.fail_mode,
            notif_buf: NotifBuf::new(),
            child: ChildPlan {
                path: c_path.as_ptr(),
                argv: arg_ptrs.as_ptr(),
                envp: env_ptrs.as_ptr(),
                status_w: status_w.as_raw_fd(),
                prog: libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                },
            },
        };

        // SAFETY: fork. The intermediate and the keeper run only keeper_main / _exit,
        // which make raw system calls on data prepared above (see the keeper module).
        let inter = unsafe { libc::fork() };
        if inter < 0 {
            return Err(LaunchError::Sys {
                call: "fork",
                errno: Errno(sys::last_errno()),
            });
        }
        if inter == 0 {
            // SAFETY: in the forked intermediate: fork the keeper and leave at once, so
            // the keeper is reparented away from the caller's process.
            unsafe {
                let k = libc::fork();
                if k == 0 {
                    keeper::keeper_main(&plan);
                }
                libc::_exit(if k < 0 { 1 } else { 0 });
            }
        }
        drop(status_w);
        drop(sock_k);
        if sys::wait_exit_code(inter) == Some(1) {
            return Err(LaunchError::Sys {
                call: "fork (keeper)",
                errno: Errno(libc::EAGAIN),
            });
        }

        let mut boot = Boot {
            cmd: cmd.clone(),
            deadline: Instant::now() + SPAWN_TIMEOUT,
            status_r,
            sock: Some(sock),
            child_pidfd: None,
        };
        match boot.run(opts, map, proc_events) {
            Ok(sup) => Ok(sup),
            Err(e) => {
                boot.abort();
                Err(e)
            }
        }
    }
}

/// Spawn's state between the fork and the exec, with the clean-up for failures.
struct Boot {
    cmd: String,
    deadline: Instant,
    status_r: OwnedFd,
    sock: Option<OwnedFd>,
    child_pidfd: Option<OwnedFd>,
}

impl Boot {
    fn launch_err(&self, what: impl Into<String>) -> LaunchError {
        LaunchError::Launch {
            cmd: self.cmd.clone(),
            what: what.into(),
        }
    }

    fn sock_fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Kill whatever got started: the keeper kills the child (and exits) on ABORT.
    fn abort(&mut self) {
        if let Some(sock) = &self.sock {
            let _ = sys::send_msg(
                sock.as_raw_fd(),
                Msg::new(keeper::S_ABORT, 0, 0),
                None,
                true,
            );
        }
        if let Some(pidfd) = &self.child_pidfd {
            let _ = sys::pidfd_kill(pidfd);
        }
    }

    /// Turns a child's failure report into the error for the caller.
    fn child_failure(&self, m: Msg) -> LaunchError {
        let errno = Errno(m.b);
        match m.a {
            child::STAGE_EXEC => LaunchError::Exec {
                cmd: self.cmd.clone(),
                errno,
            },
            child::STAGE_SECCOMP => LaunchError::Seccomp {
                what: match m.b {
                    libc::EINVAL | libc::ENOSYS => {
                        "kernel lacks SECCOMP_USER_NOTIF (needs Linux 5.0)"
                    }
                    libc::EBUSY => {
                        "a user-notification filter is already installed above this process (nested supervision is not supported)"
                    }
                    _ => "installing the filter failed",
                },
                errno,
            },
            child::STAGE_NNP => LaunchError::Sys {
                call: "prctl(PR_SET_NO_NEW_PRIVS)",
                errno,
            },
            child::STAGE_KEEPER => LaunchError::Sys {
                call: "starting the keeper",
                errno,
            },
            _ => LaunchError::Sys {
                call: "preparing the child",
                errno,
            },
        }
    }

    /// Waits until one of `fds` is readable (or the deadline passes).
    fn wait(&self, fds: &mut [libc::pollfd]) -> Result<(), LaunchError> {
        loop {
            let ms = remaining_ms(Some(self.deadline));
            if ms == 0 {
                return Err(self.launch_err("timed out setting up the child"));
            }
            match sys::poll(fds, ms) {
                Ok(0) => return Err(self.launch_err("timed out setting up the child")),
                Ok(_) => return Ok(()),
                Err(Errno(libc::EINTR)) => continue,
                Err(errno) => {
                    return Err(LaunchError::Sys {
                        call: "poll",
                        errno,
                    })
                }
            }
        }
    }

    /// A message from the keeper during set-up: only failures are expected.
    fn keeper_msg(&mut self, want: u32) -> Result<Option<Msg>, LaunchError> {
        match sys::recv_msg(self.sock_fd()) {
            Ok(Some((m, _))) if m.kind == want => Ok(Some(m)),
            Ok(Some((m, _))) if m.kind == keeper::K_FAIL => Err(self.child_failure(m)),
            Ok(Some((m, _))) if m.kind == keeper::K_EXIT => Err(self.launch_err(format!(
                "the child exited during set-up ({:?})",
                ChildStatus::from_wait(m.b)
            ))),
            Ok(Some(_)) => Ok(None),
            Ok(None) => {
                self.sock = None;
                Err(self.launch_err("the keeper process died during set-up"))
            }
            Err(errno) => Err(LaunchError::Sys {
                call: "recvmsg (keeper)",
                errno,
            }),
        }
    }

    fn run(
        &mut self,
        opts: &LaunchOptions,
        map: SharedMap,
        proc_events: Option<OwnedFd>,
    ) -> Result<Supervisor, LaunchError> {
        // 1. The child's HELLO: its pid and its listener's future descriptor number.
        let (child_pid, target_fd) = loop {
            let mut fds = [
                sys::pollfd(self.status_r.as_raw_fd(), libc::POLLIN),
                sys::pollfd(self.sock_fd(), libc::POLLIN),
            ];
            self.wait(&mut fds)?;
            if fds[0].revents != 0 {
                match sys::read_msg(self.status_r.as_raw_fd()) {
                    Ok(Some(m)) if m.kind == child::HELLO => break (m.a, m.b),
                    Ok(Some(m)) => return Err(self.child_failure(m)),
                    Ok(None) => return Err(self.launch_err("the child died during set-up")),
                    Err(errno) => {
                        return Err(LaunchError::Sys {
                            call: "read",
                            errno,
                        })
                    }
                }
            }
            if fds[1].revents != 0 {
                self.keeper_msg(u32::MAX)?;
            }
        };
        let child_pidfd =
            sys::pidfd_open(child_pid).map_err(sys_err("pidfd_open (needs Linux 5.3)"))?;
        self.child_pidfd = Some(child_pidfd);

        // 2. Copy the listener out of the child once it exists. The child's window
        // between HELLO and the filter is a few microseconds, so poll with back-off.
        let listener = {
            let mut pause = Duration::from_micros(20);
            loop {
                let got = match &self.child_pidfd {
                    Some(pidfd) => sys::pidfd_getfd(pidfd, target_fd),
                    None => Err(Errno(libc::EBADF)),
                };
                match got {
                    Ok(fd) => break fd,
                    Err(Errno(libc::EBADF)) => {}
                    Err(errno @ Errno(libc::ENOSYS)) => {
                        return Err(LaunchError::Sys {
                            call: "pidfd_getfd (needs Linux 5.6)",
                            errno,
                        })
                    }
                    Err(errno @ Errno(libc::EPERM)) => {
                        return Err(LaunchError::Sys {
                            call: "pidfd_getfd (needs ptrace access to the child; see kernel.yama.ptrace_scope)",
                            errno,
                        })
                    }
                    Err(errno) => return Err(LaunchError::Sys { call: "pidfd_getfd", errno }),
                }
                // A failure report (the filter could not be installed) or the child's
                // death ends the wait.
                let mut fds = [sys::pollfd(self.status_r.as_raw_fd(), libc::POLLIN)];
                if matches!(sys::poll(&mut fds, 0), Ok(1)) {
                    return match sys::read_msg(self.status_r.as_raw_fd()) {
                        Ok(Some(m)) => Err(self.child_failure(m)),
                        _ => Err(self.launch_err("the child died during set-up")),
                    };
                }
                if Instant::now() >= self.deadline {
                    return Err(self.launch_err("timed out waiting for the seccomp listener"));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        };
        if !sys::is_seccomp_listener(&listener) {
            return Err(
                self.launch_err("descriptor copied from the child is not a seccomp listener")
            );
        }
        if opts.sync_wakeup {
            // EINVAL: kernel older than 6.6; the flag is an optimisation only.
            match sys::notif_set_flags(
                listener.as_raw_fd(),
                sys::SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            ) {
                Ok(()) | Err(Errno(libc::EINVAL)) => {}
                Err(errno) => {
                    return Err(LaunchError::Sys {
                        call: "seccomp NOTIF_SET_FLAGS",
                        errno,
                    })
                }
            }
        }

        // 3. Give the keeper its copy and wait until it is ready (it has then closed its
        // copy of the status pipe, which step 4 relies on).
        sys::send_msg(
            self.sock_fd(),
            Msg::new(keeper::S_LISTENER, 0, 0),
            Some(listener.as_raw_fd()),
            false,
        )
        .map_err(sys_err("sendmsg (listener to keeper)"))?;
        let keeper_pid = loop {
            let mut fds = [sys::pollfd(self.sock_fd(), libc::POLLIN)];
            self.wait(&mut fds)?;
            if let Some(m) = self.keeper_msg(keeper::K_READY)? {
                break m.a;
            }
        };

        let mut sup = Supervisor {
            cmd: self.cmd.clone(),
            listener,
            sock: self.sock.take(),
            child_pid,
            child_pidfd: self
                .child_pidfd
                .take()
                .ok_or_else(|| self.launch_err("internal: no child pidfd"))?,
            keeper_pid,
            fail_mode: opts.fail_mode,
            inflight: InFlight::new(map),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            tasks: HashMap::new(),
            forks: super::forks::Forks::new(proc_events),
            fork_gen: 0,
            prune_at: 1024,
            child_status: None,
            exit_delivered: false,
            gone_since: None,
            shut: false,
            buf: NotifBuf::new(),
        };
        match self.serve_until_exec(&mut sup) {
            Ok(()) => Ok(sup),
            Err(e) => {
                // Put the handles back so abort() can reach the keeper and the child.
                self.sock = sup.sock.take();
                sup.shut = true;
                let _ = sys::pidfd_kill(&sup.child_pidfd);
                Err(e)
            }
        }
    }

    /// Step 4: answer the child's own calls (execve, and on failure its report) until the
    /// status pipe tells how the exec went: end of file (closed by the successful exec)
    /// or a failure record.
    fn serve_until_exec(&mut self, sup: &mut Supervisor) -> Result<(), LaunchError> {
        let status = self.status_r.as_raw_fd();
        let listener = sup.listener.as_raw_fd();
        loop {
            let mut fds = [
                sys::pollfd(status, libc::POLLIN),
                sys::pollfd(listener, libc::POLLIN),
            ];
            self.wait(&mut fds)?;
            if fds[0].revents == 0 && fds[1].revents & libc::POLLIN != 0 {
                // The exec closes the status pipe before the new program can make a call,
                // so look at the pipe again *after* seeing the notification: if it is
                // still quiet, the notification is the old image's (the pre-exec child is
                // single-threaded, so it is the only one pending).
                let mut again = [sys::pollfd(status, libc::POLLIN)];
                if !matches!(sys::poll(&mut again, 0), Ok(1)) {
                    let n = match sys::notif_recv(listener, &mut sup.buf) {
                        Ok(n) => n,
                        Err(Errno(libc::ENOENT | libc::EINTR)) => continue,
                        Err(errno) => {
                            return Err(LaunchError::Sys {
                                call: "seccomp NOTIF_RECV",
                                errno,
                            })
                        }
                    };
                    let slot = sup.inflight.record(n.id, n.tid);
                    let r = sys::notif_send(
                        listener,
                        &mut sup.buf,
                        n.id,
                        0,
                        libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                    );
                    sup.inflight.clear(slot);
                    match r {
                        Ok(()) | Err(Errno(libc::ENOENT)) => {}
                        Err(errno @ Errno(libc::EINVAL)) => return Err(LaunchError::Seccomp {
                            what: "kernel lacks SECCOMP_USER_NOTIF_FLAG_CONTINUE (needs Linux 5.5)",
                            errno,
                        }),
                        Err(errno) => {
                            return Err(LaunchError::Sys {
                                call: "seccomp NOTIF_SEND",
                                errno,
                            })
                        }
                    }
                    continue;
                }
            }
            if fds[0].revents != 0 || fds[1].revents & libc::POLLIN != 0 {
                return match sys::read_msg(status) {
                    Ok(None) => Ok(()),
                    Ok(Some(m)) => Err(self.child_failure(m)),
                    Err(errno) => Err(LaunchError::Sys {
                        call: "read",
                        errno,
                    }),
                };
            }
            if fds[1].revents & libc::POLLHUP != 0 {
                return Err(self.launch_err("the child died before its exec"));
            }
        }
    }
}
