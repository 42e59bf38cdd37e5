//! File-level behaviour: format detection, directory expansion, trace naming and the
//! `file:line: problem` error messages.

use std::fs;
use std::path::{Path, PathBuf};

use homeostat_traces::recording::{Header, Writer};
use homeostat_traces::{
    expand_inputs, read_file, read_traces, Arch, Format, ReadOptions, Trace, TraceCollector,
    TraceErrorKind, Visitor,
};

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    p
}

fn ids(traces: &[Trace]) -> Vec<&str> {
    traces.iter().map(|t| t.id.as_str()).collect()
}

fn recording_bytes() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &Header::new(Arch::X86_64, "h", 0)).unwrap();
    w.exe(1, 0, 0, b"/bin/true").unwrap();
    w.syscall(7, 7, 1, 231, 1).unwrap();
    w.finish().unwrap()
}

#[test]
fn detects_every_format_and_names_traces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a/UTD-0001.txt", b"6 6 63");
    write(d, "b/lpr.int", b"10 4\n11 5\n10 6\n");
    write(
        d,
        "c/run.strace",
        b"42  read(0, \"\", 1) = 0\n42  +++ exited with 0 +++\n",
    );
    write(d, "d/cap.hrec", &recording_bytes());
    write(d, "e/empty.txt", b"");
    write(d, "a/.hidden", b"garbage");
    let traces = read_traces(d, &ReadOptions::default()).unwrap();
    assert_eq!(
        ids(&traces),
        [
            "UTD-0001.txt",
            "lpr.int:10",
            "lpr.int:11",
            "run.strace:42",
            "cap.hrec:7"
        ]
    );
    assert_eq!(traces[1].calls, vec![4, 6]);
    assert_eq!(traces[3].calls, vec![0]);
    assert_eq!(traces[4].calls, vec![231]);
}

#[test]
fn explicit_format_overrides_detection() {
    let dir = tempfile::tempdir().unwrap();
    // Two numbers per line looks like UNM, but the user says ADFA.
    let p = write(dir.path(), "t.txt", b"1 2\n3 4\n");
    let opts = ReadOptions {
        format: Some(Format::Adfa),
        ..ReadOptions::default()
    };
    let t = read_traces(&p, &opts).unwrap();
    assert_eq!(t[0].calls, vec![1, 2, 3, 4]);
    // An empty file given as ADFA is one empty trace.
    let p = write(dir.path(), "e.txt", b"");
    assert_eq!(read_traces(&p, &opts).unwrap()[0].calls, Vec::<u32>::new());
}

#[test]
fn strace_arch_option_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "x.strace",
        b"open(\"/etc/passwd\", O_RDONLY) = 3\n",
    );
    let opts = ReadOptions {
        arch: Arch::I386,
        ..ReadOptions::default()
    };
    assert_eq!(read_traces(&p, &opts).unwrap()[0].calls, vec![5]);
    assert_eq!(
        read_traces(&p, &ReadOptions::default()).unwrap()[0].calls,
        vec![2]
    );
}

#[test]
fn errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write(d, "bad.unm", b"1 2\n1 2\n1 two\n");
    let e = read_traces(&p, &ReadOptions::default()).unwrap_err();
    assert_eq!(e.path, p);
    assert_eq!(e.line, Some(3));
    assert!(
        e.to_string().starts_with(&format!("{}:3: ", p.display())),
        "{e}"
    );

    let p = write(d, "prose.txt", b"Dear diary,\ntoday I traced.\n");
    let e = read_traces(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::UnknownFormat));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot tell", p.display())),
        "{e}"
    );

    let missing = d.join("nope");
    let e = read_traces(&missing, &ReadOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::Io(_)));
    assert_eq!(e.path, missing);

    let e = read_file(d, &ReadOptions::default(), &mut TraceCollector::new()).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");

    let mut rec = recording_bytes();
    rec.push(0xee);
    let p = write(d, "bad.hrec", &rec);
    let e = read_traces(&p, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}: record at byte offset {}: unknown record tag 238",
            p.display(),
            rec.len() - 1
        )),
        "{e}"
    );
}

#[test]
fn expand_inputs_sorts_recurses_and_skips_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "z/2.txt", b"1");
    write(d, "z/10.txt", b"1");
    write(d, "a/b/c.txt", b"1");
    write(d, ".git/config", b"x");
    write(d, "a/.swp", b"x");
    let single = write(d, "single", b"1");
    let got = expand_inputs(&[d.join("z"), single.clone(), d.to_path_buf()]).unwrap();
    let rel: Vec<String> = got
        .iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        [
            "z/10.txt",
            "z/2.txt",
            "single",
            "a/b/c.txt",
            "single",
            "z/10.txt",
            "z/2.txt"
        ]
    );
    assert!(expand_inputs(&[d.join("missing")]).is_err());
}

/// Checks the visitor protocol: begin once, calls only inside, end once, unique keys.
#[derive(Default)]
struct Strict {
    open: std::collections::HashSet<u64>,
    seen: std::collections::HashSet<u64>,
    events: usize,
}

impl Visitor for Strict {
    fn begin(&mut self, key: u64, _: &str) {
        assert!(self.seen.insert(key), "key {key} reused");
        self.open.insert(key);
    }
    fn call(&mut self, key: u64, _: u32) {
        assert!(self.open.contains(&key), "call outside trace {key}");
        self.events += 1;
    }
    fn end(&mut self, key: u64) {
        assert!(self.open.remove(&key), "end of unopened trace {key}");
    }
}

#[test]
fn visitor_protocol_holds_for_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sh-ls.strace");
    let files = [
        write(d, "a", b"1 2 3"),
        write(d, "b", b"1 2\n2 3\n1 4\n"),
        fixture,
        write(d, "d", &recording_bytes()),
    ];
    for f in &files {
        let mut v = Strict::default();
        read_file(f, &ReadOptions::default(), &mut v).unwrap();
        assert!(v.open.is_empty(), "{}: traces left open", f.display());
        assert!(v.events > 0);
    }
}
