//! The one error type every reader returns.
//!
//! Trace files come from many places (datasets, strace runs, live capture), and when one
//! is bad the user needs to find the spot quickly. So every error carries the file and,
//! for line formats, the 1-based line number, and prints as one `file:line: problem`
//! line that editors and terminals can jump to. Binary recordings have no lines; their
//! errors put the byte offset into the message instead.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A trace could not be read: which file, which line (when the format has lines), and why.
///
/// Displays as `{path}:{line}: {kind}`, or `{path}: {kind}` when there is no line.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {kind}", path.display(), LineSuffix(*line))]
pub struct TraceError {
    /// The file being read (for [`crate::read_from`], the name it was given).
    pub path: PathBuf,
    /// 1-based line number of the offending line, for line-oriented formats.
    pub line: Option<u64>,
    /// What went wrong.
    pub kind: TraceErrorKind,
}

/// What went wrong while reading a trace.
///
/// The I/O error is shown in the message rather than exposed as a `source`, so that
/// error-chain printers do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum TraceErrorKind {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(io::Error),
    /// The content does not follow the format.
    #[error("{0}")]
    Parse(String),
    /// A size limit was exceeded (file, line, header or per-trace call count). The limits
    /// keep memory bounded on hostile or corrupt input.
    #[error("{0}")]
    TooLarge(String),
    /// Format detection failed and no format was given.
    #[error(
        "cannot tell the trace format from the first bytes \
         (expected adfa, unm, strace or recording; pass the format explicitly)"
    )]
    UnknownFormat,
    /// A dataset directory does not have the expected layout (for example ADFA-LD
    /// without `Training_Data_Master/`).
    #[error("{0}")]
    Layout(String),
}

struct LineSuffix(Option<u64>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}

impl TraceError {
    /// An error about `path` at an optional line.
    pub fn new(path: impl Into<PathBuf>, line: Option<u64>, kind: TraceErrorKind) -> Self {
        TraceError {
            path: path.into(),
            line,
            kind,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, err: io::Error) -> Self {
        TraceError::new(path, None, TraceErrorKind::Io(err))
    }

    /// A format error on `path` at `line`.
    pub fn parse(path: &Path, line: Option<u64>, msg: impl Into<String>) -> Self {
        TraceError::new(path, line, TraceErrorKind::Parse(msg.into()))
    }

    /// A size-limit error on `path` at `line`.
    pub fn too_large(path: &Path, line: Option<u64>, msg: impl Into<String>) -> Self {
        TraceError::new(path, line, TraceErrorKind::TooLarge(msg.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_line() {
        let e = TraceError::parse(Path::new("a/b.txt"), Some(7), "bad token \"x\"");
        assert_eq!(e.to_string(), "a/b.txt:7: bad token \"x\"");
        let e = TraceError::new("c.rec", None, TraceErrorKind::UnknownFormat);
        assert!(e
            .to_string()
            .starts_with("c.rec: cannot tell the trace format"));
        let e = TraceError::io(
            Path::new("missing"),
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "missing: gone");
    }
}
