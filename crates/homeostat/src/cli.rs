//! Command-line syntax (clap). Defaults live in the core's `ModelSpec::new`; flags
//! only override them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use homeostat_core::ModelKind;
use homeostat_syscalls::Arch;
use homeostat_traces::Format;

/// Give Linux processes a sense of self: learn what programs normally do as sequences
/// of system calls, and detect when they stray.
#[derive(Debug, Parser)]
#[command(name = "homeostat", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a profile from normal traces and write it atomically.
    Train(TrainArgs),
    /// Score traces against a profile, one line per trace.
    Scan(ScanArgs),
    /// Evaluate detectors on a labelled dataset (ROC AUC, detection rates, speed).
    Eval(EvalArgs),
    /// Describe a profile file.
    Inspect {
        /// The profile.
        profile: PathBuf,
    },
}

/// Model configuration flags shared by train and eval.
#[derive(Debug, Clone, Args)]
pub struct ModelFlags {
    /// Window length (stide/t-stide k, lookahead-pairs w, Markov n-gram length);
    /// default per model: stide 6, tstide 6, pairs 9, markov 3.
    #[arg(long, short = 'w', global = true)]
    pub window: Option<usize>,
    /// Locality frame size L; default 20 (stide, tstide, markov) or 128 (pairs).
    #[arg(long, global = true)]
    pub locality: Option<usize>,
    /// t-stide: windows rarer than this share of training windows are mismatches.
    #[arg(long, default_value_t = 0.00001, global = true)]
    pub rare_fraction: f64,
    /// Markov: a call with conditional probability below this is anomalous.
    #[arg(long, default_value_t = 0.001, global = true)]
    pub threshold: f64,
    /// Markov: additive smoothing constant.
    #[arg(long, default_value_t = 0.01, global = true)]
    pub smoothing: f64,
}

/// How to read trace files.
#[derive(Debug, Clone, Args)]
pub struct InputFlags {
    /// Trace format (adfa, unm, strace, recording); detected per file by default.
    #[arg(long)]
    pub format: Option<Format>,
    /// Architecture whose call names strace output uses.
    #[arg(long, default_value_t = Arch::X86_64)]
    pub arch: Arch,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model to train.
    #[arg(long, short = 'm', default_value = "stide")]
    pub model: ModelKind,
    #[command(flatten)]
    pub model_flags: ModelFlags,
    #[command(flatten)]
    pub input: InputFlags,
    /// Where to write the profile.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Trace files or directories (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The profile to test against.
    #[arg(long, short = 'p')]
    pub profile: PathBuf,
    /// JSON lines (id, calls, mismatches, max_lfc, rate) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub input: InputFlags,
    /// Trace files or directories (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub dataset: Option<Dataset>,
    #[command(flatten)]
    pub common: EvalCommon,
}

#[derive(Debug, Clone, Args)]
pub struct EvalCommon {
    /// Models to evaluate, comma separated.
    #[arg(
        long,
        short = 'm',
        value_delimiter = ',',
        default_value = "stide,tstide,pairs,markov",
        global = true
    )]
    pub model: Vec<ModelKind>,
    #[command(flatten)]
    pub model_flags: ModelFlags,
    /// One JSON object instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write the ROC curves of all models to this SVG file.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// Threads that score test traces (speed is reported with this count).
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,
}

#[derive(Debug, Subcommand)]
pub enum Dataset {
    /// The labelled sample of real traces shipped inside homeostat (the default).
    Sample,
    /// ADFA-LD: train on Training, test on Validation (normal) and Attack_Data_Master.
    #[command(name = "adfa-ld")]
    AdfaLd {
        /// The ADFA-LD directory (holding Training_Data_Master etc.).
        dir: PathBuf,
        /// Add the first N validation traces (by name) to training, as LID-DS does.
        #[arg(long)]
        extra_train: Option<usize>,
        /// With --extra-train: the next M validation traces only fix a threshold.
        #[arg(long, default_value_t = 20)]
        threshold_traces: usize,
        /// LID-DS's own split: --extra-train 2000 --threshold-traces 20.
        #[arg(long, conflicts_with = "extra_train")]
        lidds: bool,
    },
    /// UNM-style files (`pid call` lines, each pid a trace).
    Unm {
        #[command(flatten)]
        lists: LabelledLists,
    },
    /// Any supported format, from labelled lists of files or folders.
    Traces {
        #[command(flatten)]
        lists: LabelledLists,
        #[command(flatten)]
        input: InputFlags,
    },
}

#[derive(Debug, Clone, Args)]
pub struct LabelledLists {
    /// Normal traces to train on (default: the first --train-fraction of --normal).
    #[arg(long, num_args = 1..)]
    pub train: Vec<PathBuf>,
    /// Normal test traces.
    #[arg(long, num_args = 1.., required = true)]
    pub normal: Vec<PathBuf>,
    /// Attack traces; the type is the subfolder (or file stem) under each path.
    #[arg(long, num_args = 1.., required = true)]
    pub attack: Vec<PathBuf>,
    /// Without --train: share of the normal traces (in file order) used for training.
    #[arg(long, default_value_t = 0.5)]
    pub train_fraction: f64,
}
