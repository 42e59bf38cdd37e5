//! Trains the lm model on ADFA-LD's training traces and measures it on Validation
//! (normal) against Attack: ROC AUC (Mann-Whitney) and detection at 1% false alarms
//! for each trace score.
//!
//! `cargo run --release -p homeostat-lm --example adfa -- [DIR] [--epochs N]
//! [--cell gru|lstm] [--layers N] [--dropout P] [--hidden N] [--batch N] [--chunk N] [--lr X] [--seed N] [--save FILE]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use homeostat_core::ProfileMeta;
use homeostat_eval::datasets::adfa_ld;
use homeostat_eval::metrics::{at_far, auc};
use homeostat_lm::{train, LmConfig, Progress, SCORE_NAMES};

fn main() -> anyhow::Result<()> {
    let mut cfg = LmConfig::default();
    let mut dir = PathBuf::from("/work/shared/datasets/ADFA-LD");
    let mut save = None;
    let mut train_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--epochs" => cfg.epochs = val()?.parse()?,
            "--hidden" => cfg.hidden = val()?.parse()?,
            "--cell" => cfg.cell = val()?.parse().map_err(anyhow::Error::msg)?,
            "--layers" => cfg.layers = val()?.parse()?,
            "--dropout" => cfg.dropout = val()?.parse()?,
            "--batch" => cfg.batch = val()?.parse()?,
            "--chunk" => cfg.chunk = val()?.parse()?,
            "--lr" => cfg.lr = val()?.parse()?,
            "--seed" => cfg.seed = val()?.parse()?,
            "--patience" => cfg.patience = val()?.parse()?,
            "--quantile" => cfg.quantile = val()?.parse()?,
            "--locality" => cfg.locality = val()?.parse()?,
            "--train-only" => train_only = true,
            "--save" => save = Some(PathBuf::from(val()?)),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => dir = PathBuf::from(s),
        }
    }
    let ds = adfa_ld(&dir, None).with_context(|| format!("reading {}", dir.display()))?;
    let train_traces: Vec<&[u32]> = ds.train.iter().map(|t| t.calls.as_slice()).collect();
    println!("config: {cfg:?}");
    let t0 = Instant::now();
    let lm = train(&train_traces, &cfg, Progress::Bar)?;
    let train_secs = t0.elapsed().as_secs_f64();
    let st = lm.stats();
    println!(
        "trained {} traces / {} calls, held out {} traces; {} epochs, kept epoch {} (held-out NLL {:.4}); {} parameters; threshold {:.3} nats; {train_secs:.1} s",
        st.train_traces, st.train_calls, st.holdout_traces, st.epochs_run, st.best_epoch, st.holdout_nll, lm.parameters(), lm.threshold()
    );
    for (i, (tr, ho)) in st.history.iter().enumerate() {
        println!("  epoch {:2}: train {tr:.4} held-out {ho:.4}", i + 1);
    }
    if let Some(path) = save {
        let meta = ProfileMeta {
            arch: ds.arch.clone(),
            created_unix: 0,
            traces: ds.train.len() as u64,
            source: format!("ADFA-LD {}", dir.display()),
        };
        std::fs::write(&path, lm.to_bytes(&meta))?;
        println!("saved {}", path.display());
    }
    if train_only {
        return Ok(());
    }
    let test: Vec<&[u32]> = ds.test.iter().map(|t| t.trace.calls.as_slice()).collect();
    let calls = ds.test_calls();
    let t1 = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scores = lm.score_traces(&test, threads);
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "scoring on {threads} threads: {calls} calls in {secs:.1} s ({:.0} calls/s)",
        calls as f64 / secs
    );
    let sample: Vec<&[u32]> = test.iter().step_by(10).copied().collect();
    let sample_calls: usize = sample.iter().map(|t| t.len()).sum();
    let t3 = Instant::now();
    std::hint::black_box(lm.nll_traces(&sample, 512)?);
    let secs = t3.elapsed().as_secs_f64();
    println!(
        "candle batched scoring (512 lanes): {sample_calls} calls in {secs:.1} s ({:.0} calls/s)",
        sample_calls as f64 / secs
    );
    let t2 = Instant::now();
    for t in &sample {
        std::hint::black_box(lm.score_stream(t));
    }
    let secs = t2.elapsed().as_secs_f64();
    println!(
        "streaming scoring (1 thread): {sample_calls} calls in {secs:.1} s ({:.0} calls/s)",
        sample_calls as f64 / secs
    );
    for name in SCORE_NAMES {
        let (mut normal, mut attack) = (vec![], vec![]);
        for (t, s) in ds.test.iter().zip(&scores) {
            let v = s.get(name).expect("known score");
            if t.attack.is_some() {
                attack.push(v)
            } else {
                normal.push(v)
            }
        }
        let a = auc(&normal, &attack).unwrap_or(f64::NAN);
        let pts: Vec<String> = [0.01, 0.05, 0.10]
            .iter()
            .map(|&f| {
                let p = at_far(&normal, &attack, f, name == "max_lfc");
                format!("DR {:.1}% at FAR {:.1}%", 100.0 * p.dr, 100.0 * p.far)
            })
            .collect();
        println!("{name:>14}: AUC {a:.4}  {}", pts.join("  "));
    }
    Ok(())
}
