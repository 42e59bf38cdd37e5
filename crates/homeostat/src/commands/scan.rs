//! `homeostat scan`: score traces against a profile, call by call, one line per trace.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use homeostat_core::{AnyModel, StreamScorer};
use homeostat_traces::{expand_inputs, read_file, Visitor};
use serde::Serialize;

use crate::cli::ScanArgs;
use crate::fsutil::read_profile;

/// One output line.
#[derive(Serialize)]
struct Line<'a> {
    id: &'a str,
    calls: u64,
    mismatches: u64,
    max_lfc: u32,
    rate: f64,
}

/// Streams each trace through a [`StreamScorer`] and prints it when it ends, so a scan
/// of a huge interleaved file holds only the live traces' state.
struct Scanner<'a, W: Write> {
    model: &'a AnyModel,
    open: HashMap<u64, (String, StreamScorer)>,
    out: W,
    json: bool,
    error: Option<std::io::Error>,
}

impl<W: Write> Visitor for Scanner<'_, W> {
    fn begin(&mut self, key: u64, name: &str) {
        self.open
            .insert(key, (name.to_string(), StreamScorer::new(self.model)));
    }
    fn call(&mut self, key: u64, syscall: u32) {
        if let Some((_, s)) = self.open.get_mut(&key) {
            s.call(self.model, syscall);
        }
    }
    fn end(&mut self, key: u64) {
        let Some((id, s)) = self.open.remove(&key) else {
            return;
        };
        let score = s.finish(self.model);
        let line = Line {
            id: &id,
            calls: score.calls,
            mismatches: score.mismatches,
            max_lfc: score.max_lfc,
            rate: score.rate(),
        };
        let r = if self.json {
            serde_json::to_writer(&mut self.out, &line)
                .map_err(std::io::Error::from)
                .and_then(|_| self.out.write_all(b"\n"))
        } else {
            writeln!(
                self.out,
                "{:<40} {:>9} {:>10} {:>7} {:>8.4}",
                crate::fsutil::printable(line.id),
                line.calls,
                line.mismatches,
                line.max_lfc,
                line.rate
            )
        };
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e);
        }
    }
}

pub fn run(a: ScanArgs) -> Result<()> {
    let profile = read_profile(&a.profile)?;
    let opts = super::read_options(&a.input);
    let files = expand_inputs(&a.inputs)?;
    let stdout = std::io::stdout().lock();
    let mut s = Scanner {
        model: &profile.model,
        open: HashMap::new(),
        out: std::io::BufWriter::new(stdout),
        json: a.json,
        error: None,
    };
    if !a.json {
        writeln!(
            s.out,
            "{:<40} {:>9} {:>10} {:>7} {:>8}",
            "id", "calls", "mismatches", "max_lfc", "rate"
        )?;
    }
    for f in &files {
        read_file(f, &opts, &mut s)?;
        if let Some(e) = s.error.take() {
            // A closed pipe (e.g. `| head`) ends the scan quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    match s.out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
