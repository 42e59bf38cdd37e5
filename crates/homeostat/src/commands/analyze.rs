//! `homeostat analyze ...`: the attacker's view of a profile (homeostat-analyze) on the
//! command line: minimal foreign sequences of traces, mimicry search, tightness.
//!
//! Every profile file homeostat writes is accepted: trained profiles (`homeostat
//! train`), the launcher's pH profiles (`profiles/*.phprof`) and the daemon's
//! (`daemon/*.json`); the file's first bytes say which.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use homeostat_analyze::{tightness, Bounds, GoalStep, Outcome, Tightness, View};
use homeostat_core::ph::{PhConfig, PhProfile, ProfileState, PH_MAGIC};
use homeostat_core::profile::{MAGIC, MAX_PAYLOAD};
use homeostat_core::{AnyModel, Model, Profile};
use homeostat_monitor::daemon_profile::DaemonProfile;
use homeostat_monitor::engine::I386_OFFSET;
use homeostat_syscalls::Arch;
use homeostat_traces::{expand_inputs, read_file, Visitor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::InputFlags;

/// A line on standard output; a closed pipe (`| head`) is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCmd {
    /// Minimal foreign sequences of traces against a profile, and which stide windows
    /// (2..15) would see them.
    Mfs(MfsArgs),
    /// Shortest call sequence that makes the goal calls in order and raises no anomaly.
    Mimicry(MimicryArgs),
    /// How evadable a profile is: mean mimicry padding over standard attacker goals.
    Tightness(TightnessArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SearchFlags {
    /// Longest sequence searched.
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    /// Most search states kept (about 200 bytes each); the search says so when it
    /// needs more.
    #[arg(long, default_value_t = 4_000_000)]
    pub max_states: usize,
    /// The attacker takes over mid-trace: the program's own accepted calls may come
    /// first, and only calls from the first goal call on count (default: from the
    /// start of a trace).
    #[arg(long)]
    pub mid_trace: bool,
}

#[derive(Debug, Args)]
pub struct MfsArgs {
    /// The profile (trained, pH .phprof or daemon .json).
    #[arg(long, short = 'p')]
    pub profile: PathBuf,
    /// One JSON object per trace instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also list every MFS with its position and calls.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub input: InputFlags,
    /// Trace files or directories (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MimicryArgs {
    /// The profile (trained, pH .phprof or daemon .json).
    #[arg(long, short = 'p')]
    pub profile: PathBuf,
    /// The calls to make, in order, comma separated; `a|b` accepts either (e.g.
    /// `open|openat,write,execve`). Names of the profile's ABI, or numbers.
    #[arg(long, short = 'g')]
    pub goal: String,
    /// One JSON object: {"goal", "found", "sequence": [{"nr", "name"}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub search: SearchFlags,
}

#[derive(Debug, Args)]
pub struct TightnessArgs {
    /// The profile (trained, pH .phprof or daemon .json).
    #[arg(long, short = 'p')]
    pub profile: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub search: SearchFlags,
}

pub fn run(cmd: AnalyzeCmd) -> Result<()> {
    match cmd {
        AnalyzeCmd::Mfs(a) => mfs(a),
        AnalyzeCmd::Mimicry(a) => mimicry(a),
        AnalyzeCmd::Tightness(a) => tightness_cmd(a),
    }
}

/// How a profile numbers calls.
#[derive(Debug, Clone, Copy)]
pub enum Numbering {
    /// One ABI's numbers (trained profiles say which in their header).
    Arch(Arch),
    /// pH profiles: x86_64 numbers, i386 numbers offset by 0x10000.
    Ph,
}

impl Numbering {
    pub fn name(self, nr: u32) -> String {
        match self {
            Numbering::Arch(a) => a.display(nr).into_owned(),
            Numbering::Ph if nr >= I386_OFFSET => {
                format!("i386:{}", Arch::I386.display(nr - I386_OFFSET))
            }
            Numbering::Ph => Arch::X86_64.display(nr).into_owned(),
        }
    }

    /// Every number `name` may have in this numbering.
    fn numbers(self, name: &str) -> Vec<u32> {
        match self {
            Numbering::Arch(a) => a.number(name).into_iter().collect(),
            Numbering::Ph => {
                let mut v: Vec<u32> = Arch::X86_64.number(name).into_iter().collect();
                v.extend(Arch::I386.number(name).map(|n| n + I386_OFFSET));
                v
            }
        }
    }

    fn arch(self) -> Arch {
        match self {
            Numbering::Arch(a) => a,
            Numbering::Ph => Arch::X86_64,
        }
    }
}

/// A profile of any kind, as a model for analysis.
pub struct Loaded {
    pub model: AnyModel,
    pub numbering: Numbering,
}

/// The acting pairs of a pH profile (testing data once normal, else training) as a
/// model.
pub fn ph_model(p: &PhProfile) -> Result<AnyModel> {
    let config = PhConfig {
        window: p.model().spec().window,
        locality: p.model().spec().locality,
        ..PhConfig::default()
    };
    let q = PhProfile::from_raw_pairs(
        p.key,
        &p.path,
        &config,
        ProfileState::Normal,
        &p.raw_pairs(),
    )
    .context("pH profile has pairs that do not fit its window")?;
    Ok(AnyModel::Pairs(q.model().clone()))
}

pub fn load(path: &Path) -> Result<Loaded> {
    let what = || format!("reading profile {}", path.display());
    let len = std::fs::metadata(path).with_context(what)?.len();
    if len > MAX_PAYLOAD + 24 {
        bail!(
            "reading profile {}: file is {len} bytes, larger than any profile",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(what)?;
    if bytes.starts_with(MAGIC) {
        let p = Profile::from_bytes(&bytes).with_context(what)?;
        let arch = p.meta.arch.parse().unwrap_or_default();
        return Ok(Loaded {
            model: p.model,
            numbering: Numbering::Arch(arch),
        });
    }
    let ph = if bytes.starts_with(PH_MAGIC) {
        PhProfile::from_bytes(&bytes).with_context(what)?
    } else if bytes.first() == Some(&b'{') {
        let d = DaemonProfile::load(path)
            .map_err(anyhow::Error::msg)
            .with_context(what)?;
        d.to_ph(&PhConfig::default())
            .context("daemon profile does not fit a window of 9")
            .with_context(what)?
    } else {
        bail!(
            "{}: not a homeostat profile (trained, pH or daemon)",
            path.display()
        );
    };
    Ok(Loaded {
        model: ph_model(&ph).with_context(what)?,
        numbering: Numbering::Ph,
    })
}

fn view(l: &Loaded) -> Result<View> {
    Ok(View::new(&l.model)?)
}

/// Parses `open|openat,write` into steps of call numbers. With `lenient`, names the
/// ABI lacks are skipped as long as each step keeps one.
fn parse_goal(goal: &str, numbering: Numbering, lenient: bool) -> Result<Vec<GoalStep>> {
    let mut steps = vec![];
    for step in goal.split(',') {
        let mut nrs = vec![];
        for name in step.split('|').map(str::trim) {
            let found = match name.parse::<u32>() {
                Ok(n) => vec![n],
                Err(_) => numbering.numbers(name),
            };
            if found.is_empty() && !lenient {
                bail!("unknown system call {name:?} for {}", numbering.arch());
            }
            nrs.extend(found);
        }
        if nrs.is_empty() {
            bail!(
                "goal step {step:?} names no system call of {}",
                numbering.arch()
            );
        }
        steps.push(nrs);
    }
    if steps.is_empty() || goal.trim().is_empty() {
        bail!("empty goal");
    }
    Ok(steps)
}

/// A call number the profile never saw, printed where the search uses "any unseen
/// call" (all such calls behave alike under every model).
fn unseen_call(model: &AnyModel, numbering: Numbering) -> u32 {
    let arch = numbering.arch();
    (0..=arch.max_number())
        .find(|&n| arch.name(n).is_some() && !model.symbols().contains(&n))
        .unwrap_or(arch.max_number() + 1)
}

/// Reports search progress on a bar, shown only once a search has run a second.
struct Progress {
    started: Instant,
    max_len: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(max_len: usize) -> Self {
        Progress {
            started: Instant::now(),
            max_len,
            bar: None,
        }
    }

    fn update(&mut self, depth: usize, states: usize) {
        if self.bar.is_none() && self.started.elapsed() > Duration::from_secs(1) {
            let pb = ProgressBar::new(self.max_len as u64);
            if let Ok(s) =
                ProgressStyle::with_template("{msg:>10} [{bar:40}] length {pos}/{len} ({elapsed})")
            {
                pb.set_style(s.progress_chars("=> "));
            }
            self.bar = Some(pb);
        }
        if let Some(pb) = &self.bar {
            pb.set_position(depth as u64);
            pb.set_message(format!("{states} states"));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

fn bounds(s: &SearchFlags) -> Result<Bounds> {
    if s.max_len == 0 || s.max_len > 10_000 {
        bail!("--max-len {} out of range 1..=10000", s.max_len);
    }
    Ok(Bounds {
        max_len: s.max_len,
        max_states: s.max_states.clamp(1, u32::MAX as usize),
        mid_trace: s.mid_trace,
    })
}

#[derive(Serialize)]
struct Call {
    nr: u32,
    name: String,
}

#[derive(Serialize)]
struct MimicryJson {
    goal: Vec<String>,
    found: bool,
    sequence: Vec<Call>,
}

fn mimicry(a: MimicryArgs) -> Result<()> {
    let l = load(&a.profile)?;
    let v = view(&l)?;
    let goal = parse_goal(&a.goal, l.numbering, false)?;
    let b = bounds(&a.search)?;
    let other = unseen_call(&l.model, l.numbering);
    let t0 = Instant::now();
    let mut progress = Progress::new(b.max_len);
    let out = v.mimicry(&goal, b, other, &mut |d, s| progress.update(d, s));
    drop(progress);
    let secs = t0.elapsed().as_secs_f64();
    let is_goal = goal_positions(&goal, out.sequence().unwrap_or(&[]));
    if a.json {
        let j = MimicryJson {
            goal: a.goal.split(',').map(|s| s.trim().to_string()).collect(),
            found: out.sequence().is_some(),
            sequence: out
                .sequence()
                .unwrap_or(&[])
                .iter()
                .map(|&nr| Call {
                    nr,
                    name: l.numbering.name(nr),
                })
                .collect(),
        };
        say!("{}", serde_json::to_string(&j)?);
        if let Outcome::Budget { depth, states } = out {
            eprintln!(
                "homeostat: search stopped at {states} states; no sequence of up to {depth} calls"
            );
        }
        return Ok(());
    }
    let spec = l.model.spec();
    say!(
        "profile   {} ({} window {})",
        a.profile.display(),
        spec.kind,
        spec.window
    );
    say!("goal      {} ({} calls)", a.goal, goal.len());
    let prefix = out.prefix();
    if !prefix.is_empty() {
        let names: Vec<String> = prefix.iter().map(|&n| l.numbering.name(n)).collect();
        say!(
            "takeover  after {} calls of the program: {}",
            prefix.len(),
            names.join(" ")
        );
    }
    match &out {
        Outcome::Found { sequence, .. } => {
            say!(
                "found     {} calls ({} added to hide the goal), {secs:.2} s",
                sequence.len(),
                sequence.len() - goal.len()
            );
            for (i, &nr) in sequence.iter().enumerate() {
                let name = l.numbering.name(nr);
                if is_goal[i] {
                    say!("{:>5}  {name:<20}  <- goal", i + 1);
                } else {
                    say!("{:>5}  {name}", i + 1);
                }
            }
        }
        Outcome::NoneWithin { max_len } => {
            say!("none      no sequence of up to {max_len} calls hides this goal ({secs:.2} s)")
        }
        Outcome::Budget { depth, states } => say!(
            "unknown   no sequence of up to {depth} calls; stopped at {states} states \
             (--max-states) ({secs:.2} s)"
        ),
    }
    Ok(())
}

/// Which positions of a found sequence make the goal calls (greedy, as the search).
fn goal_positions(goal: &[GoalStep], seq: &[u32]) -> Vec<bool> {
    let mut step = 0;
    seq.iter()
        .map(|c| {
            let hit = step < goal.len() && goal[step].contains(c);
            step += usize::from(hit);
            hit
        })
        .collect()
}

/// The standard goals in this profile's numbering.
pub fn standard_goals(numbering: Numbering) -> Result<Vec<(String, Vec<GoalStep>)>> {
    homeostat_analyze::STANDARD_GOALS
        .iter()
        .map(|g| Ok((g.to_string(), parse_goal(g, numbering, true)?)))
        .collect()
}

/// The tightness of a loaded profile over the standard goals.
pub fn profile_tightness(l: &Loaded, b: Bounds) -> Result<Tightness> {
    let v = view(l)?;
    let goals = standard_goals(l.numbering)?;
    let other = unseen_call(&l.model, l.numbering);
    let mut progress = Progress::new(b.max_len);
    Ok(tightness(&v, &goals, b, other, &mut |d, s| {
        progress.update(d, s)
    }))
}

fn tightness_cmd(a: TightnessArgs) -> Result<()> {
    let l = load(&a.profile)?;
    let b = bounds(&a.search)?;
    let t = profile_tightness(&l, b)?;
    if a.json {
        say!("{}", serde_json::to_string(&t)?);
        return Ok(());
    }
    say!(
        "tightness {:.1}  (mean calls an attacker must add over {} standard goals, {}; \
         unreachable counted as {}; max {}, {} unreachable)",
        t.mean_padding,
        t.goals.len(),
        if b.mid_trace {
            "taking over mid-trace"
        } else {
            "from a trace start"
        },
        t.max_len,
        t.max_padding,
        t.unreachable
    );
    for g in &t.goals {
        let what = match &g.outcome {
            Outcome::Found { sequence, .. } => format!(
                "{} calls: {}",
                sequence.len(),
                sequence
                    .iter()
                    .map(|&n| l.numbering.name(n))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Outcome::NoneWithin { max_len } => format!("none within {max_len} calls"),
            Outcome::Budget { depth, .. } => {
                format!("none within {depth} calls (state budget reached)")
            }
        };
        say!("  padding {:>3}  {:<60} {what}", g.padding, g.goal);
    }
    Ok(())
}

/// The `tightness` line of `profile show` (default bounds; a message when it cannot
/// be computed).
pub fn tightness_line(p: &PhProfile) -> String {
    let l = match ph_model(p) {
        Ok(model) => Loaded {
            model,
            numbering: Numbering::Ph,
        },
        Err(e) => return format!("- ({e})"),
    };
    match profile_tightness(&l, Bounds::default()) {
        Ok(t) => format!(
            "{:.1} (mean mimicry padding over {} standard goals, {} unreachable within {})",
            t.mean_padding,
            t.goals.len(),
            t.unreachable,
            t.max_len
        ),
        Err(e) => format!("- ({e})"),
    }
}

// ---- mfs ----

#[derive(Serialize)]
struct MfsJson<'a> {
    id: &'a str,
    file: &'a str,
    calls: usize,
    exact_to: usize,
    searched_to: usize,
    mfs: Vec<MfsItem>,
    /// Index i: MFSs stide with window i + 2 sees.
    visible_k2_to_k15: Vec<usize>,
}

#[derive(Serialize)]
struct MfsItem {
    pos: usize,
    len: usize,
    exact: bool,
    calls: Vec<String>,
}

struct MfsScan<'a, W: Write> {
    view: &'a View,
    numbering: Numbering,
    open: HashMap<u64, (String, Vec<u32>)>,
    file: String,
    out: W,
    json: bool,
    list: bool,
    error: Option<std::io::Error>,
    /// Over all traces: MFS count by length.
    lengths: Vec<u64>,
    traces: u64,
    with_mfs: u64,
}

const KS: std::ops::RangeInclusive<usize> = 2..=15;

impl<W: Write> MfsScan<'_, W> {
    fn report(&mut self, id: &str, calls: &[u32]) -> std::io::Result<()> {
        let rep = self.view.mfs(calls);
        self.traces += 1;
        self.with_mfs += u64::from(!rep.mfs.is_empty());
        for m in &rep.mfs {
            if self.lengths.len() <= m.len {
                self.lengths.resize(m.len + 1, 0);
            }
            self.lengths[m.len] += 1;
        }
        let names = |pos: usize, len: usize| -> Vec<String> {
            calls[pos..pos + len]
                .iter()
                .map(|&c| self.numbering.name(c))
                .collect()
        };
        if self.json {
            let j = MfsJson {
                id,
                file: &self.file,
                calls: calls.len(),
                exact_to: rep.exact_to,
                searched_to: rep.searched_to,
                mfs: rep
                    .mfs
                    .iter()
                    .map(|m| MfsItem {
                        pos: m.pos,
                        len: m.len,
                        exact: m.exact,
                        calls: names(m.pos, m.len),
                    })
                    .collect(),
                visible_k2_to_k15: KS.map(|k| rep.visible(k)).collect(),
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        let shortest = rep.mfs.iter().map(|m| m.len).min();
        write!(
            self.out,
            "{:<32} {:>7} {:>5} {:>5}",
            id,
            calls.len(),
            rep.mfs.len(),
            shortest.map_or("-".into(), |s| s.to_string())
        )?;
        for k in KS {
            write!(self.out, " {:>4}", rep.visible(k))?;
        }
        writeln!(self.out)?;
        if self.list {
            for m in &rep.mfs {
                writeln!(
                    self.out,
                    "    @{:<6} len {:<2}{} {}",
                    m.pos,
                    m.len,
                    if m.exact { " " } else { "~" },
                    names(m.pos, m.len).join(" ")
                )?;
            }
        }
        Ok(())
    }
}

impl<W: Write> Visitor for MfsScan<'_, W> {
    fn begin(&mut self, key: u64, name: &str) {
        self.open.insert(key, (name.to_string(), vec![]));
    }
    fn call(&mut self, key: u64, syscall: u32) {
        if let Some((_, v)) = self.open.get_mut(&key) {
            v.push(syscall);
        }
    }
    fn end(&mut self, key: u64) {
        let Some((id, calls)) = self.open.remove(&key) else {
            return;
        };
        if self.error.is_none() {
            self.error = self.report(&id, &calls).err();
        }
    }
}

fn mfs(a: MfsArgs) -> Result<()> {
    let l = load(&a.profile)?;
    let v = view(&l)?;
    let opts = super::read_options(&a.input);
    let files = expand_inputs(&a.inputs)?;
    let mut s = MfsScan {
        view: &v,
        numbering: l.numbering,
        open: HashMap::new(),
        file: String::new(),
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        json: a.json,
        list: a.list,
        error: None,
        lengths: vec![],
        traces: 0,
        with_mfs: 0,
    };
    let spec = l.model.spec();
    if !a.json {
        let (exact, searched) = match spec.kind {
            homeostat_core::ModelKind::Pairs => (2, spec.window),
            _ => (spec.window, spec.window),
        };
        let note = if exact < searched {
            " (\"~\": a span a missing pair proves foreign)"
        } else {
            ""
        };
        writeln!(
            s.out,
            "# {} window {}: MFS lengths known exactly up to {exact}, searched up to \
             {searched}{note}",
            spec.kind, spec.window
        )?;
        write!(
            s.out,
            "{:<32} {:>7} {:>5} {:>5}",
            "trace", "calls", "mfs", "min"
        )?;
        for k in KS {
            write!(s.out, " {:>4}", format!("k{k}"))?;
        }
        writeln!(s.out)?;
    }
    for f in &files {
        s.file = f.display().to_string();
        read_file(f, &opts, &mut s)?;
        if let Some(e) = s.error.take() {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    if !a.json {
        let hist: Vec<String> = s
            .lengths
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(len, n)| format!("{len}:{n}"))
            .collect();
        let r = writeln!(
            s.out,
            "# {} traces, {} with an MFS; MFS count by length: {}",
            s.traces,
            s.with_mfs,
            if hist.is_empty() {
                "-".into()
            } else {
                hist.join(" ")
            }
        );
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
        }
    }
    match s.out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

// ---- seccomp export and loading ----

/// `--format` of `profile export-seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompFormat {
    /// OCI / Docker seccomp profile (JSON).
    Oci,
    /// Classic BPF program: `struct sock_filter` array, 8 bytes an instruction.
    Bpf,
}

#[derive(Debug, Args)]
pub struct ExportSeccompArgs {
    #[command(flatten)]
    pub target: crate::cli::ProfileTarget,
    /// Where to write the policy.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// OCI JSON (docker run --security-opt seccomp=FILE) or a BPF program
    /// (homeostat run --seccomp FILE takes either).
    #[arg(long, value_enum, default_value = "oci")]
    pub format: SeccompFormat,
}

/// x86_64 and i386 execve: a program is started under the filter, so its own execve
/// must pass.
const EXECVE: [(Arch, u32); 2] = [(Arch::X86_64, 59), (Arch::I386, 11)];

/// The policy of a pH profile's calls (x86_64 numbers, i386 offset by 0x10000).
fn policy_of(symbols: &[u32]) -> homeostat_analyze::policy::Policy {
    let mut p = homeostat_analyze::policy::Policy::default();
    for &s in symbols {
        if s >= I386_OFFSET {
            p.i386.insert(s - I386_OFFSET);
        } else {
            p.x86_64.insert(s);
        }
    }
    for (arch, nr) in EXECVE {
        match arch {
            Arch::X86_64 => p.x86_64.insert(nr),
            Arch::I386 if !p.i386.is_empty() => p.i386.insert(nr),
            Arch::I386 => false,
        };
    }
    p
}

fn oci_json(p: &homeostat_analyze::policy::Policy) -> (serde_json::Value, Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    let mut unnamed = vec![];
    let mut arches = vec![];
    for (arch, calls, scmp) in [
        (Arch::X86_64, &p.x86_64, "SCMP_ARCH_X86_64"),
        (Arch::I386, &p.i386, "SCMP_ARCH_X86"),
    ] {
        if calls.is_empty() {
            continue;
        }
        arches.push(scmp);
        for &nr in calls {
            match arch.name(nr) {
                Some(n) => {
                    names.insert(n);
                }
                None => unnamed.push(format!("{arch} #{nr}")),
            }
        }
    }
    let v = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": arches,
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW" }],
    });
    (v, unnamed)
}

/// Writes the seccomp policy of a profile's calls (`symbols`, pH numbering).
pub fn export_seccomp(a: &ExportSeccompArgs, exe: &str, symbols: &[u32]) -> Result<()> {
    let p = policy_of(symbols);
    let bytes = match a.format {
        SeccompFormat::Bpf => p.bpf_bytes(),
        SeccompFormat::Oci => {
            let (v, unnamed) = oci_json(&p);
            if !unnamed.is_empty() {
                eprintln!(
                    "homeostat: warning: calls without a name left out of the OCI profile: {}",
                    unnamed.join(", ")
                );
            }
            let mut b = serde_json::to_vec_pretty(&v)?;
            b.push(b'\n');
            b
        }
    };
    crate::fsutil::write_atomic(&a.output, &bytes)?;
    say!(
        "{}: {} x86_64 and {} i386 calls allowed (execve included), everything else EPERM; wrote {}",
        exe,
        p.x86_64.len(),
        p.i386.len(),
        a.output.display()
    );
    Ok(())
}

/// Reads a filter written by `profile export-seccomp` (either format) as BPF.
pub fn read_filter(path: &Path) -> Result<Vec<homeostat_analyze::policy::Insn>> {
    let what = || format!("reading seccomp filter {}", path.display());
    let len = std::fs::metadata(path).with_context(what)?.len();
    if len > 1 << 20 {
        bail!("{}: {len} bytes, larger than any filter", path.display());
    }
    let bytes = std::fs::read(path).with_context(what)?;
    if bytes.first() != Some(&b'{') {
        return homeostat_analyze::policy::from_bytes(&bytes).with_context(what);
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(what)?;
    let default = v["defaultAction"].as_str().unwrap_or("");
    if !matches!(
        default,
        "SCMP_ACT_ERRNO" | "SCMP_ACT_KILL" | "SCMP_ACT_KILL_PROCESS"
    ) {
        bail!(
            "{}: only allow-lists (defaultAction SCMP_ACT_ERRNO) are supported, not {default:?}",
            path.display()
        );
    }
    let mut p = homeostat_analyze::policy::Policy::default();
    let arches: Vec<&str> = v["architectures"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_else(|| vec!["SCMP_ARCH_X86_64"]);
    for rule in v["syscalls"].as_array().into_iter().flatten() {
        if rule["action"] != "SCMP_ACT_ALLOW" {
            continue;
        }
        for name in rule["names"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or("");
            for arch in &arches {
                let (a, set) = match *arch {
                    "SCMP_ARCH_X86_64" => (Arch::X86_64, &mut p.x86_64),
                    "SCMP_ARCH_X86" => (Arch::I386, &mut p.i386),
                    other => bail!("{}: unsupported architecture {other}", path.display()),
                };
                if let Some(nr) = a.number(name) {
                    set.insert(nr);
                }
            }
        }
    }
    Ok(p.bpf())
}

/// The command `homeostat run --seccomp FILE -- CMD` launches: this binary's hidden
/// `seccomp-exec`, which loads the filter and executes CMD (so the launcher and its
/// seccomp crate need no change; the monitor sees the loader's few calls under
/// homeostat's own executable, then CMD's).
pub fn seccomp_command(
    command: &[std::ffi::OsString],
    filter: Option<&Path>,
) -> Result<Vec<std::ffi::OsString>> {
    let Some(filter) = filter else {
        return Ok(command.to_vec());
    };
    read_filter(filter)?;
    let me = std::env::current_exe().context("finding the homeostat executable")?;
    let mut v = vec![
        me.into_os_string(),
        "seccomp-exec".into(),
        "--filter".into(),
        std::fs::canonicalize(filter)
            .with_context(|| filter.display().to_string())?
            .into_os_string(),
        "--".into(),
    ];
    v.extend(command.iter().cloned());
    Ok(v)
}

/// `homeostat seccomp-exec --filter FILE -- CMD`: load, then exec (never returns on
/// success).
pub fn seccomp_exec(filter: &Path, command: &[std::ffi::OsString]) -> Result<()> {
    let prog: Vec<(u16, u8, u8, u32)> = read_filter(filter)?
        .into_iter()
        .map(|i| (i.code, i.jt, i.jf, i.k))
        .collect();
    let e = homeostat_seccomp::load::exec_filtered(&prog, command);
    // Writing may itself be refused by the filter now; the exit status still says it.
    eprintln!(
        "homeostat: {}: {e}",
        command.first().map_or("".into(), |c| c.to_string_lossy())
    );
    std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}
