//! File-system edges of the CLI: atomic profile writes (never over a special file)
//! and defended profile reads (bounded by the header).

use std::borrow::Cow;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use homeostat_core::profile::MAGIC;
use homeostat_core::{DetectorProfile, Registry};

/// Writes `bytes` to `path` atomically (the state directory's writer: temporary file,
/// fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(homeostat_monitor::write_atomic(path, bytes)?)
}

/// Reads and validates a profile of any model `reg` knows, naming the file in every
/// error. Only as many bytes as the header announces are read, and only from a regular
/// file: `/dev/zero` or a huge foreign file is refused after its first 24 bytes.
pub fn read_profile(path: &Path, reg: &Registry) -> Result<DetectorProfile> {
    let what = || format!("reading profile {}", path.display());
    let bytes = homeostat_monitor::read_framed(path, MAGIC).with_context(what)?;
    let p = reg.load_profile(&bytes).with_context(what)?;
    // Call numbers mean nothing without their architecture: testing with a profile of
    // an unknown one would compare numbers of different tables.
    p.meta
        .arch
        .parse::<homeostat_syscalls::Arch>()
        .map_err(|e| anyhow!("{}: profile has an {e}", what()))?;
    Ok(p)
}

/// Text read from a file (a profile's source or path, a trace's name), safe to print
/// on a terminal: control characters (escape sequences, newlines, ...) and the bidi
/// overrides that reorder what is shown are printed escaped (`\u{1b}`, `\n`)
/// instead of acting on the terminal.
pub fn printable(s: &str) -> Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Profile, ProfileMeta};

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.profile");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn profile_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.profile");
        std::fs::write(&p, b"HMSTPROF\x01\x00").unwrap();
        let e = format!("{:#}", read_profile(&p, &Registry::builtin()).unwrap_err());
        assert!(e.contains("bad.profile") && e.contains("truncated"), "{e}");
        let missing = format!(
            "{:#}",
            read_profile(&dir.path().join("nope"), &Registry::builtin()).unwrap_err()
        );
        assert!(
            missing.contains("nope") && missing.contains("No such file"),
            "{missing}"
        );

        let mut m = AnyModel::new(ModelSpec::new(ModelKind::Pairs)).unwrap();
        m.train_trace(&[1, 2, 3]);
        let mut meta = ProfileMeta {
            arch: "x86_64".into(),
            ..ProfileMeta::default()
        };
        let good = Profile::new(meta.clone(), m.clone());
        write_atomic(&p, &good.to_bytes()).unwrap();
        assert_eq!(
            read_profile(&p, &Registry::builtin())
                .unwrap()
                .detector
                .profile_size(),
            3
        );

        meta.arch = "pdp11".into();
        write_atomic(&p, &Profile::new(meta, m).to_bytes()).unwrap();
        let e = format!("{:#}", read_profile(&p, &Registry::builtin()).unwrap_err());
        assert!(
            e.contains("bad.profile") && e.contains("unknown architecture \"pdp11\""),
            "{e}"
        );
    }

    #[test]
    fn printable_escapes_what_acts_on_a_terminal() {
        assert!(matches!(printable("ls -l /tmp"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}[31mred\nb\u{202e}c\u{7}"),
            "a\\u{1b}[31mred\\nb\\u{202e}c\\u{7}"
        );
    }
}
