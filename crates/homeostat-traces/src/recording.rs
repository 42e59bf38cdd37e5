//! homeostat's own recording format: compact binary captures of live system calls.
//!
//! Live capture sees every system call of every task on a host, so its format must be
//! cheap to write and small: each event is a tag byte and a few LEB128 varints (a typical
//! SYSCALL record is 8-10 bytes). Unlike strace output it also knows *which program*
//! each task runs (EXE/EXEC records with device, inode and path), which is what lets
//! homeostat keep one profile per program. The exact layout, with a worked example, is
//! in `docs/recording-format.md`; in short:
//!
//! ```text
//! "HMSTREC\0"  u16 LE version (1)  u32 LE header length  JSON header
//! then records: tag (u8), fields (unsigned LEB128)
//!   1 EXE      exe_id dev ino path_len path-bytes
//!   2 SYSCALL  pid tid exe_id syscall time_delta (zigzag, ns since the previous SYSCALL)
//!   3 EXEC     pid tid exe_id
//!   4 EXIT     pid tid
//! ```
//!
//! [`Writer`] produces it, [`Reader`] reads it back record by record, and
//! [`crate::read_file`] turns it into traces: one per task (pid, tid) and program run. A
//! task's trace starts at its first SYSCALL or at an EXEC, and ends at EXIT, at the next
//! EXEC (each exec starts a new trace), or at end of file. A SYSCALL whose exe_id differs
//! from the one the task's trace runs is treated like an EXEC that was not recorded: a
//! trace never mixes two programs.
//!
//! Readers reject versions they do not know; unknown JSON header keys are ignored, so
//! adding optional header keys does not need a new version.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use homeostat_core::symbols::{flags, Arg, Target};
use homeostat_syscalls::Arch;
use serde::{Deserialize, Serialize};

use crate::{check_trace_len, Namer, ReadOptions, TraceError, Visitor};

/// The 8 bytes every recording starts with.
pub const MAGIC: &[u8; 8] = b"HMSTREC\0";
/// The format version this crate writes and the only one it reads.
pub const VERSION: u16 = 2;
/// The first version, still read: version 2 added [`TAG_SYSCALL_ARG`].
pub const VERSION_1: u16 = 1;
/// Longest argument bytes (a path, a socket address) a SYSCALL_ARG record holds: PATH_MAX.
pub const MAX_ARG_BYTES: u64 = 4096;
/// Largest JSON header accepted (a real one is under 200 bytes).
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Longest executable path accepted in an EXE record (Linux's PATH_MAX is 4096).
pub const MAX_PATH_BYTES: u64 = 64 << 10;

/// Record tag: define an executable.
pub const TAG_EXE: u8 = 1;
/// Record tag: one system call.
pub const TAG_SYSCALL: u8 = 2;
/// Record tag: a task now runs another executable.
pub const TAG_EXEC: u8 = 3;
/// Record tag: a task exited.
pub const TAG_EXIT: u8 = 4;
/// Tag of a SYSCALL_ARG record (version 2): a SYSCALL with the argument that matters.
pub const TAG_SYSCALL_ARG: u8 = 5;

// Argument kinds of a SYSCALL_ARG record (docs/recording-format.md).
const ARG_PATH: u64 = 1;
const ARG_EXEC: u64 = 2;
const ARG_INET: u64 = 3;
const ARG_UNIX: u64 = 4;
const ARG_FAMILY: u64 = 5;
const ARG_TARGET: u64 = 6;
const ARG_PROT: u64 = 7;

/// The JSON header of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// ABI of the recorded system call numbers.
    pub arch: Arch,
    /// Host name of the recorded machine.
    pub host: String,
    /// When recording started, in nanoseconds since the Unix epoch. The first SYSCALL
    /// record's time delta is relative to it.
    pub start_time_ns: u64,
    /// Kernel release (`uname -r`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The program that wrote the file, e.g. `homeostat 0.1.0`.
    pub tool: String,
}

impl Header {
    /// A header written by this version of homeostat, without a kernel release.
    pub fn new(arch: Arch, host: impl Into<String>, start_time_ns: u64) -> Self {
        Header {
            arch,
            host: host.into(),
            start_time_ns,
            kernel: None,
            tool: tool_name(),
        }
    }
}

/// `homeostat <version>`, the `tool` this crate writes into headers.
pub fn tool_name() -> String {
    format!("homeostat {}", env!("CARGO_PKG_VERSION"))
}

/// One record, with times made absolute again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Defines `exe_id` as the executable at `path` (device `dev`, inode `ino`).
    Exe {
        exe_id: u64,
        dev: u64,
        ino: u64,
        path: Vec<u8>,
    },
    /// Task `tid` of process `pid`, running `exe_id`, made system call `syscall` at
    /// `time_ns` (nanoseconds since the Unix epoch).
    Syscall {
        pid: u32,
        tid: u32,
        exe_id: u64,
        syscall: u32,
        time_ns: u64,
    },
    /// A [`Record::Syscall`] with the argument that matters (version 2).
    SyscallArg {
        pid: u32,
        tid: u32,
        exe_id: u64,
        syscall: u32,
        time_ns: u64,
        arg: Arg,
    },
    /// The task now runs `exe_id` (it called execve).
    Exec { pid: u32, tid: u32, exe_id: u64 },
    /// The task exited.
    Exit { pid: u32, tid: u32 },
}

/// An executable defined by an EXE record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exe {
    /// Device number of the file.
    pub dev: u64,
    /// Inode number of the file.
    pub ino: u64,
    /// Path as the kernel reported it (bytes: Linux paths need not be UTF-8).
    pub path: Vec<u8>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, msg)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes a recording.
///
/// Each record is encoded into a small buffer and written with one `write_all`, so
/// wrap unbuffered sinks (files, sockets) in a `BufWriter`. The writer refuses to write
/// anything a reader would reject (undefined or redefined exe ids, over-long paths), so
/// its output always reads back.
pub struct Writer<W: Write> {
    w: W,
    buf: Vec<u8>,
    last_time_ns: u64,
    exes: HashSet<u64>,
}

impl<W: Write> Writer<W> {
    /// Writes the magic, version and header.
    pub fn new(mut w: W, header: &Header) -> io::Result<Self> {
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|&l| l <= MAX_HEADER_BYTES)
            .ok_or_else(|| invalid(format!("header longer than {MAX_HEADER_BYTES} bytes")))?;
        let mut buf = Vec::with_capacity(14 + json.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&json);
        w.write_all(&buf)?;
        buf.clear();
        Ok(Writer {
            w,
            buf,
            last_time_ns: header.start_time_ns,
            exes: HashSet::new(),
        })
    }

    /// Defines `exe_id` (each id once, before any record uses it).
    pub fn exe(&mut self, exe_id: u64, dev: u64, ino: u64, path: &[u8]) -> io::Result<()> {
        if self.exes.contains(&exe_id) {
            return Err(invalid(format!("exe_id {exe_id} defined twice")));
        }
        if path.len() as u64 > MAX_PATH_BYTES {
            return Err(invalid(format!(
                "exe path longer than {MAX_PATH_BYTES} bytes"
            )));
        }
        self.buf.clear();
        self.buf.push(TAG_EXE);
        for v in [exe_id, dev, ino, path.len() as u64] {
            put_varint(&mut self.buf, v);
        }
        self.buf.extend_from_slice(path);
        self.flush_record()?;
        self.exes.insert(exe_id);
        Ok(())
    }

    /// Records system call `nr` by task (`pid`, `tid`) running `exe_id` at `time_ns`
    /// (nanoseconds since the Unix epoch). Times may go backwards a little (per-CPU
    /// buffers deliver events slightly out of order); the delta is signed.
    pub fn syscall(
        &mut self,
        pid: u32,
        tid: u32,
        exe_id: u64,
        nr: u32,
        time_ns: u64,
    ) -> io::Result<()> {
        self.syscall_fields(TAG_SYSCALL, pid, tid, exe_id, nr, time_ns)?;
        self.flush_record()?;
        self.last_time_ns = time_ns;
        Ok(())
    }

    /// [`Writer::syscall`] with the call's argument (a SYSCALL_ARG record).
    pub fn syscall_arg(
        &mut self,
        pid: u32,
        tid: u32,
        exe_id: u64,
        nr: u32,
        time_ns: u64,
        arg: &Arg,
    ) -> io::Result<()> {
        self.syscall_fields(TAG_SYSCALL_ARG, pid, tid, exe_id, nr, time_ns)?;
        let bytes = |buf: &mut Vec<u8>, b: &[u8]| -> io::Result<()> {
            if b.len() as u64 > MAX_ARG_BYTES {
                return Err(invalid(format!(
                    "argument longer than {MAX_ARG_BYTES} bytes"
                )));
            }
            put_varint(buf, b.len() as u64);
            buf.extend_from_slice(b);
            Ok(())
        };
        let b = &mut self.buf;
        match arg {
            Arg::Path { path, flags } => {
                put_varint(b, ARG_PATH);
                put_varint(b, u64::from(*flags));
                bytes(b, path)?;
            }
            Arg::Exec { path } => {
                put_varint(b, ARG_EXEC);
                bytes(b, path)?;
            }
            Arg::Inet { addr, port } => {
                if addr.len() != 4 && addr.len() != 16 {
                    return Err(invalid(format!("address of {} bytes", addr.len())));
                }
                put_varint(b, ARG_INET);
                bytes(b, addr)?;
                put_varint(b, u64::from(*port));
            }
            Arg::Unix { path } => {
                put_varint(b, ARG_UNIX);
                bytes(b, path)?;
            }
            Arg::Family(f) => {
                put_varint(b, ARG_FAMILY);
                put_varint(b, u64::from(*f));
            }
            Arg::Target(t) => {
                put_varint(b, ARG_TARGET);
                put_varint(b, u64::from(t.code()));
            }
            Arg::Prot { exec } => {
                put_varint(b, ARG_PROT);
                put_varint(b, u64::from(*exec));
            }
        }
        self.flush_record()?;
        self.last_time_ns = time_ns;
        Ok(())
    }

    fn syscall_fields(
        &mut self,
        tag: u8,
        pid: u32,
        tid: u32,
        exe_id: u64,
        nr: u32,
        time_ns: u64,
    ) -> io::Result<()> {
        self.check_exe(exe_id)?;
        let delta = i64::try_from(i128::from(time_ns) - i128::from(self.last_time_ns))
            .map_err(|_| invalid(format!("time {time_ns} too far from the previous record")))?;
        self.buf.clear();
        self.buf.push(tag);
        for v in [
            u64::from(pid),
            u64::from(tid),
            exe_id,
            u64::from(nr),
            zigzag(delta),
        ] {
            put_varint(&mut self.buf, v);
        }
        Ok(())
    }

    /// Records that task (`pid`, `tid`) now runs `exe_id`.
    pub fn exec(&mut self, pid: u32, tid: u32, exe_id: u64) -> io::Result<()> {
        self.check_exe(exe_id)?;
        self.buf.clear();
        self.buf.push(TAG_EXEC);
        for v in [u64::from(pid), u64::from(tid), exe_id] {
            put_varint(&mut self.buf, v);
        }
        self.flush_record()
    }

    /// Records that task (`pid`, `tid`) exited.
    pub fn exit(&mut self, pid: u32, tid: u32) -> io::Result<()> {
        self.buf.clear();
        self.buf.push(TAG_EXIT);
        put_varint(&mut self.buf, u64::from(pid));
        put_varint(&mut self.buf, u64::from(tid));
        self.flush_record()
    }

    /// Writes any [`Record`] (what [`Reader::next_record`] returns).
    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        match r {
            Record::Exe {
                exe_id,
                dev,
                ino,
                path,
            } => self.exe(*exe_id, *dev, *ino, path),
            Record::Syscall {
                pid,
                tid,
                exe_id,
                syscall,
                time_ns,
            } => self.syscall(*pid, *tid, *exe_id, *syscall, *time_ns),
            Record::SyscallArg {
                pid,
                tid,
                exe_id,
                syscall,
                time_ns,
                arg,
            } => self.syscall_arg(*pid, *tid, *exe_id, *syscall, *time_ns, arg),
            Record::Exec { pid, tid, exe_id } => self.exec(*pid, *tid, *exe_id),
            Record::Exit { pid, tid } => self.exit(*pid, *tid),
        }
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }

    fn check_exe(&self, exe_id: u64) -> io::Result<()> {
        if self.exes.contains(&exe_id) {
            Ok(())
        } else {
            Err(invalid(format!(
                "exe_id {exe_id} used before its EXE record"
            )))
        }
    }

    fn flush_record(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)
    }
}

/// Reads a recording record by record, checking everything a trace reader relies on.
pub struct Reader<R: BufRead> {
    r: R,
    path: PathBuf,
    /// Bytes consumed so far: the offset of the next byte.
    offset: u64,
    /// Offset of the record being decoded, for messages.
    record_start: u64,
    header: Header,
    last_time_ns: u64,
    exes: HashMap<u64, Exe>,
    version: u16,
}

impl Reader<BufReader<File>> {
    /// Opens a recording file and reads its header.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let f = File::open(path).map_err(|e| TraceError::io(path, e))?;
        Reader::new(path, BufReader::with_capacity(64 << 10, f))
    }
}

impl<R: BufRead> Reader<R> {
    /// Reads the magic, version and header from `r`. `path` names the input in errors.
    pub fn new(path: &Path, mut r: R) -> Result<Self, TraceError> {
        let err = |msg: String| TraceError::parse(path, None, msg);
        let mut fixed = [0u8; 14];
        let got = read_full(&mut r, &mut fixed).map_err(|e| TraceError::io(path, e))?;
        if got < MAGIC.len() || &fixed[..8] != MAGIC {
            return Err(err(
                "bad magic: not a homeostat recording (expected \"HMSTREC\\0\")".into(),
            ));
        }
        if got < fixed.len() {
            return Err(err(format!(
                "truncated file header (file ends at byte offset {got})"
            )));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION && version != VERSION_1 {
            return Err(err(format!(
                "recording format version {version} is not supported (this reader knows versions {VERSION_1} and {VERSION})"
            )));
        }
        let len = u32::from_le_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]);
        if len > MAX_HEADER_BYTES {
            return Err(TraceError::too_large(
                path,
                None,
                format!("header length {len} exceeds the limit of {MAX_HEADER_BYTES} bytes"),
            ));
        }
        let mut json = vec![0u8; len as usize];
        let got = read_full(&mut r, &mut json).map_err(|e| TraceError::io(path, e))?;
        if got < json.len() {
            return Err(err(format!(
                "truncated header: {len} bytes announced, file ends at byte offset {}",
                14 + got
            )));
        }
        let header: Header = serde_json::from_slice(&json).map_err(|e| {
            err(format!(
                "header (byte offset 14) is not a valid JSON header object: {e}"
            ))
        })?;
        Ok(Reader {
            r,
            path: path.to_path_buf(),
            offset: 14 + u64::from(len),
            record_start: 14 + u64::from(len),
            last_time_ns: header.start_time_ns,
            header,
            exes: HashMap::new(),
            version,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The executable `exe_id` as defined so far.
    pub fn exe(&self, exe_id: u64) -> Option<&Exe> {
        self.exes.get(&exe_id)
    }

    /// Byte offset of the next record (for messages about records).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, or `None` at a clean end of file (a record boundary).
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        self.record_start = self.offset;
        let Some(tag) = self.byte()? else {
            return Ok(None);
        };
        let rec = match tag {
            TAG_EXE => {
                let exe_id = self.varint("EXE")?;
                let dev = self.varint("EXE")?;
                let ino = self.varint("EXE")?;
                let len = self.varint("EXE")?;
                if len > MAX_PATH_BYTES {
                    return Err(TraceError::too_large(
                        &self.path,
                        None,
                        format!(
                            "record at byte offset {}: EXE path length {len} exceeds the limit of {MAX_PATH_BYTES} bytes",
                            self.record_start
                        ),
                    ));
                }
                let mut path = vec![0u8; len as usize];
                let got =
                    read_full(&mut self.r, &mut path).map_err(|e| TraceError::io(&self.path, e))?;
                self.offset += got as u64;
                if got < path.len() {
                    return Err(self.truncated("EXE"));
                }
                if self.exes.contains_key(&exe_id) {
                    return Err(self.bad(format!("EXE redefines exe_id {exe_id}")));
                }
                self.exes.insert(
                    exe_id,
                    Exe {
                        dev,
                        ino,
                        path: path.clone(),
                    },
                );
                Record::Exe {
                    exe_id,
                    dev,
                    ino,
                    path,
                }
            }
            TAG_SYSCALL => {
                let (pid, tid, exe_id, syscall, time_ns) = self.syscall_fields("SYSCALL")?;
                Record::Syscall {
                    pid,
                    tid,
                    exe_id,
                    syscall,
                    time_ns,
                }
            }
            TAG_SYSCALL_ARG if self.version >= VERSION => {
                let (pid, tid, exe_id, syscall, time_ns) = self.syscall_fields("SYSCALL_ARG")?;
                let arg = self.arg()?;
                Record::SyscallArg {
                    pid,
                    tid,
                    exe_id,
                    syscall,
                    time_ns,
                    arg,
                }
            }
            TAG_EXEC => {
                let pid = self.varint_u32("EXEC", "pid")?;
                let tid = self.varint_u32("EXEC", "tid")?;
                let exe_id = self.varint("EXEC")?;
                self.check_exe(exe_id)?;
                Record::Exec { pid, tid, exe_id }
            }
            TAG_EXIT => {
                let pid = self.varint_u32("EXIT", "pid")?;
                let tid = self.varint_u32("EXIT", "tid")?;
                Record::Exit { pid, tid }
            }
            other => {
                return Err(self.bad(format!(
                    "unknown record tag {other} in a version {} recording (known: 1 EXE, 2 SYSCALL, 3 EXEC, 4 EXIT{})",
                    self.version,
                    if self.version >= VERSION { ", 5 SYSCALL_ARG" } else { "" }
                )))
            }
        };
        Ok(Some(rec))
    }

    fn syscall_fields(&mut self, what: &str) -> Result<(u32, u32, u64, u32, u64), TraceError> {
        let pid = self.varint_u32(what, "pid")?;
        let tid = self.varint_u32(what, "tid")?;
        let exe_id = self.varint(what)?;
        let syscall = self.varint_u32(what, "system call number")?;
        let delta = unzigzag(self.varint(what)?);
        self.check_exe(exe_id)?;
        let time = i128::from(self.last_time_ns) + i128::from(delta);
        let time_ns = u64::try_from(time)
            .map_err(|_| self.bad(format!("{what} time delta {delta} leaves the u64 range")))?;
        self.last_time_ns = time_ns;
        Ok((pid, tid, exe_id, syscall, time_ns))
    }

    fn arg_bytes(&mut self) -> Result<Vec<u8>, TraceError> {
        const W: &str = "SYSCALL_ARG";
        let len = self.varint(W)?;
        if len > MAX_ARG_BYTES {
            return Err(TraceError::too_large(
                &self.path,
                None,
                format!(
                    "record at byte offset {}: argument length {len} exceeds the limit of {MAX_ARG_BYTES} bytes",
                    self.record_start
                ),
            ));
        }
        let mut b = vec![0u8; len as usize];
        let got = read_full(&mut self.r, &mut b).map_err(|e| TraceError::io(&self.path, e))?;
        self.offset += got as u64;
        if got < b.len() {
            return Err(self.truncated(W));
        }
        Ok(b)
    }

    fn arg(&mut self) -> Result<Arg, TraceError> {
        const W: &str = "SYSCALL_ARG";
        let kind = self.varint(W)?;
        Ok(match kind {
            ARG_PATH => {
                let flags = self.varint(W)?;
                let flags = u8::try_from(flags)
                    .ok()
                    .filter(|f| f & !(flags::CREATE | flags::WRITE) == 0)
                    .ok_or_else(|| self.bad(format!("SYSCALL_ARG path flags {flags} unknown")))?;
                let path = self.arg_bytes()?;
                Arg::Path { path, flags }
            }
            ARG_EXEC => Arg::Exec {
                path: self.arg_bytes()?,
            },
            ARG_INET => {
                let addr = self.arg_bytes()?;
                if addr.len() != 4 && addr.len() != 16 {
                    return Err(self.bad(format!(
                        "SYSCALL_ARG address of {} bytes (expected 4 or 16)",
                        addr.len()
                    )));
                }
                let port = self.varint(W)?;
                let port = u16::try_from(port)
                    .map_err(|_| self.bad(format!("SYSCALL_ARG port {port} over 16 bits")))?;
                Arg::Inet { addr, port }
            }
            ARG_UNIX => Arg::Unix {
                path: self.arg_bytes()?,
            },
            ARG_FAMILY => {
                let f = self.varint(W)?;
                Arg::Family(
                    u16::try_from(f)
                        .map_err(|_| self.bad(format!("SYSCALL_ARG family {f} over 16 bits")))?,
                )
            }
            ARG_TARGET => {
                let c = self.varint(W)?;
                Arg::Target(
                    Target::from_code(c)
                        .ok_or_else(|| self.bad(format!("SYSCALL_ARG target {c} unknown")))?,
                )
            }
            ARG_PROT => match self.varint(W)? {
                0 => Arg::Prot { exec: false },
                1 => Arg::Prot { exec: true },
                p => return Err(self.bad(format!("SYSCALL_ARG prot {p} is not 0 or 1"))),
            },
            k => return Err(self.bad(format!("SYSCALL_ARG argument kind {k} unknown"))),
        })
    }

    fn bad(&self, msg: String) -> TraceError {
        TraceError::parse(
            &self.path,
            None,
            format!("record at byte offset {}: {msg}", self.record_start),
        )
    }

    fn truncated(&self, what: &str) -> TraceError {
        self.bad(format!(
            "truncated {what} record (file ends at byte offset {})",
            self.offset
        ))
    }

    fn check_exe(&self, exe_id: u64) -> Result<(), TraceError> {
        if self.exes.contains_key(&exe_id) {
            Ok(())
        } else {
            Err(self.bad(format!(
                "exe_id {exe_id} was never defined by an EXE record"
            )))
        }
    }

    fn byte(&mut self) -> Result<Option<u8>, TraceError> {
        loop {
            match self.r.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(buf) => {
                    let b = buf[0];
                    self.r.consume(1);
                    self.offset += 1;
                    return Ok(Some(b));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(TraceError::io(&self.path, e)),
            }
        }
    }

    /// An unsigned LEB128 value of at most 64 bits (at most 10 bytes).
    fn varint(&mut self, what: &str) -> Result<u64, TraceError> {
        let start = self.offset;
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let Some(b) = self.byte()? else {
                return Err(self.truncated(what));
            };
            if shift == 63 && b > 1 {
                return Err(self.bad(format!(
                    "{what} varint at byte offset {start} overflows 64 bits"
                )));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn varint_u32(&mut self, what: &str, field: &str) -> Result<u32, TraceError> {
        let v = self.varint(what)?;
        u32::try_from(v)
            .map_err(|_| self.bad(format!("{what} {field} {v} does not fit in 32 bits")))
    }
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Task {
    key: u64,
    name: String,
    exe_id: u64,
    count: u64,
}

/// The trace reader behind [`crate::read_file`] for [`crate::Format::Recording`].
pub(crate) fn read(
    path: &Path,
    file: &str,
    r: impl BufRead,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    let mut reader = Reader::new(path, r)?;
    let mut tasks: HashMap<(u32, u32), Task> = HashMap::new();
    let mut namer = Namer::default();
    let mut start = |v: &mut dyn Visitor, reader: &Reader<_>, pid: u32, tid: u32, exe_id: u64| {
        let base = if pid == tid {
            format!("{file}:{pid}")
        } else {
            format!("{file}:{pid}/{tid}")
        };
        let (key, name) = namer.next(base);
        v.begin(key, &name);
        if let Some(exe) = reader.exe(exe_id) {
            v.program(key, &String::from_utf8_lossy(&exe.path));
        }
        Task {
            key,
            name,
            exe_id,
            count: 0,
        }
    };
    while let Some(rec) = reader.next_record()? {
        match &rec {
            Record::Exe { .. } => {}
            Record::Syscall {
                pid,
                tid,
                exe_id,
                syscall,
                ..
            }
            | Record::SyscallArg {
                pid,
                tid,
                exe_id,
                syscall,
                ..
            } => {
                let (pid, tid, exe_id, syscall) = (*pid, *tid, *exe_id, *syscall);
                if tasks.len() >= crate::MAX_OPEN_TRACES && !tasks.contains_key(&(pid, tid)) {
                    crate::check_open_traces(tasks.len(), path, None)?;
                }
                let t = match tasks.entry((pid, tid)) {
                    Entry::Occupied(o) if o.get().exe_id == exe_id => o.into_mut(),
                    // A different program without an EXEC: never mix programs in a trace.
                    Entry::Occupied(mut o) => {
                        v.end(o.get().key);
                        *o.get_mut() = start(v, &reader, pid, tid, exe_id);
                        o.into_mut()
                    }
                    Entry::Vacant(slot) => slot.insert(start(v, &reader, pid, tid, exe_id)),
                };
                if t.count >= opts.max_trace_calls {
                    let at = format!("{} (record at byte offset {})", t.name, reader.record_start);
                    check_trace_len(t.count, opts, path, None, &at)?;
                }
                t.count += 1;
                match &rec {
                    Record::SyscallArg { arg, .. } => v.call_arg(t.key, syscall, arg),
                    _ => v.call(t.key, syscall),
                }
            }
            &Record::Exec { pid, tid, exe_id } => {
                if let Some(t) = tasks.remove(&(pid, tid)) {
                    v.end(t.key);
                }
                crate::check_open_traces(tasks.len(), path, None)?;
                let t = start(v, &reader, pid, tid, exe_id);
                tasks.insert((pid, tid), t);
            }
            &Record::Exit { pid, tid } => {
                if let Some(t) = tasks.remove(&(pid, tid)) {
                    v.end(t.key);
                }
            }
        }
    }
    crate::end_remaining(tasks.into_values().map(|t| t.key), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_from, Format, Trace, TraceCollector, TraceErrorKind};

    fn header() -> Header {
        Header {
            arch: Arch::X86_64,
            host: "box".into(),
            start_time_ns: 1_700_000_000_000_000_000,
            kernel: Some("6.1.0".into()),
            tool: tool_name(),
        }
    }

    fn traces(bytes: &[u8]) -> Result<Vec<Trace>, TraceError> {
        let mut c = TraceCollector::new();
        read_from(
            "cap.hrec",
            bytes,
            Format::Recording,
            &ReadOptions::default(),
            &mut c,
        )?;
        Ok(c.into_traces())
    }

    fn sample() -> Vec<u8> {
        let t0 = header().start_time_ns;
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 2049, 1234, b"/usr/bin/sh").unwrap();
        w.exe(2, 2049, 5678, b"/usr/bin/ls").unwrap();
        w.syscall(100, 100, 1, 59, t0 + 10).unwrap();
        w.syscall(100, 101, 1, 202, t0 + 5).unwrap(); // time goes backwards
        w.syscall(100, 100, 1, 56, t0 + 20).unwrap();
        w.syscall(200, 200, 1, 0, t0 + 30).unwrap();
        w.exec(200, 200, 2).unwrap();
        w.syscall(200, 200, 2, 12, t0 + 40).unwrap();
        w.exit(100, 101).unwrap();
        w.syscall(200, 200, 2, 231, t0 + 50).unwrap();
        w.exec(200, 200, 2).unwrap();
        w.exit(200, 200).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn traces_per_task_and_exec() {
        let t = traces(&sample()).unwrap();
        let got: Vec<(&str, &[u32])> = t.iter().map(|t| (t.id.as_str(), &t.calls[..])).collect();
        assert_eq!(
            got,
            vec![
                ("cap.hrec:100", &[59, 56][..]),
                ("cap.hrec:100/101", &[202][..]),
                ("cap.hrec:200", &[0][..]),
                ("cap.hrec:200#2", &[12, 231][..]),
                ("cap.hrec:200#3", &[][..]),
            ]
        );
    }

    #[test]
    fn program_paths_reach_the_visitor() {
        struct Programs(Vec<(u64, String)>);
        impl Visitor for Programs {
            fn begin(&mut self, _: u64, _: &str) {}
            fn call(&mut self, _: u64, _: u32) {}
            fn end(&mut self, _: u64) {}
            fn program(&mut self, key: u64, path: &str) {
                self.0.push((key, path.to_string()));
            }
        }
        let mut p = Programs(Vec::new());
        read_from(
            "r",
            &sample()[..],
            Format::Recording,
            &ReadOptions::default(),
            &mut p,
        )
        .unwrap();
        let paths: Vec<&str> = p.0.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/sh",
                "/usr/bin/sh",
                "/usr/bin/sh",
                "/usr/bin/ls",
                "/usr/bin/ls"
            ]
        );
    }

    #[test]
    fn records_round_trip_with_absolute_times() {
        let bytes = sample();
        let mut r = Reader::new(Path::new("x"), &bytes[..]).unwrap();
        assert_eq!(r.header(), &header());
        let mut recs = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            recs.push(rec);
        }
        assert_eq!(recs.len(), 12);
        assert_eq!(
            recs[3],
            Record::Syscall {
                pid: 100,
                tid: 101,
                exe_id: 1,
                syscall: 202,
                time_ns: header().start_time_ns + 5
            }
        );
        // Re-encoding the decoded records gives the same bytes.
        let mut w = Writer::new(Vec::new(), r.header()).unwrap();
        for rec in &recs {
            w.record(rec).unwrap();
        }
        assert_eq!(w.finish().unwrap(), bytes);
    }

    #[test]
    fn exact_bytes_of_a_small_file() {
        // The example walked through in docs/recording-format.md.
        let h = Header {
            arch: Arch::X86_64,
            host: "h".into(),
            start_time_ns: 1000,
            kernel: None,
            tool: "homeostat 0.1.0".into(),
        };
        let mut w = Writer::new(Vec::new(), &h).unwrap();
        w.exe(1, 2049, 300, b"/bin/ls").unwrap();
        w.syscall(4242, 4242, 1, 257, 1150).unwrap();
        w.syscall(4242, 4242, 1, 0, 1140).unwrap();
        w.syscall_arg(
            4242,
            4242,
            1,
            257,
            1140,
            &Arg::Path {
                path: b"/etc".to_vec(),
                flags: flags::CREATE,
            },
        )
        .unwrap();
        w.exec(4242, 4242, 1).unwrap();
        w.exit(4242, 4242).unwrap();
        let bytes = w.finish().unwrap();
        let json = br#"{"arch":"x86_64","host":"h","start_time_ns":1000,"tool":"homeostat 0.1.0"}"#;
        let mut want = b"HMSTREC\0\x02\x00".to_vec();
        want.extend_from_slice(&(json.len() as u32).to_le_bytes());
        want.extend_from_slice(json);
        want.extend_from_slice(&[0x01, 0x01, 0x81, 0x10, 0xac, 0x02, 0x07]);
        want.extend_from_slice(b"/bin/ls");
        want.extend_from_slice(&[0x02, 0x92, 0x21, 0x92, 0x21, 0x01, 0x81, 0x02, 0xac, 0x02]);
        want.extend_from_slice(&[0x02, 0x92, 0x21, 0x92, 0x21, 0x01, 0x00, 0x13]);
        want.extend_from_slice(&[0x05, 0x92, 0x21, 0x92, 0x21, 0x01, 0x81, 0x02, 0x00]);
        want.extend_from_slice(&[0x01, 0x01, 0x04]);
        want.extend_from_slice(b"/etc");
        want.extend_from_slice(&[0x03, 0x92, 0x21, 0x92, 0x21, 0x01]);
        want.extend_from_slice(&[0x04, 0x92, 0x21, 0x92, 0x21]);
        assert_eq!(json.len(), 74);
        assert_eq!(bytes, want);
    }

    #[test]
    fn version_1_still_reads_and_never_holds_arguments() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 0, 0, b"/x").unwrap();
        w.syscall(1, 1, 1, 0, 5).unwrap();
        let mut v1 = w.finish().unwrap();
        v1[8] = 1;
        let read = traces(&v1).unwrap();
        assert_eq!(read[0].calls, vec![0]);
        // A SYSCALL_ARG record in a version 1 file is an unknown tag, not a guess.
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 0, 0, b"/x").unwrap();
        w.syscall_arg(1, 1, 1, 62, 5, &Arg::Target(Target::Other))
            .unwrap();
        let mut bad = w.finish().unwrap();
        bad[8] = 1;
        let e = traces(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown record tag 5 in a version 1"), "{e}");
    }

    #[test]
    fn every_argument_kind_round_trips() {
        let args = [
            Arg::Path {
                path: b"/srv/a".to_vec(),
                flags: flags::WRITE,
            },
            Arg::Exec {
                path: b"/bin/sh".to_vec(),
            },
            Arg::Inet {
                addr: vec![127, 0, 0, 1],
                port: 8080,
            },
            Arg::Inet {
                addr: vec![0; 16],
                port: 1,
            },
            Arg::Unix {
                path: b"@x".to_vec(),
            },
            Arg::Family(16),
            Arg::Target(Target::SelfProcess),
            Arg::Prot { exec: true },
        ];
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 0, 0, b"/x").unwrap();
        for (i, a) in args.iter().enumerate() {
            w.syscall_arg(7, 7, 1, i as u32, 10, a).unwrap();
        }
        assert!(w
            .syscall_arg(
                7,
                7,
                1,
                0,
                10,
                &Arg::Inet {
                    addr: vec![1],
                    port: 1
                }
            )
            .is_err());
        assert!(w
            .syscall_arg(
                7,
                7,
                1,
                0,
                10,
                &Arg::Exec {
                    path: vec![b'a'; 5000]
                }
            )
            .is_err());
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(Path::new("a"), &bytes[..]).unwrap();
        let mut got = vec![];
        while let Some(rec) = r.next_record().unwrap() {
            if let Record::SyscallArg { arg, .. } = rec {
                got.push(arg);
            }
        }
        assert_eq!(got, args);
        // Every cut is an error, never a panic.
        for cut in 14..bytes.len() {
            let mut r = match Reader::new(Path::new("a"), &bytes[..cut]) {
                Ok(r) => r,
                Err(_) => continue,
            };
            while let Ok(Some(_)) = r.next_record() {}
        }
    }

    #[test]
    fn writer_refuses_invalid_records() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        assert!(w.syscall(1, 1, 9, 0, 0).is_err());
        assert!(w.exec(1, 1, 9).is_err());
        w.exe(9, 0, 0, b"/x").unwrap();
        assert!(w.exe(9, 0, 0, b"/y").is_err());
        assert!(w.syscall(1, 1, 9, 0, u64::MAX).is_err());
    }

    fn err_of(bytes: &[u8]) -> TraceError {
        match traces(bytes) {
            Ok(t) => panic!("expected an error, got {t:?}"),
            Err(e) => e,
        }
    }

    fn with_records(records: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 0, 0, b"/bin/x").unwrap();
        let mut bytes = w.finish().unwrap();
        bytes.extend_from_slice(records);
        bytes
    }

    #[test]
    fn header_errors() {
        let good = sample();
        let e = err_of(b"HMSTREX\0\x01\x00\0\0\0\0");
        assert!(e.to_string().starts_with("cap.hrec: bad magic"), "{e}");
        let e = err_of(b"HMS");
        assert!(e.to_string().contains("bad magic"), "{e}");
        let mut v2 = good.clone();
        v2[8] = 3;
        let e = err_of(&v2);
        assert!(e.to_string().contains("version 3 is not supported"), "{e}");
        let e = err_of(&good[..12]);
        assert!(e.to_string().contains("truncated file header"), "{e}");
        let e = err_of(&good[..30]);
        assert!(e.to_string().contains("truncated header"), "{e}");
        let mut bad_json = b"HMSTREC\0\x01\x00\x05\0\0\0".to_vec();
        bad_json.extend_from_slice(b"{nope");
        let e = err_of(&bad_json);
        assert!(e.to_string().contains("not a valid JSON header"), "{e}");
        let mut huge = b"HMSTREC\0\x01\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = err_of(&huge);
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)), "{e}");
    }

    #[test]
    fn record_errors_give_offsets() {
        let base = with_records(&[]).len();
        let e = err_of(&with_records(&[9]));
        assert_eq!(
            e.to_string(),
            format!(
                "cap.hrec: record at byte offset {base}: unknown record tag 9 in a version 2 recording (known: 1 EXE, 2 SYSCALL, 3 EXEC, 4 EXIT, 5 SYSCALL_ARG)"
            )
        );
        let e = err_of(&with_records(&[TAG_SYSCALL, 1, 1]));
        assert!(
            e.to_string().contains(&format!(
                "record at byte offset {base}: truncated SYSCALL record"
            )),
            "{e}"
        );
        let e = err_of(&with_records(&[TAG_SYSCALL, 1, 1, 7, 0, 0]));
        assert!(e.to_string().contains("exe_id 7 was never defined"), "{e}");
        let e = err_of(&with_records(&[TAG_EXEC, 1, 1, 7]));
        assert!(e.to_string().contains("exe_id 7 was never defined"), "{e}");
        let mut over = vec![TAG_EXIT];
        over.extend_from_slice(&[0xff; 10]);
        over.push(0);
        let e = err_of(&with_records(&over));
        assert!(e.to_string().contains("overflows 64 bits"), "{e}");
        let e = err_of(&with_records(&[TAG_EXIT, 0x80, 0x80, 0x80, 0x80, 0x10, 1]));
        assert!(
            e.to_string()
                .contains("pid 4294967296 does not fit in 32 bits"),
            "{e}"
        );
        let e = err_of(&with_records(&[TAG_EXE, 1, 0, 0, 0]));
        assert!(e.to_string().contains("EXE redefines exe_id 1"), "{e}");
        let e = err_of(&with_records(&[TAG_EXE, 2, 0, 0, 5, b'/']));
        assert!(e.to_string().contains("truncated EXE record"), "{e}");
        let e = err_of(&with_records(&[TAG_EXE, 2, 0, 0, 0xff, 0xff, 0xff, 0x7f]));
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)), "{e}");
        // A negative delta below zero time.
        let mut neg = vec![TAG_SYSCALL, 1, 1, 1, 0];
        put_varint(&mut neg, zigzag(i64::MIN));
        neg.extend_from_slice(&[TAG_SYSCALL, 1, 1, 1, 0]);
        put_varint(&mut neg, zigzag(i64::MIN));
        let e = err_of(&with_records(&neg));
        assert!(e.to_string().contains("leaves the u64 range"), "{e}");
    }

    #[test]
    fn per_trace_cap() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.exe(1, 0, 0, b"/x").unwrap();
        for _ in 0..3 {
            w.syscall(5, 5, 1, 0, header().start_time_ns).unwrap();
        }
        let bytes = w.finish().unwrap();
        let opts = ReadOptions {
            max_trace_calls: 2,
            ..ReadOptions::default()
        };
        let mut c = TraceCollector::new();
        let e = read_from("r", &bytes[..], Format::Recording, &opts, &mut c).unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("r:5 (record at byte offset"), "{e}");
    }

    #[test]
    fn zigzag_round_trip() {
        for v in [0, 1, -1, 2, -2, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }
}
