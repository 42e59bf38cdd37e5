//! Building [`Dataset`]s from the layouts researchers have on disk.
//!
//! - ADFA-LD: Training = train, Validation = normal test, Attack_Data_Master = attacks,
//!   optionally with LID-DS's split (the first N validation traces by name join the
//!   training set, the next M only fix the threshold).
//! - Labelled lists: `--train`, `--normal` and `--attack` paths in any supported
//!   format. An attack's type is the folder directly below the `--attack` path that
//!   holds it (or the folder itself, or the file's stem), with a trailing `_<number>`
//!   dropped, so ADFA-style `Adduser_3` run folders group by type.
//! - In-memory files (the sample shipped inside the binary), laid out the same way.

use std::path::{Path, PathBuf};

use homeostat_traces::{
    adfa, expand_inputs, read_from, read_traces, Format, ReadOptions, Trace, TraceError,
};

use crate::run::{Dataset, LabelledTrace};

/// The LID-DS protocol split on ADFA-LD: extra training traces and threshold traces
/// taken from the start of Validation (sorted by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationSplit {
    /// Validation traces added to training.
    pub extra_train: usize,
    /// The following validation traces, used only to fix the threshold.
    pub threshold: usize,
}

impl ValidationSplit {
    /// LID-DS's ADFA-LD example: 2,000 extra training traces, threshold from 20.
    pub const LIDDS: ValidationSplit = ValidationSplit {
        extra_train: 2000,
        threshold: 20,
    };
}

/// ADFA-LD from its directory.
pub fn adfa_ld(dir: &Path, split: Option<ValidationSplit>) -> Result<Dataset, TraceError> {
    let data = adfa::load(dir)?;
    let mut train = data.training;
    let mut validation = data.validation.into_iter();
    let mut threshold = vec![];
    if let Some(s) = split {
        train.extend(validation.by_ref().take(s.extra_train));
        threshold.extend(validation.by_ref().take(s.threshold));
    }
    let mut test: Vec<LabelledTrace> = validation
        .map(|trace| LabelledTrace {
            trace,
            attack: None,
        })
        .collect();
    test.extend(data.attacks.into_iter().map(|a| LabelledTrace {
        trace: a.trace,
        attack: Some(a.attack_type),
    }));
    Ok(Dataset {
        name: "ADFA-LD".into(),
        arch: "i386".into(),
        train,
        threshold,
        test,
    })
}

/// Drops a trailing `_<digits>` (ADFA-LD's run number).
fn attack_type(name: &str) -> String {
    match name.rsplit_once('_') {
        Some((head, tail))
            if !head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) =>
        {
            head.to_string()
        }
        _ => name.to_string(),
    }
}

/// The attack type of `file` found under the `--attack` argument `root`.
pub(crate) fn type_under(root: &Path, file: &Path) -> String {
    let name = |p: &Path| {
        p.file_stem()
            .or(p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attack".into())
    };
    if root.is_dir() {
        match file.strip_prefix(root).ok().and_then(|rel| {
            let mut comps = rel.components();
            let first = comps.next()?;
            comps.next()?; // the file is in a subfolder
            Some(first.as_os_str().to_string_lossy().into_owned())
        }) {
            Some(sub) => attack_type(&sub),
            None => attack_type(&name(root)),
        }
    } else {
        attack_type(&name(file))
    }
}

fn read_all(paths: &[PathBuf], opts: &ReadOptions) -> Result<Vec<Trace>, TraceError> {
    let mut out = vec![];
    for f in expand_inputs(paths)? {
        out.extend(read_traces(&f, opts)?);
    }
    Ok(out)
}

/// Labelled lists of files or folders, each read by `read` (plain traces, or traces
/// with arguments): the training traces (without `train`, the first
/// `train_fraction` of the normal traces, in file order), the normal test traces and
/// the attack traces with their type (see [`type_under`]).
pub(crate) struct Split<T> {
    pub train: Vec<T>,
    pub normal: Vec<T>,
    pub attacks: Vec<(T, String)>,
}

pub(crate) fn split_labelled<T>(
    train: &[PathBuf],
    normal: &[PathBuf],
    attack: &[PathBuf],
    train_fraction: f64,
    read: impl Fn(&[PathBuf]) -> Result<Vec<T>, TraceError>,
) -> Result<Split<T>, TraceError> {
    let mut normal = read(normal)?;
    let train = if train.is_empty() {
        let n = ((normal.len() as f64) * train_fraction.clamp(0.0, 1.0)).round() as usize;
        normal.drain(..n.min(normal.len())).collect()
    } else {
        read(train)?
    };
    let mut attacks = vec![];
    for root in attack {
        for f in expand_inputs(std::slice::from_ref(root))? {
            let ty = type_under(root, &f);
            for t in read(std::slice::from_ref(&f))? {
                attacks.push((t, ty.clone()));
            }
        }
    }
    Ok(Split {
        train,
        normal,
        attacks,
    })
}

/// A dataset from labelled lists of files or folders. Without `train`, the first
/// `train_fraction` of the normal traces (in file order) train and the rest test.
pub fn labelled(
    name: &str,
    train: &[PathBuf],
    normal: &[PathBuf],
    attack: &[PathBuf],
    train_fraction: f64,
    opts: &ReadOptions,
) -> Result<Dataset, TraceError> {
    let Split {
        train,
        normal,
        attacks,
    } = split_labelled(train, normal, attack, train_fraction, |p| read_all(p, opts))?;
    let test = normal
        .into_iter()
        .map(|trace| LabelledTrace {
            trace,
            attack: None,
        })
        .chain(attacks.into_iter().map(|(trace, ty)| LabelledTrace {
            trace,
            attack: Some(ty),
        }))
        .collect();
    Ok(Dataset {
        name: name.to_string(),
        arch: opts.arch.as_str().to_string(),
        train,
        threshold: vec![],
        test,
    })
}

/// A dataset from in-memory files named `training/...`, `validation/...` and
/// `attack/<Type>/...` (the layout of the sample shipped with homeostat).
pub fn in_memory(
    name: &str,
    files: &[(&str, &[u8])],
    format: Format,
    opts: &ReadOptions,
) -> Result<Dataset, TraceError> {
    let mut ds = Dataset {
        name: name.to_string(),
        arch: opts.arch.as_str().to_string(),
        ..Dataset::default()
    };
    for (path, bytes) in files {
        let mut parts = path.split('/');
        let label = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("training"), Some(_), None, _) => None,
            (Some("validation"), Some(_), None, _) => Some(None),
            (Some("attack"), Some(ty), Some(_), None) => Some(Some(attack_type(ty))),
            _ => continue, // READMEs, scripts
        };
        let mut collector = homeostat_traces::TraceCollector::new();
        read_from(path, *bytes, format, opts, &mut collector)?;
        let traces = collector.into_traces();
        match label {
            None => ds.train.extend(traces),
            Some(attack) => ds
                .test
                .extend(traces.into_iter().map(|trace| LabelledTrace {
                    trace,
                    attack: attack.clone(),
                })),
        }
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_types_drop_run_numbers() {
        assert_eq!(attack_type("Hydra_FTP_10"), "Hydra_FTP");
        assert_eq!(attack_type("Adduser_1"), "Adduser");
        assert_eq!(attack_type("shell_escape"), "shell_escape");
        assert_eq!(attack_type("_7"), "_7");
    }

    #[test]
    fn in_memory_layout() {
        let files: Vec<(&str, &[u8])> = vec![
            ("training/a.unm", b"1 5\n1 6\n2 5\n"),
            ("validation/b.unm", b"7 5\n"),
            ("attack/shell_3/c.unm", b"9 59\n"),
            ("README.md", b"ignored"),
        ];
        let ds = in_memory("t", &files, Format::Unm, &ReadOptions::default()).unwrap();
        assert_eq!(ds.train.len(), 2);
        assert_eq!(ds.test.len(), 2);
        assert_eq!(ds.test[1].attack.as_deref(), Some("shell"));
        assert_eq!(ds.test[1].trace.calls, vec![59]);
    }
}
