//! Properties every model must keep, checked on random traces.

use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Profile, ProfileMeta, Scratch};
use proptest::prelude::*;

/// Traces over a small alphabet (so windows repeat, as real traces do), with a few
/// large "unknown" numbers mixed in.
fn trace(max_len: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![9 => 0u32..12, 1 => 4000u32..4003, 1 => Just(u32::MAX)],
        0..max_len,
    )
}

fn trained(spec: ModelSpec, traces: &[Vec<u32>]) -> AnyModel {
    let mut m = AnyModel::new(spec).unwrap();
    for t in traces {
        m.train_trace(t);
    }
    m.finish();
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A trace used for training scores zero anomalies. t-stide and Markov flag rare
    /// training windows by design; with the default rare fraction (1e-5) and Markov
    /// threshold (1e-3) nothing in fewer than 1,000 training calls is rare enough.
    #[test]
    fn training_traces_are_normal(
        traces in prop::collection::vec(trace(120), 1..6),
        window in 1usize..10,
    ) {
        for kind in ModelKind::ALL {
            let w = if kind == ModelKind::Pairs { window.max(2) } else { window };
            let m = trained(ModelSpec::new(kind).with_window(w), &traces);
            let mut s = Scratch::default();
            for t in &traces {
                let score = m.test_trace(t, &mut s);
                prop_assert_eq!(score.mismatches, 0, "{} w={} trace={:?}", kind, w, t);
            }
        }
    }

    /// LFC never exceeds the frame size, and the whole-trace loop agrees with the
    /// call-by-call cursor the live monitor uses.
    #[test]
    fn lfc_bounded_and_streaming_agrees(
        train in prop::collection::vec(trace(80), 1..4),
        test in trace(300),
        window in 2usize..12,
        locality in 1usize..40,
    ) {
        for kind in ModelKind::ALL {
            let spec = ModelSpec::new(kind).with_window(window).with_locality(locality);
            let m = trained(spec, &train);
            let mut s = Scratch::default();
            let score = m.test_trace(&test, &mut s);
            prop_assert!(score.max_lfc as usize <= locality);
            prop_assert!(score.mismatches <= score.units);

            let mut streaming = homeostat_core::StreamScorer::new(&m);
            for &call in &test {
                let (_, lfc) = streaming.call(&m, call);
                prop_assert!(lfc as usize <= locality);
            }
            let streamed = streaming.finish(&m);
            prop_assert_eq!(streamed, score, "{}", kind);
        }
    }

    /// Lookahead pairs generalise stide: with w = k, whatever stide accepts, pairs
    /// accept too.
    #[test]
    fn pairs_accept_what_stide_accepts(
        train in prop::collection::vec(trace(60), 1..6),
        test in prop::collection::vec(trace(60), 1..20),
        k in 2usize..9,
    ) {
        let stide = trained(ModelSpec::new(ModelKind::Stide).with_window(k), &train);
        let pairs = trained(ModelSpec::new(ModelKind::Pairs).with_window(k), &train);
        let mut s = Scratch::default();
        // Also test splices of training traces, which stide often accepts.
        let mut probes = test.clone();
        for (a, b) in train.iter().zip(train.iter().skip(1)) {
            let mut spliced = a.clone();
            spliced.extend(b);
            probes.push(spliced);
        }
        for t in probes.iter().chain(&train) {
            if stide.test_trace(t, &mut s).mismatches == 0 {
                prop_assert_eq!(pairs.test_trace(t, &mut s).mismatches, 0, "k={} t={:?}", k, t);
            }
        }
    }

    /// Saving and loading a profile changes nothing about how it tests.
    #[test]
    fn profiles_round_trip(
        train in prop::collection::vec(trace(80), 1..4),
        test in trace(200),
        window in 2usize..15,
    ) {
        for kind in ModelKind::ALL {
            let m = trained(ModelSpec::new(kind).with_window(window), &train);
            let p = Profile::new(ProfileMeta::default(), m);
            let q = Profile::from_bytes(&p.to_bytes()).unwrap();
            let mut s = Scratch::default();
            let a = p.model.test_trace(&test, &mut s);
            let b = q.model.test_trace(&test, &mut s);
            prop_assert_eq!(a, b);
        }
    }

    /// Arbitrary bytes never make the loader panic.
    #[test]
    fn loader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Profile::from_bytes(&bytes);
        let _ = Profile::from_payload(&bytes);
    }
}
