//! Checks `adfa::load` against the real ADFA-LD dataset, when the machine has it.
//!
//! The dataset is not in the repository (it is third-party data); the expected counts
//! come from its SOURCE.md. Set `HOMEOSTAT_ADFA_DIR` to point at another copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use homeostat_traces::adfa;

fn dataset_dir() -> PathBuf {
    match std::env::var_os("HOMEOSTAT_ADFA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ADFA-LD"),
    }
}

#[test]
fn load_matches_source_md_counts() {
    let dir = dataset_dir();
    if !dir.join("Training_Data_Master").is_dir() {
        eprintln!("skipping: ADFA-LD not found at {}", dir.display());
        return;
    }
    let start = Instant::now();
    let ds = adfa::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "adfa::load took {:?} (debug builds are slower)",
        start.elapsed()
    );

    let total = |ts: &mut dyn Iterator<Item = &homeostat_traces::Trace>| -> usize {
        ts.map(|t| t.calls.len()).sum()
    };
    assert_eq!(ds.training.len(), 833);
    assert_eq!(ds.validation.len(), 4372);
    assert_eq!(ds.attacks.len(), 746);
    assert_eq!(total(&mut ds.training.iter()), 308_077);
    assert_eq!(total(&mut ds.validation.iter()), 2_122_085);
    assert_eq!(total(&mut ds.attacks.iter().map(|a| &a.trace)), 317_388);

    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &ds.attacks {
        *per_type.entry(a.attack_type.as_str()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = [
        ("Adduser", 91),
        ("Hydra_FTP", 162),
        ("Hydra_SSH", 176),
        ("Java_Meterpreter", 124),
        ("Meterpreter", 75),
        ("Web_Shell", 118),
    ]
    .into_iter()
    .collect();
    assert_eq!(per_type, want);

    // Spot checks from SOURCE.md: file naming, lengths, number range.
    assert_eq!(ds.training[0].id, "UTD-0001.txt");
    assert_eq!(&ds.training[0].calls[..6], &[6, 6, 63, 6, 42, 120]);
    let lens = ds.training.iter().map(|t| t.calls.len());
    assert_eq!((lens.clone().min(), lens.max()), (Some(79), Some(2948)));
    let all = ds
        .training
        .iter()
        .chain(&ds.validation)
        .chain(ds.attacks.iter().map(|a| &a.trace))
        .flat_map(|t| t.calls.iter().copied());
    let distinct: std::collections::BTreeSet<u32> = all.collect();
    assert_eq!(distinct.len(), 175);
    assert_eq!(distinct.first(), Some(&1));
    assert_eq!(distinct.last(), Some(&340));
    assert_eq!(ds.attacks[0].run, "Adduser_1");
    assert!(ds.attacks.iter().all(|a| a.run.starts_with(&a.attack_type)));
}

#[test]
fn read_traces_agrees_with_load_on_one_folder() {
    let dir = dataset_dir().join("Training_Data_Master");
    if !dir.is_dir() {
        eprintln!("skipping: ADFA-LD not found at {}", dir.display());
        return;
    }
    let opts = homeostat_traces::ReadOptions::default();
    let traces = homeostat_traces::read_traces(&dir, &opts).unwrap_or_else(|e| panic!("{e}"));
    let ds = adfa::load(&dataset_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(traces, ds.training);
}
