//! A line reader with a length cap, shared by the line-oriented formats (UNM, strace).
//!
//! `BufRead::lines` would grow a `String` without bound on a file with no newlines and
//! rejects non-UTF-8 bytes (strace output can contain them). This reader hands out byte
//! slices, counts lines for error messages, and turns an over-long line into a
//! `TooLarge` error instead of an allocation the size of the file.

use std::io::{BufRead, Read};
use std::path::Path;

use crate::TraceError;

/// Longest line accepted by the line formats. Real strace lines are a few KiB at most
/// (strace truncates strings to 32 bytes by default); 1 MiB leaves room for `-s` runs.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads lines as byte slices without the line terminator.
pub(crate) struct LineReader<'p, R> {
    r: R,
    path: &'p Path,
    buf: Vec<u8>,
    line: u64,
}

/// One line: its content without `\n` / `\r\n`, and whether a newline ended it (false only
/// for a last line cut off at end of file).
pub(crate) struct Line<'a> {
    pub text: &'a [u8],
    pub terminated: bool,
    /// 1-based line number.
    pub no: u64,
}

impl<'p, R: BufRead> LineReader<'p, R> {
    pub fn new(r: R, path: &'p Path) -> Self {
        LineReader {
            r,
            path,
            buf: Vec::new(),
            line: 0,
        }
    }

    pub fn next_line(&mut self) -> Result<Option<Line<'_>>, TraceError> {
        self.buf.clear();
        // One byte over the cap tells "exactly at the cap" from "over it".
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.r)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| TraceError::io(self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let terminated = self.buf.last() == Some(&b'\n');
        let content_len = if terminated {
            self.buf.len() - 1
        } else {
            self.buf.len()
        };
        if content_len > MAX_LINE_BYTES {
            return Err(TraceError::too_large(
                self.path,
                Some(self.line),
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let mut text = &self.buf[..content_len];
        if let Some(stripped) = text.strip_suffix(b"\r") {
            text = stripped;
        }
        Ok(Some(Line {
            text,
            terminated,
            no: self.line,
        }))
    }
}

/// Splits on ASCII whitespace, skipping empty pieces.
pub(crate) fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

/// A short, printable rendering of a piece of input for error messages.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 60;
    let cut = bytes.len().min(MAX);
    let mut s = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_terminators() {
        let data = b"a b\r\n\nlast";
        let mut r = LineReader::new(&data[..], Path::new("f"));
        let l = r.next_line().unwrap().unwrap();
        assert_eq!((l.text, l.terminated), (&b"a b"[..], true));
        let l = r.next_line().unwrap().unwrap();
        assert_eq!(l.text, b"");
        let l = r.next_line().unwrap().unwrap();
        assert_eq!((l.text, l.terminated, l.no), (&b"last"[..], false, 3));
        assert!(r.next_line().unwrap().is_none());
    }

    #[test]
    fn over_long_line_is_too_large() {
        let mut data = vec![b'x'; MAX_LINE_BYTES + 1];
        data.push(b'\n');
        let mut r = LineReader::new(&data[..], Path::new("f"));
        let e = r.next_line().err().unwrap();
        assert!(matches!(e.kind, crate::TraceErrorKind::TooLarge(_)));
        assert_eq!(e.line, Some(1));

        let mut data = vec![b'x'; MAX_LINE_BYTES];
        data.push(b'\n');
        let mut r = LineReader::new(&data[..], Path::new("f"));
        assert_eq!(r.next_line().unwrap().unwrap().text.len(), MAX_LINE_BYTES);
    }
}
