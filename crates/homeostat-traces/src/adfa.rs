//! ADFA-LD: the reader for its one-trace-per-file format, and a loader for the dataset.
//!
//! ADFA-LD (Creech and Hu, 2013) is the standard modern benchmark for system call
//! anomaly detection: normal training and validation traces plus attack traces, recorded
//! on 32-bit x86 Ubuntu (so the numbers follow the i386 table). Each file is one trace,
//! a line of space-separated decimal numbers.
//!
//! Evaluation loads the whole dataset (5,951 small files) again and again, so [`load`]
//! is built for speed: one `read` per file, a hand-written byte-level decimal parser
//! instead of `split` + `parse` per token, and the files spread over a few threads. On
//! the project's 2-core machine it loads the dataset in a few tens of milliseconds.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{
    check_trace_len, ReadOptions, Trace, TraceError, TraceErrorKind, Visitor, MAX_ADFA_FILE_BYTES,
};

/// The three parts of ADFA-LD, as loaded by [`load`].
#[derive(Clone, Debug, Default)]
pub struct AdfaDataset {
    /// `Training_Data_Master/`: normal traces for training (833 in ADFA-LD).
    pub training: Vec<Trace>,
    /// `Validation_Data_Master/`: normal traces for measuring false positives (4,372).
    pub validation: Vec<Trace>,
    /// `Attack_Data_Master/<Type>_<n>/`: traces recorded during attacks (746).
    pub attacks: Vec<AttackTrace>,
}

/// One trace from an attack run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttackTrace {
    /// The attack type: the run folder name minus its trailing `_<n>`, e.g. `Adduser`,
    /// `Hydra_FTP`, `Web_Shell`.
    pub attack_type: String,
    /// The run folder name, e.g. `Hydra_FTP_3`.
    pub run: String,
    /// The trace; its id is the file name.
    pub trace: Trace,
}

/// Load an ADFA-LD tree: `Training_Data_Master/`, `Validation_Data_Master/`,
/// `Attack_Data_Master/<Type>_<n>/`.
///
/// Training and validation traces are sorted by file name. Attack runs are sorted by
/// attack type and then run number (`Adduser_2` before `Adduser_10`), and traces within a
/// run by file name. Hidden files are skipped, as are plain files directly inside
/// `Attack_Data_Master/`. A missing folder is a [`TraceErrorKind::Layout`] error.
pub fn load(dir: &Path) -> Result<AdfaDataset, TraceError> {
    let training_dir = require_dir(dir, "Training_Data_Master")?;
    let validation_dir = require_dir(dir, "Validation_Data_Master")?;
    let attack_dir = require_dir(dir, "Attack_Data_Master")?;

    let training_files = list(&training_dir, EntryKind::File)?;
    let validation_files = list(&validation_dir, EntryKind::File)?;
    let mut runs: Vec<(String, Option<u64>, String)> = list(&attack_dir, EntryKind::Dir)?
        .into_iter()
        .map(|name| {
            let run = name.to_string_lossy().into_owned();
            let (ty, n) = split_run(&run);
            (ty.to_string(), n, run)
        })
        .collect();
    runs.sort();

    // One flat job list, so the threads balance across all three parts.
    let mut jobs: Vec<PathBuf> = Vec::new();
    jobs.extend(training_files.iter().map(|f| training_dir.join(f)));
    jobs.extend(validation_files.iter().map(|f| validation_dir.join(f)));
    let mut attack_files: Vec<(usize, OsString)> = Vec::new();
    for (i, (_, _, run)) in runs.iter().enumerate() {
        let run_dir = attack_dir.join(run);
        for f in list(&run_dir, EntryKind::File)? {
            jobs.push(run_dir.join(&f));
            attack_files.push((i, f));
        }
    }

    let mut calls = parse_files(&jobs)?.into_iter();
    let mut take = |names: &[OsString]| -> Vec<Trace> {
        names
            .iter()
            .zip(calls.by_ref())
            .map(|(name, calls)| Trace {
                id: name.to_string_lossy().into_owned(),
                calls,
            })
            .collect()
    };
    let training = take(&training_files);
    let validation = take(&validation_files);
    let attack_names: Vec<OsString> = attack_files.iter().map(|(_, f)| f.clone()).collect();
    let attacks = attack_files
        .iter()
        .zip(take(&attack_names))
        .map(|((run_idx, _), trace)| {
            let (ty, _, run) = &runs[*run_idx];
            AttackTrace {
                attack_type: ty.clone(),
                run: run.clone(),
                trace,
            }
        })
        .collect();
    Ok(AdfaDataset {
        training,
        validation,
        attacks,
    })
}

/// `Hydra_FTP_3` -> (`Hydra_FTP`, Some(3)); a name without a numeric suffix is all type.
fn split_run(run: &str) -> (&str, Option<u64>) {
    match run.rsplit_once('_') {
        Some((ty, n))
            if !ty.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (ty, n.parse().ok())
        }
        _ => (run, None),
    }
}

fn require_dir(dir: &Path, sub: &str) -> Result<PathBuf, TraceError> {
    let p = dir.join(sub);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(TraceError::new(
            dir,
            None,
            TraceErrorKind::Layout(format!(
                "not an ADFA-LD directory: {sub}/ is missing (expected Training_Data_Master/, \
                 Validation_Data_Master/ and Attack_Data_Master/<Type>_<n>/)"
            )),
        ))
    }
}

#[derive(PartialEq)]
enum EntryKind {
    File,
    Dir,
}

/// Names of the non-hidden entries of one kind in `dir`, sorted.
fn list(dir: &Path, kind: EntryKind) -> Result<Vec<OsString>, TraceError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| TraceError::io(dir, e))? {
        let entry = entry.map_err(|e| TraceError::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let mut ft = entry.file_type().map_err(|e| TraceError::io(dir, e))?;
        if ft.is_symlink() {
            let p = entry.path();
            ft = fs::metadata(&p)
                .map_err(|e| TraceError::io(&p, e))?
                .file_type();
        }
        let matches = match kind {
            EntryKind::File => ft.is_file(),
            EntryKind::Dir => ft.is_dir(),
        };
        if matches {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Parse every file, in parallel, returning the calls in job order. On failure the
/// error of the first failing file (in job order) is returned, so errors are stable.
fn parse_files(jobs: &[PathBuf]) -> Result<Vec<Vec<u32>>, TraceError> {
    // Small files: hand them out in batches so the shared counter is not contended.
    const BATCH: usize = 32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(jobs.len().div_ceil(BATCH).max(1));
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Result<Vec<u32>, TraceError>)> = Vec::new();
        let mut buf = Vec::new();
        loop {
            let start = next.fetch_add(BATCH, Ordering::Relaxed);
            if start >= jobs.len() {
                break;
            }
            for (i, path) in jobs.iter().enumerate().skip(start).take(BATCH) {
                done.push((i, parse_file(path, &mut buf)));
            }
        }
        done
    };
    let results: Vec<(usize, Result<Vec<u32>, TraceError>)> = if threads <= 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mut all = work();
            for h in handles {
                match h.join() {
                    Ok(r) => all.extend(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            all
        })
    };
    let mut slots: Vec<Option<Result<Vec<u32>, TraceError>>> =
        (0..jobs.len()).map(|_| None).collect();
    for (i, r) in results {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .zip(jobs)
        .map(|(slot, path)| match slot {
            Some(r) => r,
            // Unreachable by construction; an error beats a panic all the same.
            None => Err(TraceError::parse(path, None, "file was not parsed")),
        })
        .collect()
}

fn parse_file(path: &Path, buf: &mut Vec<u8>) -> Result<Vec<u32>, TraceError> {
    let f = File::open(path).map_err(|e| TraceError::io(path, e))?;
    let len = f.metadata().map_err(|e| TraceError::io(path, e))?.len();
    if len > MAX_ADFA_FILE_BYTES {
        return Err(too_large_error(path));
    }
    buf.clear();
    // The file may grow between stat and read; `take` keeps the limit honest.
    f.take(MAX_ADFA_FILE_BYTES + 1)
        .read_to_end(buf)
        .map_err(|e| TraceError::io(path, e))?;
    if buf.len() as u64 > MAX_ADFA_FILE_BYTES {
        return Err(too_large_error(path));
    }
    // Every number takes at least two bytes with its separator, so this never regrows.
    let mut calls = Vec::with_capacity(buf.len() / 2 + 1);
    let mut p = NumberParser::new();
    let fail = |e: ParseFail| e.into_error(path);
    let mut push = |nr, _line| {
        calls.push(nr);
        Ok(())
    };
    p.feed(buf, &mut push).map_err(fail)?;
    p.finish(&mut push).map_err(fail)?;
    Ok(calls)
}

pub(crate) fn too_large_error(path: &Path) -> TraceError {
    TraceError::too_large(
        path,
        None,
        format!("ADFA trace file larger than {MAX_ADFA_FILE_BYTES} bytes"),
    )
}

/// Streaming reader behind [`crate::read_file`] for [`crate::Format::Adfa`].
pub(crate) fn read(
    path: &Path,
    name: &str,
    mut r: impl BufRead,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    const KEY: u64 = 0;
    v.begin(KEY, name);
    let mut p = NumberParser::new();
    let mut count = 0u64;
    let mut total = 0u64;
    // The callback cannot return our error through the parser, so it parks it here.
    let mut cap_err: Option<TraceError> = None;
    let mut emit = |nr: u32, line: u64| -> Result<(), Stop> {
        if let Err(e) = check_trace_len(count, opts, path, Some(line), &name) {
            cap_err = Some(e);
            return Err(Stop);
        }
        count += 1;
        v.call(KEY, nr);
        Ok(())
    };
    let outcome = loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(TraceError::io(path, e)),
        };
        if chunk.is_empty() {
            break p.finish(&mut emit);
        }
        total += chunk.len() as u64;
        if total > MAX_ADFA_FILE_BYTES {
            return Err(too_large_error(path));
        }
        if let Err(e) = p.feed(chunk, &mut emit) {
            break Err(e);
        }
        let n = chunk.len();
        r.consume(n);
    };
    if let Some(e) = cap_err {
        return Err(e);
    }
    outcome.map_err(|e| e.into_error(path))?;
    v.end(KEY);
    Ok(())
}

/// The callback asked the parser to stop (it keeps its own error).
pub(crate) struct Stop;

/// Why the number parser stopped.
#[derive(Debug)]
pub(crate) enum ParseFail {
    BadByte { line: u64, byte: u8 },
    Overflow { line: u64 },
    Stopped,
}

impl ParseFail {
    fn into_error(self, path: &Path) -> TraceError {
        match self {
            ParseFail::BadByte { line, byte } => TraceError::parse(
                path,
                Some(line),
                format!(
                    "unexpected character {:?} (ADFA traces hold only decimal system call \
                     numbers separated by whitespace)",
                    char::from(byte)
                ),
            ),
            ParseFail::Overflow { line } => TraceError::parse(
                path,
                Some(line),
                format!("system call number larger than {}", u32::MAX),
            ),
            ParseFail::Stopped => TraceError::parse(path, None, "reading stopped"),
        }
    }
}

/// Incremental parser for whitespace-separated decimal `u32`s.
///
/// It works on arbitrary chunks (a number may straddle two `fill_buf` calls), keeps no
/// buffer, and looks at each byte once: this loop is most of the cost of [`load`].
pub(crate) struct NumberParser {
    value: u64,
    in_number: bool,
    /// 1-based line of the next byte.
    line: u64,
}

impl NumberParser {
    pub fn new() -> Self {
        NumberParser {
            value: 0,
            in_number: false,
            line: 1,
        }
    }

    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut emit: impl FnMut(u32, u64) -> Result<(), Stop>,
    ) -> Result<(), ParseFail> {
        for &b in chunk {
            let d = b.wrapping_sub(b'0');
            if d < 10 {
                // value <= u32::MAX before this step, so this cannot overflow u64.
                self.value = self.value * 10 + u64::from(d);
                if self.value > u64::from(u32::MAX) {
                    return Err(ParseFail::Overflow { line: self.line });
                }
                self.in_number = true;
            } else if matches!(b, b' ' | b'\n' | b'\t' | b'\r' | 0x0b | 0x0c) {
                if self.in_number {
                    emit(self.value as u32, self.line).map_err(|Stop| ParseFail::Stopped)?;
                    self.value = 0;
                    self.in_number = false;
                }
                if b == b'\n' {
                    self.line += 1;
                }
            } else {
                return Err(ParseFail::BadByte {
                    line: self.line,
                    byte: b,
                });
            }
        }
        Ok(())
    }

    /// End of input: emit a number not followed by whitespace (ADFA files have no
    /// trailing newline).
    pub fn finish(
        &mut self,
        mut emit: impl FnMut(u32, u64) -> Result<(), Stop>,
    ) -> Result<(), ParseFail> {
        if self.in_number {
            self.in_number = false;
            emit(self.value as u32, self.line).map_err(|Stop| ParseFail::Stopped)?;
            self.value = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_from, Format, TraceCollector};

    fn read_str(s: &str) -> Result<Vec<Trace>, TraceError> {
        read_opts(s, &ReadOptions::default())
    }

    fn read_opts(s: &str, opts: &ReadOptions) -> Result<Vec<Trace>, TraceError> {
        let mut c = TraceCollector::new();
        read_from("UTD-0001.txt", s.as_bytes(), Format::Adfa, opts, &mut c)?;
        Ok(c.into_traces())
    }

    #[test]
    fn one_line_no_trailing_newline() {
        let t = read_str("6 6 63 6 42 120 252").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].id, "UTD-0001.txt");
        assert_eq!(t[0].calls, vec![6, 6, 63, 6, 42, 120, 252]);
    }

    #[test]
    fn newlines_tabs_and_unknown_numbers() {
        let t = read_str("  3 4\n\n5\t9999 \r\n4294967295\n").unwrap();
        assert_eq!(t[0].calls, vec![3, 4, 5, 9999, u32::MAX]);
        let t = read_str("").unwrap();
        assert_eq!(t[0].calls, Vec::<u32>::new());
    }

    #[test]
    fn bad_token_has_line() {
        let e = read_str("1 2\n3 x4\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(matches!(e.kind, TraceErrorKind::Parse(_)));
        assert!(e
            .to_string()
            .starts_with("UTD-0001.txt:2: unexpected character 'x'"));
        let e = read_str("1 -2").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn number_beyond_u32_is_error() {
        let e = read_str("1\n2\n4294967296").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("larger than 4294967295"), "{e}");
        assert!(read_str("99999999999999999999999999").is_err());
    }

    #[test]
    fn numbers_straddling_chunks() {
        // A 1-byte BufReader forces every number across chunk boundaries.
        let data = b"123 45 6789 0";
        let r = std::io::BufReader::with_capacity(1, &data[..]);
        let mut c = TraceCollector::new();
        read_from("f", r, Format::Adfa, &ReadOptions::default(), &mut c).unwrap();
        assert_eq!(c.into_traces()[0].calls, vec![123, 45, 6789, 0]);
    }

    #[test]
    fn trace_call_cap() {
        let opts = ReadOptions {
            max_trace_calls: 3,
            ..ReadOptions::default()
        };
        assert_eq!(read_opts("1 2 3", &opts).unwrap()[0].calls.len(), 3);
        let e = read_opts("1 2 3 4", &opts).unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)), "{e}");
    }

    #[test]
    fn run_names() {
        assert_eq!(split_run("Hydra_FTP_3"), ("Hydra_FTP", Some(3)));
        assert_eq!(split_run("Adduser_10"), ("Adduser", Some(10)));
        assert_eq!(split_run("Odd"), ("Odd", None));
        assert_eq!(split_run("Odd_"), ("Odd_", None));
        assert_eq!(split_run("_7"), ("_7", None));
    }

    #[test]
    fn load_small_tree_and_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = load(root).unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::Layout(_)));
        assert!(
            e.to_string().contains("Training_Data_Master/ is missing"),
            "{e}"
        );

        for d in [
            "Training_Data_Master",
            "Validation_Data_Master",
            "Attack_Data_Master/Web_Shell_10",
            "Attack_Data_Master/Web_Shell_2",
            "Attack_Data_Master/Adduser_1",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let w = |p: &str, s: &str| fs::write(root.join(p), s).unwrap();
        w("Training_Data_Master/UTD-0002.txt", "3 4");
        w("Training_Data_Master/UTD-0001.txt", "1 2 ");
        w("Training_Data_Master/.hidden", "junk");
        w("Validation_Data_Master/UVD-0001.txt", "5");
        w("Attack_Data_Master/Web_Shell_10/UAD-WS-10-1.txt", "10");
        w("Attack_Data_Master/Web_Shell_2/UAD-WS-2-1.txt", "2");
        w("Attack_Data_Master/Adduser_1/UAD-Adduser-1-2.txt", "12");
        w("Attack_Data_Master/Adduser_1/UAD-Adduser-1-1.txt", "11");
        w("Attack_Data_Master/README", "not a run");

        let ds = load(root).unwrap();
        let ids: Vec<&str> = ds.training.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["UTD-0001.txt", "UTD-0002.txt"]);
        assert_eq!(ds.training[0].calls, vec![1, 2]);
        assert_eq!(ds.validation[0].calls, vec![5]);
        let runs: Vec<(&str, &str, &str)> = ds
            .attacks
            .iter()
            .map(|a| (a.attack_type.as_str(), a.run.as_str(), a.trace.id.as_str()))
            .collect();
        assert_eq!(
            runs,
            [
                ("Adduser", "Adduser_1", "UAD-Adduser-1-1.txt"),
                ("Adduser", "Adduser_1", "UAD-Adduser-1-2.txt"),
                ("Web_Shell", "Web_Shell_2", "UAD-WS-2-1.txt"),
                ("Web_Shell", "Web_Shell_10", "UAD-WS-10-1.txt"),
            ]
        );
        assert_eq!(ds.attacks[3].trace.calls, vec![10]);

        w("Validation_Data_Master/UVD-0002.txt", "5 6\n7 oops");
        let e = load(root).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.path.ends_with("Validation_Data_Master/UVD-0002.txt"),
            "{e}"
        );
    }
}
