//! Rate limits learned from the profile under the real launcher (`homeostat run
//! --rate-limit`): a real program (perl) is trained forking and creating files at a
//! modest rate; once its profile is normal, a storm of forks or file creations by the
//! same program is slowed to about the learned limit, while the program at its trained
//! rate is not delayed at all. Every figure is measured beside the same run without
//! the limit.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

mod common;
use common::{bin, ok, INT80, STORM};

struct Run {
    secs: f64,
    events: Vec<Value>,
}

/// Runs the perl storm (`STORM`) with `args` under the launcher with `flags`.
fn run(dir: &Path, name: &str, flags: &[&str], args: &[&str]) -> Run {
    let script = dir.join("storm.pl");
    let files = dir.join(format!("{name}.files"));
    std::fs::create_dir_all(&files).unwrap();
    let mut cmd = vec!["perl", script.to_str().unwrap()];
    cmd.extend_from_slice(args);
    if args[0] == "create" {
        cmd.push(files.to_str().unwrap());
    }
    run_cmd(dir, name, flags, &cmd)
}

/// Runs `cmd_line` under the launcher with `flags` (and the test's config); its wall
/// time and events.
fn run_cmd(dir: &Path, name: &str, flags: &[&str], cmd_line: &[&str]) -> Run {
    let events = dir.join(format!("{name}.events"));
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--quiet")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--events")
        .arg(&events)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(flags)
        .arg("--")
        .args(cmd_line);
    let t = Instant::now();
    let st = cmd.status().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(st.success(), "{name}: {st}");
    let events = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    Run { secs, events }
}

/// Checks that the storm `held` of `n` calls of `kind` was held to a learned limit of
/// 20 to 60 a second: its calls queued are of that kind, and it took at least as long
/// as that limit allows. Returns the limit and the calls queued.
fn held_to_limit<'a>(held: &'a Run, kind: &str, n: u32) -> (u64, Vec<&'a Value>) {
    let queued: Vec<&Value> = held
        .events
        .iter()
        .filter(|e| e["event"] == "rate_queued")
        .collect();
    assert!(
        !queued.is_empty(),
        "{kind}: nothing held: {:?}",
        held.events
    );
    assert!(queued.iter().all(|e| e["kind"] == kind), "{queued:?}");
    let limit = queued[0]["limit"].as_u64().unwrap();
    assert!((20..=60).contains(&limit), "{kind}: limit {limit}");
    // At most `limit` in any second: the n-th call comes at least floor((n-1)/limit)
    // seconds after the first.
    let floor = f64::from((n - 1) / limit as u32);
    assert!(
        held.secs >= floor * 0.95,
        "{kind}: {} s, expected >= {floor}",
        held.secs
    );
    (limit, queued)
}

fn count(r: &Run, event: &str) -> usize {
    r.events.iter().filter(|e| e["event"] == event).count()
}

#[test]
fn storms_are_slowed_to_the_learned_limit_and_the_trained_rate_never_waits() {
    common::perl();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("storm.pl"), STORM).unwrap();
    // pH's own response is off (no delays, and anomalies never send the profile back
    // to training): which of the parent's next call and the child's first comes first
    // after a fork varies, so a storm of 200 can show a pair training missed, and the
    // delays measured here must be the rate limit's alone.
    std::fs::write(
        dir.join("config.toml"),
        "[ph]\ndelay_factor_ms = 0.0\nanomaly_limit = 1000000\n",
    )
    .unwrap();
    let learn = ["--learn", "--rate-limit"];
    // Training: 20 forks (or files) 50 ms apart, about 20 in a second at most; and
    // short quick bursts, so the storm's call sequence is one pH knows.
    for i in 0..2 {
        for kind in ["fork", "create"] {
            run(
                dir,
                &format!("train-{kind}-slow-{i}"),
                &learn,
                &[kind, "20", "50"],
            );
            run(
                dir,
                &format!("train-{kind}-burst-{i}"),
                &learn,
                &[kind, "5", "0"],
            );
        }
    }
    ok(bin()
        .args(["profile", "normalize", "perl", "--state-dir"])
        .arg(dir.join("state")));

    // The peaks the profile learned, as `profile show` prints them.
    let show = ok(bin()
        .args(["profile", "show", "perl", "--state-dir"])
        .arg(dir.join("state")));
    let rates = show
        .lines()
        .find(|l| l.starts_with("rates"))
        .unwrap_or_else(|| panic!("{show}"));
    let nums: Vec<u64> = rates
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (fork_peak, create_peak) = match nums[..] {
        [1, f, c] => (f, c),
        _ => panic!("{rates}"),
    };

    let limited = ["--enforce", "--rate-limit", "--rate-margin", "2"];
    let plain = ["--enforce"];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let n = 200u32;
    for kind in ["fork", "create"] {
        let ns = n.to_string();
        let free = run(
            dir,
            &format!("{kind}-storm-plain"),
            &plain,
            &[kind, &ns, "0"],
        );
        let held = run(dir, &format!("{kind}-storm"), &limited, &[kind, &ns, "0"]);
        for r in [&free, &held] {
            assert_eq!(count(r, "delay_start"), 0, "pH delayed");
            assert_eq!(count(r, "state_change"), 0, "profile left normal");
        }
        let (limit, queued) = held_to_limit(&held, kind, n);
        // Learned peak about 20 a second, margin 2.
        let peak = if kind == "fork" {
            fork_peak
        } else {
            create_peak
        };
        assert_eq!(limit, 2 * peak, "{kind}: {rates}");
        assert!(count(&held, "rate_release") > 0);
        let floor = f64::from((n - 1) / limit as u32);
        assert!(
            free.secs < floor / 2.0,
            "{kind} storm unlimited: {} s",
            free.secs
        );

        let trained = run(
            dir,
            &format!("{kind}-trained"),
            &limited,
            &[kind, "20", "50"],
        );
        let trained_plain = run(
            dir,
            &format!("{kind}-trained-plain"),
            &plain,
            &[kind, "20", "50"],
        );
        assert_eq!(count(&trained, "rate_queued"), 0, "{:?}", trained.events);
        eprintln!(
            "{kind}: storm of {n}: {:.2} s limited ({:.0}/s, limit {limit}/s) vs {:.2} s \
             without ({:.0}/s), {} calls held; trained rate (20, 50 ms apart): {:.2} s \
             limited vs {:.2} s without, none held; pH anomalies (not acted on) {} and {} \
             in the storms (load {})",
            held.secs,
            f64::from(n) / held.secs,
            free.secs,
            f64::from(n) / free.secs,
            queued.len(),
            trained.secs,
            trained_plain.secs,
            count(&free, "anomaly"),
            count(&held, "anomaly"),
            load.trim()
        );
    }

    // Detect reports the calls beyond the limit and holds none.
    let detect = run(
        dir,
        "fork-storm-detect",
        &["--detect", "--rate-limit"],
        &["fork", "200", "0"],
    );
    assert!(count(&detect, "rate_exceeded") > 0, "{:?}", detect.events);
    assert_eq!(count(&detect, "rate_queued"), 0);
    assert!(
        detect.secs < 3.0,
        "detect held the storm: {} s",
        detect.secs
    );
}

/// The i386 ABI is no way around the limits: a 64-bit python creating files with
/// `creat` through `int 0x80` is trained, made normal, and its storm is held to the
/// limit its own i386 creations taught (one rule, `rate::kind_of`, for both ABIs).
/// Before, only x86_64 calls counted: nothing was learned (the profile showed no
/// creation peak) and the storm ran at full speed.
#[test]
fn an_i386_creation_storm_is_held_to_the_limit_it_learned() {
    // The profile is named after the file that runs (python3 is a link).
    let python = common::python3().to_str().unwrap();
    let exe = std::fs::canonicalize(python).unwrap();
    let exe = exe.file_name().unwrap().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // As above: the rate limit's delays alone.
    std::fs::write(
        dir.join("config.toml"),
        "[ph]\ndelay_factor_ms = 0.0\nanomaly_limit = 1000000\n",
    )
    .unwrap();
    let creates = |name: &str, flags: &[&str], n: u32, ms: u32| {
        let files = dir.join(format!("{name}.files"));
        std::fs::create_dir_all(&files).unwrap();
        let (n, ms) = (n.to_string(), ms.to_string());
        let cmd = [
            python,
            "-c",
            INT80,
            "creat",
            &n,
            &ms,
            files.to_str().unwrap(),
        ];
        let r = run_cmd(dir, name, flags, &cmd);
        let made = std::fs::read_dir(&files).unwrap().count();
        assert_eq!(made, n.parse::<usize>().unwrap(), "{name}: files made");
        r
    };
    for i in 0..2 {
        creates(
            &format!("train-slow-{i}"),
            &["--learn", "--rate-limit"],
            20,
            50,
        );
        creates(
            &format!("train-burst-{i}"),
            &["--learn", "--rate-limit"],
            5,
            0,
        );
    }
    ok(bin()
        .args(["profile", "normalize", exe, "--state-dir"])
        .arg(dir.join("state")));
    let n = 120;
    let free = creates("storm-plain", &["--enforce"], n, 0);
    let held = creates(
        "storm",
        &["--enforce", "--rate-limit", "--rate-margin", "2"],
        n,
        0,
    );
    let (limit, queued) = held_to_limit(&held, "create", n);
    eprintln!(
        "i386 creat storm of {n}: {:.2} s limited (limit {limit}/s, {} held) vs {:.2} s \
         without",
        held.secs,
        queued.len(),
        free.secs
    );
}
