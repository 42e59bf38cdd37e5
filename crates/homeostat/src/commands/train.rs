//! `homeostat train`: stream traces into a model, then write the profile atomically.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use homeostat_core::symbols::{SymbolConfig, SymbolMode, SymbolTable, Symbolizer};
use homeostat_core::{Cursor, DetectorBuilder, DetectorProfile, ProfileMeta};
use homeostat_traces::{expand_inputs, read_file, Symbolize, Visitor};

use crate::cli::TrainArgs;
use crate::fsutil::write_atomic;
use crate::progress;

/// What one open trace has so far: a classic model's cursor (trained call by call,
/// so memory is bounded by the number of interleaved processes, not by file size),
/// or the calls themselves for models that train on whole traces.
enum Open {
    Cursor(Cursor),
    Calls(Vec<u32>),
}

struct Trainer {
    builder: Box<dyn DetectorBuilder>,
    open: HashMap<u64, Open>,
    traces: u64,
}

impl Visitor for Trainer {
    fn begin(&mut self, key: u64, _name: &str) {
        let o = match self.builder.as_classic_mut() {
            Some(m) => Open::Cursor(homeostat_core::Model::cursor(m)),
            None => Open::Calls(vec![]),
        };
        self.open.insert(key, o);
        self.traces += 1;
    }
    fn call(&mut self, key: u64, syscall: u32) {
        match self.open.get_mut(&key) {
            Some(Open::Cursor(c)) => {
                if let Some(m) = self.builder.as_classic_mut() {
                    homeostat_core::Model::train_call(m, c, syscall);
                }
            }
            Some(Open::Calls(v)) => v.push(syscall),
            None => {}
        }
    }
    fn end(&mut self, key: u64) {
        match self.open.remove(&key) {
            Some(Open::Cursor(mut c)) => {
                if let Some(m) = self.builder.as_classic_mut() {
                    homeostat_core::Model::train_end(m, &mut c);
                }
            }
            Some(Open::Calls(v)) => self.builder.add_trace(&v),
            None => {}
        }
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let reg = super::models::registry();
    let params = super::models::params(&a.model_flags, &reg)?;
    let builder = reg.builder(&a.model, &params).context("model options")?;
    let opts = super::read_options(&a.input);
    let files = expand_inputs(&a.inputs)?;
    let mut t = Trainer {
        builder,
        open: HashMap::new(),
        traces: 0,
    };
    let mut symbols = match a.symbols.symbols {
        SymbolMode::Calls => Symbolizer::Calls,
        SymbolMode::Args => Symbolizer::Learn(
            SymbolTable::new(SymbolConfig {
                path_depth: a.symbols.path_depth,
                max_classes: a.symbols.max_classes,
            })
            .context("--path-depth / --max-classes")?,
        ),
    };
    let pb = progress::bar(files.len() as u64, "files");
    pb.set_message("reading");
    let mut arch = opts.arch.as_str().to_string();
    for f in &files {
        let mut v = Symbolize {
            inner: &mut t,
            symbols: &mut symbols,
        };
        read_file(f, &opts, &mut v)?;
        if let Some(detected) = recording_arch(f) {
            arch = detected;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let fit = progress::bar(0, "steps");
    fit.set_message("training");
    let detector = t
        .builder
        .build(&|done, total| {
            fit.set_length(total);
            fit.set_position(done);
        })
        .with_context(|| format!("training {}", a.model))?;
    fit.finish_and_clear();
    if detector.trained_calls() == 0 {
        // A profile of nothing flags every call of every program as anomalous.
        bail!(
            "no system calls in the training input ({} traces in {} files); refusing to write an empty profile",
            t.traces,
            files.len()
        );
    }
    let meta = ProfileMeta {
        arch,
        created_unix: super::now_unix(),
        traces: t.traces,
        source: a
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let profile = DetectorProfile { meta, detector };
    write_atomic(&a.output, &profile.to_bytes_with(symbols.table()))
        .with_context(|| format!("writing profile {}", a.output.display()))?;
    if let Some(t) = symbols.table() {
        eprintln!(
            "argument classes: {} learned (cap {}), {} calls in overflow classes",
            t.classes().len(),
            t.config().max_classes,
            t.overflowed()
        );
    }
    let d = &profile.detector;
    eprintln!(
        "trained {} ({}) on {} traces ({} calls): {} {}; wrote {}",
        d.kind(),
        d.describe(),
        profile.meta.traces,
        d.trained_calls(),
        d.profile_size(),
        if d.size_unit() == "windows" || d.size_unit() == "pairs" {
            format!("distinct {}", d.size_unit())
        } else {
            d.size_unit().to_string()
        },
        a.output.display()
    );
    Ok(())
}

/// The architecture a recording declares in its header (other formats carry none).
fn recording_arch(path: &std::path::Path) -> Option<String> {
    let r = homeostat_traces::recording::Reader::open(path).ok()?;
    Some(r.header().arch.as_str().to_string())
}
