//! `homeostat scan`: score traces against a profile, call by call, one line per trace.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use homeostat_core::symbols::Symbolizer;
use homeostat_core::{Detector, TraceStream};
use homeostat_traces::{expand_inputs, read_file, Symbolize, Visitor};

use crate::cli::ScanArgs;

/// Streams each trace through its model's [`TraceStream`] and prints it when it
/// ends, so a scan of a huge interleaved file holds only the live traces' state
/// (a cursor, a count vector, a hidden state: bounded per trace).
struct Scanner<'a, W: Write> {
    model: &'a dyn Detector,
    names: Vec<String>,
    open: HashMap<u64, (String, Box<dyn TraceStream + 'a>)>,
    out: W,
    json: bool,
    error: Option<std::io::Error>,
}

impl<W: Write> Scanner<'_, W> {
    fn line(&mut self, id: &str, r: &homeostat_core::TraceResult) -> std::io::Result<()> {
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("id".into(), id.into());
            obj.insert("calls".into(), r.calls.into());
            if let Some(m) = r.anomalies {
                obj.insert("mismatches".into(), m.into());
            }
            for (n, &v) in self.names.iter().zip(&r.scores) {
                let value = if n == "max_lfc" {
                    serde_json::Value::from(v as u64)
                } else {
                    serde_json::Value::from(v)
                };
                obj.insert(n.clone(), value);
            }
            serde_json::to_writer(&mut self.out, &obj).map_err(std::io::Error::from)?;
            return self.out.write_all(b"\n");
        }
        let id = crate::fsutil::printable(id);
        write!(self.out, "{id:<40} {:>9}", r.calls)?;
        // The column is always there, so the header lines up for every model; "-" is a
        // model without a per-call verdict (knn, ensemble).
        match r.anomalies {
            Some(m) => write!(self.out, " {m:>10}")?,
            None => write!(self.out, " {:>10}", "-")?,
        }
        for (n, &v) in self.names.iter().zip(&r.scores) {
            if n == "max_lfc" {
                write!(self.out, " {:>7}", v as u64)?;
            } else {
                write!(self.out, " {:>w$.4}", v, w = n.len().max(8))?;
            }
        }
        writeln!(self.out)
    }
}

impl<'a, W: Write> Visitor for Scanner<'a, W> {
    fn begin(&mut self, key: u64, name: &str) {
        self.open
            .insert(key, (name.to_string(), self.model.stream()));
    }
    fn call(&mut self, key: u64, syscall: u32) {
        if let Some((_, s)) = self.open.get_mut(&key) {
            s.call(syscall);
        }
    }
    fn end(&mut self, key: u64) {
        let Some((id, s)) = self.open.remove(&key) else {
            return;
        };
        let r = s.finish();
        let res = self.line(&id, &r);
        if let (Err(e), None) = (res, &self.error) {
            self.error = Some(e);
        }
    }
}

pub fn run(a: ScanArgs) -> Result<()> {
    let reg = super::models::registry();
    let profile = crate::fsutil::read_profile(&a.profile, &reg)?;
    // The profile says which alphabet its model learnt; traces are read into it.
    let mut symbols = match profile_symbols(&a.profile)? {
        Some(t) => Symbolizer::Apply(t),
        None => Symbolizer::Calls,
    };
    let opts = super::read_options(&a.input);
    let files = expand_inputs(&a.inputs)?;
    let stdout = std::io::stdout().lock();
    let model = profile.detector.as_ref();
    let mut s = Scanner {
        model,
        names: model.score_names(),
        open: HashMap::new(),
        out: std::io::BufWriter::new(stdout),
        json: a.json,
        error: None,
    };
    if !a.json {
        write!(s.out, "{:<40} {:>9}", "id", "calls")?;
        write!(s.out, " {:>10}", "mismatches")?;
        for n in &s.names {
            if n == "max_lfc" {
                write!(s.out, " {n:>7}")?;
            } else {
                write!(s.out, " {n:>8}")?;
            }
        }
        writeln!(s.out)?;
    }
    for f in &files {
        let mut v = Symbolize {
            inner: &mut s,
            symbols: &mut symbols,
        };
        read_file(f, &opts, &mut v)?;
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

/// The symbol table of an argument-aware profile (`None`: plain calls).
fn profile_symbols(path: &std::path::Path) -> Result<Option<homeostat_core::symbols::SymbolTable>> {
    use anyhow::Context;
    let what = || format!("reading profile {}", path.display());
    let bytes =
        homeostat_monitor::read_framed(path, homeostat_core::profile::MAGIC).with_context(what)?;
    homeostat_core::profile::profile_symbols(&bytes).with_context(what)
}
