//! The `homeostat` binary, run as a user would: real files, real output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{bin, ok, sample};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("homeostat runs")
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    err
}

#[test]
fn default_eval_uses_the_embedded_sample() {
    let out = run(bin().args(["eval", "--json"]));
    assert!(out.status.success());
    // Piped: no progress bar on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dataset"], "homeostat sample");
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    for m in models {
        for key in [
            "model",
            "config",
            "train_seconds",
            "test_seconds",
            "threads",
            "calls_per_second",
        ] {
            assert!(!m[key].is_null(), "missing {key}");
        }
        for score in ["max_lfc", "rate"] {
            let s = &m["scores"][score];
            let auc = s["auc"].as_f64().unwrap();
            // The sample's attacks are real abuses of the same programs: every model
            // separates them better than chance (measured 0.78-0.90).
            assert!(auc > 0.7, "{} {score} AUC {auc}", m["model"]);
            for far in ["0.01", "0.05", "0.1"] {
                assert!(s["dr_at_far"][far].is_number(), "dr_at_far {far}");
            }
        }
    }
}

#[test]
fn train_then_scan_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("pairs.profile");
    let out = run(bin()
        .args(["train", "--model", "pairs", "-o"])
        .arg(&profile)
        .arg(sample("training")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = ok(bin().arg("inspect").arg(&profile));
    assert!(info.contains("pairs (w=9 L=128)"), "{info}");
    assert!(info.contains("execve"), "{info}");

    // Scanning the training data finds nothing; an attack is found.
    let normal = ok(bin()
        .args(["scan", "--json", "-p"])
        .arg(&profile)
        .arg(sample("training")));
    let lines: Vec<serde_json::Value> = normal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 91);
    assert!(lines
        .iter()
        .all(|l| l["mismatches"] == 0 && l["max_lfc"] == 0));
    for key in ["id", "calls", "mismatches", "max_lfc", "rate"] {
        assert!(!lines[0][key].is_null(), "missing {key}");
    }
    assert!(lines[0]["id"].as_str().unwrap().contains(".unm:"));
    let attack = ok(bin()
        .args(["scan", "--json", "-p"])
        .arg(&profile)
        .arg(sample("attack/shell_escape")));
    let worst = attack
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["max_lfc"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap();
    assert!(worst >= 10, "shell escapes reach LFC {worst}");

    let table = ok(bin()
        .args(["scan", "-p"])
        .arg(&profile)
        .arg(sample("validation")));
    assert!(table.starts_with("id "), "{table}");
}

#[test]
fn damaged_profiles_and_traces_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.profile");
    ok(bin()
        .args(["train", "-o"])
        .arg(&profile)
        .arg(sample("training/ls-01.unm")));
    let mut bytes = std::fs::read(&profile).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    std::fs::write(&profile, &bytes).unwrap();
    let err = fails(
        bin()
            .args(["scan", "-p"])
            .arg(&profile)
            .arg(sample("validation")),
    );
    assert!(
        err.contains("p.profile") && err.contains("checksum"),
        "{err}"
    );

    std::fs::write(&profile, &bytes[..30]).unwrap();
    let err = fails(bin().arg("inspect").arg(&profile));
    assert!(err.contains("truncated"), "{err}");
    // Said once: the reason is not repeated as its own cause.
    assert_eq!(err.matches("truncated").count(), 1, "{err}");
    std::fs::write(&profile, b"some text, not a profile\n").unwrap();
    let err = fails(bin().arg("inspect").arg(&profile));
    assert_eq!(err.matches("bad magic").count(), 1, "{err}");

    let bad = dir.path().join("bad.unm");
    std::fs::write(&bad, "12 5\n12 6\n12 x\n").unwrap();
    let err = fails(
        bin()
            .args(["train", "--format", "unm", "-o"])
            .arg(dir.path().join("q"))
            .arg(&bad),
    );
    assert!(err.contains("bad.unm:3"), "{err}");
    assert!(!dir.path().join("q").exists(), "no profile from bad input");

    let err = fails(
        bin()
            .args(["eval", "adfa-ld"])
            .arg(dir.path().join("missing")),
    );
    assert!(err.contains("missing"), "{err}");
    let err = fails(bin().args(["train", "--window", "99", "-o", "x"]).arg(&bad));
    assert!(err.contains("window 99"), "{err}");
}

#[test]
fn eval_traces_with_labelled_lists_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("roc.svg");
    let out = ok(bin()
        .args([
            "eval",
            "traces",
            "--model",
            "stide,pairs",
            "--window",
            "4",
            "--train",
        ])
        .arg(sample("training"))
        .arg("--normal")
        .arg(sample("validation"))
        .arg("--attack")
        .arg(sample("attack"))
        .arg("--plot")
        .arg(&svg));
    assert!(
        out.contains("shell_escape") && out.contains("persistence"),
        "{out}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("pairs w=4 L=128 max_lfc AUC"));
}

#[test]
fn eval_adfa_ld_json_fields() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ADFA-LD");
    let dir = std::env::var_os("HOMEOSTAT_ADFA_DIR")
        .map(PathBuf::from)
        .unwrap_or(dir);
    if !dir.join("Training_Data_Master").is_dir() {
        eprintln!("skipping: ADFA-LD not found at {}", dir.display());
        return;
    }
    let out = ok(bin().args(["eval", "adfa-ld"]).arg(&dir).args([
        "--model",
        "stide,tstide,pairs,markov",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    assert_eq!(v["attack_types"].as_array().unwrap().len(), 6);
    for m in models {
        assert!(m["calls_per_second"].as_f64().unwrap() > 1e6);
        assert!(m["detection_delay"]["score"] == "max_lfc");
        assert!(m["per_attack"]["Hydra_SSH"]["max_lfc"]["auc"].is_number());
    }
}

#[test]
fn knn_and_ensemble_train_scan_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    for (model, scores) in [
        ("knn", &["distance", "relative"][..]),
        (
            "ensemble:knn,stide.rate",
            &["mean_z", "mean_rank", "max_rank"][..],
        ),
    ] {
        let profile = dir.path().join("m.profile");
        let out = run(bin()
            .args(["train", "-P", "k=2", "--model", model, "-o"])
            .arg(&profile)
            .arg(sample("training")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = ok(bin().arg("inspect").arg(&profile));
        assert!(
            info.contains(&format!("scores    {}", scores.join(", "))),
            "{info}"
        );
        if model == "knn" {
            assert!(info.contains("knn (k=2 n=1..1 tf=bool idf)"), "{info}");
        }
        let lines: Vec<serde_json::Value> = ok(bin()
            .args(["scan", "--json", "-p"])
            .arg(&profile)
            .arg(sample("attack/shell_escape")))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert!(!lines.is_empty());
        for s in scores {
            assert!(lines[0][s].is_number(), "{model}: missing {s}");
        }
    }
    // A parameter no model reads is named, as is an unknown model.
    let err = fails(bin().args(["eval", "--model", "knn", "-P", "kk=3"]));
    assert!(err.contains("\"kk\""), "{err}");
    let err = fails(bin().args(["eval", "--model", "hmm9"]));
    assert!(err.contains("unknown model \"hmm9\""), "{err}");
    let out = ok(bin().args(["eval", "--model", "stide,knn,ensemble:knn,stide.rate"]));
    assert!(
        out.contains("ensemble:knn,stide.rate") && out.contains("mean_rank"),
        "{out}"
    );
}

#[test]
fn an_offline_profile_reset_deletes_what_lives_beside_the_profile() {
    use homeostat_core::ph::{ExeKey, PhConfig, PhProfile, ProfileState};
    use homeostat_monitor::daemon_profile::{self, DaemonProfile};
    // No daemon runs: `profile reset` deletes the daemon's file itself, and must take
    // the classes, rates and working set kept beside it too. A working set left
    // behind was given back to the executable's next profile at the next start.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let daemon_dir = daemon_profile::dir_in(&state);
    std::fs::create_dir_all(&daemon_dir).unwrap();
    let key = ExeKey { dev: 1, ino: 2 };
    let p = PhProfile::from_raw_pairs(
        key,
        "/bin/x",
        &PhConfig::default(),
        ProfileState::Normal,
        &[(0, 1, 1)],
    )
    .unwrap();
    let json = daemon_profile::path_in(&state, key);
    std::fs::write(&json, DaemonProfile::from_ph(&p).to_bytes()).unwrap();
    let beside = ["classes", "rates", "hosts"].map(|ext| daemon_dir.join(format!("{key}.{ext}")));
    for f in &beside {
        std::fs::write(f, b"{}").unwrap();
    }
    let other = daemon_dir.join("1-3.hosts");
    std::fs::write(&other, b"{}").unwrap();
    let out = ok(bin()
        .args(["profile", "reset", &key.to_string(), "--state-dir"])
        .arg(&state));
    assert!(out.contains("learnt from nothing"), "{out}");
    for f in std::iter::once(&json).chain(&beside) {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(other.exists(), "another profile's file was deleted");
}
