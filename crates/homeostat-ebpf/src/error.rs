//! Why the kernel side could not be used, as variants a caller can match on: "BPF is
//! not available here" (no privilege, no BTF) is a different answer from "the verifier
//! rejected our program" (a bug to fix), and tests skip on the first only.
//!
//! libbpf's own warnings during a load are captured rather than printed, so that a
//! failure is one line carrying its last few warnings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use libbpf_rs::{ErrorKind, PrintLevel};

pub(crate) const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Why the kernel side could not be used or driven. Each displays as a one-liner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not privileged enough to load BPF programs (EPERM/EACCES without a verifier
    /// log: the kernel refused before looking at a program).
    #[error("bpf: permission denied (need root, or CAP_BPF and CAP_PERFMON)")]
    PermissionDenied,
    /// The kernel exposes no BTF, which CO-RE relocation needs.
    #[error("bpf: kernel has no BTF ({BTF_PATH} missing); needs CONFIG_DEBUG_INFO_BTF")]
    NoBtf,
    /// The verifier rejected a program (libbpf printed its log): a bug in the programs
    /// or a kernel too old for them, never a reason to skip.
    #[error("bpf: {stage}: the verifier rejected a program{detail}")]
    Rejected {
        /// What was being done (e.g. "load").
        stage: String,
        /// libbpf's last warnings, in parentheses (may be empty).
        detail: String,
    },
    /// Loading or attaching failed for another reason; `kind` is libbpf's
    /// classification (e.g. [`ErrorKind::Unsupported`], [`ErrorKind::NotFound`]).
    #[error("bpf: {stage}: {detail}")]
    Load {
        /// What was being done (e.g. "attach sys_enter").
        stage: String,
        /// libbpf's classification of the failure.
        kind: ErrorKind,
        /// The error and libbpf's last warnings.
        detail: String,
    },
    /// A call number outside pH's 9-bit table.
    #[error("bpf: call number {0} out of range (the kernel table has {ROW} rows)", ROW = crate::abi::ROW)]
    OutOfRange(u16),
    /// Options the programs cannot be loaded with.
    #[error("bpf: {0}")]
    Config(String),
    /// A map operation failed.
    #[error("bpf map {map}: {what}: {err}")]
    Map {
        /// The map.
        map: &'static str,
        /// The operation.
        what: &'static str,
        /// libbpf's classification of the failure.
        kind: ErrorKind,
        /// The error.
        err: String,
    },
}

impl Error {
    /// Whether a signal interrupted the operation (EINTR): the caller retries, it is
    /// not a failure.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Map {
                kind: ErrorKind::Interrupted,
                ..
            } | Error::Load {
                kind: ErrorKind::Interrupted,
                ..
            }
        )
    }
}

/// Classifies a failed open/load/attach.
pub(crate) fn load_error(stage: &str, e: libbpf_rs::Error) -> Error {
    let rejected = VERIFIER_LOG.swap(false, Ordering::Relaxed);
    let tail = libbpf_tail();
    if rejected {
        Error::Rejected {
            stage: stage.to_string(),
            detail: tail,
        }
    } else if e.kind() == ErrorKind::PermissionDenied {
        Error::PermissionDenied
    } else {
        Error::Load {
            stage: stage.to_string(),
            kind: e.kind(),
            detail: format!("{e}{tail}"),
        }
    }
}

pub(crate) fn map_err(map: &'static str, what: &'static str) -> impl Fn(libbpf_rs::Error) -> Error {
    move |e| Error::Map {
        map,
        what,
        kind: e.kind(),
        err: e.to_string(),
    }
}

/// libbpf's warnings of the load in progress: kept, not printed, so that a failure
/// is one line with its cause. The RLIMIT_MEMLOCK / "ulimit -l" hints are dropped:
/// they are misleading on kernels that charge BPF memory to the memory cgroup.
static LIBBPF_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
const LOG_KEEP: usize = 64;
/// Set when libbpf printed a program's verifier log, which it does exactly when
/// BPF_PROG_LOAD failed after the verifier ran (its errno, EACCES or EINVAL, does not
/// tell a rejection from a refusal to load at all).
static VERIFIER_LOG: AtomicBool = AtomicBool::new(false);

fn libbpf_print(_level: PrintLevel, msg: String) {
    if msg.contains("ulimit") || msg.contains("RLIMIT_MEMLOCK") {
        return;
    }
    if msg.contains("-- BEGIN PROG LOAD LOG --") {
        VERIFIER_LOG.store(true, Ordering::Relaxed);
    }
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        if log.len() >= LOG_KEEP {
            log.remove(0);
        }
        log.push(msg.trim().to_string());
    }
}

/// Routes libbpf's warnings to the capture, and forgets those of an earlier load.
pub(crate) fn capture_libbpf_log() {
    libbpf_rs::set_print(Some((PrintLevel::Warn, libbpf_print)));
    let _ = libbpf_tail();
    VERIFIER_LOG.store(false, Ordering::Relaxed);
}

/// The last few libbpf warnings, to append to an error.
fn libbpf_tail() -> String {
    let log = match LIBBPF_LOG.lock() {
        Ok(mut log) => std::mem::take(&mut *log),
        Err(_) => return String::new(),
    };
    let lines: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|m| !m.contains("-- BEGIN PROG LOAD LOG --"))
        .collect();
    let mut tail: Vec<&str> = lines[lines.len().saturating_sub(3)..].to_vec();
    // libbpf's last lines only say that the load failed; the verifier's own verdict
    // (the rejected instruction, and how far it got) ends its log, earlier on.
    if let Some(verdict) = log
        .iter()
        .rev()
        .find(|m| m.contains("-- END PROG LOAD LOG --"))
        .map(|m| verifier_verdict(m))
        .filter(|v| !v.is_empty())
    {
        tail.insert(0, verdict);
    }
    if tail.is_empty() {
        String::new()
    } else {
        format!(" ({})", tail.join("; "))
    }
}

/// The last two lines of a verifier log before its END marker: the reason of a
/// rejection and the "processed N insns" summary.
fn verifier_verdict(log: &str) -> &str {
    let body = log.split("-- END PROG LOAD LOG --").next().unwrap_or("");
    let body = body.trim_end();
    let cut = body.rmatch_indices('\n').nth(1).map_or(0, |(i, _)| i + 1);
    body[cut..].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> libbpf_rs::Error {
        libbpf_rs::Error::from_raw_os_error(errno)
    }

    #[test]
    fn failures_are_classified_by_kind_not_text() {
        assert!(map_err("hs_events", "poll")(os(libc::EINTR)).is_interrupted());
        assert!(!map_err("hs_events", "poll")(os(libc::EBADF)).is_interrupted());
        // EACCES/EPERM with no verifier log: the kernel refused to load at all.
        capture_libbpf_log();
        assert!(matches!(
            load_error("load", os(libc::EPERM)),
            Error::PermissionDenied
        ));
        // The same errno after libbpf printed a verifier log: a rejected program.
        libbpf_print(
            PrintLevel::Warn,
            "prog 'x': -- BEGIN PROG LOAD LOG --\n0: (b7) r0 = 0\nR1 invalid mem access \
             'mem_or_null'\nprocessed 12 insns\n-- END PROG LOAD LOG --"
                .into(),
        );
        libbpf_print(PrintLevel::Warn, "prog 'x': failed to load: -EACCES".into());
        match load_error("load", os(libc::EACCES)) {
            // The verifier's reason reaches the one-line error, not only libbpf's.
            Error::Rejected { detail, .. } => {
                assert!(detail.contains("R1 invalid mem access"), "{detail}");
                assert!(detail.contains("processed 12 insns"), "{detail}");
                assert!(!detail.contains("r0 = 0"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // The flag is consumed: the next failure is judged on its own.
        assert!(matches!(
            load_error("attach", os(libc::ENOENT)),
            Error::Load {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }
}
