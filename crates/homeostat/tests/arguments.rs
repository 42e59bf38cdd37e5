//! Argument-aware symbols end to end (docs/arguments.md): the note service's path
//! traversal (data/notes-app) makes exactly the calls of a normal read, on another
//! file. The plain call-number alphabet misses it; the (call, argument class) alphabet
//! catches it — on the checked-in labelled sample (recorded by
//! scripts/record-notes-sample.sh), on fresh recordings made under the real launcher,
//! and on strace output.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{bin, ok};

fn repo(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(part)
}

/// The AUC and detection rate at 1% false alarms of `model`'s `rate` score in one
/// eval report.
fn scores(report: &Value, model: &str) -> (f64, f64) {
    let m = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap();
    let s = &m["scores"]["rate"];
    (
        s["auc"].as_f64().unwrap(),
        s["dr_at_far"]["0.01"].as_f64().unwrap(),
    )
}

#[test]
fn eval_on_the_recorded_sample_compares_both_alphabets() {
    let sample = repo("data/notes-app/sample");
    let out = ok(bin()
        .args(["eval", "traces", "--train"])
        .arg(sample.join("training"))
        .arg("--normal")
        .arg(sample.join("validation"))
        .arg("--attack")
        .arg(sample.join("attack"))
        .args([
            "--symbols",
            "calls,args",
            "-m",
            "stide,pairs,markov",
            "--json",
        ]));
    let reports: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{out}");
    assert!(reports[0]["dataset"].as_str().unwrap().contains("calls"));
    assert!(reports[1]["dataset"].as_str().unwrap().contains("args"));
    assert_eq!(reports[1]["attack_traces"], 6);
    for model in ["stide", "pairs", "markov"] {
        let (plain_auc, plain_dr) = scores(&reports[0], model);
        let (rich_auc, rich_dr) = scores(&reports[1], model);
        eprintln!("{model}: calls AUC {plain_auc:.3} DR@1% {plain_dr:.3}; args AUC {rich_auc:.3} DR@1% {rich_dr:.3}");
        // The traversal reads that succeed look exactly like normal reads to the plain
        // alphabet: at most the one that fails (/etc/shadow, unreadable to nobody)
        // is caught.
        assert!(plain_dr <= 1.0 / 6.0 + 1e-9, "{model}: plain DR {plain_dr}");
        assert_eq!(rich_dr, 1.0, "{model}: args DR {rich_dr}");
        assert_eq!(rich_auc, 1.0, "{model}");
        assert!(plain_auc < 0.75, "{model}: plain AUC {plain_auc}");
    }
}

/// A notes directory and a place for recordings.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes");
        std::fs::create_dir(&notes).unwrap();
        for (name, text) in [
            ("todo.txt", "buy milk\n"),
            ("fox.txt", "the quick brown fox\n"),
            ("plan.txt", "step one\nstep two\n"),
            ("other.txt", "another note\n"),
        ] {
            std::fs::write(notes.join(name), text).unwrap();
        }
        Lab { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// One request to the note service with `wrap` (a recorder) in front of it;
    /// returns its answer.
    fn request(&self, wrap: &mut Command, query: &str) -> String {
        let out = wrap
            .arg(repo("data/notes-app/notes.cgi"))
            .env("NOTES_DIR", self.path("notes"))
            .env("QUERY_STRING", query)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Trains a stide profile on `train` with `symbols`, then returns the mismatches
    /// of each of `test`, summed over its traces.
    fn train_and_scan(&self, symbols: &str, train: &[PathBuf], test: &[PathBuf]) -> Vec<u64> {
        let prof = self.path(&format!("{symbols}.prof"));
        ok(bin()
            .args(["train", "--symbols", symbols, "-o"])
            .arg(&prof)
            .args(train));
        test.iter()
            .map(|t| {
                let out = ok(bin().args(["scan", "--json", "-p"]).arg(&prof).arg(t));
                out.lines()
                    .map(|l| {
                        serde_json::from_str::<Value>(l).unwrap()["mismatches"]
                            .as_u64()
                            .unwrap()
                    })
                    .sum()
            })
            .collect()
    }
}

const TRAIN: [&str; 5] = [
    "read=todo.txt",
    "read=fox.txt",
    "list",
    "read=plan.txt",
    "search=fox",
];

#[test]
fn launcher_recordings_carry_arguments_and_catch_the_traversal() {
    let lab = Lab::new();
    let rec = |name: &str, q: &str| {
        let f = lab.path(&format!("{name}.hrec"));
        let answer = lab.request(bin().arg("record").arg("-o").arg(&f).arg("--"), q);
        (f, answer)
    };
    let train: Vec<PathBuf> = TRAIN
        .iter()
        .enumerate()
        .map(|(i, q)| rec(&format!("train{i}"), q).0)
        .collect();
    let (normal, answer) = rec("normal", "read=other.txt");
    assert!(answer.contains("another note"), "{answer}");
    let (attack, answer) = rec("attack", "read=../../../../../../etc/passwd");
    assert!(answer.contains("root:"), "the bug is real: {answer}");

    // The recording holds the resolved path of the attack's open.
    let bytes = std::fs::read(&attack).unwrap();
    assert!(bytes.windows(11).any(|w| w == b"/etc/passwd"));
    assert_eq!(&bytes[8..10], &[2, 0], "recording format version 2");

    let plain = lab.train_and_scan("calls", &train, &[normal.clone(), attack.clone()]);
    let rich = lab.train_and_scan("args", &train, &[normal, attack]);
    eprintln!("mismatches (normal, attack): calls {plain:?}, args {rich:?}");
    assert_eq!(plain, vec![0, 0], "plain calls see two ordinary reads");
    assert_eq!(rich[0], 0, "a normal read of another note is normal");
    assert!(rich[1] > 0, "the traversal is foreign to the args alphabet");
    let prof = std::fs::read(lab.path("args.prof")).unwrap();
    assert_eq!(&prof[8..10], &[3, 0], "args profiles are version 3");
}

#[test]
fn strace_traces_work_with_symbols_args() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing (scripts/lib/ensure-deps.sh installs it)");
    }
    let lab = Lab::new();
    let rec = |name: &str, q: &str| {
        let f = lab.path(&format!("{name}.strace"));
        lab.request(Command::new("strace").args(["-f", "-y", "-o"]).arg(&f), q);
        f
    };
    let train: Vec<PathBuf> = TRAIN
        .iter()
        .enumerate()
        .map(|(i, q)| rec(&format!("train{i}"), q))
        .collect();
    let normal = rec("normal", "read=other.txt");
    let attack = rec("attack", "read=../../../../../../etc/passwd");
    let plain = lab.train_and_scan("calls", &train, &[normal.clone(), attack.clone()]);
    let rich = lab.train_and_scan("args", &train, &[normal, attack]);
    eprintln!("strace mismatches (normal, attack): calls {plain:?}, args {rich:?}");
    assert_eq!(plain, vec![0, 0]);
    assert_eq!(rich[0], 0);
    assert!(rich[1] > 0);
}
