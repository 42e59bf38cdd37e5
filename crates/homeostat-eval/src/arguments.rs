//! Labelled datasets on the argument-aware alphabet, to compare it with plain call
//! numbers on the same data (docs/arguments.md).
//!
//! The symbol table is learned from the training traces only, then applied to the
//! test traces, exactly as `train --symbols args` and `scan` do: an argument class the
//! training never saw is a foreign symbol. With [`SymbolMode::Calls`] the result is the
//! same dataset [`crate::datasets::labelled`] builds.

use std::collections::HashMap;
use std::path::PathBuf;

use homeostat_core::symbols::{Arg, SymbolConfig, SymbolMode, SymbolTable, Symbolizer};
use homeostat_traces::{expand_inputs, read_file, ReadOptions, Trace, TraceError, Visitor};

use crate::datasets::{split_labelled, Split};
use crate::{Dataset, LabelledTrace};

/// A trace with each call's argument, when the format carried one.
#[derive(Debug, Clone)]
pub struct ArgTrace {
    /// The trace name.
    pub id: String,
    /// (call, argument).
    pub calls: Vec<(u32, Option<Arg>)>,
}

#[derive(Default)]
struct Collector {
    traces: Vec<ArgTrace>,
    open: HashMap<u64, usize>,
}

impl Collector {
    fn push(&mut self, key: u64, c: (u32, Option<Arg>)) {
        if let Some(t) = self.open.get(&key).and_then(|&i| self.traces.get_mut(i)) {
            t.calls.push(c);
        }
    }
}

impl Visitor for Collector {
    fn begin(&mut self, key: u64, name: &str) {
        self.open.insert(key, self.traces.len());
        self.traces.push(ArgTrace {
            id: name.to_string(),
            calls: vec![],
        });
    }
    fn call(&mut self, key: u64, syscall: u32) {
        self.push(key, (syscall, None));
    }
    fn call_arg(&mut self, key: u64, syscall: u32, arg: &Arg) {
        self.push(key, (syscall, Some(arg.clone())));
    }
    fn end(&mut self, key: u64) {
        self.open.remove(&key);
    }
}

/// Every trace of `paths` (files or folders), with arguments.
pub fn read_arg_traces(paths: &[PathBuf], opts: &ReadOptions) -> Result<Vec<ArgTrace>, TraceError> {
    let mut c = Collector::default();
    for f in expand_inputs(paths)? {
        read_file(&f, opts, &mut c)?;
    }
    Ok(c.traces)
}

fn symbolize(t: &ArgTrace, s: &mut Symbolizer) -> Trace {
    Trace {
        id: t.id.clone(),
        calls: t
            .calls
            .iter()
            .map(|(c, a)| s.symbol(*c, a.as_ref()))
            .collect(),
    }
}

/// [`crate::datasets::labelled`] on the alphabet `mode`: the dataset and, for
/// [`SymbolMode::Args`], the table learned from its training traces.
#[allow(clippy::too_many_arguments)]
pub fn labelled_symbols(
    name: &str,
    train: &[PathBuf],
    normal: &[PathBuf],
    attack: &[PathBuf],
    train_fraction: f64,
    opts: &ReadOptions,
    mode: SymbolMode,
    config: SymbolConfig,
) -> Result<(Dataset, Option<SymbolTable>), TraceError> {
    let Split {
        train,
        normal,
        attacks,
    } = split_labelled(train, normal, attack, train_fraction, |p| {
        read_arg_traces(p, opts)
    })?;
    let mut s = match mode {
        SymbolMode::Calls => Symbolizer::Calls,
        SymbolMode::Args => Symbolizer::Learn(
            SymbolTable::new(config)
                .map_err(|e| TraceError::parse(std::path::Path::new(name), None, e.to_string()))?,
        ),
    };
    let train: Vec<Trace> = train.iter().map(|t| symbolize(t, &mut s)).collect();
    // Testing never learns: a class training did not see stays foreign.
    if let Symbolizer::Learn(t) = s {
        s = Symbolizer::Apply(t);
    }
    let mut test: Vec<LabelledTrace> = normal
        .iter()
        .map(|t| LabelledTrace {
            trace: symbolize(t, &mut s),
            attack: None,
        })
        .collect();
    test.extend(attacks.iter().map(|(t, ty)| LabelledTrace {
        trace: symbolize(t, &mut s),
        attack: Some(ty.clone()),
    }));
    let ds = Dataset {
        name: format!("{name} ({} symbols)", mode),
        arch: opts.arch.as_str().to_string(),
        train,
        threshold: vec![],
        test,
    };
    Ok((ds, s.table().cloned()))
}
