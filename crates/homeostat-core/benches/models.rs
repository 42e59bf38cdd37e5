//! Speed of the detection core on ADFA-LD replay, one core: test throughput (calls/s)
//! per model, training time per model, and dataset load time.
//!
//! Skips with a message when ADFA-LD is absent (set HOMEOSTAT_ADFA_DIR, or keep it at
//! ../shared/datasets/ADFA-LD beside the checkout).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Params, Registry, Scratch};
use homeostat_traces::adfa;

use homeostat_testsupport::adfa_dir;

fn benches(c: &mut Criterion) {
    let Some(dir) = adfa_dir() else {
        eprintln!("skipping benchmarks: ADFA-LD not found (set HOMEOSTAT_ADFA_DIR)");
        return;
    };
    let data = adfa::load(&dir).expect("ADFA-LD loads");
    let train: Vec<&[u32]> = data.training.iter().map(|t| t.calls.as_slice()).collect();
    let test: Vec<&[u32]> = data
        .validation
        .iter()
        .map(|t| t.calls.as_slice())
        .chain(data.attacks.iter().map(|a| a.trace.calls.as_slice()))
        .collect();
    let test_calls: u64 = test.iter().map(|t| t.len() as u64).sum();

    let mut g = c.benchmark_group("test");
    g.throughput(Throughput::Elements(test_calls));
    g.measurement_time(Duration::from_secs(4));
    for kind in ModelKind::ALL {
        let mut m = AnyModel::new(ModelSpec::new(kind)).unwrap();
        for t in &train {
            m.train_trace(t);
        }
        m.finish();
        let mut scratch = Scratch::default();
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for t in &test {
                    sum += m.test_trace(t, &mut scratch).mismatches;
                }
                sum
            })
        });
    }
    g.finish();

    // Through the trace-level Detector interface: the classic models must cost the
    // same as above (one virtual call per trace), and the scoring speed of kNN, of the
    // Kneser-Ney model (one hash lookup per order per call), of sequence covering
    // (two automaton transitions per call) and of an ensemble (its members' costs plus one rank lookup per member). The HMM and the
    // LM have their own benchmarks (benches/hmm.rs, homeostat-lm's benches/lm.rs):
    // training them here would take minutes.
    let reg = Registry::builtin();
    let mut g = c.benchmark_group("detector");
    g.throughput(Throughput::Elements(test_calls));
    g.measurement_time(Duration::from_secs(4));
    for name in [
        "stide",
        "knn",
        "kn",
        "cover",
        "ensemble:knn,stide.rate",
        "ensemble:kn,knn,stide.rate",
    ] {
        let mut b = reg.builder(name, &Params::new()).unwrap();
        for t in &train {
            b.add_trace(t);
        }
        let d = b.build(&|_, _| {}).unwrap();
        let mut scratch = Scratch::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for t in &test {
                    sum += d.score_trace(t, &mut scratch).scores[0];
                }
                sum
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("train");
    g.throughput(Throughput::Elements(
        train.iter().map(|t| t.len() as u64).sum(),
    ));
    for kind in ModelKind::ALL {
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                let mut m = AnyModel::new(ModelSpec::new(kind)).unwrap();
                for t in &train {
                    m.train_trace(t);
                }
                m.finish();
                m.profile_size()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("load");
    g.sample_size(20);
    g.bench_function("adfa-ld", |b| {
        b.iter(|| adfa::load(&dir).unwrap().training.len())
    });
    g.finish();
}

criterion_group!(models, benches);
criterion_main!(models);
