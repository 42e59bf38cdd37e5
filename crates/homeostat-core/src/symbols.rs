//! Argument-aware symbols: a call's symbol becomes (call, argument class).
//!
//! A sequence model over bare call numbers cannot tell `openat("/srv/notes/a")` from
//! `openat("/etc/shadow")`: a webshell that runs the program's usual calls on another
//! file looks normal. This module turns the one argument that matters for the calls
//! that matter (see [`arg_spec`]) into a small *class* (a path's directory prefix, an
//! exec's exact path, an address's scope and port, a signal's target, PROT_EXEC) and
//! the pair (call, class) into one symbol number, learned per profile by a
//! [`SymbolTable`]. Symbol numbers are ordinary `u32` calls to every model, so stide,
//! pairs, Markov, kNN and the rest run on the enriched alphabet unchanged.
//!
//! Why classes and not raw arguments: raw paths and ports are unbounded and mostly
//! unique (temporary names, ephemeral ports), which would make every trace foreign.
//! Directory prefixes up to a small depth keep what tells a program's normal files
//! from the rest, and a cap on distinct classes bounds the alphabet: classes past it
//! share one `other` class per call (counted in [`SymbolTable::overflowed`]).
//!
//! Enriched symbols are numbered from [`ENRICHED_BASE`] (2048): above every x86_64
//! call number, and below 4096 so dense-id lookups stay direct and kNN's 12-bit n-gram
//! keys keep them apart. Calls without a captured argument keep their plain number.
//!
//! Pure: the capture front ends (launcher, strace and recording readers) read the
//! arguments; this module only classifies what they read.
//!
//! One copy elsewhere: the eBPF daemon decides a class inside the call, so
//! `crates/homeostat-ebpf/src/bpf/args.bpf.h` repeats these class rules in C (it
//! hashes the class-making bytes; the daemon names classes with [`class_of`]). A change
//! here must be made there too; `crates/homeostat/tests/daemon_args.rs` checks that the
//! daemon and `train --symbols args` give the same (call, class) sets on real programs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// First enriched symbol number.
pub const ENRICHED_BASE: u32 = 2048;
/// Largest `max_classes` a table accepts (plus at most one `other` per call, the
/// enriched numbers stay below 4096).
pub const MAX_CLASSES_LIMIT: u32 = 1536;
/// Symbol given to an argument class training never saw (and that no overflow covers):
/// never in a trained alphabet, so every model treats it as a foreign call.
pub const UNSEEN: u32 = 4095;
/// Longest class key kept; longer prefixes are cut (bounds memory on hostile paths).
pub const MAX_CLASS_BYTES: usize = 256;
/// Class of the overflow bucket of a call.
pub const OTHER: &str = "other";
/// Most `other` classes a table holds: one per call with a classified argument
/// ([`arg_spec`] names a few dozen), with room to spare. With `max_classes` at most
/// [`MAX_CLASSES_LIMIT`], a table then always has room for a class below [`UNSEEN`],
/// so training never gives a call the foreign symbol.
pub const MAX_OTHERS: usize = 256;

/// Which alphabet a profile's models were trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SymbolMode {
    /// Plain system call numbers.
    #[default]
    Calls,
    /// (call, argument class) symbols.
    Args,
}

impl SymbolMode {
    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolMode::Calls => "calls",
            SymbolMode::Args => "args",
        }
    }
}

impl fmt::Display for SymbolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SymbolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "calls" => Ok(SymbolMode::Calls),
            "args" => Ok(SymbolMode::Args),
            _ => Err(format!("unknown symbols {s:?} (expected calls or args)")),
        }
    }
}

/// Open flags that change what an open means (bits of [`Arg::Path`]'s `flags`).
pub mod flags {
    /// O_CREAT (or creat()).
    pub const CREATE: u8 = 1;
    /// O_WRONLY or O_RDWR.
    pub const WRITE: u8 = 2;
    /// Linux x86 O_WRONLY.
    pub const O_WRONLY: u64 = 0o1;
    /// Linux x86 O_RDWR.
    pub const O_RDWR: u64 = 0o2;
    /// Linux x86 O_CREAT.
    pub const O_CREAT: u64 = 0o100;
    /// PROT_EXEC.
    pub const PROT_EXEC: u64 = 4;

    /// The [`CREATE`]/[`WRITE`] bits of an open(2) flags word.
    pub fn of_open(o: u64) -> u8 {
        let mut f = 0;
        if o & O_CREAT != 0 {
            f |= CREATE;
        }
        if o & (O_WRONLY | O_RDWR) != 0 {
            f |= WRITE;
        }
        f
    }
}

/// The target of kill / tkill / tgkill / ptrace, relative to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// The caller's own process.
    SelfProcess,
    /// pid 0: the caller's process group.
    OwnGroup,
    /// pid -1: every process it may signal.
    All,
    /// pid < -1: another process group.
    Group,
    /// Another process.
    Other,
}

impl Target {
    /// Classifies a kill(2)-style pid argument made by process `caller`.
    pub fn of_pid(pid: i64, caller: i64) -> Target {
        match pid {
            0 => Target::OwnGroup,
            -1 => Target::All,
            p if p < -1 => Target::Group,
            p if p == caller => Target::SelfProcess,
            _ => Target::Other,
        }
    }

    /// Stable code for the recording format.
    pub fn code(self) -> u8 {
        match self {
            Target::SelfProcess => 0,
            Target::OwnGroup => 1,
            Target::All => 2,
            Target::Group => 3,
            Target::Other => 4,
        }
    }

    /// Inverse of [`Target::code`].
    pub fn from_code(c: u64) -> Option<Target> {
        Some(match c {
            0 => Target::SelfProcess,
            1 => Target::OwnGroup,
            2 => Target::All,
            3 => Target::Group,
            4 => Target::Other,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Target::SelfProcess => "self",
            Target::OwnGroup => "own-group",
            Target::All => "all",
            Target::Group => "group",
            Target::Other => "other-process",
        }
    }
}

/// What capture read of the argument that matters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arg {
    /// A file path (absolute when capture could resolve it against the cwd or dirfd),
    /// with [`flags`] bits.
    Path {
        /// The path bytes (Linux paths need not be UTF-8).
        path: Vec<u8>,
        /// [`flags::CREATE`], [`flags::WRITE`].
        flags: u8,
    },
    /// The program an execve runs.
    Exec {
        /// Its path.
        path: Vec<u8>,
    },
    /// An IPv4 or IPv6 socket address.
    Inet {
        /// The address: 4 bytes (IPv4) or 16 (IPv6).
        addr: Vec<u8>,
        /// The port.
        port: u16,
    },
    /// A Unix socket path (`@name` for the abstract namespace).
    Unix {
        /// The path.
        path: Vec<u8>,
    },
    /// A socket address of another family.
    Family(u16),
    /// A signal's or ptrace's target.
    Target(Target),
    /// mmap / mprotect protection: does it ask for PROT_EXEC.
    Prot {
        /// PROT_EXEC requested.
        exec: bool,
    },
}

/// Where a call's interesting argument sits (register indexes), for the capture side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgSpec {
    /// A path, maybe relative to a directory fd, maybe with open flags.
    Path {
        /// Register of the dirfd (`*at` calls).
        dirfd: Option<usize>,
        /// Register of the path pointer.
        path: usize,
        /// Register of the open flags.
        flags: Option<usize>,
        /// creat(): implies O_CREAT|O_WRONLY.
        creat: bool,
    },
    /// The program path of execve / execveat.
    Exec {
        /// Register of the dirfd (execveat).
        dirfd: Option<usize>,
        /// Register of the path pointer.
        path: usize,
    },
    /// A socket address and its length.
    Sockaddr {
        /// Register of the pointer.
        addr: usize,
        /// Register of the length.
        len: usize,
    },
    /// A process id (kill, tkill, tgkill).
    Pid {
        /// Register of the pid.
        pid: usize,
    },
    /// ptrace(request, pid, ...): PTRACE_TRACEME targets the parent.
    Ptrace,
    /// A protection word (mmap, mprotect).
    Prot {
        /// Register of the prot argument.
        prot: usize,
    },
}

/// The argument that matters for a call, by its (x86_64 and i386 share the names)
/// system call name; `None` for calls whose arguments are not classified.
pub fn arg_spec(name: &str) -> Option<ArgSpec> {
    let path = |dirfd, path, flags, creat| {
        Some(ArgSpec::Path {
            dirfd,
            path,
            flags,
            creat,
        })
    };
    match name {
        "execve" => Some(ArgSpec::Exec {
            dirfd: None,
            path: 0,
        }),
        "execveat" => Some(ArgSpec::Exec {
            dirfd: Some(0),
            path: 1,
        }),
        "open" => path(None, 0, Some(1), false),
        "openat" => path(Some(0), 1, Some(2), false),
        // openat2's flags live in a struct; the path is what matters most.
        "openat2" => path(Some(0), 1, None, false),
        "creat" => path(None, 0, None, true),
        "unlink" | "rmdir" | "chmod" | "rename" | "truncate" => path(None, 0, None, false),
        "unlinkat" | "fchmodat" | "fchmodat2" | "renameat" | "renameat2" => {
            path(Some(0), 1, None, false)
        }
        "connect" | "bind" => Some(ArgSpec::Sockaddr { addr: 1, len: 2 }),
        "sendto" => Some(ArgSpec::Sockaddr { addr: 4, len: 5 }),
        "kill" | "tkill" | "tgkill" => Some(ArgSpec::Pid { pid: 0 }),
        "ptrace" => Some(ArgSpec::Ptrace),
        "mmap" | "mmap2" | "mprotect" | "pkey_mprotect" => Some(ArgSpec::Prot { prot: 2 }),
        _ => None,
    }
}

/// The socket call an i386 `socketcall(call, args)` makes, by its first argument
/// (`SYS_CONNECT` is 3, ...), and how many 32-bit words its arguments take in the
/// array its second argument points to: a 32-bit program (or a 64-bit one through
/// `int 0x80`) reaches every socket call this way, so the throttle must see through
/// it.
pub fn socketcall(call: u64) -> Option<(&'static str, usize)> {
    Some(match call {
        1 => ("socket", 3),
        2 => ("bind", 3),
        3 => ("connect", 3),
        4 => ("listen", 2),
        5 => ("accept", 3),
        6 => ("getsockname", 3),
        7 => ("getpeername", 3),
        8 => ("socketpair", 4),
        9 => ("send", 4),
        10 => ("recv", 4),
        11 => ("sendto", 6),
        12 => ("recvfrom", 6),
        13 => ("shutdown", 2),
        14 => ("setsockopt", 5),
        15 => ("getsockopt", 5),
        16 => ("sendmsg", 3),
        17 => ("recvmsg", 3),
        18 => ("accept4", 4),
        19 => ("recvmmsg", 5),
        20 => ("sendmmsg", 4),
        _ => return None,
    })
}

/// `MSG_FASTOPEN` in a `sendto`'s or `sendmsg`'s flags (Linux, either ABI).
pub const MSG_FASTOPEN: u64 = 0x2000_0000;

/// Whether call `name` opens a connection, which the connection throttle looks at:
/// `connect`, and a `sendto` or `sendmsg` with [`MSG_FASTOPEN`] in `flags` (the
/// argument [`connection_flags`] names; `None`: not known, read as without): TCP Fast
/// Open sends the SYN with the data, with no `connect`. The address is the one
/// [`arg_spec`] names, or for `sendmsg` its `msghdr`'s `msg_name`.
pub fn opens_connection(name: &str, flags: Option<u64>) -> bool {
    match name {
        "connect" => true,
        "sendto" | "sendmsg" => flags.is_some_and(|f| f & MSG_FASTOPEN != 0),
        _ => false,
    }
}

/// Whether a connection call `name` keeps its address in the `msghdr` its second
/// argument points to (`msg_name`, `msg_namelen`) rather than where [`arg_spec`] says:
/// `sendmsg`.
pub fn address_in_msghdr(name: &str) -> bool {
    name == "sendmsg"
}

/// Which argument of call `name` holds the flags [`opens_connection`] reads.
pub fn connection_flags(name: &str) -> Option<usize> {
    match name {
        "sendto" => Some(3),
        "sendmsg" => Some(2),
        _ => None,
    }
}

/// Whether call `name` drives io_uring, whose operations (a connect, an openat, a
/// send) the kernel runs from a shared ring with no system call that seccomp, ptrace
/// or a sys_enter hook sees. A limit that counts calls (the connection throttle, the
/// rate limits) cannot hold what it never sees, so a launcher enforcing one refuses
/// these calls, all three so that a ring received from another process is no way
/// around either: programs fall back to plain calls, as they do under container
/// runtimes that refuse io_uring. (A ring another process made with SQPOLL and
/// passed over would need no call at all: beyond what a call monitor can hold.)
pub fn hides_later_calls(name: &str) -> bool {
    matches!(
        name,
        "io_uring_setup" | "io_uring_enter" | "io_uring_register"
    )
}

/// Decodes a `struct sockaddr` (as bytes read from the caller) into an [`Arg`];
/// `None` when too short to hold its family.
pub fn sockaddr(bytes: &[u8]) -> Option<Arg> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    const AF_UNIX: u16 = 1;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    match family {
        AF_INET if bytes.len() >= 8 => Some(Arg::Inet {
            port: u16::from_be_bytes([bytes[2], bytes[3]]),
            addr: bytes[4..8].to_vec(),
        }),
        AF_INET6 if bytes.len() >= 24 => Some(Arg::Inet {
            port: u16::from_be_bytes([bytes[2], bytes[3]]),
            addr: bytes[8..24].to_vec(),
        }),
        AF_UNIX => {
            let p = &bytes[2..];
            let path = if p.first() == Some(&0) {
                // Abstract namespace: the name is every byte after the NUL.
                let mut v = b"@".to_vec();
                v.extend(&p[1..]);
                v
            } else {
                p[..p.iter().position(|&b| b == 0).unwrap_or(p.len())].to_vec()
            };
            Some(Arg::Unix { path })
        }
        f => Some(Arg::Family(f)),
    }
}

/// Joins a relative `path` to the directory `base` (the cwd or a dirfd's path) and
/// drops `.` and `..` components lexically. Absolute paths are returned normalised.
pub fn resolve(base: &[u8], path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let joined: Vec<&[u8]> = if path.first() == Some(&b'/') {
        path.split(|&b| b == b'/').collect()
    } else {
        base.split(|&b| b == b'/')
            .chain(path.split(|&b| b == b'/'))
            .collect()
    };
    for c in joined {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len() + base.len() + 1);
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The directory prefix of `path` up to `depth` directories: `/srv/www/notes/a.txt`
/// at depth 2 is `/srv/www/`; the last component (the file itself) never counts, so
/// `/etc/passwd` is `/etc/`. A relative path (capture could not resolve it) keeps its
/// leading `./`-less prefix marked `rel:`.
pub fn path_prefix(path: &[u8], depth: usize) -> String {
    let absolute = path.first() == Some(&b'/');
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let dirs = comps.len().saturating_sub(1).min(depth);
    let mut s = String::from(if absolute { "/" } else { "rel:" });
    for c in &comps[..dirs] {
        s.push_str(&String::from_utf8_lossy(c));
        s.push('/');
    }
    s
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_CLASS_BYTES {
        let mut cut = MAX_CLASS_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn ip_scope(addr: &[u8]) -> &'static str {
    match addr.len() {
        4 => match (addr[0], addr[1]) {
            (127, _) => "loopback",
            (10, _) | (192, 168) | (169, 254) => "local",
            (172, b) if (16..32).contains(&b) => "local",
            (0, _) => "any",
            _ => "remote",
        },
        16 => {
            let v4mapped =
                addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff;
            if v4mapped {
                return ip_scope(&addr[12..]);
            }
            if addr[..15].iter().all(|&b| b == 0) {
                return if addr[15] == 1 { "loopback" } else { "any" };
            }
            match addr[0] {
                0xfc | 0xfd => "local",
                0xfe if addr[1] & 0xc0 == 0x80 => "local",
                _ => "remote",
            }
        }
        _ => "unknown",
    }
}

/// Classification settings, stored with the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolConfig {
    /// Directories of a path's prefix that make its class.
    pub path_depth: u8,
    /// Most distinct classes learned; later ones share their call's `other` class.
    pub max_classes: u32,
}

impl Default for SymbolConfig {
    fn default() -> Self {
        SymbolConfig {
            path_depth: 2,
            max_classes: 256,
        }
    }
}

/// The class of an argument (as a short, printable key).
pub fn class_of(arg: &Arg, cfg: &SymbolConfig) -> String {
    let s = match arg {
        Arg::Path { path, flags } => {
            let mut s = path_prefix(path, usize::from(cfg.path_depth));
            if flags & flags::CREATE != 0 {
                s.push_str(" +create");
            }
            if flags & flags::WRITE != 0 {
                s.push_str(" +write");
            }
            s
        }
        Arg::Exec { path } => format!("exec {}", String::from_utf8_lossy(path)),
        Arg::Inet { addr, port } => {
            let fam = if addr.len() == 16 { "inet6" } else { "inet" };
            format!("{fam} {}:{port}", ip_scope(addr))
        }
        Arg::Unix { path } => {
            if path.first() == Some(&b'@') {
                format!("unix {}", String::from_utf8_lossy(path))
            } else {
                format!("unix {}", path_prefix(path, usize::from(cfg.path_depth)))
            }
        }
        Arg::Family(f) => format!("family {f}"),
        Arg::Target(t) => format!("target {}", t.name()),
        Arg::Prot { exec } => if *exec { "prot exec" } else { "prot noexec" }.to_string(),
    };
    truncate(s)
}

/// Why a stored table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("symbol table is corrupt: {0}")]
pub struct TableError(String);

/// The learned (call, class) -> symbol mapping of one profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolTable {
    config: SymbolConfig,
    /// (call, class) in order of first appearance; symbol = [`ENRICHED_BASE`] + index.
    classes: Vec<(u32, String)>,
    /// Calls in training that went to an `other` class because the table was full.
    overflowed: u64,
    #[serde(skip)]
    index: HashMap<(u32, String), u32>,
}

impl SymbolTable {
    /// An empty table.
    pub fn new(config: SymbolConfig) -> Result<Self, TableError> {
        if config.max_classes == 0 || config.max_classes > MAX_CLASSES_LIMIT {
            return Err(TableError(format!(
                "max_classes {} is outside 1..={MAX_CLASSES_LIMIT}",
                config.max_classes
            )));
        }
        if config.path_depth == 0 || config.path_depth > 16 {
            return Err(TableError(format!(
                "path_depth {} is outside 1..=16",
                config.path_depth
            )));
        }
        Ok(SymbolTable {
            config,
            ..Default::default()
        })
    }

    /// The settings.
    pub fn config(&self) -> SymbolConfig {
        self.config
    }

    /// Training calls that overflowed into `other` classes.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// The learned classes, in symbol order.
    pub fn classes(&self) -> &[(u32, String)] {
        &self.classes
    }

    /// A symbol's (call, class), for display; `None` for plain calls and [`UNSEEN`].
    pub fn describe(&self, symbol: u32) -> Option<(u32, &str)> {
        let i = symbol.checked_sub(ENRICHED_BASE)? as usize;
        self.classes.get(i).map(|(c, s)| (*c, s.as_str()))
    }

    /// The call a symbol of this table's alphabet stands for: an enriched symbol's
    /// learned call; any number outside the enriched range ([`ENRICHED_BASE`] to
    /// [`UNSEEN`]) is a plain call and stands for itself, including the monitor's
    /// i386 calls (offset above 4096); `None` for [`UNSEEN`] and for enriched numbers
    /// the table does not hold. The one fold from symbols back to calls (the daemon's
    /// pairs, seccomp allow-lists).
    pub fn call_of(&self, symbol: u32) -> Option<u32> {
        if !(ENRICHED_BASE..=UNSEEN).contains(&symbol) {
            return Some(symbol);
        }
        self.describe(symbol).map(|(c, _)| c)
    }

    fn others(&self) -> usize {
        self.classes.iter().filter(|(_, c)| c == OTHER).count()
    }

    fn insert(&mut self, call: u32, class: String) -> u32 {
        let sym = ENRICHED_BASE + self.classes.len() as u32;
        self.index.insert((call, class.clone()), sym);
        self.classes.push((call, class));
        sym
    }

    /// The symbol of a training call, learning its class (or, past the cap, counting
    /// it into the call's `other` class).
    pub fn learn(&mut self, call: u32, arg: Option<&Arg>) -> u32 {
        // Only calls numbered below the enriched range get classes, so that every
        // number folds back to one call ([`SymbolTable::call_of`]).
        let Some(arg) = arg.filter(|_| call < ENRICHED_BASE) else {
            return call;
        };
        let class = class_of(arg, &self.config);
        if let Some(&s) = self.index.get(&(call, class.clone())) {
            return s;
        }
        let learned = self.classes.len() - self.others();
        if learned < self.config.max_classes as usize {
            return self.insert(call, class);
        }
        self.overflowed += 1;
        let key = (call, OTHER.to_string());
        match self.index.get(&key) {
            Some(&s) => s,
            // One `other` per call: bounded by the calls that have arguments (a few
            // dozen), so the enriched numbers stay below UNSEEN.
            None if self.classes.len() < (UNSEEN - ENRICHED_BASE) as usize => {
                self.insert(call, OTHER.to_string())
            }
            None => UNSEEN,
        }
    }

    /// The symbol of a call under test: its class's symbol, the call's `other` class
    /// when training overflowed for it, else [`UNSEEN`].
    pub fn symbol(&self, call: u32, arg: Option<&Arg>) -> u32 {
        let Some(arg) = arg.filter(|_| call < ENRICHED_BASE) else {
            return call;
        };
        let class = class_of(arg, &self.config);
        if let Some(&s) = self.index.get(&(call, class)) {
            return s;
        }
        self.index
            .get(&(call, OTHER.to_string()))
            .copied()
            .unwrap_or(UNSEEN)
    }

    /// Rebuilds the lookup index after decoding, checking what a hostile file could
    /// break: settings, sizes, duplicates.
    pub fn validated(mut self) -> Result<Self, TableError> {
        let fresh = SymbolTable::new(self.config)?;
        if self.classes.len() > (UNSEEN - ENRICHED_BASE) as usize {
            return Err(TableError(format!("{} classes", self.classes.len())));
        }
        // A hostile file could otherwise fill the enriched range with `other` classes
        // (or learned ones past the cap) and leave training no number but UNSEEN.
        let others = self.others();
        if others > MAX_OTHERS || self.classes.len() - others > self.config.max_classes as usize {
            return Err(TableError(format!(
                "{} classes and {others} overflow classes for a cap of {}",
                self.classes.len() - others,
                self.config.max_classes
            )));
        }
        self.index = fresh.index;
        for (i, (call, class)) in self.classes.iter().enumerate() {
            if class.len() > MAX_CLASS_BYTES {
                return Err(TableError(format!("class {i} is too long")));
            }
            if *call >= ENRICHED_BASE {
                return Err(TableError(format!("class {i} of call {call}")));
            }
            if self
                .index
                .insert((*call, class.clone()), ENRICHED_BASE + i as u32)
                .is_some()
            {
                return Err(TableError(format!("class {class:?} of call {call} twice")));
            }
        }
        Ok(self)
    }
}

/// The symbol stream of one alphabet: plain call numbers, or (call, class) symbols
/// learned (training) or looked up (testing) in a table.
#[derive(Debug)]
pub enum Symbolizer {
    /// Plain numbers.
    Calls,
    /// Training: learns classes.
    Learn(SymbolTable),
    /// Testing: uses learned classes.
    Apply(SymbolTable),
}

impl Symbolizer {
    /// The symbol of `call` with `arg`.
    pub fn symbol(&mut self, call: u32, arg: Option<&Arg>) -> u32 {
        match self {
            Symbolizer::Calls => call,
            Symbolizer::Learn(t) => t.learn(call, arg),
            Symbolizer::Apply(t) => t.symbol(call, arg),
        }
    }

    /// The table, if any.
    pub fn table(&self) -> Option<&SymbolTable> {
        match self {
            Symbolizer::Calls => None,
            Symbolizer::Learn(t) | Symbolizer::Apply(t) => Some(t),
        }
    }

    /// The mode.
    pub fn mode(&self) -> SymbolMode {
        match self {
            Symbolizer::Calls => SymbolMode::Calls,
            _ => SymbolMode::Args,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, flags: u8) -> Arg {
        Arg::Path {
            path: p.as_bytes().to_vec(),
            flags,
        }
    }

    #[test]
    fn prefixes_resolution_and_classes() {
        assert_eq!(path_prefix(b"/srv/www/notes/a.txt", 2), "/srv/www/");
        assert_eq!(path_prefix(b"/etc/passwd", 2), "/etc/");
        assert_eq!(path_prefix(b"/x", 2), "/");
        assert_eq!(path_prefix(b"notes/a", 2), "rel:notes/");
        assert_eq!(resolve(b"/srv/www", b"../../etc/./passwd"), b"/etc/passwd");
        assert_eq!(resolve(b"/srv", b"/a//b/"), b"/a/b");
        assert_eq!(resolve(b"/", b".."), b"/");
        let c = SymbolConfig::default();
        assert_eq!(
            class_of(&path("/tmp/x", flags::CREATE | flags::WRITE), &c),
            "/tmp/ +create +write"
        );
        assert_eq!(
            class_of(
                &Arg::Exec {
                    path: b"/bin/cat".to_vec()
                },
                &c
            ),
            "exec /bin/cat"
        );
        assert_eq!(flags::of_open(0o101), flags::CREATE | flags::WRITE);
        assert_eq!(flags::of_open(0o2000000), 0);
        assert_eq!(Target::of_pid(42, 42), Target::SelfProcess);
        assert_eq!(Target::of_pid(-7, 42), Target::Group);
        assert_eq!(Target::of_pid(7, 42), Target::Other);
        for t in 0..5 {
            assert_eq!(Target::from_code(t).unwrap().code() as u64, t);
        }
        assert_eq!(Target::from_code(5), None);
    }

    #[test]
    fn connect_and_fast_open_sendto_open_connections() {
        assert!(opens_connection("connect", None));
        assert_eq!(socketcall(3), Some(("connect", 3)));
        assert_eq!(socketcall(11), Some(("sendto", 6)));
        assert_eq!(socketcall(0), None);
        assert_eq!(socketcall(21), None);
        assert!(opens_connection("sendto", Some(MSG_FASTOPEN | 0x40)));
        assert!(!opens_connection("sendto", Some(0x40)));
        assert!(!opens_connection("sendto", None));
        assert!(opens_connection("sendmsg", Some(MSG_FASTOPEN)));
        assert!(!opens_connection("sendmsg", Some(0x40)));
        assert_eq!(connection_flags("sendto"), Some(3));
        assert_eq!(connection_flags("sendmsg"), Some(2));
        assert_eq!(connection_flags("connect"), None);
        assert!(address_in_msghdr("sendmsg") && !address_in_msghdr("sendto"));
        assert!(hides_later_calls("io_uring_setup"));
        assert!(hides_later_calls("io_uring_enter"));
        assert!(!hides_later_calls("read"));
    }

    #[test]
    fn sockaddrs_by_scope_and_port() {
        let c = SymbolConfig::default();
        let v4 = |a: [u8; 4], port: u16| {
            let mut b = 2u16.to_ne_bytes().to_vec();
            b.extend(port.to_be_bytes());
            b.extend(a);
            b.extend([0; 8]);
            class_of(&sockaddr(&b).unwrap(), &c)
        };
        assert_eq!(v4([127, 0, 0, 1], 80), "inet loopback:80");
        assert_eq!(v4([192, 168, 1, 2], 53), "inet local:53");
        assert_eq!(v4([172, 20, 0, 1], 53), "inet local:53");
        assert_eq!(v4([8, 8, 8, 8], 53), "inet remote:53");
        let mut six = 10u16.to_ne_bytes().to_vec();
        six.extend(443u16.to_be_bytes());
        six.extend([0; 4]);
        let mut a = [0u8; 16];
        a[15] = 1;
        six.extend(a);
        six.extend([0; 4]);
        assert_eq!(class_of(&sockaddr(&six).unwrap(), &c), "inet6 loopback:443");
        let mut un = 1u16.to_ne_bytes().to_vec();
        un.extend(b"/run/nscd/socket\0junk");
        assert_eq!(class_of(&sockaddr(&un).unwrap(), &c), "unix /run/nscd/");
        let mut abs = 1u16.to_ne_bytes().to_vec();
        abs.extend(b"\0x11");
        assert_eq!(class_of(&sockaddr(&abs).unwrap(), &c), "unix @x11");
        assert_eq!(sockaddr(&[2]), None);
        // Too short for its family: reported as the bare family.
        assert_eq!(sockaddr(&[2, 0, 0]), Some(Arg::Family(2)));
    }

    #[test]
    fn learn_cap_other_and_unseen() {
        let mut t = SymbolTable::new(SymbolConfig {
            path_depth: 1,
            max_classes: 2,
        })
        .unwrap();
        assert_eq!(t.learn(0, None), 0);
        let a = t.learn(257, Some(&path("/srv/a", 0)));
        let b = t.learn(257, Some(&path("/etc/a", 0)));
        assert_eq!((a, b), (ENRICHED_BASE, ENRICHED_BASE + 1));
        assert_eq!(t.learn(257, Some(&path("/srv/other-file", 0))), a);
        // Past the cap: one `other` per call, counted.
        let o = t.learn(257, Some(&path("/usr/x", 0)));
        assert_eq!(t.learn(257, Some(&path("/var/x", 0))), o);
        assert_eq!(t.overflowed(), 2);
        assert_eq!(t.describe(o), Some((257, OTHER)));
        // Under test an unknown class of an overflowed call is `other`; of another
        // call, UNSEEN.
        assert_eq!(t.symbol(257, Some(&path("/home/x", 0))), o);
        assert_eq!(t.symbol(2, Some(&path("/home/x", 0))), UNSEEN);
        assert_eq!(t.symbol(257, Some(&path("/etc/shadow", 0))), b);
        // Round trip through the profile encoding.
        let bytes = postcard::to_allocvec(&t).unwrap();
        let back: SymbolTable = postcard::from_bytes(&bytes).unwrap();
        let back = back.validated().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.symbol(257, Some(&path("/srv/q", 0))), a);
    }

    #[test]
    fn hostile_tables_are_refused() {
        assert!(SymbolTable::new(SymbolConfig {
            path_depth: 0,
            max_classes: 2
        })
        .is_err());
        let mut t = SymbolTable::new(SymbolConfig::default()).unwrap();
        t.learn(1, Some(&Arg::Prot { exec: true }));
        t.classes.push(t.classes[0].clone());
        assert!(t.validated().is_err());
        // A class of a call numbered in the enriched range would fold back to a
        // symbol, not a call: such a table is damaged (learn never makes one).
        let mut t = SymbolTable::new(SymbolConfig::default()).unwrap();
        assert_eq!(
            t.learn(ENRICHED_BASE, Some(&Arg::Prot { exec: true })),
            ENRICHED_BASE
        );
        assert!(t.classes().is_empty());
        t.classes.push((ENRICHED_BASE + 1, "prot exec".into()));
        assert!(t.clone().validated().is_err());
        t.classes[0].0 = 0x1_0000 + 5;
        assert!(t.validated().is_err());
        let long = "/".repeat(10_000);
        let c = class_of(
            &Arg::Exec {
                path: long.into_bytes(),
            },
            &SymbolConfig::default(),
        );
        assert!(c.len() <= MAX_CLASS_BYTES);
        // A table that fills the enriched range with `other` classes (2,047 calls
        // each with one) would leave training nothing but UNSEEN: refused, as are
        // learned classes beyond the table's own cap.
        let config = SymbolConfig {
            path_depth: 1,
            max_classes: 2,
        };
        let mut t = SymbolTable::new(config).unwrap();
        t.classes = (0..2047).map(|c| (c, OTHER.to_string())).collect();
        assert!(t.validated().is_err());
        let mut t = SymbolTable::new(config).unwrap();
        t.classes = (0..3).map(|c| (257, format!("/d{c}/"))).collect();
        assert!(t.validated().is_err());
        // Within the bounds, training always finds a number below UNSEEN.
        let mut t = SymbolTable::new(config).unwrap();
        t.classes = (0..MAX_OTHERS as u32)
            .map(|c| (c, OTHER.to_string()))
            .chain([(300, "/a/".to_string())])
            .collect();
        let mut t = t.validated().unwrap();
        assert!(t.learn(301, Some(&path("/b/x", 0))) < UNSEEN);
        assert!(t.learn(302, Some(&path("/c/x", 0))) < UNSEEN);
    }
}

#[cfg(test)]
mod profile_tests {
    use super::*;
    use crate::detector::Params;
    use crate::profile::{decode_profile, profile_symbols, ProfileMeta, StoredModel};
    use crate::registry::{DetectorProfile, Registry};

    #[test]
    fn args_profiles_are_version_3_and_plain_ones_stay_version_2() {
        let r = Registry::builtin();
        let mut t = SymbolTable::new(SymbolConfig::default()).unwrap();
        let s = t.learn(257, Some(&Arg::Prot { exec: true }));
        let mut b = r.builder("stide", &Params::new()).unwrap();
        b.add_trace(&[1, s, 2, s]);
        let p = DetectorProfile {
            meta: ProfileMeta::default(),
            detector: b.build(&|_, _| {}).unwrap(),
        };
        let plain = p.to_bytes();
        assert_eq!(u16::from_le_bytes([plain[8], plain[9]]), 2);
        assert_eq!(profile_symbols(&plain).unwrap(), None);
        let rich = p.to_bytes_with(Some(&t));
        assert_eq!(u16::from_le_bytes([rich[8], rich[9]]), 3);
        assert_eq!(profile_symbols(&rich).unwrap(), Some(t));
        let q = r.load_profile(&rich).unwrap();
        assert_eq!(q.detector.trained_calls(), 4);
        let _: StoredModel = decode_profile(&rich).unwrap().model;
    }
}
