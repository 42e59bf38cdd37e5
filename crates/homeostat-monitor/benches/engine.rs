//! Cost of the pH engine per call (what `homeostat run` adds on top of the capture
//! mechanism): a replay of ADFA-LD-like call streams through Engine::on_syscall, with
//! profiles in training and in normal.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeostat_core::ph::{ExeKey, PhConfig};
use homeostat_monitor::{Call, Engine};
use homeostat_syscalls::Arch;

fn stream() -> Vec<u32> {
    // A program's loop: open, read a few times, write, close, with variation.
    let mut v = vec![];
    for i in 0..10_000u32 {
        v.extend([257, 5, 0, 0, 0, 1, 3]);
        if i % 7 == 0 {
            v.extend([9, 11]);
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let calls = stream();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(calls.len() as u64));
    g.measurement_time(Duration::from_secs(3));
    for (name, normal) in [("training", false), ("normal", true)] {
        let config = PhConfig {
            normal_wait_secs: 0.0,
            ..PhConfig::default()
        };
        let (mut e, _) = Engine::new(config, None, Box::new(|_| {}));
        let exe = ExeKey { dev: 1, ino: 2 };
        let feed = |e: &mut Engine, now: u64| {
            for &nr in &calls {
                e.on_syscall(
                    &Call {
                        tid: 7,
                        pid: 7,
                        exe,
                        born: None,
                        path: "/usr/bin/x",
                        arch: Arch::X86_64,
                        nr,
                        parent: None,
                        arg: None,
                    },
                    now,
                );
            }
        };
        if normal {
            feed(&mut e, 1);
            feed(&mut e, 2);
        }
        g.bench_function(name, |b| b.iter(|| feed(&mut e, 3)));
    }
    g.finish();
}

criterion_group!(engine, bench);
criterion_main!(engine);
