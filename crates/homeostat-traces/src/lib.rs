//! Readers (and one writer) for the system call trace formats homeostat learns from.
//!
//! homeostat builds a per-program model of normal system call sequences (stide,
//! lookahead pairs), so everything it trains or scans on is, at bottom, a list of traces:
//! one process's (or one program run's) system call numbers in order. This crate turns
//! the formats those traces come in into that shape:
//!
//! * [`Format::Adfa`] — ADFA-LD, one trace per file of whitespace-separated numbers
//!   ([`adfa`] also loads the whole dataset layout quickly);
//! * [`Format::Unm`] — the UNM datasets (Forrest et al.), `pid syscall` lines with several
//!   processes interleaved;
//! * [`Format::Strace`] — `strace [-f] [-tt|-ttt|-r] [-T] -o FILE` output;
//! * [`Format::Recording`] — homeostat's own compact binary capture format
//!   ([`recording`] has both the writer and the reader; `docs/recording-format.md`
//!   specifies it).
//!
//! Readers stream: they push each call into a [`Visitor`] as soon as it is parsed, so a
//! scan scores call by call and its memory is bounded by the number of traces live at
//! once, never by the file size. Every input limit (line length, file size, calls per
//! trace) turns into a [`TraceErrorKind::TooLarge`] error rather than unbounded memory,
//! and malformed input of any kind gives a [`TraceError`], never a panic (the `fuzz/`
//! targets check that).
//!
//! [`read_traces`] is the convenience for training: it collects every trace into memory.
#![forbid(unsafe_code)]

pub mod adfa;
mod error;
mod lines;
pub mod recording;
pub mod strace;
mod strace_args;
mod unm;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::{TraceError, TraceErrorKind};
pub use homeostat_syscalls::Arch;
pub use lines::MAX_LINE_BYTES;

/// How many bytes [`read_file`] looks at to detect the format.
pub const DETECT_BYTES: usize = 4096;

/// Largest file the ADFA reader accepts. ADFA-LD's largest trace is about 20 KiB; a
/// one-trace-per-file format has no business being hundreds of MiB, and refusing early
/// beats filling memory with one bogus trace.
pub const MAX_ADFA_FILE_BYTES: u64 = 256 << 20;

/// Most traces one file may hold open at once. UNM, strace and recording files
/// interleave processes, and a trace stays open until its process's exit event, which
/// UNM files do not have: every pid stays open to the end of the file. The reader's
/// and its visitor's memory (a scan or a training holds state per open trace) grow
/// with the open traces, so a file with more open at once is refused with this reason
/// instead of growing without bound (20 M pids took 16.9 GB to scan). Real datasets
/// are far below it (the UNM files have hundreds of processes).
pub const MAX_OPEN_TRACES: usize = 65_536;

/// A trace file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// ADFA-LD: one trace per file, whitespace-separated decimal system call numbers.
    Adfa,
    /// UNM: `pid syscall` lines, several processes interleaved in one file.
    Unm,
    /// Text output of `strace -o FILE`, with or without `-f` and timestamps.
    Strace,
    /// homeostat's binary recording format (see [`recording`]).
    Recording,
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 4] = [Format::Adfa, Format::Unm, Format::Strace, Format::Recording];

    /// The name used on the command line (`--format adfa`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Adfa => "adfa",
            Format::Unm => "unm",
            Format::Strace => "strace",
            Format::Recording => "recording",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that [`Format::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown trace format {0:?} (expected adfa, unm, strace or recording)")]
pub struct UnknownFormatName(pub String);

impl FromStr for Format {
    type Err = UnknownFormatName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormatName(s.to_string()))
    }
}

/// How to read trace files.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// The format, or `None` to detect it from each file's first bytes.
    pub format: Option<Format>,
    /// The ABI used to turn strace's call names into numbers. Recordings carry their own
    /// arch in the header; ADFA and UNM files already hold numbers.
    pub arch: Arch,
    /// Most calls one trace may have; one more is a `TooLarge` error. Bounds the memory
    /// of [`read_traces`] on corrupt or hostile input.
    pub max_trace_calls: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: None,
            arch: Arch::X86_64,
            max_trace_calls: 1 << 28,
        }
    }
}

/// Streaming consumer of traces: readers push calls as they parse, so a scan can score
/// call by call with memory bounded by the number of live traces, not file size.
///
/// For each trace a reader calls `begin` once, then `call` for each system call, then
/// `end` once. Calls of different traces may interleave (UNM, strace and recordings
/// interleave processes). After a successful read every begun trace has been ended; if a
/// read fails, traces still open are simply abandoned (no `end`).
pub trait Visitor {
    /// A trace starts. `key` is unique within one read call; `name` is the trace id shown to users.
    fn begin(&mut self, key: u64, name: &str);
    /// The trace `key` made system call `syscall`.
    fn call(&mut self, key: u64, syscall: u32);
    /// The trace `key` made system call `syscall`, and the reader knows the argument
    /// that matters ([`homeostat_core::symbols`]: recordings with SYSCALL_ARG records,
    /// strace lines). Visitors of plain call numbers need not care: by default the
    /// argument is dropped.
    fn call_arg(&mut self, key: u64, syscall: u32, arg: &homeostat_core::symbols::Arg) {
        let _ = arg;
        self.call(key, syscall);
    }
    /// The trace `key` is complete.
    fn end(&mut self, key: u64);
    /// The program the trace `key` runs, when the format knows it (recordings do; this
    /// is called right after `begin`). `path` is the executable path, lossily UTF-8.
    fn program(&mut self, key: u64, path: &str) {
        let _ = (key, path);
    }
}

/// Feeds `inner` symbols instead of call numbers: plain calls as they are, calls with
/// an argument as their (call, argument class) symbol
/// ([`homeostat_core::symbols::Symbolizer`]). Training, scanning and evaluating on the
/// argument-aware alphabet is reading through this adapter; the models never know.
pub struct Symbolize<'a> {
    /// Who gets the symbols.
    pub inner: &'a mut dyn Visitor,
    /// Learning (training) or applying (testing) a symbol table, or plain calls.
    pub symbols: &'a mut homeostat_core::symbols::Symbolizer,
}

impl Visitor for Symbolize<'_> {
    fn begin(&mut self, key: u64, name: &str) {
        self.inner.begin(key, name);
    }
    fn call(&mut self, key: u64, syscall: u32) {
        let s = self.symbols.symbol(syscall, None);
        self.inner.call(key, s);
    }
    fn call_arg(&mut self, key: u64, syscall: u32, arg: &homeostat_core::symbols::Arg) {
        let s = self.symbols.symbol(syscall, Some(arg));
        self.inner.call(key, s);
    }
    fn end(&mut self, key: u64) {
        self.inner.end(key);
    }
    fn program(&mut self, key: u64, path: &str) {
        self.inner.program(key, path);
    }
}

/// Ends the traces still open at the end of a file, in the order they began (keys grow
/// in order of `begin`), so output does not depend on hash-map order.
pub(crate) fn end_remaining(keys: impl IntoIterator<Item = u64>, v: &mut dyn Visitor) {
    let mut rest: Vec<u64> = keys.into_iter().collect();
    rest.sort_unstable();
    for key in rest {
        v.end(key);
    }
}

/// One trace: its user-visible id and its system call numbers in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The trace name (see [`read_file`] for how each format names traces).
    pub id: String,
    /// System call numbers, in call order.
    pub calls: Vec<u32>,
}

/// Detect the format of a file from its first bytes (pass up to [`DETECT_BYTES`]).
///
/// Recordings are recognised by their magic. Text is classified by its complete lines
/// (a cut-off last line is ignored when there is an earlier newline). A first line
/// shaped like strace output (optional pid and timestamp, then `name(`, `--- `, `+++ `
/// or `<... `) means strace. A first line of decimal numbers means UNM if the leading
/// run of numeric lines all hold exactly two numbers and at least one line ends in a
/// newline, ADFA otherwise. Anything else, including empty input, is `None`.
pub fn detect_format(head: &[u8]) -> Option<Format> {
    if head.starts_with(recording::MAGIC) {
        return Some(Format::Recording);
    }
    let last_nl = head.iter().rposition(|&b| b == b'\n');
    let text = match last_nl {
        Some(pos) => &head[..pos],
        None => head,
    };
    let saw_newline = last_nl.is_some();
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .peekable();
    let first = *lines.peek()?;
    if strace::looks_like_strace_line(first) {
        return Some(Format::Strace);
    }
    // Numeric formats: decided by the leading all-numeric lines, so that a bad line
    // further down gets the reader's precise `file:line` error, not "unknown format".
    let numeric = |line: &[u8]| lines::tokens(line).all(|t| t.iter().all(u8::is_ascii_digit));
    if !numeric(first) {
        return None;
    }
    let all_pairs = lines
        .take_while(|l| numeric(l))
        .all(|l| lines::tokens(l).count() == 2);
    if all_pairs && saw_newline {
        Some(Format::Unm)
    } else {
        Some(Format::Adfa)
    }
}

/// Read one file (streaming, BufReader) and feed the visitor.
///
/// Trace names: ADFA -> the file name (e.g. `UTD-0001.txt`); UNM and strace ->
/// `<file name>:<pid>` (`<file name>` alone for strace output without pids); recording
/// -> `<file name>:<pid>` when tid == pid, else `<file name>:<pid>/<tid>`. When a name
/// would repeat (a recorded task execs a new program, or strace/UNM reuse a pid after it
/// exited) `#2`, `#3`, ... is appended.
///
/// With `opts.format == None` the format is detected from the first [`DETECT_BYTES`];
/// a file that is empty or only whitespace has no traces, and undetectable content is a
/// [`TraceErrorKind::UnknownFormat`] error.
pub fn read_file(path: &Path, opts: &ReadOptions, v: &mut dyn Visitor) -> Result<(), TraceError> {
    let mut file = File::open(path).map_err(|e| TraceError::io(path, e))?;
    let meta = file.metadata().map_err(|e| TraceError::io(path, e))?;
    if meta.is_dir() {
        return Err(TraceError::parse(
            path,
            None,
            "is a directory (expand it with expand_inputs or use read_traces)",
        ));
    }
    let mut head = Vec::with_capacity(DETECT_BYTES);
    (&mut file)
        .take(DETECT_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| TraceError::io(path, e))?;
    let format = match opts.format {
        Some(f) => f,
        None => match detect_format(&head) {
            Some(f) => f,
            None if head.len() < DETECT_BYTES && head.iter().all(u8::is_ascii_whitespace) => {
                return Ok(());
            }
            None => return Err(TraceError::new(path, None, TraceErrorKind::UnknownFormat)),
        },
    };
    if format == Format::Adfa && meta.len() > MAX_ADFA_FILE_BYTES {
        return Err(adfa::too_large_error(path));
    }
    let name = file_name(path);
    let reader = BufReader::with_capacity(64 << 10, Cursor::new(head).chain(file));
    read_impl(path, &name, reader, format, opts, v)
}

/// Same as [`read_file`], from any reader (used by fuzz targets and tests); `name` is
/// used as the file name in trace names and errors.
pub fn read_from(
    name: &str,
    r: impl BufRead,
    format: Format,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    read_impl(Path::new(name), name, r, format, opts, v)
}

fn read_impl(
    path: &Path,
    name: &str,
    r: impl BufRead,
    format: Format,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    match format {
        Format::Adfa => adfa::read(path, name, r, opts, v),
        Format::Unm => unm::read(path, name, r, opts, v),
        Format::Strace => strace::read(path, name, r, opts, v),
        Format::Recording => recording::read(path, name, r, opts, v),
    }
}

/// The file-name part of `path`, for trace names.
fn file_name(path: &Path) -> String {
    match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => path.to_string_lossy().into_owned(),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Expand files and directories (recursively, sorted by path, hidden files skipped) into files.
///
/// Paths named explicitly are kept in the order given, even hidden ones; each directory
/// is replaced by the regular files under it, sorted by path. Hidden entries (name
/// starting with `.`) inside directories are skipped, including hidden directories.
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, TraceError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = fs::metadata(p).map_err(|e| TraceError::io(p, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk_dir(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TraceError> {
    let entries = fs::read_dir(dir).map_err(|e| TraceError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TraceError::io(dir, e))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // Follow symlinks, as a user pointing at a directory of links would expect.
        let meta = fs::metadata(&path).map_err(|e| TraceError::io(&path, e))?;
        if meta.is_dir() {
            walk_dir(&path, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// A [`Visitor`] that keeps every trace in memory, in order of first appearance.
///
/// Keys only need to be unique among traces open at the same time, so one collector can
/// be fed from several read calls in a row.
#[derive(Debug, Default)]
pub struct TraceCollector {
    traces: Vec<Trace>,
    open: HashMap<u64, usize>,
}

impl TraceCollector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The traces collected so far.
    pub fn traces(&self) -> &[Trace] {
        &self.traces
    }

    /// The collected traces.
    pub fn into_traces(self) -> Vec<Trace> {
        self.traces
    }
}

impl Visitor for TraceCollector {
    fn begin(&mut self, key: u64, name: &str) {
        self.open.insert(key, self.traces.len());
        self.traces.push(Trace {
            id: name.to_string(),
            calls: Vec::new(),
        });
    }

    fn call(&mut self, key: u64, syscall: u32) {
        if let Some(&i) = self.open.get(&key) {
            if let Some(t) = self.traces.get_mut(i) {
                t.calls.push(syscall);
            }
        }
    }

    fn end(&mut self, key: u64) {
        self.open.remove(&key);
    }
}

/// Collect every trace of a path (file or directory) in file order, and within a file in
/// order of first appearance.
///
/// Directories are expanded with [`expand_inputs`]. Each trace is limited to
/// `opts.max_trace_calls` calls (the readers enforce it as they go).
pub fn read_traces(path: &Path, opts: &ReadOptions) -> Result<Vec<Trace>, TraceError> {
    let mut collector = TraceCollector::new();
    for file in expand_inputs(&[path.to_path_buf()])? {
        read_file(&file, opts, &mut collector)?;
    }
    Ok(collector.into_traces())
}

/// The per-trace call limit check every reader runs before emitting a call.
pub(crate) fn check_trace_len(
    count: u64,
    opts: &ReadOptions,
    path: &Path,
    line: Option<u64>,
    trace: &dyn fmt::Display,
) -> Result<(), TraceError> {
    if count >= opts.max_trace_calls {
        return Err(TraceError::too_large(
            path,
            line,
            format!(
                "trace {trace} has more than {} calls (max_trace_calls)",
                opts.max_trace_calls
            ),
        ));
    }
    Ok(())
}

/// Refuses a new trace when [`MAX_OPEN_TRACES`] are open already.
pub(crate) fn check_open_traces(
    open: usize,
    path: &Path,
    line: Option<u64>,
) -> Result<(), TraceError> {
    if open >= MAX_OPEN_TRACES {
        return Err(TraceError::too_large(
            path,
            line,
            format!(
                "more than {MAX_OPEN_TRACES} traces open at once (MAX_OPEN_TRACES): \
                 each process stays open until its exit event, and UNM files have none; \
                 split the file by process"
            ),
        ));
    }
    Ok(())
}

/// Hands out trace keys and unique names within one read call.
///
/// Names repeat when a pid is reused or a task execs again; the `#2`, `#3` suffix keeps
/// them distinct, so users can tell the traces apart in reports.
#[derive(Default)]
pub(crate) struct Namer {
    next_key: u64,
    seen: HashMap<String, u32>,
}

impl Namer {
    /// A fresh key and the unique version of `base`.
    pub fn next(&mut self, base: String) -> (u64, String) {
        let key = self.next_key;
        self.next_key += 1;
        let n = self.seen.entry(base.clone()).or_insert(0);
        *n += 1;
        let name = if *n == 1 { base } else { format!("{base}#{n}") };
        (key, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!("STRACE".parse::<Format>().unwrap(), Format::Strace);
        assert!("csv".parse::<Format>().is_err());
    }

    #[test]
    fn detection() {
        assert_eq!(detect_format(b"6 6 63 6 42 120"), Some(Format::Adfa));
        assert_eq!(detect_format(b"6 6 63\n6 42 120\n"), Some(Format::Adfa));
        assert_eq!(detect_format(b"12 3\n12 5\n13 4\n"), Some(Format::Unm));
        // A UNM head cut in the middle of a line still counts as UNM.
        assert_eq!(detect_format(b"12 3\n12 5\n13"), Some(Format::Unm));
        assert_eq!(
            detect_format(b"5396  execve(\"/usr/bin/sh\", [\"sh\"]) = 0\n"),
            Some(Format::Strace)
        );
        assert_eq!(
            detect_format(b"1795757481.943867 execve(\"/usr/bin/true\") = 0\n"),
            Some(Format::Strace)
        );
        assert_eq!(detect_format(b"HMSTREC\0\x01\x00"), Some(Format::Recording));
        assert_eq!(detect_format(b""), None);
        assert_eq!(detect_format(b"  \n\n"), None);
        assert_eq!(detect_format(b"hello world\n"), None);
        assert_eq!(detect_format(b"\x00\x01\x02"), None);
        // A bad line after numeric ones is left to the reader to report.
        assert_eq!(detect_format(b"1 2\n1 2\n1 two\n"), Some(Format::Unm));
        assert_eq!(detect_format(b"1 2 3\nfoo\n"), Some(Format::Adfa));
    }

    #[test]
    fn namer_suffixes_repeats() {
        let mut n = Namer::default();
        assert_eq!(n.next("f:1".into()), (0, "f:1".to_string()));
        assert_eq!(n.next("f:2".into()), (1, "f:2".to_string()));
        assert_eq!(n.next("f:1".into()), (2, "f:1#2".to_string()));
        assert_eq!(n.next("f:1".into()), (3, "f:1#3".to_string()));
    }
}
