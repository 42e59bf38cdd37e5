//! The lm model on hand-made traces: it learns what it is shown, its two scoring paths
//! agree, and its profile survives a round trip and refuses damage.

use homeostat_core::profile::StoredModel;
use homeostat_core::{ProfileError, ProfileMeta};
use homeostat_lm::{train, Lm, LmConfig, LmError, Progress, StoredLm, KIND};

const CYCLE: [u32; 6] = [3, 5, 7, 11, 13, 17];

/// Traces that walk the cycle from different starting points.
fn cyclic_traces() -> Vec<Vec<u32>> {
    (0..24)
        .map(|i| (0..60 + i).map(|k| CYCLE[(i + k) % CYCLE.len()]).collect())
        .collect()
}

fn tiny() -> LmConfig {
    LmConfig {
        hidden: 16,
        chunk: 16,
        batch: 4,
        epochs: 40,
        patience: 40,
        lr: 0.02,
        holdout_every: 6,
        time_limit_secs: 0,
        ..LmConfig::default()
    }
}

fn trained() -> Lm {
    let traces = cyclic_traces();
    let refs: Vec<&[u32]> = traces.iter().map(Vec::as_slice).collect();
    train(&refs, &tiny(), Progress::Quiet).unwrap()
}

fn meta() -> ProfileMeta {
    ProfileMeta {
        arch: "x86_64".into(),
        created_unix: 1_800_000_000,
        traces: 24,
        source: "unit test".into(),
    }
}

#[test]
fn learns_a_cycle_and_flags_foreign_calls() {
    let lm = trained();
    assert_eq!(lm.alphabet().len(), CYCLE.len());
    let mut s = lm.start();
    let mut late = vec![];
    for k in 0..30 {
        let nll = lm.push(&mut s, CYCLE[k % CYCLE.len()]);
        if k >= 2 {
            late.push(nll);
        }
    }
    let worst = late.iter().copied().fold(0.0f32, f32::max);
    assert!(
        worst < 0.2,
        "a learnt cycle should be predictable, worst NLL {worst}"
    );
    let mut known_wrong = s.clone();
    // Next expected is CYCLE[0]; a call never seen, and a known call out of place.
    let foreign = lm.push(&mut s, 99);
    let misplaced = lm.push(&mut known_wrong, CYCLE[3]);
    assert!(foreign > 5.0, "foreign call NLL {foreign}");
    assert!(misplaced > 3.0, "misplaced call NLL {misplaced}");
    assert!(foreign > lm.threshold() && misplaced > lm.threshold());
    assert!(lm.stats().holdout_traces == 4 && lm.stats().best_epoch >= 1);
    // A trace with a burst of wrong calls outscores a clean one on every score.
    let clean: Vec<u32> = (0..60).map(|k| CYCLE[k % 6]).collect();
    let mut dirty = clean.clone();
    dirty[30..36].copy_from_slice(&[99, 3, 3, 98, 17, 3]);
    let (c, d) = (lm.score_stream(&clean), lm.score_stream(&dirty));
    assert!(d.mean_nll > c.mean_nll + 0.3);
    assert!(d.max_frame_nll > c.max_frame_nll + 1.0);
    assert!(d.max_lfc >= 3 && c.max_lfc == 0, "{d:?} {c:?}");
}

/// The streaming scorer (plain Rust, one call at a time) gives candle's batched NLLs
/// for every trace of `refs`, packed in each of `lanes` lanes, to 1e-4.
fn streaming_matches_batched(lm: &Lm, refs: &[&[u32]], lanes: &[usize]) {
    for &n in lanes {
        let batched = lm.nll_traces(refs, n).unwrap();
        for (t, b) in refs.iter().zip(&batched) {
            let mut s = lm.start();
            let streamed: Vec<f32> = t.iter().map(|&c| lm.push(&mut s, c)).collect();
            assert_eq!(streamed.len(), b.len());
            for (x, y) in streamed.iter().zip(b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }
}

#[test]
fn streaming_equals_batched() {
    let lm = trained();
    let mut probes = cyclic_traces();
    probes.push(vec![3, 5, 99, 7, 11, 3, 3, 3]);
    probes.push(vec![]);
    probes.push(vec![42]);
    let refs: Vec<&[u32]> = probes.iter().map(Vec::as_slice).collect();
    streaming_matches_batched(&lm, &refs, &[1, 3, 256]);
    let scores = lm.score_traces(&refs, 2);
    for (t, b) in probes.iter().zip(&scores) {
        let s = lm.score_stream(t);
        assert_eq!(s.calls, b.calls);
        assert!((s.mean_nll - b.mean_nll).abs() < 1e-4);
        assert!((s.max_frame_nll - b.max_frame_nll).abs() < 1e-4);
    }
}

#[test]
fn same_seed_same_model() {
    let traces = cyclic_traces();
    let refs: Vec<&[u32]> = traces.iter().map(Vec::as_slice).collect();
    let cfg = LmConfig {
        epochs: 3,
        ..tiny()
    };
    let a = train(&refs, &cfg, Progress::Quiet).unwrap();
    let b = train(&refs, &cfg, Progress::Quiet).unwrap();
    assert_eq!(a.weights(), b.weights());
    let c = train(&refs, &LmConfig { seed: 2, ..cfg }, Progress::Quiet).unwrap();
    assert_ne!(a.weights(), c.weights());
}

#[test]
fn round_trip_gives_identical_scores() {
    let lm = trained();
    let bytes = lm.to_bytes(&meta());
    let (back, m) = Lm::from_bytes(&bytes).unwrap();
    assert_eq!(m, meta());
    assert_eq!(back.weights(), lm.weights());
    assert_eq!(back.config(), lm.config());
    assert_eq!(back.stats(), lm.stats());
    assert_eq!(back.threshold(), lm.threshold());
    let probe = [3, 5, 7, 99, 11, 13, 17, 3, 3, 5];
    assert_eq!(back.score_stream(&probe), lm.score_stream(&probe));
    let refs: Vec<&[u32]> = vec![&probe];
    assert_eq!(
        back.nll_traces(&refs, 2).unwrap(),
        lm.nll_traces(&refs, 2).unwrap()
    );
}

#[test]
fn a_model_past_the_shared_id_round_trips() {
    // 600 distinct calls: training shares the last id past MAX_ID but keeps every
    // symbol; the profile it writes must load and score alike.
    let t: Vec<u32> = (0..600).collect();
    let cfg = LmConfig {
        epochs: 1,
        hidden: 4,
        ..tiny()
    };
    let lm = train(&[&t], &cfg, Progress::Quiet).unwrap();
    let (back, _) = Lm::from_bytes(&lm.to_bytes(&meta())).unwrap();
    let probe: Vec<u32> = (500..600).chain(0..20).collect();
    assert_eq!(back.score_stream(&probe), lm.score_stream(&probe));
}

fn profile_err(bytes: &[u8]) -> ProfileError {
    match Lm::from_bytes(bytes) {
        Err(LmError::Profile(e)) => e,
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("damaged profile accepted"),
    }
}

#[test]
fn damaged_profile_is_refused() {
    let lm = trained();
    let bytes = lm.to_bytes(&meta());
    assert_eq!(profile_err(b"#!/bin/sh\n"), ProfileError::NotAProfile);
    for cut in [10, 30, bytes.len() / 2, bytes.len() - 1] {
        assert!(matches!(
            profile_err(&bytes[..cut]),
            ProfileError::Truncated { .. }
        ));
    }
    for at in [30, bytes.len() / 2, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        assert!(matches!(profile_err(&b), ProfileError::Checksum { .. }));
    }
    // Behind a valid checksum: wrong shapes, non-finite weights, bad config.
    let stored = lm.to_stored();
    let damage: [fn(&mut StoredLm); 6] = [
        |s| {
            s.tensors[1].data.pop();
        },
        |s| s.tensors[3].shape[1] += 1,
        |s| s.tensors[0].data[0] = f32::NAN,
        |s| s.config.hidden = 0,
        |s| s.symbols.push(s.symbols[0]),
        |s| s.version = 9,
    ];
    for (i, d) in damage.iter().enumerate() {
        let mut s = stored.clone();
        d(&mut s);
        let payload = postcard::to_allocvec(&s).unwrap();
        let framed = homeostat_core::profile::encode_profile(
            &meta(),
            StoredModel {
                kind: KIND.into(),
                payload,
            },
        );
        assert!(
            matches!(profile_err(&framed), ProfileError::Corrupt(_)),
            "damage {i} accepted"
        );
    }
    // Every truncation of the payload itself decodes to an error, never a panic.
    let payload = postcard::to_allocvec(&stored).unwrap();
    for cut in (0..payload.len()).step_by(97) {
        assert!(Lm::from_payload(&payload[..cut]).is_err());
    }
}

#[test]
fn bad_config_and_empty_input_are_errors() {
    let refs: Vec<&[u32]> = vec![&[1, 2, 3]];
    for cfg in [
        LmConfig {
            hidden: 0,
            ..tiny()
        },
        LmConfig {
            lr: f64::NAN,
            ..tiny()
        },
        LmConfig {
            quantile: 1.0,
            ..tiny()
        },
        LmConfig {
            epochs: 0,
            ..tiny()
        },
    ] {
        assert!(matches!(
            train(&refs, &cfg, Progress::Quiet),
            Err(LmError::Config(_))
        ));
    }
    let empty: Vec<&[u32]> = vec![&[], &[]];
    assert!(matches!(
        train(&empty, &tiny(), Progress::Quiet),
        Err(LmError::Empty)
    ));
}

#[test]
fn registry_entry_trains_streams_and_loads() {
    use homeostat_core::{Params, Registry, Scratch};
    let mut reg = Registry::builtin();
    reg.register(homeostat_lm::entry());
    let mut p = Params::new();
    p.set("hidden", 16);
    p.set("epochs", 5);
    p.set("chunk", 16);
    p.set("batch", 4);
    let mut b = reg.builder("lm", &p).unwrap();
    for t in cyclic_traces() {
        b.add_trace(&t);
    }
    let calls = std::sync::atomic::AtomicU64::new(0);
    let det = b
        .build(&|done, _| calls.store(done, std::sync::atomic::Ordering::Relaxed))
        .unwrap();
    assert!(calls.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(det.score_names()[0], "mean_nll");
    let probe = [3, 5, 7, 99, 11, 13];
    let whole = det.score_trace(&probe, &mut Scratch::default());
    let mut s = det.stream();
    for &c in &probe {
        s.call(c);
    }
    assert_eq!(s.finish(), whole);
    let bytes = homeostat_core::registry::DetectorProfile {
        meta: meta(),
        detector: det,
    }
    .to_bytes();
    let back = reg.load_profile(&bytes).unwrap();
    assert_eq!(
        back.detector.score_trace(&probe, &mut Scratch::default()),
        whole
    );
    let (lm, m) = Lm::from_bytes(&bytes).unwrap();
    assert_eq!(m, meta());
    assert_eq!(lm.config().hidden, 16);
    let mut bad = p.clone();
    bad.set("hidden", "many");
    assert!(reg.builder("lm", &bad).is_err());
}

/// The held-out traces' scores a fresh model keeps are those its scoring gives them,
/// and an ensemble uses them: the LM member trains once, not a second time without
/// the ensemble's own held-out traces.
#[test]
fn held_out_scores_serve_the_ensemble() {
    use homeostat_core::{Detector, Params, Registry, Scratch};
    use std::sync::Mutex;
    let lm = trained();
    let traces = cyclic_traces();
    let held: Vec<&Vec<u32>> = traces.iter().skip(5).step_by(6).collect();
    let rows = lm.held_out_scores().expect("a fresh model keeps them");
    assert_eq!(rows.len(), held.len());
    for (row, t) in rows.iter().zip(held) {
        let want = lm.score_trace(t, &mut Scratch::default()).scores;
        assert_eq!(row.len(), want.len());
        for (a, b) in row.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-3 * b.abs().max(1.0),
                "{row:?} vs {want:?}"
            );
        }
    }
    let loaded = Lm::from_payload(&lm.save()).unwrap();
    assert!(loaded.held_out_scores().is_none());

    let mut reg = Registry::builtin();
    reg.register(homeostat_lm::entry());
    let mut p = Params::new();
    for (k, v) in [("hidden", 16), ("epochs", 3), ("chunk", 16), ("batch", 4)] {
        p.set(k, v);
    }
    let mut b = reg.builder("ensemble:lm,stide", &p).unwrap();
    for t in &traces {
        b.add_trace(t);
    }
    // stide reports no progress, so every report is the LM's; a report whose count
    // goes down is a second training.
    let seen = Mutex::new(vec![]);
    let det = b
        .build(&|done, total| seen.lock().unwrap().push((done, total)))
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty());
    let restarts = seen.windows(2).filter(|w| w[1].0 < w[0].0).count();
    assert_eq!(restarts, 0, "the LM trained more than once: {seen:?}");
    let probe = [3, 5, 7, 99, 11, 13];
    let s = det.score_trace(&probe, &mut Scratch::default());
    assert!(s.scores.iter().all(|x| x.is_finite()), "{s:?}");
}

/// An ensemble of language models that differ only in their own parameters (Kim et
/// al. 2016's ensemble of LMs): each member trains with its seed and size, reports its
/// own score, and the profile brings every member back.
#[test]
fn ensemble_members_with_their_own_seeds_and_sizes() {
    use homeostat_core::registry::DetectorProfile;
    use homeostat_core::{Params, Registry, Scratch};
    let mut reg = Registry::builtin();
    reg.register(homeostat_lm::entry());
    let mut p = Params::new();
    for (k, v) in [("hidden", 16), ("epochs", 2), ("chunk", 16), ("batch", 4)] {
        p.set(k, v);
    }
    let name = "ensemble:lm(seed=1),lm(seed=2),lm(seed=2,hidden=8)";
    // The canonical name lists a member's parameters sorted.
    assert_eq!(
        reg.canonical(name).unwrap(),
        "ensemble:lm(seed=1),lm(seed=2),lm(hidden=8,seed=2)"
    );
    let mut b = reg.builder(name, &p).unwrap();
    for t in &cyclic_traces() {
        b.add_trace(t);
    }
    let det = b.build(&|_, _| {}).unwrap();
    // The members' own scores follow the combined ones.
    let c = homeostat_core::ensemble::COMBINED.len();
    assert_eq!(
        det.score_names()[c..],
        ["lm(seed=1)", "lm(seed=2)", "lm(hidden=8,seed=2)"]
    );
    let probe = [3u32, 5, 7, 99, 11, 13, 3, 5];
    let s = det.score_trace(&probe, &mut Scratch::default()).scores;
    // Different seeds and sizes give different models.
    assert!(s[c] != s[c + 1] && s[c + 1] != s[c + 2], "{s:?}");
    assert!(det.describe().contains("lm.mean_nll"), "{}", det.describe());
    let bytes = DetectorProfile {
        meta: meta(),
        detector: det,
    }
    .to_bytes();
    let back = reg.load_profile(&bytes).unwrap().detector;
    assert_eq!(
        back.score_names()[c..],
        ["lm(seed=1)", "lm(seed=2)", "lm(hidden=8,seed=2)"]
    );
    let t = back.score_trace(&probe, &mut Scratch::default()).scores;
    for (a, b) in s.iter().zip(&t) {
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{s:?} vs {t:?}");
    }
}

/// A two-layer LSTM with dropout (Kim et al. 2016's cell) learns the cycle, and its
/// streaming and batched NLLs agree as the GRU's do.
#[test]
fn two_layer_lstm_learns_and_its_paths_agree() {
    use homeostat_lm::Cell;
    let traces = cyclic_traces();
    let refs: Vec<&[u32]> = traces.iter().map(Vec::as_slice).collect();
    let cfg = LmConfig {
        cell: Cell::Lstm,
        layers: 2,
        dropout: 0.1,
        ..tiny()
    };
    let lm = train(&refs, &cfg, Progress::Quiet).unwrap();
    assert_eq!(lm.weights().layers(), 2);
    assert_eq!(lm.weights().emb.len(), (CYCLE.len() + 2) * 4 * 16);
    let clean: Vec<u32> = (0..60).map(|k| CYCLE[k % 6]).collect();
    let mut dirty = clean.clone();
    dirty[30..36].copy_from_slice(&[99, 3, 3, 98, 17, 3]);
    let (c, d) = (lm.score_stream(&clean), lm.score_stream(&dirty));
    assert!(
        c.mean_nll < 0.3,
        "a learnt cycle should be predictable: {c:?}"
    );
    assert!(d.mean_nll > c.mean_nll + 0.3, "{d:?} vs {c:?}");
    let mut probes = traces.clone();
    probes.push(dirty);
    probes.push(vec![]);
    let refs: Vec<&[u32]> = probes.iter().map(Vec::as_slice).collect();
    streaming_matches_batched(&lm, &refs, &[1, 5]);
    // Same seed, same model (dropout masks come from the seed too).
    let again = train(&refs[..24], &cfg, Progress::Quiet).unwrap();
    assert_eq!(again.weights(), lm.weights());
    // The profile brings the cell and the layers back.
    let (back, _) = Lm::from_bytes(&lm.to_bytes(&meta())).unwrap();
    assert_eq!(back.config(), lm.config());
    assert_eq!(back.score_stream(&clean), lm.score_stream(&clean));
}

/// A profile written by the build before LSTM support (payload version 1, a
/// one-layer GRU: `homeostat train -m lm -P hidden=4,epochs=2,holdout_every=3,
/// batch=2,chunk=16,time_limit=0` on ADFA-LD's UTD-0001..0006) still loads and scores
/// as that build scored it (`homeostat scan --json`: mean_nll 2.9577115660622004,
/// max_frame_nll 3.2817231178283692, one anomalous call, on the probe below).
#[test]
fn a_version_1_gru_profile_still_loads() {
    let bytes = include_bytes!("data/gru_v1.hsp");
    let (lm, meta) = Lm::from_bytes(bytes).unwrap();
    assert_eq!(meta.traces, 6);
    assert_eq!(lm.config().cell, homeostat_lm::Cell::Gru);
    assert_eq!((lm.config().layers, lm.config().hidden), (1, 4));
    let probe = [
        6, 6, 63, 6, 42, 120, 6, 195, 120, 6, 6, 114, 114, 1, 1, 252, 252, 252, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 252, 252, 252, 252, 252, 252, 252, 252, 252, 252, 252, 252, 252, 999, 3,
    ];
    let s = lm.score_stream(&probe);
    assert_eq!((s.calls, s.anomalies), (42, 1));
    assert!((s.mean_nll - 2.957_711_566_062_200_4).abs() < 1e-6, "{s:?}");
    assert!(
        (s.max_frame_nll - 3.281_723_117_828_369_2).abs() < 1e-6,
        "{s:?}"
    );
    // Written again it is a version 2 payload that loads to the same model.
    let (back, _) = Lm::from_bytes(&lm.to_bytes(&meta)).unwrap();
    assert_eq!(back.weights(), lm.weights());
    assert_eq!(back.to_stored().version, homeostat_lm::PAYLOAD_VERSION);
}

/// `cell`, `layers` and `dropout` are registry parameters; bad values are errors.
#[test]
fn cell_and_layers_are_parameters() {
    use homeostat_core::{Params, Registry};
    let mut reg = Registry::builtin();
    reg.register(homeostat_lm::entry());
    let mut p = Params::new();
    for (k, v) in [
        ("hidden", "8"),
        ("epochs", "1"),
        ("chunk", "16"),
        ("batch", "4"),
    ] {
        p.set(k, v);
    }
    let mut q = p.clone();
    for (k, v) in [("cell", "lstm"), ("layers", "2"), ("dropout", "0.5")] {
        q.set(k, v);
    }
    let mut b = reg.builder("lm", &q).unwrap();
    for t in &cyclic_traces() {
        b.add_trace(t);
    }
    let det = b.build(&|_, _| {}).unwrap();
    assert!(
        det.describe().starts_with("lstm layers=2 hidden=8"),
        "{}",
        det.describe()
    );
    for (k, v) in [("cell", "rnn"), ("layers", "0"), ("dropout", "1.5")] {
        let mut q = p.clone();
        q.set(k, v);
        assert!(reg.builder("lm", &q).is_err(), "{k}={v} accepted");
    }
}
