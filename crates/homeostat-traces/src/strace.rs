//! Reading `strace` text output as traces.
//!
//! strace is the one tracer every Linux machine has, so its output is the easiest way
//! to get traces of a program you care about: `strace -f -o FILE cmd`. The reader
//! accepts what strace 4.x-6.x writes with the common options:
//!
//! * with `-f`, each line starts with the pid (`1234  read(...)`, or `[pid  1234] ...`
//!   when written to stderr); each pid (really each thread id) is one trace, named
//!   `<file>:<pid>`. Without `-f` there is no pid and the whole file is one trace,
//!   named `<file>` (in stderr output with `-f`, the first process's lines carry no
//!   prefix and so form that trace too). A pid that calls `execve` keeps its trace: strace does not tell
//!   which executable runs, so there is nothing to split on;
//! * a leading timestamp from `-t`/`-tt` (`12:34:56.789012`), `-ttt`
//!   (`1700000000.123456`) or `-r` (`0.000123`) is skipped, as are `-i`/`-n` bracketed
//!   prefixes; `-T` durations at the end of the line do not matter;
//! * a call split into `name(... <unfinished ...>` and `<... name resumed> ...)` counts
//!   once, at the unfinished line; a resumed line with no matching unfinished line (the
//!   trace started mid-call) counts once;
//! * `--- SIGCHLD {...} ---` signal lines and `strace: ...` messages are skipped;
//! * `+++ exited with 0 +++`, `+++ killed by SIGKILL +++` (any `+++` line) end that
//!   pid's trace; if the pid shows up again later, a new trace `<file>:<pid>#2` starts;
//! * `????(` (a call strace could not name) and `restart_syscall(<... resuming ...>)`
//!   are calls like any other.
//!
//! Names map to numbers with [`ReadOptions::arch`](crate::ReadOptions) (which also
//! understands strace's `syscall_0x1b4` form). A name the table does not know gets the
//! stable synthetic number [`synthetic_number`]: `0x8000_0000 | (fnv1a32(name) &
//! 0x7fff_ffff)`. The high bit keeps synthetic numbers clear of every real one, and the
//! hash keeps them the same across files and runs, so models trained on one strace
//! file still match the next.
//!
//! Any other line is an error naming the line, except a last line cut off without a
//! newline (strace killed mid-write), which is ignored. Being strict here is deliberate:
//! output that strace wrote to stderr (no `-o`) interleaves with the traced program's
//! own output and with strace's messages mid-line, and guessing around that would
//! quietly teach the model calls that never happened.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use crate::lines::{excerpt, LineReader};
use crate::{check_trace_len, Namer, ReadOptions, TraceError, Visitor};

/// The number given to a system call name the architecture table does not know:
/// `0x8000_0000 | (fnv1a32(name) & 0x7fff_ffff)`, where `fnv1a32` is 32-bit FNV-1a
/// (offset basis `0x811c9dc5`, prime `0x01000193`) over the name's bytes.
pub fn synthetic_number(name: &str) -> u32 {
    0x8000_0000 | (fnv1a32(name.as_bytes()) & 0x7fff_ffff)
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// What one line of strace output says.
#[derive(Debug, PartialEq, Eq)]
enum Event<'a> {
    /// `name(...`: a call starts (and, unless `unfinished`, completes).
    Call {
        pid: Option<u64>,
        name: &'a [u8],
        unfinished: bool,
        /// The rest of the line after `name(`: the arguments, for
        /// [`crate::strace_args`].
        args: &'a [u8],
    },
    /// `<... name resumed>`: the second half of an unfinished call.
    Resumed { pid: Option<u64>, name: &'a [u8] },
    /// `+++ exited with 0 +++` and friends: the task is gone.
    Exit { pid: Option<u64> },
    /// Signals, strace's own messages, stack frames, blank lines.
    Skip,
    /// Not strace output.
    Unrecognized,
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &s[..s.len() - n]
}

/// Splits off the first whitespace-delimited token: (token, rest after the whitespace).
fn split_token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len());
    (&s[..end], trim_start(&s[end..]))
}

fn parse_decimal(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 19 || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(tok.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'?'
}

fn classify(line: &[u8]) -> Event<'_> {
    let mut s = trim_start(line);
    if s.is_empty() {
        return Event::Skip;
    }
    // Pid: `1234  ...` (strace -f -o FILE) or `[pid  1234] ...` (strace -f to stderr).
    let mut pid = None;
    if let Some(rest) = s.strip_prefix(b"[pid") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return Event::Unrecognized;
        };
        let Some(p) = parse_decimal(trim_end(trim_start(&rest[..close]))) else {
            return Event::Unrecognized;
        };
        pid = Some(p);
        s = trim_start(&rest[close + 1..]);
    } else {
        let (tok, rest) = split_token(s);
        if let Some(p) = parse_decimal(tok) {
            pid = Some(p);
            s = rest;
        }
    }
    // Timestamp from -t/-tt/-ttt/-r: digits with `:` or `.`; a bare number was the pid.
    let (tok, rest) = split_token(s);
    if tok.first().is_some_and(u8::is_ascii_digit)
        && tok.iter().any(|&b| b == b':' || b == b'.')
        && tok
            .iter()
            .all(|&b| b.is_ascii_digit() || b == b':' || b == b'.')
    {
        s = rest;
    }
    // -i (`[00007f0a1b2c3d4e] `) and -n (`[ 59] `) prefixes.
    while s.first() == Some(&b'[') {
        let Some(close) = s.iter().position(|&b| b == b']') else {
            return Event::Unrecognized;
        };
        s = trim_start(&s[close + 1..]);
    }

    if s.starts_with(b"--- ") {
        return Event::Skip;
    }
    if s.starts_with(b"+++ ") {
        return Event::Exit { pid };
    }
    if s.starts_with(b"strace:") || s.starts_with(b">") {
        return Event::Skip;
    }
    if let Some(rest) = s.strip_prefix(b"<... ") {
        let (name, rest) = split_token(rest);
        if !name.is_empty()
            && name.iter().all(|&b| is_name_byte(b))
            && rest.starts_with(b"resumed>")
        {
            return Event::Resumed { pid, name };
        }
        return Event::Unrecognized;
    }
    let name_len = s.iter().take_while(|&&b| is_name_byte(b)).count();
    let starts_ok = s
        .first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_' || b == b'?');
    if starts_ok && s.get(name_len) == Some(&b'(') {
        let unfinished = trim_end(s).ends_with(b"<unfinished ...>");
        return Event::Call {
            pid,
            name: &s[..name_len],
            unfinished,
            args: &s[name_len + 1..],
        };
    }
    Event::Unrecognized
}

/// Whether `line` has the shape of a strace output line (used by format detection).
pub(crate) fn looks_like_strace_line(line: &[u8]) -> bool {
    !trim_start(line).is_empty() && classify(line) != Event::Unrecognized
}

/// Name-to-number lookups, cached: a trace repeats a few dozen names millions of times.
struct Names {
    arch: crate::Arch,
    cache: HashMap<Vec<u8>, u32>,
}

impl Names {
    /// Entries kept at most; past it lookups still work, just uncached. Bounds memory on
    /// input with endless distinct names.
    const MAX_CACHED: usize = 4096;
    const MAX_CACHED_NAME: usize = 64;

    fn number(&mut self, name: &[u8]) -> u32 {
        if let Some(&nr) = self.cache.get(name) {
            return nr;
        }
        let text = String::from_utf8_lossy(name);
        let nr = self
            .arch
            .number(&text)
            .unwrap_or_else(|| synthetic_number(&text));
        if self.cache.len() < Self::MAX_CACHED && name.len() <= Self::MAX_CACHED_NAME {
            self.cache.insert(name.to_vec(), nr);
        }
        nr
    }
}

struct Open {
    key: u64,
    name: String,
    count: u64,
    /// Name of the call left `<unfinished ...>`, waiting for its `resumed` line.
    pending: Option<Vec<u8>>,
}

pub(crate) fn read(
    path: &Path,
    file: &str,
    r: impl BufRead,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    let mut lines = LineReader::new(r, path);
    let mut open: HashMap<Option<u64>, Open> = HashMap::new();
    let mut namer = Namer::default();
    let mut names = Names {
        arch: opts.arch,
        cache: HashMap::new(),
    };
    while let Some(line) = lines.next_line()? {
        let lineno = line.no;
        let mut call_args: &[u8] = &[];
        let (pid, name, counts, pending) = match classify(line.text) {
            Event::Skip => continue,
            Event::Unrecognized if !line.terminated => continue,
            Event::Unrecognized => {
                return Err(TraceError::parse(
                    path,
                    Some(lineno),
                    format!(
                        "not a line of strace output: {} (record with `strace -o FILE`; \
                         output sent to stderr mixes in the program's own output)",
                        excerpt(line.text)
                    ),
                ))
            }
            Event::Exit { pid } => {
                if let Some(t) = open.remove(&pid) {
                    v.end(t.key);
                }
                continue;
            }
            Event::Call {
                pid,
                name,
                unfinished,
                args,
            } => {
                call_args = args;
                (pid, name, true, unfinished)
            }
            Event::Resumed { pid, name } => {
                let matched = open
                    .get(&pid)
                    .is_some_and(|t| t.pending.as_deref() == Some(name));
                (pid, name, !matched, false)
            }
        };
        if open.len() >= crate::MAX_OPEN_TRACES && !open.contains_key(&pid) {
            crate::check_open_traces(open.len(), path, Some(lineno))?;
        }
        let t = open.entry(pid).or_insert_with(|| {
            let base = match pid {
                Some(p) => format!("{file}:{p}"),
                None => file.to_string(),
            };
            let (key, name) = namer.next(base);
            v.begin(key, &name);
            Open {
                key,
                name,
                count: 0,
                pending: None,
            }
        });
        // A task has one call in flight at a time, so any new event settles the old one.
        t.pending = pending.then(|| name.to_vec());
        if counts {
            check_trace_len(t.count, opts, path, Some(lineno), &t.name)?;
            t.count += 1;
            let nr = names.number(name);
            // Only the few calls arg_spec names are parsed further.
            let arg = std::str::from_utf8(name)
                .ok()
                .and_then(|n| crate::strace_args::parse(n, call_args, pid));
            match arg {
                Some(a) => v.call_arg(t.key, nr, &a),
                None => v.call(t.key, nr),
            }
        }
    }
    crate::end_remaining(open.into_values().map(|t| t.key), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_from, Arch, Format, Trace, TraceCollector, TraceErrorKind};

    fn read_with(s: &str, arch: Arch) -> Result<Vec<Trace>, TraceError> {
        let opts = ReadOptions {
            arch,
            ..ReadOptions::default()
        };
        let mut c = TraceCollector::new();
        read_from("run.strace", s.as_bytes(), Format::Strace, &opts, &mut c)?;
        Ok(c.into_traces())
    }

    fn read(s: &str) -> Vec<Trace> {
        read_with(s, Arch::X86_64).unwrap()
    }

    fn nr(name: &str) -> u32 {
        Arch::X86_64.number(name).unwrap()
    }

    #[test]
    fn synthetic_numbers_are_stable_and_high() {
        // FNV-1a("") is the offset basis.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        let n = synthetic_number("frobnicate");
        assert_eq!(n, synthetic_number("frobnicate"));
        assert!(n >= 0x8000_0000);
        assert_ne!(n, synthetic_number("frobnicate2"));
    }

    #[test]
    fn classify_lines() {
        use Event::*;
        let c = |s: &str| match classify(s.as_bytes()) {
            Call {
                pid,
                name,
                unfinished,
                ..
            } => format!(
                "call {pid:?} {} {unfinished}",
                String::from_utf8_lossy(name)
            ),
            Resumed { pid, name } => format!("resumed {pid:?} {}", String::from_utf8_lossy(name)),
            Exit { pid } => format!("exit {pid:?}"),
            Skip => "skip".into(),
            Unrecognized => "?".into(),
        };
        assert_eq!(c("5396  brk(NULL) = 0x1"), "call Some(5396) brk false");
        assert_eq!(c("[pid  5397] read(3, "), "call Some(5397) read false");
        assert_eq!(c("brk(NULL) = 0x1"), "call None brk false");
        assert_eq!(
            c("12:34:56.789012 brk(NULL) = 0x1 <0.000012>"),
            "call None brk false"
        );
        assert_eq!(
            c("1700000000.123456 brk(NULL) = 0x1"),
            "call None brk false"
        );
        assert_eq!(c("77 12:34:56 brk(NULL) = 0x1"), "call Some(77) brk false");
        assert_eq!(c("     0.000123 brk(NULL) = 0x1"), "call None brk false");
        assert_eq!(
            c("[00007f3c9b2d1e4b] brk(NULL) = 0x1"),
            "call None brk false"
        );
        assert_eq!(c("5 [ 12] brk(NULL) = 0x1"), "call Some(5) brk false");
        assert_eq!(
            c("5396  wait4(-1,  <unfinished ...>"),
            "call Some(5396) wait4 true"
        );
        assert_eq!(
            c("5396  <... wait4 resumed>[{...}], 0) = 1"),
            "resumed Some(5396) wait4"
        );
        assert_eq!(
            c("5396  ????( <unfinished ...>"),
            "call Some(5396) ???? true"
        );
        assert_eq!(
            c("7 restart_syscall(<... resuming interrupted read ...>) = 0"),
            "call Some(7) restart_syscall false"
        );
        assert_eq!(c("5396  --- SIGCHLD {si_signo=SIGCHLD} ---"), "skip");
        assert_eq!(c("5396  +++ exited with 0 +++"), "exit Some(5396)");
        assert_eq!(c("+++ killed by SIGKILL +++"), "exit None");
        assert_eq!(c("strace: Process 5397 attached"), "skip");
        assert_eq!(c(""), "skip");
        assert_eq!(c("5396"), "?");
        assert_eq!(c("5396  rea"), "?");
        assert_eq!(c("hello world"), "?");
        assert_eq!(c("6 6 63 6"), "?");
        assert_eq!(c("[pid 12"), "?");
        assert_eq!(c("<... resumed>"), "?");
    }

    #[test]
    fn fork_unfinished_resumed_signals_and_exits() {
        let input = "\
100   execve(\"/bin/sh\", [\"sh\"], 0x7ffc /* 3 vars */) = 0
100   brk(NULL)                         = 0x5600
100   clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>
101   set_robust_list(0x7f, 24 <unfinished ...>
100   <... clone resumed>)              = 101
101   <... set_robust_list resumed>)    = 0
101   execve(\"/bin/ls\", [\"ls\"], 0x5600 /* 3 vars */) = 0
100   wait4(-1,  <unfinished ...>
101   write(1, \"x\\n\", 2)              = 2
101   exit_group(0)                     = ?
101   +++ exited with 0 +++
100   <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 101
100   --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=101} ---
100   rt_sigreturn({mask=[]})           = 101
100   exit_group(0)                     = ?
100   +++ exited with 0 +++
";
        let t = read(input);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].id, "run.strace:100");
        assert_eq!(
            t[0].calls,
            [
                "execve",
                "brk",
                "clone",
                "wait4",
                "rt_sigreturn",
                "exit_group"
            ]
            .map(nr)
            .to_vec()
        );
        assert_eq!(t[1].id, "run.strace:101");
        assert_eq!(
            t[1].calls,
            ["set_robust_list", "execve", "write", "exit_group"]
                .map(nr)
                .to_vec()
        );
    }

    #[test]
    fn resumed_without_unfinished_counts_once() {
        let t = read("7  <... read resumed>\"x\", 1) = 1\n7  close(3) = 0\n");
        assert_eq!(t[0].calls, vec![nr("read"), nr("close")]);
    }

    #[test]
    fn tt_timestamps_and_durations() {
        let input = "\
5409  05:31:21.923367 execve(\"/usr/bin/sh\", [\"sh\"], 0x7ffe /* 39 vars */) = 0 <0.000252>
5409  05:31:21.923755 brk(NULL)         = 0x55dc <0.000037>
5410  05:31:21.923800 read(0,  <unfinished ...>
5409  05:31:21.923900 close(3)          = 0 <0.000010>
5410  05:31:21.924000 <... read resumed>\"\", 4096) = 0 <0.000200>
";
        let t = read(input);
        assert_eq!(t[0].calls, ["execve", "brk", "close"].map(nr).to_vec());
        assert_eq!(t[1].calls, vec![nr("read")]);
    }

    #[test]
    fn no_pid_form_is_one_trace() {
        let input = "\
1795757481.943867 execve(\"/usr/bin/true\", [\"true\"], 0x7ffd /* 39 vars */) = 0
1795757481.944624 brk(NULL)             = 0x55ab
1795757481.947317 exit_group(0)         = ?
1795757481.947466 +++ exited with 0 +++
";
        let t = read(input);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].id, "run.strace");
        assert_eq!(t[0].calls, ["execve", "brk", "exit_group"].map(nr).to_vec());
    }

    #[test]
    fn arch_and_unknown_names() {
        let t = read_with(
            "open(\"/x\", O_RDONLY) = 3\nsyscall_0x1b4(1) = 0\nfrob(1) = 0\n",
            Arch::I386,
        )
        .unwrap();
        assert_eq!(t[0].calls, vec![5, 0x1b4, synthetic_number("frob")]);
        let t = read("????( <unfinished ...>\n");
        assert_eq!(t[0].calls, vec![synthetic_number("????")]);
    }

    #[test]
    fn pid_reuse_after_exit_gets_new_trace() {
        let t = read("9 read(0) = 0\n9 +++ exited with 0 +++\n9 write(1) = 1\n");
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["run.strace:9", "run.strace:9#2"]);
    }

    #[test]
    fn truncated_last_line_is_ignored_but_garbage_is_not() {
        let t = read("9 read(0) = 0\n9 rea");
        assert_eq!(t[0].calls, vec![nr("read")]);
        let t = read("9 read(0) = 0\n9 write(1, \"abc");
        assert_eq!(t[0].calls, vec![nr("read"), nr("write")]);
        let e = read_with(
            "9 read(0) = 0\nthis is not strace\n9 read(0) = 0\n",
            Arch::X86_64,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(matches!(e.kind, TraceErrorKind::Parse(_)));
        assert!(
            e.to_string()
                .starts_with("run.strace:2: not a line of strace output: \"this is not strace\""),
            "{e}"
        );
    }

    #[test]
    fn per_trace_cap_names_the_line() {
        let opts = ReadOptions {
            max_trace_calls: 1,
            ..ReadOptions::default()
        };
        let mut c = TraceCollector::new();
        let e = read_from(
            "s",
            &b"1 read(0) = 0\n2 read(0) = 0\n1 read(0) = 0\n"[..],
            Format::Strace,
            &opts,
            &mut c,
        )
        .unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)));
        assert_eq!(e.line, Some(3));
    }
}
