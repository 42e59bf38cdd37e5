//! Argument classes in the kernel (`homeostat daemon --symbols args`): the per-call
//! table the programs read, built from the core's `arg_spec`; the events that carry a
//! new or unseen class's bytes, named with the core's `class_of`; and each profile's
//! learnt classes (call, class hash) in and out of `hs_classes`.
//!
//! Why hashes in the kernel and text here: the programs must decide "known class?"
//! within the call, with bounded work and memory, so they keep a 64-bit hash of the
//! class-making bytes (src/bpf/args.bpf.h says which, mirroring the core's rules);
//! the class's name is made once, in userspace, by the core, from the bytes the event
//! carries. Which calls and which registers are read is never repeated: the table is
//! the core's.

use std::collections::BTreeMap;

use bytemuck::bytes_of;
use homeostat_core::ph::ExeKey;
use homeostat_core::symbols::{self, Arg, ArgSpec, SymbolConfig, Target};
use homeostat_syscalls::Arch;
use libbpf_rs::{ErrorKind, MapCore, MapFlags};

use crate::abi::{self, hs_class_event, hs_class_key, ROW};
use crate::error::{map_err, Error};
use crate::kernel::percpu_sums;
use crate::Kernel;

/// `HS_SPEC_*` kinds.
const SPEC_PATH: u32 = 1;
const SPEC_EXEC: u32 = 2;
const SPEC_SOCKADDR: u32 = 3;
const SPEC_PID: u32 = 4;
const SPEC_PTRACE: u32 = 5;
const SPEC_PROT: u32 = 6;
const SPEC_CREAT: u32 = 1 << 16;
/// Where the register of a path's dirfd goes (`HS_SPEC_DIRFD_SHIFT`).
const SPEC_DIRFD_SHIFT: u32 = 20;
/// No register (the flags of an open without flags).
const NO_REG: u32 = 15;

/// `HS_ARG_*`: what a class event's data holds.
const ARG_PATH: u32 = 1;
const ARG_EXEC: u32 = 2;
const ARG_SOCKADDR: u32 = 3;
const ARG_TARGET: u32 = 4;
const ARG_PROT: u32 = 5;

/// `HS_CLASS_OTHER`: the hash of a call's `other` class (training past the cap).
pub const OTHER_HASH: u64 = 0;
/// `HS_MAX_DEPTH`: the deepest path prefix the programs hash.
pub const MAX_PATH_DEPTH: u8 = 8;
/// `HS_CLASSES`: classes of all profiles together.
pub const MAX_CLASSES_TOTAL: u32 = 65536;
/// `HS_ANSTATS`.
pub(crate) const ANSTATS: usize = 4;

/// The program's per-call spec word for an argument spec of the core.
fn spec_word(s: ArgSpec) -> u32 {
    let reg = |r: usize| (r as u32) & 15;
    match s {
        ArgSpec::Path {
            path,
            flags,
            creat,
            dirfd,
        } => {
            SPEC_PATH
                | reg(path) << 4
                | flags.map_or(NO_REG, reg) << 8
                | if creat { SPEC_CREAT } else { 0 }
                | dirfd.map_or(NO_REG, reg) << SPEC_DIRFD_SHIFT
        }
        ArgSpec::Exec { path, .. } => SPEC_EXEC | reg(path) << 4 | NO_REG << 8,
        ArgSpec::Sockaddr { addr, len } => {
            SPEC_SOCKADDR | reg(addr) << 4 | NO_REG << 8 | reg(len) << 12
        }
        ArgSpec::Pid { pid } => SPEC_PID | reg(pid) << 4 | NO_REG << 8,
        ArgSpec::Ptrace => SPEC_PTRACE | NO_REG << 8,
        ArgSpec::Prot { prot } => SPEC_PROT | reg(prot) << 4 | NO_REG << 8,
    }
}

/// `hs_arg_spec`: for each x86_64 call number below [`ROW`], the argument the core's
/// `arg_spec` says matters (0: none). i386 calls get none, as in the launcher.
pub fn spec_table() -> [u32; ROW] {
    let mut t = [0u32; ROW];
    for (nr, w) in t.iter_mut().enumerate() {
        if let Some(s) = Arch::X86_64.name(nr as u32).and_then(symbols::arg_spec) {
            *w = spec_word(s);
        }
    }
    t
}

/// `HS_PATH_RESOLVED`: a relative path the programs resolved against its base
/// directory (the cwd or the dirfd's), whose top components the event carries.
const PATH_RESOLVED: u32 = 4;
/// `HS_WALK_MAX`: the deepest base directory the programs resolve against.
const WALK_MAX: u32 = 64;
/// The name a base component the programs did not read stands under (deeper than the
/// path depth: it never makes a class, and a `..` pops it by count alone).
const UNREAD_COMPONENT: &[u8] = b"\xe2\x80\xa6";

/// A resolved relative path: the core's `resolve` of `rel` against the event's base
/// (its top components, then the deeper ones it did not read); `None` if malformed.
fn resolved(e: &hs_class_event, rel: &[u8]) -> Option<Vec<u8>> {
    let base = bytemuck::cast_slice::<i8, u8>(&e.base);
    let base = &base[..base.iter().position(|&b| b == 0)?];
    let read = base.split(|&b| b == b'/').filter(|c| !c.is_empty()).count() as u32;
    if e.base_dirs > WALK_MAX || read > e.base_dirs || base.first().is_some_and(|&b| b != b'/') {
        return None;
    }
    let mut dir = base.to_vec();
    for _ in read..e.base_dirs {
        dir.push(b'/');
        dir.extend_from_slice(UNREAD_COMPONENT);
    }
    Some(symbols::resolve(&dir, rel))
}

/// What a class event read, as the core's [`Arg`]; `None` if the record is malformed.
pub(crate) fn event_arg(e: &hs_class_event) -> Option<Arg> {
    let data = bytemuck::cast_slice::<i8, u8>(&e.data);
    let used = &data[..(e.len as usize).min(data.len())];
    let text = || used[..used.iter().position(|&b| b == 0).unwrap_or(used.len())].to_vec();
    Some(match e.arg_kind {
        ARG_PATH => Arg::Path {
            path: if e.arg_flags & PATH_RESOLVED != 0 {
                resolved(e, &text())?
            } else {
                text()
            },
            flags: e.arg_flags as u8 & (symbols::flags::CREATE | symbols::flags::WRITE),
        },
        ARG_EXEC => Arg::Exec { path: text() },
        ARG_SOCKADDR => symbols::sockaddr(used)?,
        ARG_TARGET => Arg::Target(Target::from_code(u64::from(e.arg_flags))?),
        ARG_PROT => Arg::Prot {
            exec: e.arg_flags & 1 != 0,
        },
        _ => return None,
    })
}

/// The name of the class of `arg`, by the core's rules, as the programs classify it:
/// an absolute path is normalised (the core's `resolve`, as the launcher does; a
/// relative one the programs resolved arrives absolute), a relative one they could
/// not resolve is not (`rel:` classes).
pub fn class_name(arg: &Arg, cfg: &SymbolConfig) -> String {
    match arg {
        Arg::Path { path, flags } if path.first() == Some(&b'/') => symbols::class_of(
            &Arg::Path {
                path: symbols::resolve(b"/", path),
                flags: *flags,
            },
            cfg,
        ),
        a => symbols::class_of(a, cfg),
    }
}

/// Losses of the argument side, summed over CPUs; none is ever silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArgStats {
    /// Training calls whose class went to the call's `other` class: the profile had
    /// its most classes.
    pub overflowed: u64,
    /// Classes not learnt because the kernel's class map (all profiles) was full.
    pub map_full: u64,
    /// Calls whose argument could not be read in the kernel (a page not resident:
    /// the programs never fault); those calls were not tested for their class.
    pub unread: u64,
    /// Class events dropped (ring buffer full).
    pub lost_events: u64,
}

impl Kernel {
    /// Whether the programs classify arguments, and with which settings.
    pub fn symbols(&self) -> Option<SymbolConfig> {
        self.symbols
    }

    /// The argument side's loss counters (zero when arguments are off).
    pub fn arg_stats(&self) -> Result<ArgStats, Error> {
        let [overflowed, map_full, unread, lost_events] =
            percpu_sums::<ANSTATS>(&self.arg_stats_map, "hs_arg_stats")?;
        Ok(ArgStats {
            overflowed,
            map_full,
            unread,
            lost_events,
        })
    }

    /// Every class of every profile slot: one pass over the map in batches (a
    /// key-by-key walk is a system call per class: 65,536 of them when full).
    fn class_keys(&self) -> Result<Vec<hs_class_key>, Error> {
        Ok(self
            .classes_map
            .lookup_batch(1024, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_err("hs_classes", "lookup batch"))?
            .filter_map(|(k, _)| abi::decode::<hs_class_key>(&k))
            .collect())
    }

    /// A profile's learnt classes: (call, class hash), sorted; [`OTHER_HASH`] is the
    /// call's `other` class.
    pub fn classes(&self, exe: ExeKey) -> Result<Vec<(u16, u64)>, Error> {
        let Some(slot) = self.slot_of(exe)? else {
            return Ok(vec![]);
        };
        let mut out: Vec<(u16, u64)> = self
            .class_keys()?
            .into_iter()
            .filter(|k| k.slot == slot)
            .map(|k| (k.call, k.hash))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Every profile's classes (what [`Kernel::classes`] gives for one), in one pass,
    /// for saving many profiles at once; profiles without classes are left out.
    pub fn all_classes(&self) -> Result<BTreeMap<ExeKey, Vec<(u16, u64)>>, Error> {
        let mut by_slot: BTreeMap<u32, Vec<(u16, u64)>> = BTreeMap::new();
        for k in self.class_keys()? {
            by_slot.entry(k.slot).or_default().push((k.call, k.hash));
        }
        let mut out = BTreeMap::new();
        for exe in self.profiles() {
            if let Some(slot) = self.slot_of(exe)? {
                if let Some(mut v) = by_slot.remove(&slot) {
                    v.sort_unstable();
                    out.insert(exe, v);
                }
            }
        }
        Ok(out)
    }

    /// Loads classes into a profile (e.g. a saved profile at start-up), creating the
    /// profile (training) if absent. Classes past the profile's cap or the map's room
    /// are refused with an error after the ones that fit were added.
    pub fn add_classes(&self, exe: ExeKey, classes: &[(u16, u64)]) -> Result<(), Error> {
        if classes.is_empty() {
            return Ok(());
        }
        let slot = match self.slot_of(exe)? {
            Some(s) => s,
            None => self.ensure_profile(exe)?,
        };
        let cap = self.symbols.map_or(0, |c| c.max_classes);
        let mut count = self.class_count(slot)?;
        let mut refused = 0usize;
        for &(call, hash) in classes {
            if usize::from(call) >= ROW {
                return Err(Error::OutOfRange(call));
            }
            if hash != OTHER_HASH && count >= cap {
                refused += 1;
                continue;
            }
            let k = hs_class_key {
                slot,
                call,
                pad: 0,
                hash,
            };
            match self
                .classes_map
                .update(bytes_of(&k), &1u32.to_ne_bytes(), MapFlags::NO_EXIST)
            {
                Ok(()) => {
                    if hash != OTHER_HASH {
                        count += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(map_err("hs_classes", "update")(e)),
            }
        }
        self.class_count_map
            .update(&slot.to_ne_bytes(), &count.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_class_count", "update"))?;
        if refused > 0 {
            return Err(Error::Map {
                map: "hs_classes",
                what: "add",
                kind: ErrorKind::Other,
                err: format!("{refused} classes past the profile's cap of {cap}"),
            });
        }
        Ok(())
    }

    fn class_count(&self, slot: u32) -> Result<u32, Error> {
        Ok(self
            .class_count_map
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_class_count", "lookup"))?
            .and_then(|v| abi::decode::<u32>(&v))
            .unwrap_or(0))
    }

    /// Forgets every class of the profile in `slot` (its slot is being freed).
    pub(crate) fn clear_classes(&self, slot: u32) -> Result<(), Error> {
        // Nothing learnt (the count moves with every class but `other`, which only
        // comes past the cap): no pass over the map.
        if self.class_count(slot)? == 0 {
            return Ok(());
        }
        let keys: Vec<hs_class_key> = self
            .class_keys()?
            .into_iter()
            .filter(|k| k.slot == slot)
            .collect();
        for k in keys {
            match self.classes_map.delete(bytes_of(&k)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("hs_classes", "delete")(e)),
            }
        }
        self.class_count_map
            .update(&slot.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("hs_class_count", "clear"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_event(rel: &str, base: &[u8], base_dirs: u32) -> hs_class_event {
        let mut e: hs_class_event = bytemuck::Zeroable::zeroed();
        e.arg_kind = ARG_PATH;
        e.arg_flags = PATH_RESOLVED | 1;
        e.len = rel.len() as u32 + 1;
        for (d, &b) in e.data.iter_mut().zip(rel.as_bytes()) {
            *d = b as i8;
        }
        for (d, &b) in e.base.iter_mut().zip(base) {
            *d = b as i8;
        }
        e.base_dirs = base_dirs;
        e
    }

    #[test]
    fn a_resolved_relative_path_is_named_as_the_launcher_names_it() {
        let cfg = SymbolConfig::default();
        let name = |e: &hs_class_event| event_arg(e).map(|a| class_name(&a, &cfg));
        // cwd /usr/share/doc/x (4 deep, the top 2 read): the deeper ones stand in.
        let e = path_event("y/z", b"/usr/share", 4);
        assert_eq!(name(&e).as_deref(), Some("/usr/share/ +create"));
        let e = path_event("../../../../../etc/passwd", b"/usr/share", 4);
        assert_eq!(name(&e).as_deref(), Some("/etc/ +create"));
        let e = path_event("../../../x/y", b"/usr/share", 4);
        assert_eq!(name(&e).as_deref(), Some("/usr/x/ +create"));
        // The root as base.
        let e = path_event("etc/hostname", b"", 0);
        assert_eq!(name(&e).as_deref(), Some("/etc/ +create"));
        // Hostile records: no NUL, more names than the depth says, a relative base,
        // a depth past the walk's bound.
        let mut e = path_event("a", b"", 0);
        e.base = [b'x' as i8; 512];
        assert_eq!(name(&e), None);
        assert_eq!(name(&path_event("a", b"/a/b/c", 2)), None);
        assert_eq!(name(&path_event("a", b"a/b", 2)), None);
        assert_eq!(name(&path_event("a", b"/a", WALK_MAX + 1)), None);
    }

    #[test]
    fn the_spec_table_is_the_cores() {
        let t = spec_table();
        let nr = |n: &str| Arch::X86_64.number(n).unwrap() as usize;
        assert_eq!(t[nr("openat")], SPEC_PATH | 1 << 4 | 2 << 8);
        assert_eq!(
            t[nr("creat")],
            SPEC_PATH | NO_REG << 8 | SPEC_CREAT | NO_REG << SPEC_DIRFD_SHIFT
        );
        assert_eq!(
            t[nr("unlinkat")] >> SPEC_DIRFD_SHIFT & 15,
            0,
            "the dirfd register"
        );
        assert_eq!(t[nr("execve")], SPEC_EXEC | NO_REG << 8);
        assert_eq!(
            t[nr("sendto")],
            SPEC_SOCKADDR | 4 << 4 | NO_REG << 8 | 5 << 12
        );
        assert_eq!(t[nr("mprotect")], SPEC_PROT | 2 << 4 | NO_REG << 8);
        assert_eq!(t[nr("read")], 0);
        assert_eq!(t[nr("newfstatat")], 0);
        // Every call the core names gets an entry, and no other.
        let named = (0..ROW)
            .filter(|&n| {
                Arch::X86_64
                    .name(n as u32)
                    .and_then(symbols::arg_spec)
                    .is_some()
            })
            .count();
        assert_eq!(t.iter().filter(|&&w| w != 0).count(), named);
        assert!(named >= 25, "{named}");
    }

    #[test]
    fn class_names_normalise_absolute_paths_only() {
        let c = SymbolConfig::default();
        let p = |s: &str| Arg::Path {
            path: s.as_bytes().to_vec(),
            flags: 0,
        };
        assert_eq!(class_name(&p("/srv/www/../../etc/passwd"), &c), "/etc/");
        assert_eq!(class_name(&p("/srv//www/./a/b"), &c), "/srv/www/");
        assert_eq!(class_name(&p("../../etc/passwd"), &c), "rel:../../");
    }
}
