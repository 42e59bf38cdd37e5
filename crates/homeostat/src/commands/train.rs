//! `homeostat train`: stream traces into a model, then write the profile atomically.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use homeostat_core::{AnyModel, Cursor, Model, Profile, ProfileMeta};
use homeostat_traces::{expand_inputs, read_file, Visitor};

use crate::cli::TrainArgs;
use crate::fsutil::write_atomic;
use crate::progress;

/// Trains call by call with one cursor per open trace, so memory is bounded by the
/// number of interleaved processes, not by file size.
struct Trainer {
    model: AnyModel,
    open: HashMap<u64, Cursor>,
    traces: u64,
}

impl Visitor for Trainer {
    fn begin(&mut self, key: u64, _name: &str) {
        self.open.insert(key, self.model.cursor());
        self.traces += 1;
    }
    fn call(&mut self, key: u64, syscall: u32) {
        if let Some(c) = self.open.get_mut(&key) {
            self.model.train_call(c, syscall);
        }
    }
    fn end(&mut self, key: u64) {
        if let Some(mut c) = self.open.remove(&key) {
            self.model.train_end(&mut c);
        }
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let spec = super::spec(a.model, &a.model_flags)?;
    let opts = super::read_options(&a.input);
    let files = expand_inputs(&a.inputs)?;
    let mut t = Trainer {
        model: AnyModel::new(spec)?,
        open: HashMap::new(),
        traces: 0,
    };
    let pb = progress::bar(files.len() as u64, "files");
    pb.set_message("training");
    let mut arch = opts.arch.as_str().to_string();
    for f in &files {
        read_file(f, &opts, &mut t)?;
        if let Some(detected) = recording_arch(f) {
            arch = detected;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if t.model.trained_calls() == 0 {
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
    let profile = Profile::new(meta, t.model);
    write_atomic(&a.output, &profile.to_bytes())
        .with_context(|| format!("writing profile {}", a.output.display()))?;
    eprintln!(
        "trained {} on {} traces ({} calls): {} distinct {}; wrote {}",
        profile.model.spec().kind,
        profile.meta.traces,
        profile.model.trained_calls(),
        profile.model.profile_size(),
        if profile.model.spec().kind == homeostat_core::ModelKind::Pairs {
            "pairs"
        } else {
            "windows"
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
