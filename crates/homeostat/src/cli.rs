//! Command-line syntax (clap). Defaults live in the core's `ModelSpec::new`; flags
//! only override them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
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
    /// The attacker's view of a profile: minimal foreign sequences, mimicry, tightness.
    #[command(subcommand)]
    Analyze(crate::commands::analyze::AnalyzeCmd),
    /// Describe a profile file.
    Inspect {
        /// The profile.
        profile: PathBuf,
    },
    /// Run a command under pH-style monitoring: learn a profile per executable, then
    /// detect anomalies and respond (delays, execve refusal).
    Run(RunArgs),
    /// Monitor an already running process (ptrace) and its later children until
    /// Ctrl-C, which detaches and leaves it running.
    Attach(AttachArgs),
    /// Run a command and write its system calls in homeostat's recording format.
    Record(RecordArgs),
    /// The tasks that running monitors watch: pid, exe, profile state, LFC, delay.
    Ps {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateFlags,
    },
    /// Show and administer the pH profiles in the state directory.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// The whole pH cycle on a small service shipped with homeostat: learn, become
    /// normal, then an exploit: anomalies, growing delays, refused execve.
    Demo(DemoArgs),
    /// System-wide pH in the foreground (eBPF, root): every executable gets a profile
    /// that learns and becomes normal; anomalies are reported and (enforce) answered
    /// with delays and execve refusal.
    Daemon(DaemonArgs),
    /// A running daemon's counters: events/s, anomalies, responses, losses, profiles.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateFlags,
    },
    /// Benchmarks: swap a daemon built with `--features floor` between its real
    /// sys_enter program and the floor (one that returns at once: nothing is
    /// monitored). Such a daemon starts at the floor; other builds refuse.
    Hook {
        /// `floor` or `real`.
        #[arg(value_enum)]
        to: HookTo,
        #[command(flatten)]
        state: StateFlags,
    },
    /// Started by `homeostat run --seccomp`: loads the filter, then executes the command.
    #[command(hide = true)]
    SeccompExec {
        #[arg(long)]
        filter: PathBuf,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Started by `homeostat daemon`: resumes the processes the kernel stopped if the
    /// daemon dies (`homeostat_daemon::stop_guard`; `daemon-keeper` is its old name).
    #[command(hide = true, alias = "daemon-keeper")]
    DaemonStopGuard {
        /// The kernel's id of the stop map.
        #[arg(long)]
        map_id: u32,
    },
}

/// Where state lives and how pH is configured (shared by run and profile commands).
#[derive(Debug, Clone, Args)]
pub struct StateFlags {
    /// State directory (default: $HOMEOSTAT_STATE_DIR, /var/lib/homeostat for root,
    /// else $XDG_STATE_HOME/homeostat).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TOML configuration file (see docs/homeostat-run.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Monitoring options shared by run and attach.
#[derive(Debug, Clone, Args)]
pub struct MonitorFlags {
    /// Train only: never test, never respond.
    #[arg(long, group = "mode")]
    pub learn: bool,
    /// Train and detect (events), but never delay or refuse.
    #[arg(long, group = "mode")]
    pub detect: bool,
    /// Train, detect and respond once normal (pH's behaviour; the default).
    #[arg(long, group = "mode")]
    pub enforce: bool,
    /// Seconds a frozen profile waits before it becomes normal (pH: 7 days).
    #[arg(long)]
    pub normal_wait: Option<f64>,
    /// Write events as JSON lines to this file ("-": standard output).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// No event summary on standard error.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub state: StateFlags,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub monitor: MonitorFlags,
    /// If the monitor dies, kill the monitored programs (default: they run on).
    #[arg(long)]
    pub fail_closed: bool,
    /// Also run the command under this seccomp allow-list (profile export-seccomp).
    #[arg(long)]
    pub seccomp: Option<PathBuf>,
    /// Williamson's connection throttle: connects to hosts outside each program's
    /// working set wait in a queue released at RATE per second (docs/homeostat-run.md).
    #[arg(long, value_name = "RATE", num_args = 0..=1, default_missing_value = "1")]
    pub throttle_connect: Option<f64>,
    /// Hosts each program's throttle working set remembers.
    #[arg(long, default_value_t = 5, requires = "throttle_connect")]
    pub throttle_working_set: usize,
    /// Alphabet of new profiles: `calls`, or `args` for (call, argument class) symbols
    /// (docs/arguments.md); a saved profile keeps its own.
    #[arg(long)]
    pub symbols: Option<homeostat_core::symbols::SymbolMode>,
    /// With --symbols args: directories of a path's prefix that make its class.
    #[arg(long)]
    pub path_depth: Option<u8>,
    /// With --symbols args: most distinct argument classes per profile.
    #[arg(long)]
    pub max_classes: Option<u32>,
    /// Learn each program's fork and file-creation rates in training and, once its
    /// profile is normal, hold calls beyond the peak times --rate-margin.
    #[arg(long)]
    pub rate_limit: bool,
    /// Limit = the peak rate learned in training times this (default 2).
    #[arg(long, value_name = "M")]
    pub rate_margin: Option<f64>,
    /// The sliding window rates are counted in, seconds (default 1).
    #[arg(long, value_name = "SECS")]
    pub rate_window: Option<f64>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub monitor: MonitorFlags,
    /// Also attach to the processes already running below PID.
    #[arg(long)]
    pub descendants: bool,
    /// The process to watch (and the children it creates from now on).
    pub pid: i32,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Train only: profiles never become normal, nothing is tested.
    #[arg(long, group = "mode")]
    pub learn: bool,
    /// Train and detect (events), but never stop, delay or refuse.
    #[arg(long, group = "mode")]
    pub detect: bool,
    /// Train, detect and respond once normal: stop, delay, refuse execve (pH's
    /// behaviour; the default unless the config file sets another mode).
    #[arg(long, group = "mode")]
    pub enforce: bool,
    /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464); off
    /// by default.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds a frozen profile waits before it becomes normal (pH: 7 days).
    #[arg(long)]
    pub normal_wait: Option<f64>,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write events as JSON lines to this file ("-": standard output).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// No event summary on standard error.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Profiles the kernel holds at most (1-4096, default 4096); eviction keeps the
    /// map below 90% full.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_profiles: Option<u32>,
    /// Watch only the processes of this cgroup v2 directory (e.g.
    /// /sys/fs/cgroup/system.slice/x.scope); everything else is left alone.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    // --symbols args: also learn and test the argument class of opens, execs,
    // connects... in the kernel (docs/arguments.md, "The daemon").
    #[command(flatten)]
    pub symbols: SymbolFlags,
    /// Williamson's connection throttle: connects to hosts outside each program's
    /// working set wait in a queue released at RATE per second (docs/daemon.md).
    #[arg(long, value_name = "RATE", num_args = 0..=1, default_missing_value = "1")]
    pub throttle_connect: Option<f64>,
    /// Hosts each program's throttle working set remembers.
    #[arg(long, default_value_t = 5, requires = "throttle_connect")]
    pub throttle_working_set: usize,
    /// Learn each program's fork and file-creation rates in training and, once its
    /// profile is normal, hold calls beyond the peak times --rate-margin.
    #[arg(long)]
    pub rate_limit: bool,
    /// Limit = the peak rate learned in training times this (default 2).
    #[arg(long, value_name = "M")]
    pub rate_margin: Option<f64>,
    /// The sliding window rates are counted in, seconds (default 1).
    #[arg(long, value_name = "SECS")]
    pub rate_window: Option<f64>,
    #[command(flatten)]
    pub state: StateFlags,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Do not read the argument that matters of opens, execs, connects... (plain
    /// SYSCALL records only; docs/arguments.md).
    #[arg(long)]
    pub no_args: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// One line per profile: state, pairs, calls trained, anomalies, executable, and
    /// how far from normal.
    List {
        /// Every field of every profile as a JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateFlags,
    },
    /// Details of one profile: paths, state, progress to normal.
    Show {
        /// Every field as a JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: ProfileTarget,
    },
    /// Make a profile normal now (testing data = training data).
    Normalize(ProfileTarget),
    /// Send a profile back to training.
    Sensitize(ProfileTarget),
    /// Forget a profile's training data (keeps its testing data).
    Tolerize(ProfileTarget),
    /// Delete a profile: the executable is learnt again from nothing.
    Reset(ProfileTarget),
    /// A daemon profile learns only from one user's and/or one cgroup's processes
    /// (neither flag: from every process); the others are still tested once it is
    /// normal, but neither teach it nor count toward its limits.
    LearnFrom {
        /// Only this user id's processes.
        #[arg(long)]
        uid: Option<u32>,
        /// Only the processes of this cgroup v2 directory (a service, a container).
        #[arg(long)]
        cgroup: Option<String>,
        #[command(flatten)]
        target: ProfileTarget,
    },
    /// The calls a profile has seen as a seccomp allow-list (OCI JSON or BPF).
    ExportSeccomp(crate::commands::analyze::ExportSeccompArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProfileTarget {
    /// The executable (a path, or a profile key like fd01-1a2b).
    pub exe: String,
    #[command(flatten)]
    pub state: StateFlags,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Normal sessions to train on.
    #[arg(long, default_value_t = 12)]
    pub sessions: usize,
    /// Keep the demo's state directory here instead of a temporary one.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Protect the service with the system-wide daemon (eBPF, root) instead of the
    /// launcher: it is run directly, and the daemon watches it with everything else.
    #[arg(long)]
    pub daemon: bool,
}

/// Model configuration flags shared by train and eval. Each model reads the
/// parameters it knows; a parameter no model reads is an error.
#[derive(Debug, Clone, Args)]
pub struct ModelFlags {
    /// Window length (stide/t-stide k, lookahead-pairs w, Markov n-gram length);
    /// default per model: stide 6, tstide 6, pairs 9, markov 3.
    #[arg(long, short = 'w', global = true)]
    pub window: Option<usize>,
    /// Locality frame size L; default 20 (stide, tstide, markov) or 128 (pairs).
    #[arg(long, global = true)]
    pub locality: Option<usize>,
    /// t-stide: windows rarer than this share of training windows are mismatches
    /// [default: 0.00001].
    #[arg(long, global = true)]
    pub rare_fraction: Option<f64>,
    /// Markov: a call with conditional probability below this is anomalous
    /// [default: 0.001].
    #[arg(long, global = true)]
    pub threshold: Option<f64>,
    /// Markov: additive smoothing constant [default: 0.01].
    #[arg(long, global = true)]
    pub smoothing: Option<f64>,
    /// Other model parameters, name=value (repeat or comma-separate): knn k, n, tf
    /// (raw|log|bool), idf (true|false); kn order, discount, threshold, locality; cover locality, max_calls; hmm states, iterations, tolerance, seed,
    /// threshold, floor, locality; lm cell (gru|lstm), layers, hidden, dropout, epochs, seed, lr, batch, chunk, patience,
    /// quantile, holdout_every, time_limit; ensemble holdout (1 in N training traces
    /// fits the normalisation). See docs/models.md.
    #[arg(long = "param", short = 'P', global = true)]
    pub param: Vec<String>,
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
    /// Model to train: stide, tstide, pairs, markov, knn, kn, cover, hmm, lm, or
    /// ensemble:MODEL[(P=V,...)][.SCORE],MODEL[.SCORE]... (a member's own parameters
    /// in parentheses, e.g. ensemble:lm(seed=1),lm(seed=2),kn)
    #[arg(long, short = 'm', default_value = "stide")]
    pub model: String,
    #[command(flatten)]
    pub model_flags: ModelFlags,
    #[command(flatten)]
    pub input: InputFlags,
    /// Where to write the profile.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    #[command(flatten)]
    pub symbols: SymbolFlags,
    /// Trace files or directories (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// The alphabet models learn (docs/arguments.md).
#[derive(Debug, Clone, Args)]
pub struct SymbolFlags {
    /// `calls`: system call numbers; `args`: (call, argument class) symbols (for
    /// files: recordings made by `homeostat record`, or strace output; live: the
    /// arguments read at each call; docs/arguments.md).
    #[arg(long, default_value = "calls")]
    pub symbols: homeostat_core::symbols::SymbolMode,
    /// With --symbols args: directories of a path's prefix that make its class.
    #[arg(long, default_value_t = 2)]
    pub path_depth: u8,
    /// With --symbols args: most distinct argument classes; later ones share one
    /// `other` class per call.
    #[arg(long, default_value_t = 256)]
    pub max_classes: u32,
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

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub dataset: Option<Dataset>,
    #[command(flatten)]
    pub common: EvalCommon,
}

#[derive(Debug, Clone, Args)]
pub struct EvalCommon {
    /// Models to evaluate, comma separated: stide, tstide, pairs, markov, knn, kn, cover, hmm,
    /// lm, ensemble:MODEL[(P=V,...)][.SCORE],... (an ensemble takes the items after it;
    /// join its members with + to list models after it).
    #[arg(
        long,
        short = 'm',
        value_delimiter = ',',
        default_value = "stide,tstide,pairs,markov",
        global = true
    )]
    pub model: Vec<String>,
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

#[derive(Debug, Clone, Subcommand)]
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
        /// Alphabets to compare on the same data, comma separated: calls, args (one
        /// report each; docs/arguments.md).
        #[arg(long, value_delimiter = ',', default_value = "calls")]
        symbols: Vec<homeostat_core::symbols::SymbolMode>,
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

/// What `homeostat hook` attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookTo {
    /// The program that returns at once (the tracepoint's own price).
    Floor,
    /// The real per-call program.
    Real,
}
