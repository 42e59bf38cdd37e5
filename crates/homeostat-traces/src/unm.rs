//! The UNM format: the University of New Mexico system call datasets (Forrest,
//! Hofmeyr, Somayaji et al.: `sendmail`, `lpr`, `named`, ...).
//!
//! Each line is `pid syscall`, two decimal integers. One file holds several processes
//! whose lines interleave; each pid is one trace, in the order its lines appear. The
//! files carry no exit events, so every trace stays open until end of file, and memory
//! is bounded by the number of distinct pids, itself capped by
//! [`MAX_OPEN_TRACES`](crate::MAX_OPEN_TRACES).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use crate::lines::{excerpt, tokens, LineReader};
use crate::{
    check_open_traces, check_trace_len, Namer, ReadOptions, TraceError, Visitor, MAX_OPEN_TRACES,
};

struct Open {
    key: u64,
    name: String,
    count: u64,
}

pub(crate) fn read(
    path: &Path,
    file: &str,
    r: impl BufRead,
    opts: &ReadOptions,
    v: &mut dyn Visitor,
) -> Result<(), TraceError> {
    let mut lines = LineReader::new(r, path);
    let mut open: HashMap<u64, Open> = HashMap::new();
    // Pids in order of first appearance, so traces end in a stable order.
    let mut order: Vec<u64> = Vec::new();
    let mut namer = Namer::default();
    while let Some(line) = lines.next_line()? {
        let text = line.text;
        let mut toks = tokens(text);
        let (pid, nr) = match (toks.next(), toks.next(), toks.next()) {
            (None, _, _) => continue,
            (Some(pid), Some(nr), None) => (parse_u64(pid), parse_u64(nr)),
            _ => (None, None),
        };
        let lineno = line.no;
        let (pid, nr) = match (pid, nr.map(u32::try_from)) {
            (Some(pid), Some(Ok(nr))) => (pid, nr),
            (Some(_), Some(Err(_))) => {
                return Err(TraceError::parse(
                    path,
                    Some(lineno),
                    format!("system call number larger than {}", u32::MAX),
                ))
            }
            _ => {
                return Err(TraceError::parse(
                    path,
                    Some(lineno),
                    format!(
                        "expected `<pid> <syscall>` (two decimal numbers), found {}",
                        excerpt(text)
                    ),
                ))
            }
        };
        if open.len() >= MAX_OPEN_TRACES && !open.contains_key(&pid) {
            check_open_traces(open.len(), path, Some(lineno))?;
        }
        let t = open.entry(pid).or_insert_with(|| {
            let (key, name) = namer.next(format!("{file}:{pid}"));
            v.begin(key, &name);
            order.push(pid);
            Open {
                key,
                name,
                count: 0,
            }
        });
        check_trace_len(t.count, opts, path, Some(lineno), &t.name)?;
        t.count += 1;
        v.call(t.key, nr);
    }
    for pid in order {
        if let Some(t) = open.remove(&pid) {
            v.end(t.key);
        }
    }
    Ok(())
}

/// A decimal number of up to 19 digits (so it cannot overflow `u64`); `None` otherwise.
fn parse_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 19 || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        tok.iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use crate::{
        read_from, Format, ReadOptions, Trace, TraceCollector, TraceError, TraceErrorKind,
    };

    fn read(s: &str) -> Result<Vec<Trace>, TraceError> {
        let mut c = TraceCollector::new();
        read_from(
            "lpr.int",
            s.as_bytes(),
            Format::Unm,
            &ReadOptions::default(),
            &mut c,
        )?;
        Ok(c.into_traces())
    }

    #[test]
    fn interleaved_pids() {
        let t = read("551 4\n551 2\n552 66\n\n551 5\r\n552 4\n  553\t1").unwrap();
        assert_eq!(
            t,
            vec![
                Trace {
                    id: "lpr.int:551".into(),
                    calls: vec![4, 2, 5]
                },
                Trace {
                    id: "lpr.int:552".into(),
                    calls: vec![66, 4]
                },
                Trace {
                    id: "lpr.int:553".into(),
                    calls: vec![1]
                },
            ]
        );
        assert!(read("").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (input, line) in [
            ("1 2\n1 2 3\n", 2),
            ("1 2\n1\n", 2),
            ("x 2\n", 1),
            ("1 2\n\n1 y\n", 3),
            ("1 -2\n", 1),
            ("1 4294967296\n", 1),
            ("99999999999999999999 1\n", 1),
        ] {
            let e = read(input).unwrap_err();
            assert_eq!(e.line, Some(line), "{input:?}: {e}");
            assert!(matches!(e.kind, TraceErrorKind::Parse(_)));
            assert!(
                e.to_string().starts_with(&format!("lpr.int:{line}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn open_traces_are_capped() {
        use crate::{Visitor, MAX_OPEN_TRACES};
        use std::io::Read;

        /// Lines `pid 1` for distinct pids, generated as they are read: the input is
        /// never in memory, so only the reader's own state could grow.
        struct Pids(u64, Vec<u8>);
        impl Read for Pids {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.1.is_empty() {
                    self.0 += 1;
                    self.1 = format!("{} 1\n", self.0).into_bytes();
                }
                let n = buf.len().min(self.1.len());
                buf[..n].copy_from_slice(&self.1[..n]);
                self.1.drain(..n);
                Ok(n)
            }
        }
        #[derive(Default)]
        struct Count(usize, usize);
        impl Visitor for Count {
            fn begin(&mut self, _: u64, _: &str) {
                self.0 += 1;
            }
            fn call(&mut self, _: u64, _: u32) {}
            fn end(&mut self, _: u64) {
                self.1 += 1;
            }
        }
        // An endless stream of new pids ends with an error at the cap, not out of memory.
        let mut v = Count::default();
        let r = std::io::BufReader::new(Pids(0, vec![]));
        let e = read_from("many", r, Format::Unm, &ReadOptions::default(), &mut v).unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)));
        assert_eq!(e.line, Some(MAX_OPEN_TRACES as u64 + 1));
        assert!(e.to_string().contains("MAX_OPEN_TRACES"), "{e}");
        assert_eq!(v.0, MAX_OPEN_TRACES);

        // Up to the cap, and any number of lines of open pids, is fine.
        let mut text = String::new();
        for pid in 1..=MAX_OPEN_TRACES {
            text.push_str(&format!("{pid} 1\n"));
        }
        text.push_str("1 2\n");
        let mut v = Count::default();
        read_from(
            "full",
            text.as_bytes(),
            Format::Unm,
            &ReadOptions::default(),
            &mut v,
        )
        .unwrap();
        assert_eq!((v.0, v.1), (MAX_OPEN_TRACES, MAX_OPEN_TRACES));
    }

    #[test]
    fn per_trace_cap() {
        let opts = ReadOptions {
            max_trace_calls: 2,
            ..ReadOptions::default()
        };
        let mut c = TraceCollector::new();
        let e = read_from(
            "f",
            &b"1 1\n2 1\n1 1\n1 1\n"[..],
            Format::Unm,
            &opts,
            &mut c,
        )
        .unwrap_err();
        assert!(matches!(e.kind, TraceErrorKind::TooLarge(_)));
        assert_eq!(e.line, Some(4));
    }
}
