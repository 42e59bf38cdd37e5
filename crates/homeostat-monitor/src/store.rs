//! The state directory: where pH profiles live between runs.
//!
//! One file per executable, `profiles/<dev>-<ino>.phprof`, written atomically
//! (temporary file, fsync, rename, fsync of the directory) so a crash leaves the old
//! profile or the new one. A profile that does not load is reported, moved aside as
//! `<name>.corrupt-<unix time>` and never silently overwritten.
//!
//! The directory is private (0700): profiles describe what programs do, which is
//! nobody else's business, and whoever can write into it decides what is "normal". So
//! a state directory or sub-folder that belongs to another user, is writable by group or
//! others, or (for sub-folders) is a symbolic link, is refused rather than repaired:
//! root following another user's `profiles` link would chmod and fill a folder of the
//! attacker's choosing.
//!
//! Several monitors may learn the same executable at once (two `homeostat run --learn`
//! sharing the directory). Saves are serialised by a lock on the `profiles` folder
//! (flock), and a save that finds the file rewritten by someone else since this store
//! last read or wrote it merges the two (union of pairs, trained calls added up), so
//! concurrent runs add up instead of the last writer winning.
//!
//! Temporary files are named `.homeostat-<pid>-*.tmp`; one whose process is gone (a
//! save killed by SIGKILL) is deleted when the store is opened.
//!
//! Eviction (shared with the daemon's kernel map, docs/daemon.md): every freshly built
//! binary is a new inode and so a new profile that can never become normal, so a build
//! server fills any bounded store. Profiles of executables that no longer exist (no
//! path seen for them names their inode, and no process runs it) are evicted; when the
//! store is near full ([`over_watermark`]), the least recently used training profiles
//! with few calls go first and normal profiles last ([`eviction_order`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use homeostat_core::ph::{ExeKey, PhProfile, ProfileState, PH_MAGIC};
use homeostat_core::profile::{framed_len, ProfileError, FRAME_HEADER_LEN};

/// A state-directory problem, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct StoreError {
    /// The file or directory.
    pub path: PathBuf,
    /// What went wrong.
    pub msg: String,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// The running user (effective uid), who must own the state directory.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The state directory: `--state-dir`, else `$HOMEOSTAT_STATE_DIR`, else
/// `/var/lib/homeostat` for root, else `$XDG_STATE_HOME/homeostat`, else
/// `~/.local/state/homeostat`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HOMEOSTAT_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if euid() == 0 {
        return PathBuf::from("/var/lib/homeostat");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("homeostat");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/homeostat")
}

/// What kind of file `m` describes, for error messages.
fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a regular file"
    }
}

/// Refuses to replace anything but a regular file (or a missing path): renaming over
/// a device node or FIFO would silently turn it into a regular file, and writing into
/// one would write to the device. For every output file, atomic or not.
pub fn check_replaceable(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(err(
            path,
            format!(
                "is {}, not a regular file; refusing to replace it",
                kind(&m)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(path, e)),
    }
}

/// Writes `bytes` to `path` so readers see the old file or the new one, never a mix.
/// `path` must be a regular file or not exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    check_replaceable(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".homeostat-{}-", std::process::id()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| err(dir, format!("cannot create a temporary file: {e}")))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| err(tmp.path(), format!("cannot write: {e}")))?;
    tmp.persist(path)
        .map_err(|e| err(path, format!("cannot replace: {}", e.error)))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, format!("cannot sync directory: {e}")))?;
    Ok(())
}

/// Why [`read_framed`] returned no bytes.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read, or is not a regular file.
    // Transparent: with `{0}` the reason printed again as its own cause, twice on
    // the one error line.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The header is not that of a file of the expected kind.
    #[error(transparent)]
    Format(#[from] ProfileError),
}

/// Reads a framed file (a profile: magic, version, checksum, length) without ever
/// reading more than its header announces: the header is checked first, so a device
/// (`/dev/zero`), a FIFO or a huge sparse file costs a few bytes, not memory without
/// bound. The caller decodes the bytes (which checks the checksum).
pub fn read_framed(path: &Path, magic: &[u8; 8]) -> Result<Vec<u8>, ReadError> {
    // Non-blocking, so opening a FIFO with no writer does not hang; regular files
    // ignore the flag.
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let m = file.metadata()?;
    if !m.is_file() {
        return Err(ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind(&m)),
        )));
    }
    let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
    (&file)
        .take(FRAME_HEADER_LEN as u64)
        .read_to_end(&mut header)?;
    let total = framed_len(magic, &header)?;
    if m.len() < total {
        return Err(ProfileError::Truncated {
            expected: total,
            found: m.len(),
        }
        .into());
    }
    if m.len() > total {
        return Err(ProfileError::TrailingData(m.len() - total).into());
    }
    // `total` is at most the payload cap plus the header, and the file is that long.
    let mut bytes = header;
    bytes.reserve_exact(total as usize - bytes.len());
    (&file)
        .take(total - FRAME_HEADER_LEN as u64)
        .read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < total {
        // Shrunk while being read.
        return Err(ProfileError::Truncated {
            expected: total,
            found: bytes.len() as u64,
        }
        .into());
    }
    Ok(bytes)
}

/// Reads a whole file of at most `max` bytes, refusing anything but a regular file:
/// for files without a length header (the daemon's JSON profiles), so a device or a
/// huge file never costs more than `max` bytes of memory.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let m = file.metadata()?;
    let refuse = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    if !m.is_file() {
        return Err(refuse(format!("is {}, not a regular file", kind(&m))));
    }
    if m.len() > max {
        return Err(refuse(format!(
            "file is {} bytes, more than the {max}-byte limit",
            m.len()
        )));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    (&file).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(refuse(format!("file grew past the {max}-byte limit")));
    }
    Ok(bytes)
}

/// Checks (creating it, mode 0700, when missing) one directory of the state: owned by
/// the running user, not writable by group or others, and, for a sub-folder, not a
/// symbolic link. A directory readable by others is made private (its owner is us).
fn private_dir(path: &Path, sub: bool, create: bool) -> Result<(), StoreError> {
    let uid = euid();
    let lm = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if !sub {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
                }
            }
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => {}
                // Created meanwhile by another monitor: checked below like any other.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(path, e)),
            }
            std::fs::symlink_metadata(path).map_err(|e| err(path, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    let m = if lm.file_type().is_symlink() {
        if sub {
            return Err(err(
                path,
                "is a symbolic link; refusing to follow it (the state directory's folders must be real folders)",
            ));
        }
        if lm.uid() != uid && lm.uid() != 0 {
            return Err(err(
                path,
                format!(
                    "is a symbolic link owned by uid {}, not by the running user (uid {uid}); refusing to follow it",
                    lm.uid()
                ),
            ));
        }
        std::fs::metadata(path).map_err(|e| err(path, e))?
    } else {
        lm
    };
    let what = if sub {
        "state folder"
    } else {
        "state directory"
    };
    if !m.is_dir() {
        return Err(err(path, format!("is {}, not a directory", kind(&m))));
    }
    if m.uid() != uid {
        return Err(err(
            path,
            format!(
                "{what} owned by uid {}, not by the running user (uid {uid}); refusing to use it (run as its owner, or choose another --state-dir)",
                m.uid()
            ),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(err(
            path,
            format!(
                "{what} is writable by group or others (mode {mode:04o}); refusing to use it (chmod 700 it if its contents are trusted)"
            ),
        ));
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(path, e))?;
    }
    Ok(())
}

/// Deletes `.homeostat-<pid>-*.tmp` files in `dir` whose process is gone (a save
/// interrupted by SIGKILL); returns how many. A live pid (even a reused one) keeps its
/// files: they are cleaned once it is gone.
fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".homeostat-"))
            .filter(|n| n.ends_with(".tmp"))
        else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        if !alive
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// What this store last read or wrote for one executable, to tell whether someone else
/// wrote the file since, and what this process learnt since.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Inode of the file (every atomic write makes a new one).
    ino: u64,
    /// `train_count` of the profile read or written.
    train_count: u64,
}

/// A training profile with fewer calls than this is cheap to lose: it has seen
/// little, and (pH's freeze rule needing its calls to grow to 4 times those up to its
/// last new pair) is far from normal. Such profiles are evicted first.
pub const FEW_CALLS: u64 = 10_000;

/// Profiles a store holds before eviction starts: as many as the kernel's map.
pub const STORE_CAPACITY: usize = 4096;

/// How many profiles to evict when `count` are held of `capacity`: none below 90%
/// full, else down to 75% (so that eviction runs now and then, not at every new
/// profile).
pub fn over_watermark(count: usize, capacity: usize) -> usize {
    let high = (capacity - capacity / 10).max(1);
    let low = capacity * 3 / 4;
    if count >= high {
        count - low
    } else {
        0
    }
}

/// One profile as eviction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictCandidate {
    /// The executable.
    pub key: ExeKey,
    /// Its state: normal profiles go last.
    pub state: ProfileState,
    /// Calls trained: below [`FEW_CALLS`] a training profile goes first.
    pub train_count: u64,
    /// When it was last used (ns since the epoch, or any clock shared by all).
    pub last_used_ns: u64,
}

impl EvictCandidate {
    /// The eviction rank: training with few calls, then other training and frozen
    /// profiles, then normal ones; least recently used first within a rank.
    fn rank(&self) -> (u8, u64) {
        let r = match self.state {
            ProfileState::Training if self.train_count < FEW_CALLS => 0,
            ProfileState::Training | ProfileState::Frozen => 1,
            ProfileState::Normal => 2,
        };
        (r, self.last_used_ns)
    }
}

/// Sorts candidates in the order they are evicted (the first `n` go).
pub fn eviction_order(c: &mut [EvictCandidate]) {
    c.sort_by_key(|c| (c.rank(), c.key));
}

/// The executables processes run now (their `/proc/PID/exe`), so that a profile whose
/// file was deleted while it still runs is kept.
pub fn running_exes() -> HashSet<ExeKey> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
            Some(ExeKey {
                dev: m.dev(),
                ino: m.ino(),
            })
        })
        .collect()
}

/// Whether the executable `key` no longer exists: none of the paths seen for it
/// (absolute ones; at least one) names its inode any more, and no process in
/// `running` runs it. Unknown paths (`?dev-ino`) never count as gone.
///
/// A path that names a file on another device than the key's is not evidence either
/// way: the path was seen in another mount namespace (a container's root, a chroot),
/// where it names another file than it does here. Such a profile is not gone; only
/// the near-full rule can evict it.
pub fn exe_gone<'a>(
    key: ExeKey,
    paths: impl IntoIterator<Item = &'a str>,
    running: &HashSet<ExeKey>,
) -> bool {
    if running.contains(&key) {
        return false;
    }
    let mut known = false;
    for p in paths.into_iter().filter(|p| p.starts_with('/')) {
        known = true;
        if let Ok(m) = std::fs::metadata(p) {
            if m.dev() != key.dev || m.ino() == key.ino {
                return false;
            }
        }
    }
    known
}

/// What [`ProfileStore::evict`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Profiles of executables that no longer exist.
    pub deleted: Vec<ExeKey>,
    /// Profiles evicted because the store was near full.
    pub lru: Vec<ExeKey>,
}

/// Profiles on disk.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    dir: PathBuf,
    seen: Arc<Mutex<HashMap<ExeKey, Seen>>>,
    capacity: usize,
}

impl ProfileStore {
    /// Opens (creating, mode 0700) the state directory, refusing one that is not the
    /// running user's own (see the module docs), and deletes stale temporary files.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        private_dir(dir, false, true)?;
        private_dir(&dir.join("profiles"), true, true)?;
        for sub in ["daemon", "run"] {
            private_dir(&dir.join(sub), true, false)?;
        }
        for sub in ["profiles", "daemon"] {
            clean_stale_temps(&dir.join(sub));
        }
        Ok(ProfileStore {
            dir: dir.to_path_buf(),
            seen: Arc::default(),
            capacity: STORE_CAPACITY,
        })
    }

    /// The same store, evicting once it holds about `capacity` profiles (default
    /// [`STORE_CAPACITY`]).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the profile for `key`.
    pub fn path_for(&self, key: ExeKey) -> PathBuf {
        self.dir.join("profiles").join(format!("{key}.phprof"))
    }

    fn remember(&self, key: ExeKey, path: &Path, train_count: u64) {
        if let Ok(m) = std::fs::metadata(path) {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(
                key,
                Seen {
                    ino: m.ino(),
                    train_count,
                },
            );
        }
    }

    /// Saves one profile atomically. If another process wrote the file since this
    /// store last read or wrote it, the two are merged (pairs united, trained calls
    /// added up); otherwise `p` is written as it is (so an admin's edit that removes
    /// pairs stays removed). A profile of a file born before the one whose profile
    /// another process wrote (the same key reused) is not written.
    pub fn save(&self, p: &PhProfile) -> Result<(), StoreError> {
        let folder = self.dir.join("profiles");
        let lock = File::open(&folder).map_err(|e| err(&folder, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(&folder, format!("cannot lock: {e}")))?;
        let path = self.path_for(p.key);
        let seen = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(&p.key).copied()
        };
        let on_disk = std::fs::metadata(&path).ok().map(|m| m.ino());
        let rewritten = on_disk.is_some() && on_disk != seen.map(|s| s.ino);
        let mut out = None;
        if rewritten {
            // Loaded under the lock: nobody can rewrite it meanwhile. A damaged file
            // is moved aside by load (and ours replaces it).
            if let Ok(theirs) = self.read(&path) {
                if matches!((p.born(), theirs.born()), (Some(ours), Some(later)) if later > ours) {
                    // Theirs is of a file born after ours, under our key: ours was
                    // deleted (an inode number is reused only then), and its profile
                    // must not replace the one of the file there now.
                    return Ok(());
                }
                if let Some(mut merged) = p.merged_with(&theirs) {
                    let before = seen.map_or(0, |s| s.train_count);
                    merged.train_count = theirs
                        .train_count
                        .saturating_add(p.train_count.saturating_sub(before));
                    merged.last_mod_count = merged.last_mod_count.min(merged.train_count);
                    out = Some(merged.to_bytes());
                }
            }
        }
        write_atomic(&path, &out.unwrap_or_else(|| p.to_bytes()))?;
        self.remember(p.key, &path, p.train_count);
        // A new file is the only way the folder grows: the time to look at its size.
        if on_disk.is_none() {
            let n = std::fs::read_dir(&folder)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "phprof"))
                        .count()
                })
                .unwrap_or(0);
            if over_watermark(n, self.capacity) > 0 {
                let ev = self.evict_locked(Some(p.key));
                if !ev.deleted.is_empty() || !ev.lru.is_empty() {
                    tracing::info!(
                        "profiles evicted from {}: {} of deleted executables, {} least recently used (store near full)",
                        folder.display(),
                        ev.deleted.len(),
                        ev.lru.len()
                    );
                }
            }
        }
        // The lock is released when `lock` is closed.
        drop(lock);
        Ok(())
    }

    /// Evicts from the profile folder: profiles of executables that no longer exist,
    /// then, if the folder is still near full, the least recently used (file
    /// modification time: a profile is saved when used) in [`eviction_order`].
    pub fn evict(&self) -> Result<Evicted, StoreError> {
        let folder = self.dir.join("profiles");
        let lock = File::open(&folder).map_err(|e| err(&folder, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(&folder, format!("cannot lock: {e}")))?;
        Ok(self.evict_locked(None))
    }

    /// [`ProfileStore::evict`] under the folder's lock, sparing `keep`.
    fn evict_locked(&self, keep: Option<ExeKey>) -> Evicted {
        let folder = self.dir.join("profiles");
        let Ok(rd) = std::fs::read_dir(&folder) else {
            return Evicted::default();
        };
        let running = running_exes();
        let mut out = Evicted::default();
        let mut cands = vec![];
        for path in rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "phprof"))
        {
            let Ok(p) = self.read(&path) else {
                continue;
            };
            if Some(p.key) == keep {
                continue;
            }
            if exe_gone(p.key, [p.path.as_str()], &running) {
                if std::fs::remove_file(&path).is_ok() {
                    out.deleted.push(p.key);
                }
                continue;
            }
            let last_used_ns = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            cands.push(EvictCandidate {
                key: p.key,
                state: p.state,
                train_count: p.train_count,
                last_used_ns,
            });
        }
        let held = cands.len() + usize::from(keep.is_some());
        let n = over_watermark(held, self.capacity).min(cands.len());
        eviction_order(&mut cands);
        for c in &cands[..n] {
            if std::fs::remove_file(self.path_for(c.key)).is_ok() {
                out.lru.push(c.key);
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for k in out.deleted.iter().chain(&out.lru) {
            seen.remove(k);
        }
        out
    }

    /// Removes a profile's file (admin "reset").
    pub fn remove(&self, key: ExeKey) -> Result<(), StoreError> {
        let path = self.path_for(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path, e)),
        }
    }

    /// Reads one profile file; a damaged one is moved aside and reported.
    fn read(&self, path: &Path) -> Result<PhProfile, StoreError> {
        let decoded = match read_framed(path, PH_MAGIC) {
            Ok(bytes) => PhProfile::from_bytes(&bytes),
            Err(ReadError::Format(e)) => Err(e),
            Err(ReadError::Io(e)) => return Err(err(path, e)),
        };
        decoded.map_err(|e| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_extension(format!("phprof.corrupt-{now}"));
            let moved = std::fs::rename(path, &aside)
                .map(|_| format!("; moved aside to {}", aside.display()))
                .unwrap_or_default();
            err(path, format!("{e}{moved}"))
        })
    }

    /// Loads one profile file; a damaged one is moved aside and reported.
    pub fn load_file(&self, path: &Path) -> Result<PhProfile, StoreError> {
        let p = self.read(path)?;
        self.remember(p.key, path, p.train_count);
        Ok(p)
    }

    /// Every profile that loads, and one error per file that does not.
    pub fn load_all(&self) -> (Vec<PhProfile>, Vec<StoreError>) {
        let dir = self.dir.join("profiles");
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "phprof"))
                .collect(),
            Err(e) => return (vec![], vec![err(&dir, e)]),
        };
        names.sort();
        let mut ok = vec![];
        let mut bad = vec![];
        for p in names {
            match self.load_file(&p) {
                Ok(profile) => ok.push(profile),
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::ph::PhConfig;

    #[test]
    fn gone_means_deleted_or_replaced_on_the_same_device() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"v1").unwrap();
        let m = std::fs::metadata(&exe).unwrap();
        let key = ExeKey {
            dev: m.dev(),
            ino: m.ino(),
        };
        let path = exe.to_str().unwrap();
        let none = HashSet::new();
        assert!(!exe_gone(key, [path], &none), "still there");
        assert!(!exe_gone(key, ["?3-4"], &none), "no absolute path: unknown");
        // Replaced at the same path on the same device: a new inode, a new program.
        let other = dir.path().join("tool.new");
        std::fs::write(&other, b"v2").unwrap();
        std::fs::rename(&other, &exe).unwrap();
        assert!(exe_gone(key, [path], &none), "replaced");
        assert!(
            !exe_gone(key, [path], &HashSet::from([key])),
            "still running"
        );
        std::fs::remove_file(&exe).unwrap();
        assert!(exe_gone(key, [path], &none), "deleted");
        // The same path naming a file on another device: seen in another mount
        // namespace (a container), so not judged gone from here.
        let here = std::fs::metadata("/proc/self/exe").unwrap();
        let elsewhere = ExeKey {
            dev: here.dev() ^ 1,
            ino: here.ino(),
        };
        assert!(!exe_gone(elsewhere, ["/proc/self/exe"], &none));
    }

    #[test]
    fn save_load_and_corruption_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(&dir.path().join("state")).unwrap();
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let key = ExeKey { dev: 3, ino: 99 };
        let p = PhProfile::new(key, "/bin/true", &PhConfig::default());
        store.save(&p).unwrap();
        let (loaded, errors) = store.load_all();
        assert!(errors.is_empty());
        assert_eq!(loaded[0].key, key);
        assert_eq!(loaded[0].path, "/bin/true");

        let path = store.path_for(key);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (loaded, errors) = store.load_all();
        assert!(loaded.is_empty());
        let msg = errors[0].to_string();
        assert!(
            msg.contains("3-63.phprof") && msg.contains("checksum") && msg.contains("moved aside"),
            "{msg}"
        );
        assert!(!path.exists(), "the damaged file is moved, not overwritten");
        let aside: Vec<_> = std::fs::read_dir(store.dir().join("profiles"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].file_name().to_string_lossy().contains("corrupt"));
    }
}

#[cfg(test)]
mod hardening_tests {
    use super::*;
    use homeostat_core::ph::{PhConfig, PhTask};

    fn learnt(key: ExeKey, calls: &[u32]) -> PhProfile {
        let config = PhConfig::default();
        let mut p = PhProfile::new(key, "/bin/x", &config);
        let mut task = PhTask::new(&p);
        for &c in calls {
            p.on_syscall(&mut task, c, false, 0, &config, &mut |_| {});
        }
        p
    }

    #[test]
    fn eviction_takes_few_call_training_profiles_first_and_normal_last() {
        let c = |ino, state, train_count, last_used_ns| EvictCandidate {
            key: ExeKey { dev: 1, ino },
            state,
            train_count,
            last_used_ns,
        };
        let mut v = vec![
            c(1, ProfileState::Normal, 50, 1),
            c(2, ProfileState::Training, FEW_CALLS, 2),
            c(3, ProfileState::Training, 10, 9),
            c(4, ProfileState::Frozen, 90_000, 1),
            c(5, ProfileState::Training, 10, 3),
        ];
        eviction_order(&mut v);
        let order: Vec<u64> = v.iter().map(|c| c.key.ino).collect();
        // Few calls (least recently used first), then training and frozen by age,
        // then normal, however old.
        assert_eq!(order, vec![5, 3, 4, 2, 1]);
        assert_eq!(over_watermark(56, 64), 0, "below 90%");
        assert_eq!(over_watermark(58, 64), 10, "at 90%: down to 75% (48)");
        assert_eq!(over_watermark(1, 1), 1);
    }

    #[test]
    fn the_store_evicts_deleted_executables_then_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(&dir.path().join("state"))
            .unwrap()
            .with_capacity(10);
        let config = PhConfig::default();
        // An executable that exists, and one deleted after its profile was saved.
        let bin = dir.path().join("kept");
        std::fs::copy("/bin/true", &bin).unwrap();
        let gone = dir.path().join("gone");
        std::fs::copy("/bin/true", &gone).unwrap();
        let key_of = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            ExeKey {
                dev: m.dev(),
                ino: m.ino(),
            }
        };
        let (kept, deleted) = (key_of(&bin), key_of(&gone));
        let mut normal = PhProfile::new(kept, bin.to_str().unwrap(), &config);
        normal.state = ProfileState::Normal;
        store.save(&normal).unwrap();
        store
            .save(&PhProfile::new(deleted, gone.to_str().unwrap(), &config))
            .unwrap();
        // Training profiles of executables that exist, each its own copy, saved one
        // after the other (their files' times order them). The copies are made before
        // `gone` is deleted: a copy made after could get its inode number, hence its
        // profile key (the flake this once was).
        let lives: Vec<_> = (0..8)
            .map(|i| {
                let f = dir.path().join(format!("live{i}"));
                std::fs::copy("/bin/true", &f).unwrap();
                f
            })
            .collect();
        std::fs::remove_file(&gone).unwrap();
        let mut live = vec![];
        for f in &lives {
            live.push(key_of(f));
            store
                .save(&PhProfile::new(key_of(f), f.to_str().unwrap(), &config))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The 9th file (90% of 10) made the store look: the deleted executable went
        // (8 left, below 90%: nothing else). The 10th save made 9 again: down to 75%
        // (7), so the two least recently used training profiles went.
        let held: Vec<ExeKey> = store.load_all().0.iter().map(|p| p.key).collect();
        assert!(!held.contains(&deleted), "deleted executable evicted");
        assert!(held.contains(&kept), "the normal profile stays");
        assert!(!held.contains(&live[0]) && !held.contains(&live[1]));
        assert!(live[2..].iter().all(|k| held.contains(k)), "{held:?}");
        assert_eq!(held.len(), 7);
        // Evicting again finds nothing more to do.
        assert_eq!(store.evict().unwrap(), Evicted::default());
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn writes_refuse_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = write_atomic(&fifo, b"x").unwrap_err().to_string();
        assert!(e.contains("is a FIFO") && e.contains("refusing"), "{e}");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        let e = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        // Nothing left behind by the refused writes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn framed_reads_stop_at_the_header() {
        let dir = tempfile::tempdir().unwrap();
        // /dev/zero is read whole by fs::read (without end); here it is refused at once.
        let e = read_framed(Path::new("/dev/zero"), PH_MAGIC).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = read_framed(&fifo, PH_MAGIC).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        // A 2 GiB sparse file: refused after its header, not read.
        let sparse = dir.path().join("big.phprof");
        File::create(&sparse).unwrap().set_len(2 << 30).unwrap();
        let t = std::time::Instant::now();
        let e = read_framed(&sparse, PH_MAGIC).unwrap_err();
        assert!(
            matches!(e, ReadError::Format(ProfileError::NotAProfile)),
            "{e}"
        );
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
        // A valid header whose file is longer than announced.
        let p = learnt(ExeKey { dev: 1, ino: 1 }, &[1, 2, 3]);
        let mut bytes = p.to_bytes();
        bytes.extend_from_slice(&[0; 10]);
        std::fs::write(&sparse, &bytes).unwrap();
        let e = read_framed(&sparse, PH_MAGIC).unwrap_err().to_string();
        assert!(e.contains("10 unexpected bytes"), "{e}");
        std::fs::write(&sparse, p.to_bytes()).unwrap();
        assert_eq!(read_framed(&sparse, PH_MAGIC).unwrap(), p.to_bytes());
    }

    #[test]
    fn stale_temporary_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ProfileStore::open(&state).unwrap();
        // A process that is gone (reaped): its pid names no live process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let profiles = state.join("profiles");
        let stale = profiles.join(format!(".homeostat-{dead}-AbCdEf.tmp"));
        let live = profiles.join(format!(".homeostat-{}-AbCdEf.tmp", std::process::id()));
        let other = profiles.join("notes.tmp");
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        ProfileStore::open(&state).unwrap();
        assert!(
            !stale.exists(),
            "a dead process's temporary file is removed"
        );
        assert!(live.exists(), "a live process's temporary file is kept");
        assert!(other.exists(), "files not ours are left alone");
    }

    #[test]
    fn unsafe_state_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // profiles is a symlink to a folder elsewhere.
        let state = dir.path().join("linked");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join("profiles")).unwrap();
        let e = ProfileStore::open(&state).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("profiles"), "{e}");
        let mode = std::fs::metadata(&elsewhere).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "the link's target is not chmodded");

        // A pre-existing world-writable state dir (or sub-folder) is refused, not fixed.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ProfileStore::open(&open).unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") && e.contains("0777"),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o777);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(open.join("daemon")).unwrap();
        std::fs::set_permissions(open.join("daemon"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        let e = ProfileStore::open(&open).unwrap_err().to_string();
        assert!(e.contains("daemon") && e.contains("0775"), "{e}");
        std::fs::set_permissions(open.join("daemon"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        // Readable by others but ours: made private.
        ProfileStore::open(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);

        // Owned by someone else: needs root to set up.
        if euid() != 0 {
            println!(
                "skipping the foreign-owner case: needs root to chown (uid {})",
                euid()
            );
            return;
        }
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let e = ProfileStore::open(&foreign).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534") && e.contains("uid 0"),
            "{e}"
        );
        assert!(
            !foreign.join("profiles").exists(),
            "nothing written into it"
        );
    }

    #[test]
    fn concurrent_learners_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let key = ExeKey { dev: 5, ino: 7 };
        // Two monitors open the store and load the (missing) profile before either saves.
        let (a_store, b_store) = (
            ProfileStore::open(&state).unwrap(),
            ProfileStore::open(&state).unwrap(),
        );
        let a = learnt(key, &[1, 2, 3, 4, 1, 2, 3, 4]);
        let b = learnt(key, &[9, 3, 7, 9, 3, 7, 9]);
        a_store.save(&a).unwrap();
        b_store.save(&b).unwrap();
        let (all, errors) = ProfileStore::open(&state).unwrap().load_all();
        assert!(errors.is_empty(), "{errors:?}");
        let union = a.merged_with(&b).unwrap();
        assert_eq!(all[0].pairs(), union.pairs());
        assert_eq!(all[0].train_count, a.train_count + b.train_count);

        // A further save by `a` (after learning more) keeps `b`'s work and counts.
        let mut a2 = learnt(key, &[1, 2, 3, 4, 1, 2, 3, 4, 5, 6]);
        a2.train_count = a.train_count + 2;
        a_store.save(&a2).unwrap();
        let (all, _) = ProfileStore::open(&state).unwrap().load_all();
        assert_eq!(all[0].pairs(), a2.merged_with(&b).unwrap().pairs());
        assert_eq!(all[0].train_count, a.train_count + b.train_count + 2);

        // A save with no concurrent writer is written as is: an edit that drops pairs
        // (sensitize) is not undone by a merge.
        let store = ProfileStore::open(&state).unwrap();
        let (mut all, _) = store.load_all();
        all[0].sensitize("test", &mut |_| {});
        store.save(&all[0]).unwrap();
        let (reloaded, _) = store.load_all();
        assert_eq!(reloaded[0].raw_pairs(), all[0].raw_pairs());
    }
}
