//! Speed of the HMM on ADFA-LD: one Baum-Welch iteration over the whole training set
//! (the figure scripts/bench-hmm.sh compares with hmmlearn), and scoring throughput of
//! the forward filter (calls/s over validation + attack traces, one core).
//!
//! `HOMEOSTAT_HMM_STATES` sets the state count (default 150, Warrender's "about as many
//! states as distinct calls" on ADFA-LD). Skips with a message when ADFA-LD is absent
//! (set HOMEOSTAT_ADFA_DIR, or keep it at ../shared/datasets/ADFA-LD beside the checkout).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeostat_core::hmm::{Hmm, HmmScratch, HmmSpec, Trainer};
use homeostat_traces::adfa;

fn adfa_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HOMEOSTAT_ADFA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ADFA-LD")
        });
    dir.join("Training_Data_Master").is_dir().then_some(dir)
}

fn benches(c: &mut Criterion) {
    let Some(dir) = adfa_dir() else {
        eprintln!("skipping hmm benchmarks: ADFA-LD not found (set HOMEOSTAT_ADFA_DIR)");
        return;
    };
    let states = std::env::var("HOMEOSTAT_HMM_STATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let data = adfa::load(&dir).expect("ADFA-LD loads");
    let train: Vec<&[u32]> = data.training.iter().map(|t| t.calls.as_slice()).collect();
    let train_calls: u64 = train.iter().map(|t| t.len() as u64).sum();
    let spec = HmmSpec {
        states,
        iterations: 2,
        tolerance: 0.0,
        ..HmmSpec::default()
    };
    // Two iterations first, so the benchmark runs on realistic (no longer uniform-ish)
    // parameters.
    let (mut hmm, _) = Hmm::train(spec, &train, |_, _| {}).expect("trains");
    let mut trainer = Trainer::new(&hmm, &train).expect("trainer");

    let mut g = c.benchmark_group("hmm");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(train_calls));
    g.bench_function(format!("baum-welch-iteration/{states}"), |b| {
        b.iter(|| trainer.iterate(&mut hmm).unwrap())
    });

    let test: Vec<&[u32]> = data
        .validation
        .iter()
        .map(|t| t.calls.as_slice())
        .chain(data.attacks.iter().map(|a| a.trace.calls.as_slice()))
        .take(500)
        .collect();
    g.throughput(Throughput::Elements(
        test.iter().map(|t| t.len() as u64).sum(),
    ));
    let mut scratch = HmmScratch::default();
    g.bench_function(format!("score/{states}"), |b| {
        b.iter(|| {
            test.iter()
                .map(|t| hmm.score_trace(t, &mut scratch).score.mismatches)
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group!(hmm, benches);
criterion_main!(hmm);
