//! Scoring speed of the lm model: the streaming path (one task, call by call, and many
//! traces on one thread) and the candle batched path (many traces in lanes). Weights come from one short
//! training epoch on synthetic traces: speed depends on the sizes, not the values.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeostat_lm::{train, LmConfig, Progress};

/// Pseudo-random traces over 120 calls with repeated structure, ADFA-like in size.
fn traces(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|k| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((k as u64 % 7) * 11 + x % 40) as u32
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = traces(100, 1000);
    let refs: Vec<&[u32]> = data.iter().map(Vec::as_slice).collect();
    let cfg = LmConfig {
        epochs: 1,
        ..LmConfig::default()
    };
    let lm = train(&refs, &cfg, Progress::Quiet).expect("training");
    let calls: u64 = data.iter().map(|t| t.len() as u64).sum();
    let mut g = c.benchmark_group("lm");
    g.sample_size(10);
    g.throughput(Throughput::Elements(data[0].len() as u64));
    g.bench_function("stream_hidden128", |b| {
        b.iter(|| lm.score_stream(std::hint::black_box(&data[0])))
    });
    g.throughput(Throughput::Elements(calls));
    g.bench_function("threads1_hidden128_100x1000", |b| {
        b.iter(|| lm.score_traces(std::hint::black_box(&refs), 1))
    });
    g.bench_function("candle_lanes100_hidden128_100x1000", |b| {
        b.iter(|| {
            lm.nll_traces(std::hint::black_box(&refs), 100)
                .expect("scoring")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
