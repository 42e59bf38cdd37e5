//! Hand-checked examples and property tests: every mimicry sequence is accepted by the
//! core model itself and no shorter one exists (brute force); every MFS is foreign and
//! minimal against the training traces, and none is missed.

use homeostat_analyze::{tightness, Bounds, Mfs, Outcome, View};
use homeostat_core::{AnyModel, Model, ModelKind, ModelSpec, Scratch};
use proptest::prelude::*;

fn trained(spec: ModelSpec, traces: &[&[u32]]) -> AnyModel {
    let mut m = AnyModel::new(spec).unwrap();
    for t in traces {
        m.train_trace(t);
    }
    m.finish();
    m
}

fn stide(k: usize, traces: &[&[u32]]) -> AnyModel {
    trained(ModelSpec::new(ModelKind::Stide).with_window(k), traces)
}

fn accepted(m: &AnyModel, seq: &[u32]) -> bool {
    let mut s = Scratch::default();
    m.test_trace(seq, &mut s);
    s.anomalies.is_empty()
}

fn search(m: &AnyModel, goal: &[u32], max_len: usize) -> Outcome {
    let v = View::new(m).unwrap();
    let goal: Vec<Vec<u32>> = goal.iter().map(|&g| vec![g]).collect();
    let bounds = Bounds {
        max_len,
        ..Bounds::default()
    };
    v.mimicry(&goal, bounds, 999, &mut |_, _| {})
}

fn spans(m: &AnyModel, trace: &[u32]) -> Vec<(usize, usize)> {
    View::new(m)
        .unwrap()
        .mfs(trace)
        .mfs
        .iter()
        .map(|m| (m.pos, m.len))
        .collect()
}

#[test]
fn mimicry_by_hand_on_a_cycle() {
    // Windows (k = 3): 123 234 341 412, so accepted sequences of 3 or more calls are
    // the pieces of the cycle 1 2 3 4 1 2 3 4 ...
    let m = stide(3, &[&[1, 2, 3, 4, 1, 2]]);
    // 4 then 3: the shortest piece with a 4 before a 3 is 4 1 2 3.
    let out = search(&m, &[4, 3], 20);
    assert_eq!(out.sequence(), Some(&[4, 1, 2, 3][..]));
    // A call the profile never saw can never be hidden.
    assert_eq!(search(&m, &[5], 20), Outcome::NoneWithin { max_len: 20 });
    // One call alone still needs a whole first window.
    let one = search(&m, &[3], 20);
    assert_eq!(one.sequence().map(<[u32]>::len), Some(3));
    assert!(accepted(&m, one.sequence().unwrap()));
}

#[test]
fn mid_trace_the_program_s_own_calls_are_free() {
    let m = stide(3, &[&[1, 2, 3, 4, 1, 2]]);
    let v = View::new(&m).unwrap();
    let bounds = Bounds {
        max_len: 20,
        mid_trace: true,
        ..Bounds::default()
    };
    // From a trace start 3 needs a whole window; taken over after "1 2" it is one call.
    let out = v.mimicry(&[vec![3]], bounds, 999, &mut |_, _| {});
    assert_eq!(out.sequence(), Some(&[3][..]));
    let mut whole = out.prefix().to_vec();
    whole.extend_from_slice(out.sequence().unwrap());
    assert!(accepted(&m, &whole), "{whole:?}");
    // 4 then 3 still needs 1 2 between them.
    let out = v.mimicry(&[vec![4], vec![3]], bounds, 999, &mut |_, _| {});
    assert_eq!(out.sequence(), Some(&[4, 1, 2, 3][..]));
}

#[test]
fn none_within_the_bound_then_found_past_it() {
    // k = 2 over a chain: 9 is only reachable from 1 by walking the whole chain.
    let chain: Vec<u32> = (1..=9).collect();
    let m = stide(2, &[&chain]);
    assert_eq!(search(&m, &[1, 9], 8), Outcome::NoneWithin { max_len: 8 });
    assert_eq!(search(&m, &[1, 9], 9).sequence(), Some(&chain[..]));
    // And nothing ever follows 9.
    assert_eq!(search(&m, &[9, 1], 50), Outcome::NoneWithin { max_len: 50 });
}

#[test]
fn pairs_and_markov_by_hand() {
    // w = 3 pairs from 1 2 3: (2<-1,1) (3<-2,1) (3<-1,2). The first call of a trace has
    // no pairs to miss, so any single call passes; 3 then 1 never does.
    let m = trained(
        ModelSpec::new(ModelKind::Pairs).with_window(3),
        &[&[1, 2, 3]],
    );
    assert_eq!(search(&m, &[7], 10).sequence(), Some(&[7][..]));
    assert_eq!(search(&m, &[1, 3], 10).sequence(), Some(&[1, 2, 3][..]));
    assert_eq!(search(&m, &[3, 1], 10), Outcome::NoneWithin { max_len: 10 });
    // Markov with a threshold no unseen call reaches and no lenient context.
    let mut spec = ModelSpec::new(ModelKind::Markov).with_window(2);
    spec.threshold = 0.2;
    let m = trained(spec, &[&[1, 2, 1, 2, 1, 2, 1, 2, 3]]);
    let out = search(&m, &[3], 20);
    assert_eq!(out.sequence(), Some(&[1, 2, 3][..]));
    assert!(accepted(&m, &[1, 2, 3]));
}

#[test]
fn blind_region_hides_the_attack_from_k6_but_not_k8() {
    let a: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8];
    let b: &[u32] = &[9, 2, 3, 4, 5, 6, 7, 10];
    // Every 6- and 7-window of the attack occurred in training; the whole did not.
    let attack: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 10];
    let k6 = stide(6, &[a, b]);
    let k8 = stide(8, &[a, b]);
    assert!(accepted(&k6, attack));
    assert!(!accepted(&k8, attack));
    // The k = 8 profile finds the MFS of length 8; the k = 6 profile cannot see it.
    let rep = View::new(&k8).unwrap().mfs(attack);
    assert_eq!(
        rep.mfs,
        vec![Mfs {
            pos: 0,
            len: 8,
            exact: true
        }]
    );
    assert_eq!((rep.visible(6), rep.visible(7), rep.visible(8)), (0, 0, 1));
    assert!(View::new(&k6).unwrap().mfs(attack).mfs.is_empty());
    // As mimicry: 1 ... 10 hides under k = 6 in the attack itself, never under k = 8.
    assert_eq!(search(&k6, &[1, 10], 20).sequence(), Some(attack));
    assert_eq!(
        search(&k8, &[1, 10], 20),
        Outcome::NoneWithin { max_len: 20 }
    );
}

#[test]
fn mfs_by_hand() {
    let m = stide(3, &[&[1, 2, 3, 4, 1, 2]]);
    // 5 was never seen (length 1); 2 4 never occurred although 2 and 4 did.
    assert_eq!(spans(&m, &[1, 2, 3, 5, 1, 2, 4]), vec![(3, 1), (5, 2)]);
    // 1 2 and 2 5 occurred, 1 2 5 did not: length 3, seen by k = 3, not by k = 2.
    let m = stide(3, &[&[1, 2, 3], &[4, 2, 5]]);
    let rep = View::new(&m).unwrap().mfs(&[1, 2, 5]);
    assert_eq!(rep.mfs.len(), 1);
    assert_eq!((rep.mfs[0].pos, rep.mfs[0].len), (0, 3));
    assert_eq!((rep.visible(2), rep.visible(3)), (0, 1));
    // Pairs: adjacent calls are exact; a missing distance-2 pair proves a span foreign.
    let p = trained(
        ModelSpec::new(ModelKind::Pairs).with_window(3),
        &[&[1, 2], &[2, 3]],
    );
    let rep = View::new(&p).unwrap().mfs(&[1, 2, 3, 1]);
    assert_eq!(
        rep.mfs,
        vec![
            Mfs {
                pos: 0,
                len: 3,
                exact: false
            },
            Mfs {
                pos: 2,
                len: 2,
                exact: true
            }
        ]
    );
}

#[test]
fn tightness_counts_unreachable_goals_as_the_bound() {
    let m = stide(3, &[&[1, 2, 3, 4, 1, 2]]);
    let v = View::new(&m).unwrap();
    let goals = vec![
        ("4,3".to_string(), vec![vec![4], vec![3]]),
        ("5".to_string(), vec![vec![5]]),
    ];
    let bounds = Bounds {
        max_len: 10,
        ..Bounds::default()
    };
    let t = tightness(&v, &goals, bounds, 999, &mut |_, _| {});
    // 4 1 2 3: padding 2; 5: unreachable, counted as 10 - 1.
    assert_eq!(t.goals[0].padding, 2);
    assert_eq!(t.goals[1].padding, 9);
    assert_eq!(t.unreachable, 1);
    assert!((t.mean_padding - 5.5).abs() < 1e-9);
}

// ---- properties ----

fn spec_strategy() -> impl Strategy<Value = ModelSpec> {
    prop_oneof![
        (1usize..=5).prop_map(|k| ModelSpec::new(ModelKind::Stide).with_window(k)),
        (1usize..=4).prop_map(|k| {
            let mut s = ModelSpec::new(ModelKind::TStide).with_window(k);
            s.rare_fraction = 0.1;
            s
        }),
        (2usize..=5).prop_map(|w| ModelSpec::new(ModelKind::Pairs).with_window(w)),
        (1usize..=4, prop_oneof![Just(0.001), Just(0.15), Just(0.4)]).prop_map(|(n, th)| {
            let mut s = ModelSpec::new(ModelKind::Markov).with_window(n);
            s.threshold = th;
            s.smoothing = 0.5;
            s
        }),
    ]
}

fn traces_strategy() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(prop::collection::vec(1u32..=4, 1..12), 1..4)
}

/// Every sequence over {1..=5} (5 never trained) of exactly `len` calls.
fn all_sequences(len: usize) -> impl Iterator<Item = Vec<u32>> {
    (0..5usize.pow(len as u32)).map(move |mut i| {
        (0..len)
            .map(|_| {
                let c = (i % 5) as u32 + 1;
                i /= 5;
                c
            })
            .collect()
    })
}

fn is_subsequence(goal: &[u32], seq: &[u32]) -> bool {
    let mut it = seq.iter();
    goal.iter().all(|g| it.any(|c| c == g))
}

fn occurs(traces: &[Vec<u32>], s: &[u32]) -> bool {
    traces
        .iter()
        .any(|t| s.is_empty() || t.windows(s.len()).any(|w| w == s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mimicry_is_accepted_and_shortest(
        spec in spec_strategy(),
        traces in traces_strategy(),
        goal in prop::collection::vec(1u32..=5, 1..=4),
    ) {
        let refs: Vec<&[u32]> = traces.iter().map(|t| &t[..]).collect();
        let m = trained(spec, &refs);
        const LIMIT: usize = 6;
        // `other` = 5: the unknown call the brute force also tries.
        let v = View::new(&m).unwrap();
        let steps: Vec<Vec<u32>> = goal.iter().map(|&g| vec![g]).collect();
        let bounds = Bounds { max_len: LIMIT, ..Bounds::default() };
        let out = v.mimicry(&steps, bounds, 5, &mut |_, _| {});
        let brute = (1..=LIMIT).find(|&len| {
            all_sequences(len).any(|s| is_subsequence(&goal, &s) && accepted(&m, &s))
        });
        match &out {
            Outcome::Found { sequence, .. } => {
                prop_assert!(accepted(&m, sequence), "{sequence:?} raises an anomaly");
                prop_assert!(is_subsequence(&goal, sequence));
                prop_assert_eq!(Some(sequence.len()), brute);
            }
            Outcome::NoneWithin { .. } => prop_assert_eq!(brute, None),
            Outcome::Budget { .. } => prop_assert!(false, "budget on a tiny profile"),
        }
    }

    #[test]
    fn mid_trace_mimicry_is_accepted_after_its_prefix(
        spec in spec_strategy(),
        traces in traces_strategy(),
        goal in prop::collection::vec(1u32..=5, 1..=3),
    ) {
        let refs: Vec<&[u32]> = traces.iter().map(|t| &t[..]).collect();
        let m = trained(spec.clone(), &refs);
        const LIMIT: usize = 4;
        let v = View::new(&m).unwrap();
        let steps: Vec<Vec<u32>> = goal.iter().map(|&g| vec![g]).collect();
        let bounds = Bounds { max_len: LIMIT, mid_trace: true, ..Bounds::default() };
        let out = v.mimicry(&steps, bounds, 5, &mut |_, _| {});
        // Brute force over takeover histories of up to 2 calls: an upper bound on the
        // shortest attack (the search may use longer histories).
        let brute = (1..=LIMIT).find(|&len| {
            (0..=2).any(|p| all_sequences(p).any(|pre| all_sequences(len).any(|s| {
                let mut w = pre.clone();
                w.extend_from_slice(&s);
                is_subsequence(&goal, &s) && accepted(&m, &w)
            })))
        });
        match &out {
            Outcome::Found { sequence, prefix } => {
                let mut whole = prefix.clone();
                whole.extend_from_slice(sequence);
                prop_assert!(accepted(&m, &whole), "{prefix:?} + {sequence:?} raises an anomaly");
                prop_assert!(is_subsequence(&goal, sequence));
                prop_assert!(brute.is_none_or(|b| sequence.len() <= b));
                if spec.kind == ModelKind::Pairs {
                    prop_assert!(prefix.is_empty());
                }
            }
            Outcome::NoneWithin { .. } => prop_assert_eq!(brute, None),
            Outcome::Budget { .. } => prop_assert!(false, "budget on a tiny profile"),
        }
    }

    #[test]
    fn every_mfs_is_foreign_and_minimal(
        spec in spec_strategy(),
        traces in traces_strategy(),
        trace in prop::collection::vec(1u32..=5, 0..16),
    ) {
        let refs: Vec<&[u32]> = traces.iter().map(|t| &t[..]).collect();
        let m = trained(spec.clone(), &refs);
        let rep = View::new(&m).unwrap().mfs(&trace);
        for f in &rep.mfs {
            let s = &trace[f.pos..f.pos + f.len];
            prop_assert!(!occurs(&traces, s), "{s:?} occurred in training");
            if f.exact {
                prop_assert!(occurs(&traces, &s[1..]) && occurs(&traces, &s[..s.len() - 1]),
                    "{s:?} is not minimal");
            }
        }
        // Nothing missed up to the exact horizon.
        for pos in 0..trace.len() {
            for len in 1..=rep.exact_to.min(trace.len() - pos) {
                let s = &trace[pos..pos + len];
                let minimal = !occurs(&traces, s)
                    && occurs(&traces, &s[1..])
                    && occurs(&traces, &s[..len - 1]);
                if minimal {
                    prop_assert!(rep.mfs.iter().any(|f| f.pos == pos && f.len == len),
                        "missed MFS {s:?} at {pos} ({:?})", spec.kind);
                }
            }
        }
    }
}
